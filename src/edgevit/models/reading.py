"""Reading a checkpoint file, the one reader every command uses (weights only; one `CheckpointError` naming the
file for anything unreadable), its safetensors metadata, and the preprocessing a run's checkpoint carries. Apart
from checkpoint.py because the model file's timm entry points read it too (a model built from a checkpoint takes
its preprocessing), and checkpoint.py imports the model file."""
from __future__ import annotations

import contextlib
import os
import pickle
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Union

import torch
from safetensors.torch import load_file

from ..errors import UserError
from ..utils.images import size_hw

PathLike = Union[str, os.PathLike]


class CheckpointError(UserError):
    """A checkpoint that cannot be read, or does not fit the model."""


def require_checkpoint(path: Path) -> None:
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path}: is a directory; expected a .pth or .safetensors file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """A file that cannot be read as a checkpoint: one CheckpointError naming it (timm's loaders and torch's say
    neither the file nor, for an empty one, anything at all)."""
    require_checkpoint(path)
    try:
        yield
    except UserError:
        raise
    except pickle.UnpicklingError as e:  # corrupt, or objects that weights_only=True refuses to unpickle
        raise CheckpointError(f"checkpoint {path}: not a readable weights-only torch file (corrupt, or it "
                              f"holds pickled objects other than tensors and plain containers)") from e
    except Exception as e:  # truncated file, wrong format: one message naming the file
        kind = "safetensors" if path.suffix == ".safetensors" else "a torch file"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise CheckpointError(f"checkpoint {path}: cannot be read as {kind} ({first or type(e).__name__})") from e


def read_state_dict(path: PathLike) -> Dict[str, Any]:
    """What a `.safetensors` or `.pth/.pt/.bin` file holds, as it is (a training state keeps its config,
    classes, EMA and optimizer; read with weights_only=True). For the weights alone: `load_weights`."""
    path = Path(path)
    with _reading(path):
        obj = load_file(str(path)) if path.suffix == ".safetensors" else \
            torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path}: expected a state_dict (a dict of tensors), got {type(obj).__name__}")
    return obj


# safetensors metadata keys of the weights a run writes (values are JSON text: safetensors metadata is str -> str)
META_CONFIG, META_CLASSES, META_PRETRAINED_CFG = "edgevit_config", "edgevit_classes", "pretrained_cfg"


def weights_metadata(path: PathLike) -> Dict[str, Any]:
    """{"config", "classes"} stored in a .safetensors file's metadata by `save_checkpoint` (empty for other files
    and for weights written elsewhere)."""
    import json

    from safetensors import safe_open

    if Path(path).suffix != ".safetensors":
        return {}
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        return {k: json.loads(meta[key]) for k, key in (("config", META_CONFIG), ("classes", META_CLASSES))
                if key in meta}
    except Exception as e:  # unreadable metadata: one line naming the file (the tensors were readable)
        raise CheckpointError(f"checkpoint {path}: its metadata cannot be read ({type(e).__name__}: {e})") from e


def preprocessing_cfg(config: Optional[Dict[str, Any]], classes: Optional[list] = None) -> Dict[str, Any]:
    """timm's `pretrained_cfg` fields that a training run's `config` fixes: input size, crop, interpolation,
    classes (what `timm.data.resolve_data_config` + `create_transform` read). Empty without a config."""
    if not config:
        return {}
    h, w = size_hw(config.get("img_size") or 224)
    out = {"input_size": (3, h, w), "test_input_size": (3, h, w), "crop_pct": config.get("crop_pct"),
           "interpolation": config.get("eval_interpolation"), "num_classes": config.get("num_classes"),
           "label_names": list(classes or [])}
    return {k: v for k, v in out.items() if v is not None}


def run_record(raw: Dict[str, Any]) -> tuple:
    """(training config or None, class names or None) of what a checkpoint file holds (`read_state_dict`, or a
    `.safetensors` file's metadata)."""
    config, classes = raw.get("config"), raw.get("classes")
    return (config if isinstance(config, dict) else None), (classes if isinstance(classes, list) else None)


def checkpoint_preprocessing(path: PathLike) -> Dict[str, Any]:
    """The preprocessing fields of the weights at `path` (a run's model.safetensors, last.pth or best.pth), for
    `timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=path))`; empty for weights that
    carry no training config (the authors', bare state dicts)."""
    return preprocessing_cfg(*run_record(weights_metadata(path) or read_state_dict(path)))
