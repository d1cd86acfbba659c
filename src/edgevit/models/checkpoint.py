"""Read, convert and write EdgeViT checkpoints (this project's layout or the authors')."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import timm
import torch
import torch.nn as nn
from safetensors.torch import save_file

from ..errors import ConfigError, UserError
from .edgevit import VARIANTS, checkpoint_filter_fn, convert_authors_state_dict, is_authors_layout
from .reading import (
    META_CLASSES,
    META_CONFIG,
    META_PRETRAINED_CFG,
    CheckpointError,
    PathLike,
    preprocessing_cfg,
    read_state_dict,
    require_checkpoint,
    run_record,
    weights_metadata,
)


def load_weights(path: PathLike, ema: bool = False) -> Dict[str, torch.Tensor]:
    """The weights of a checkpoint file, through timm's `load_state_dict` (safetensors or weights-only torch.load;
    a training state's `model` — `model_ema` with `ema` — or `state_dict`; DDP / torch.compile prefixes removed)."""
    path = Path(path)
    try:
        require_checkpoint(path)  # (said before timm's reader runs)
        sd = timm.models.load_state_dict(str(path), use_ema=ema, weights_only=True)
    except UserError:
        raise
    except Exception:
        raw = read_state_dict(path)  # what is wrong with the file, in our words (corrupt, not a dict, ...)
        for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
            if raw.get(key) is not None and not isinstance(raw[key], dict):
                raise CheckpointError(f"checkpoint {path}: its {key!r} is a {type(raw[key]).__name__}; expected a "
                                      "dict of tensors") from None
        raise  # a readable dict that timm's reader fails on: not the user's input, the traceback stays
    others = [f"{k} ({type(v).__name__})" for k, v in sd.items() if not torch.is_tensor(v)][:5]
    if others:
        raise CheckpointError(f"checkpoint {path}: holds values that are not tensors ({', '.join(others)}); "
                              "expected a state_dict")
    return sd


def checkpoint_weights(path: str | Path, ema: bool = False) -> Dict[str, Any]:
    """Weights and metadata of a checkpoint: ours (training state, or a run's model.safetensors with its
    preprocessing in the metadata, or bare weights) or the authors'.

    Returns {"state_dict", "config" (training config or None), "classes" (or None)}."""
    raw = read_state_dict(path)
    meta = weights_metadata(path)
    if meta:
        raw = {**raw, **{k: v for k, v in meta.items()}}
        if ema:
            raise UserError(f"checkpoint {path} holds one set of weights (a run's EMA weights are its "
                            "model_ema.safetensors)", option="ema")
    arch = raw["meta"].get("arch") if isinstance(raw.get("meta"), dict) else None
    if arch:  # a detection / segmentation run's checkpoint (`edgevit.dense.registry` knows its task)
        raise CheckpointError(f"checkpoint {path}: a {arch} checkpoint of `edgevit detect|segment train` (a dense "
                              "model), not a classification model")
    config, classes = run_record(raw)
    if config and config.get("qat"):
        raise CheckpointError(f"checkpoint {path}: a quantization-aware training checkpoint; its weights run only "
                              "inside the fake-quantized graph that training built (evaluating it or exporting it "
                              "as int8 builds that graph; as a float model it does not load)")
    if ema and not meta and not isinstance(raw.get("model_ema"), dict):  # (timm's reader would take `model`)
        raise UserError(f"checkpoint {path} holds no EMA weights (its run kept no model_ema)", option="ema")
    sd = {k: v for k, v in raw.items() if k not in ("config", "classes")} if meta else load_weights(path, ema)
    return {"state_dict": sd, "config": config, "classes": classes}


def head_classes(state_dict: Dict[str, torch.Tensor]) -> Optional[int]:
    for key in ("head.weight", "head.fc.weight", "fc.weight", "classifier.weight"):
        if key in state_dict and state_dict[key].ndim == 2:
            return int(state_dict[key].shape[0])
    return None


def fit_report(model: nn.Module, state_dict: Dict[str, torch.Tensor]) -> str:
    """Empty string if `state_dict` fits `model` exactly, else what does not fit."""
    target = model.state_dict()
    missing = sorted(set(target) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(target))
    shapes = [f"{k}: checkpoint {list(state_dict[k].shape)} vs model {list(target[k].shape)}"
              for k in sorted(set(target) & set(state_dict)) if state_dict[k].shape != target[k].shape]
    lines = []
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape conflicts", shapes)):
        if items:
            shown = ", ".join(items[:20]) + (f", ... ({len(items) - 20} more)" if len(items) > 20 else "")
            lines.append(f"{title} ({len(items)}): {shown}")
    return "; ".join(lines)


def load_checkpoint(model: nn.Module, path: PathLike, strict: bool = True, skip: tuple = ()) -> nn.Module:
    """Load an authors'-format or this project's checkpoint (fp16 or fp32, optionally wrapped in
    {"model": ...}) into a model. Keys starting with any of `skip` (e.g. the classifier when fine-tuning on
    new classes) are left as the model has them. Raises CheckpointError listing every key or shape that
    does not fit."""
    def fitting(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
        state_dict = {k: v for k, v in checkpoint_filter_fn(state_dict, model).items() if not k.startswith(skip)}
        target = {k: v for k, v in model.state_dict().items() if k.startswith(skip)}
        problems = fit_report(model, {**state_dict, **target})
        if problems and (strict or "shape" in problems):
            raise CheckpointError(f"checkpoint {path} does not fit {type(model).__name__}: {problems}")
        return state_dict

    # (timm's load_checkpoint is these two steps; ours names the file in every error)
    model.load_state_dict(fitting(load_weights(path), model), strict=strict and not skip)
    return model


def save_checkpoint(model: nn.Module, path: PathLike, config: Optional[Dict[str, Any]] = None,
                    classes: Optional[list] = None) -> Path:
    """Write the model's weights in this project's layout (safetensors; `.pth` if the name says so). With the
    training `config` and `classes`, a .safetensors file carries them in its metadata (and timm's pretrained-cfg
    fields: input size, crop, interpolation, mean/std, classes), so the weights are evaluated, run and exported
    with the preprocessing they were trained with."""
    import json

    from ..utils.writes import atomic_path, to_plain

    path = Path(path)
    state_dict = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    metadata = {"format": "pt"}
    if config is not None:
        pcfg = {**(getattr(model, "pretrained_cfg", None) or {}), **preprocessing_cfg(config, classes)}
        metadata.update({META_CONFIG: json.dumps(to_plain(config)), META_CLASSES: json.dumps(list(classes or [])),
                         META_PRETRAINED_CFG: json.dumps(to_plain(pcfg))})
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            save_file(state_dict, str(tmp), metadata=metadata)
        else:
            torch.save(state_dict, tmp)
    return path


def carry_preprocessing(model: nn.Module, config: Optional[Dict[str, Any]], classes: Optional[list] = None
                        ) -> nn.Module:
    """`model` with its checkpoint's preprocessing in `pretrained_cfg` (timm's data config then resolves to the
    size and crop it was trained with, on every route that builds a model from a checkpoint)."""
    extra = preprocessing_cfg(config, classes)
    if extra:
        cfg = {**(getattr(model, "pretrained_cfg", None) or {}), **extra}
        model.pretrained_cfg = cfg
        model.default_cfg = cfg  # (timm's older name, still read by resolve_data_config)
    return model


def check_trained_as(name: Optional[str], trained: Optional[str], checkpoint) -> None:
    """A model name given with a training checkpoint must be the one it was trained as (else the run's
    architecture options would be applied to another model and the result reported under a wrong name)."""
    if name and trained and name != trained:
        raise ConfigError(f"checkpoint {checkpoint} was trained as {trained}, not {name}: leave the model name "
                          "out (it comes from the checkpoint) or give that checkpoint's model")


def model_from_checkpoint(name: str | None, checkpoint: str | None = None, ema: bool = False,
                          model_kwargs: Optional[dict] = None, **kwargs) -> tuple[torch.nn.Module, dict]:
    """(eval-mode model, {"name", "config": training config or {}, "classes": class names or None}): the one
    way every command builds a model from a checkpoint (ours, a training state, the authors').

    With a checkpoint, the model name (if `name` is None), its constructor options (unless `model_kwargs`
    replaces them) and the number of classes come from the checkpoint, so a model trained on 10 classes loads
    as such; explicit kwargs win; `ema` takes a training checkpoint's EMA weights. Unknown model name ->
    ConfigError listing the EdgeViTs; a checkpoint that does not fit -> CheckpointError."""
    meta = {"config": {}, "classes": None}
    if checkpoint:
        w = checkpoint_weights(checkpoint, ema=ema)
        meta = {"config": w["config"] or {}, "classes": w["classes"]}
        check_trained_as(name, meta["config"].get("model"), checkpoint)
        name = name or meta["config"].get("model")
        saved = meta["config"].get("model_kwargs") or {}
        kwargs = {**(saved if model_kwargs is None else model_kwargs), **kwargs}
    elif model_kwargs:
        kwargs = {**model_kwargs, **kwargs}
    name = name or "edgevit_xxs"
    if not timm.is_model(name):
        raise ConfigError(f"model {name!r} is not a known model; EdgeViTs: {', '.join(VARIANTS)} "
                         "(or any name from timm.list_models())")
    meta["name"] = name
    if not checkpoint:
        return timm.create_model(name, **kwargs).eval(), meta
    state_dict = w["state_dict"]
    if is_authors_layout(state_dict):  # (their key names, so that the head's width is read from ours)
        state_dict = convert_authors_state_dict(state_dict)
    kwargs.setdefault("num_classes", head_classes(state_dict) or 1000)
    model = timm.create_model(name, **kwargs)
    state_dict = checkpoint_filter_fn(state_dict, model)
    problems = fit_report(model, state_dict)
    if problems:
        raise CheckpointError(f"checkpoint {checkpoint} does not fit {name}: {problems}")
    model.load_state_dict(state_dict)
    return carry_preprocessing(model.eval(), meta["config"], meta["classes"]), meta


def create_model(name: str | None, checkpoint: str | None = None, **kwargs) -> torch.nn.Module:
    """An eval-mode model by name (EdgeViT or any timm model), with a checkpoint's weights if given."""
    return model_from_checkpoint(name, checkpoint, **kwargs)[0]
