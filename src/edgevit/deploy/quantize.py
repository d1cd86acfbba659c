"""int8 files for the runtimes whose record has an int8 flow (`edgevit.deploy.runtimes`: ExecuTorch-XNNPACK's
PT2E, ONNX Runtime's QDQ): post-training (static, calibrated) and from a quantization-aware fine-tuned model,
each checked against the float model it came from. This module holds what every flow shares: the calibration
images, the agreement measure, quantization-aware training's graph, and the one export-and-check call.

Nothing here is specific to EdgeViT: the CNN/ViT baselines go through the same two flows, so `edgevit
bench --precision int8` compares like with like.
"""
from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from ..errors import DataError, MissingFileError, UserError
from ..utils.images import size_hw

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


def random_calibration(count: int, img_size, seed: int = 0) -> torch.Tensor:
    """Standard-normal inputs: enough to time an int8 graph, meaningless for its accuracy."""
    h, w = size_hw(img_size)
    return torch.randn(count, 3, h, w, generator=torch.Generator().manual_seed(seed))


# ---- agreement with the float model ----------------------------------------------------------------
def agreement(reference: torch.Tensor, got: torch.Tensor) -> Dict[str, float]:
    """Top-1 agreement (%) and the signal-to-quantization-noise ratio of the logits (dB):
    10·log10(Σ ref² / Σ (ref − got)²) over the whole batch."""
    reference, got = reference.double(), got.double()
    noise = (reference - got).pow(2).sum().item()
    signal = reference.pow(2).sum().item()
    sqnr = math.inf if noise == 0 else 10 * math.log10(max(signal, 1e-300) / noise)
    top1 = (reference.argmax(1) == got.argmax(1)).double().mean().item() * 100
    return {"top1_agreement": top1, "sqnr_db": sqnr}


# ---- quantization-aware training ----------------------------------------------------------------------
def qat_form(model: nn.Module) -> nn.Module:
    """The graph a QAT run trains and `export_int8` converts: for an EdgeViT its fused form (BN, CPE and
    LayerNorm affines folded, so the weights that get fake-quantized are the ones the file holds) in
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
    from .fused import legacy_fused_keys

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
        prepared.load_state_dict(legacy_fused_keys(sd, prepared.state_dict()))  # (or an earlier release's)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path}: its QAT weights do not fit {cfg.get('model')} "
                              f"({str(e).splitlines()[0]})") from e
    prepared.eval()
    return prepared, qat_form(base).eval(), meta


# ---- one call: quantize, export, verify -----------------------------------------------------------------
def run_batch(run, images: torch.Tensor) -> torch.Tensor:
    """Outputs of a batch-1 runtime function over every image."""
    return torch.cat([run(images[i:i + 1]).float() for i in range(len(images))])


def export_int8(model: nn.Module, fmt: str, output, images: Optional[torch.Tensor], threads: int = 2,
                prepared: Optional[torch.fx.GraphModule] = None, calibrated: str = "images",
                img_size=None, check: Optional[torch.Tensor] = None, checked_on: str = "",
                precision: str = "int8") -> Dict[str, object]:
    """Quantize `model` (eval, fused or not) to int8 for `fmt` ("pte"/"onnx"), write `output` atomically and
    check the file in its runtime against the float model on the calibration images. `precision`: "int8" (the
    runtime's full-integer file) or one of its named int8 forms (`Runtime.int8_forms`, e.g. "int8-conv").

    `prepared`: a QAT-fine-tuned PT2E graph (fake quantizers already hold their scales): converted as is,
    no calibration; the file is checked against that fake-quantized model (what the run trained and
    validated), on `images` if given, else on 8 random inputs of `img_size`. `check`: the images the file is
    measured on (`calibration_and_check`: ones calibration did not use; default the calibration images), named
    by `checked_on`. Returns the report: bytes, partitions (pte), top-1 agreement and logits SQNR."""
    from .runtimes import RUNTIMES, by_format, int8_formats

    rt = by_format(fmt)
    if not rt.int8:
        raise UserError(f"int8 export is for {', '.join(int8_formats())}, not {fmt!r}", option="format")
    if precision != "int8" and precision not in rt.int8_forms:
        have = [f"{r.format} ({'/'.join(r.int8_forms)})" for r in RUNTIMES.values() if r.int8_forms]
        raise UserError(f"{precision} files are written for {', '.join(have) or 'no format'}, not {fmt}",
                        option="format")
    if precision != "int8" and prepared is not None:
        raise UserError(f"a quantization-aware checkpoint converts to the int8 it was trained as, not {precision}")
    rt.require(writing=True)
    torch.set_num_threads(threads)
    if images is None:
        if prepared is None:
            raise UserError("int8 without calibration images: pass images (or random_calibration's)")
        images, calibrated = random_calibration(8, img_size), "qat (checked on 8 random inputs)"
    x = images[:1].clone()
    if hasattr(model, "check_input"):
        model.check_input(x)
    model = model.eval()
    measured = check if check is not None else images
    checked_on = checked_on or ("the calibration images" if check is None else f"{len(check)} check images")
    with torch.no_grad():
        reference = run_batch(prepared if prepared is not None else model, measured)
    report: Dict[str, object] = {"format": fmt, "runtime": rt.name, "output": str(output),
                                 "precision": precision, "checked_against": "the float model" if prepared is None
                                 else "the fake-quantized QAT model", "img_size": list(x.shape[-2:]),
                                 "calibration": calibrated, "calibration_images": len(images),
                                 "checked_on": checked_on, "check_images": len(measured)}
    if prepared is not None and rt.save_qat is None:
        qat_formats = [r.format for r in RUNTIMES.values() if r.save_qat]
        raise UserError(f"a quantization-aware checkpoint exports to {' or '.join(qat_formats)} (the quantizer it "
                        f"was trained with); {rt.name} files are quantized after training", option="format")
    write = (lambda tmp: rt.save_qat(prepared, x, tmp)) if prepared is not None else \
        (lambda tmp: rt.write(precision, model, x, tmp, images))
    return checked_write(rt, output, write, reference, measured, threads, report)


def checked_write(rt, output, write, reference: torch.Tensor, measured: torch.Tensor, threads: int,
                  report: Dict[str, object]) -> Dict[str, object]:
    """`write(tmp)` a reduced-precision file beside `output` (with its companions), run it in its runtime on
    `measured`, add its agreement with `reference` (the float model's outputs) and max |diff| to `report`, then
    rename it into place."""
    from ..utils.io import atomic_path
    from .runtimes import first_output

    with atomic_path(output, rt.companions) as tmp:
        report.update(write(tmp))
        got = run_batch(first_output(rt.load(tmp, threads)), measured)
        report.update(agreement(reference, got))
        report["max_abs_diff"] = (got - reference).abs().max().item()
        report["bytes"] = rt.size(tmp)
    return report


def export_float16(model: nn.Module, fmt: str, output, precision: str, check: torch.Tensor, threads: int = 2,
                   checked_on: str = "") -> Dict[str, object]:
    """`model` (eval, fused or not) as a 16-bit float file (`precision` "fp16"/"bf16", as the runtime of `fmt`
    holds it), written atomically and checked in its runtime against the float model on `check` (N, 3, H, W):
    top-1 agreement, logits SQNR, max |diff|."""
    from .export import seeded_input
    from .runtimes import RUNTIMES, by_format

    rt = by_format(fmt)
    if precision not in rt.float16:
        have = [f"{r.format} ({'/'.join(r.float16)})" for r in RUNTIMES.values() if r.float16]
        raise UserError(f"{precision} files are written for {', '.join(have)}, not {fmt}", option="format")
    rt.require(writing=True)
    torch.set_num_threads(threads)
    x = seeded_input(tuple(check.shape[-2:]))
    if hasattr(model, "check_input"):
        model.check_input(x)
    model = model.eval()
    with torch.no_grad():
        reference = run_batch(model, check)
    report: Dict[str, object] = {"format": fmt, "runtime": rt.name, "output": str(output), "precision": precision,
                                 "how": rt.float16_how.get(precision, ""), "img_size": list(x.shape[-2:]),
                                 "checked_against": "the float model", "checked_on": checked_on or
                                 f"{len(check)} images", "check_images": len(check)}
    return checked_write(rt, output, lambda tmp: rt.write(precision, model, x, tmp), reference, check, threads,
                         report)
