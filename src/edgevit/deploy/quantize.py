"""int8 files for the runtimes whose record has an int8 flow (`edgevit.deploy.runtimes`: ExecuTorch-XNNPACK's
PT2E, ONNX Runtime's QDQ): post-training (static, calibrated) and from a quantization-aware fine-tuned model,
each checked against the float model it came from. This module holds what every flow shares: the calibration
images, the agreement measure and quantization-aware training's graph; files are written and checked by the
one writer, `edgevit.deploy.export.export_model`.

Nothing here is specific to EdgeViT: the CNN/ViT baselines go through the same two flows, so `edgevit
bench --precision int8` compares like with like.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import List, Optional, Tuple

import torch
import torch.nn as nn

from ..errors import DataError, MissingFileError, UserError
from ..utils.images import size_hw
from .export import agreement, random_calibration  # noqa: F401  (the check's measures live with the writer)

RANDOM = "random"  # the calibration "folder" that asks for random inputs (speed only: labelled as such)

# ---- calibration images ---------------------------------------------------------------------------
def calibration_files(folder: str | Path, count: int, seed: int = 0, check: int = 0) -> List[Path]:
    """Up to `count` image files under `folder` (any depth: an ImageFolder root or split, or a flat folder),
    a seeded random sample of them when there are more (so every class of an ImageFolder is likely in).
    With `check`, (calibration files, check files): up to `check` more files that calibration does not use, to
    measure the int8 file on (agreement measured on the calibration images themselves says little: a folder of
    noise would agree 100%); a folder too small for both gives a fifth of its images to the check."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    if not Path(folder).is_dir():
        what = "is a file" if Path(folder).is_file() else "no such directory"
        raise MissingFileError(f"calibration folder {folder}: {what}; expected a folder of images",
                               option="calib")
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS and p.is_file())
    if not files:
        raise DataError(f"calibration folder {folder}: no images ({', '.join(IMG_EXTENSIONS)}) inside",
                        option="calib")
    if not check:
        return sorted(random.Random(seed).sample(files, count)) if len(files) > count else files
    order = random.Random(seed).sample(files, len(files))
    if len(order) < count + check:
        held = len(order) // 5 if len(order) >= 2 else 0
        count, check = len(order) - max(held, 1 if len(order) >= 2 else 0), max(held, 1 if len(order) >= 2 else 0)
    return sorted(order[:count]), sorted(order[count:count + check])


def calibration_images(folder: str | Path, count: int, img_size, crop_pct: float = 0.875,
                       interpolation: str = "bicubic", mean=None, std=None) -> torch.Tensor:
    """(N, 3, H, W) calibration batch: up to `count` images of `folder` through the model's eval transform
    (the one `edgevit eval` applies). An image that cannot be read is an error naming it (a calibration set
    that silently lost images would calibrate on less than asked)."""
    return _read_batch(calibration_files(folder, count), img_size, crop_pct, interpolation, mean, std)


def _read_batch(files, img_size, crop_pct, interpolation, mean, std) -> torch.Tensor:
    from ..utils.images import eval_transform, read_image

    transform = eval_transform(size_hw(img_size), crop_pct, interpolation, mean, std)
    return torch.stack([transform(read_image(f, "calibration image")) for f in files])


def calibration_and_check(model: nn.Module, calib: Optional[str], count: int, check: int, img_size,
                          crop_pct: Optional[float] = None, interpolation: Optional[str] = None
                          ) -> Tuple[torch.Tensor, Optional[torch.Tensor], str]:
    """(calibration batch, check batch or None, what the check ran on) for an int8 export: as
    `model_calibration`, plus up to `check` images of the folder that calibration does not use."""
    if calib is None or calib == RANDOM:
        images = model_calibration(model, calib, count, img_size)
        return images, random_calibration(min(check, 8) or 1, img_size, seed=1), "random inputs (timing only)"
    card = getattr(model, "pretrained_cfg", None) or {}
    args = (img_size, float(crop_pct or card.get("crop_pct") or 0.875),
            interpolation or card.get("interpolation") or "bicubic", card.get("mean"), card.get("std"))
    cal_files, check_files = calibration_files(calib, count, check=check)
    import warnings

    if len(cal_files) < count:
        warnings.warn(f"calibration folder {calib}: {len(cal_files)} images for calibration of the {count} asked "
                      f"(it holds {len(cal_files) + len(check_files)}; {len(check_files)} kept apart for the check)")
    if check_files and len(check_files) < 16:
        warnings.warn(f"the int8 file's agreement is measured on only {len(check_files)} images calibration did not "
                      "use: a rough check (a folder with more images gives up to 64)")
    images = _read_batch(cal_files, *args)
    if not check_files:
        return images, None, f"the {len(images)} calibration images (the folder holds no other image)"
    return images, _read_batch(check_files, *args), f"{len(check_files)} images of {calib} calibration did not use"


def model_calibration(model: nn.Module, calib: Optional[str], count: int, img_size,
                      crop_pct: Optional[float] = None, interpolation: Optional[str] = None) -> torch.Tensor:
    """Calibration batch for `model`: `count` images of the folder `calib` through the model's eval
    transform (crop and interpolation as given — e.g. its training config's — else its card's, else
    0.875 / bicubic; mean/std from its card), or random inputs when `calib` is RANDOM."""
    if calib is None:
        raise UserError("int8 needs calibration images (a folder), or 'random' for timing only", option="calib")
    if calib == RANDOM:
        return random_calibration(count, img_size)
    card = getattr(model, "pretrained_cfg", None) or {}
    return calibration_images(calib, count, img_size, float(crop_pct or card.get("crop_pct") or 0.875),
                              interpolation or card.get("interpolation") or "bicubic", card.get("mean"),
                              card.get("std"))


# ---- quantization-aware training ----------------------------------------------------------------------
def qat_form(model: nn.Module) -> nn.Module:
    """The graph a QAT run trains and `export_model(..., prepared=...)` converts: for an EdgeViT its fused form
    (BN, CPE and LayerNorm affines folded, so the weights that get fake-quantized are the ones the file holds) in
    ExecuTorch's op forms but without the 16-channel padding (zero channels would start to train);
    other models as they are. Trainable: every weight is a parameter."""
    from ..models.edgevit import EdgeViT
    from . import forms_for, fuse

    if not isinstance(model, EdgeViT):
        return model
    return fuse(model, forms_for("executorch").replace(pad=1)).train()


def prepare_qat(model: nn.Module, img_size, batch: int = 2) -> torch.fx.GraphModule:
    """`model` (release layout, float weights loaded) ready for quantization-aware fine-tuning."""
    from torchao.quantization.pt2e.fake_quantize import FakeQuantizeBase

    h, w = size_hw(img_size)
    x = torch.randn(max(batch, 2), 3, h, w, generator=torch.Generator().manual_seed(0))
    from .runtimes.executorch import prepare_pt2e_model

    prepared = prepare_pt2e_model(qat_form(model), x, qat=True)
    # One pass with only the weights' observers on: their per-channel scales take their final shape now
    # (so a copy made before training, e.g. the EMA, matches the model) without random inputs moving the
    # activations' ranges.
    acts = [m for m in prepared.modules() if isinstance(m, FakeQuantizeBase)
            and m.qscheme not in (torch.per_channel_symmetric, torch.per_channel_affine)]
    for m in acts:
        m.disable_observer()
    with torch.no_grad():
        prepared(x[:1])
    for m in acts:
        m.enable_observer()
    return prepared


def is_qat_checkpoint(path: str | Path) -> bool:
    """Whether `path` is a training checkpoint of a quantization-aware run (its config says `qat`)."""
    from ..models.checkpoint import read_state_dict

    cfg = read_state_dict(path).get("config")
    return isinstance(cfg, dict) and bool(cfg.get("qat"))


def load_qat_model(path: str | Path, img_size=None, ema: bool = False
                   ) -> Tuple[torch.fx.GraphModule, nn.Module, dict]:
    """(fake-quantized model, its float form, meta) of a QAT run's checkpoint: the same graph is prepared
    again (same model, same quantizer; at `img_size`, default the trained size) and the trained weights and
    quantization parameters loaded into it."""
    from ..models.checkpoint import CheckpointError, model_from_checkpoint, read_state_dict

    raw = read_state_dict(path)
    cfg = raw["config"]
    sd = raw.get("model_ema") if ema else raw.get("model")
    if not isinstance(sd, dict):
        raise CheckpointError(f"checkpoint {path}: no {'EMA ' if ema else ''}weights of a QAT run inside")
    base, meta = model_from_checkpoint(cfg.get("model"), None, num_classes=int(cfg["num_classes"]),
                                       model_kwargs=cfg.get("model_kwargs") or {})
    meta = {**meta, "config": cfg, "classes": raw.get("classes")}
    prepared = prepare_qat(base, img_size or cfg["img_size"])
    try:
        prepared.load_state_dict(sd)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path}: its QAT weights do not fit {cfg.get('model')} "
                              f"({str(e).splitlines()[0]})") from e
    prepared.eval()
    return prepared, qat_form(base).eval(), meta
