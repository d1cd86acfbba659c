"""int8 files for ExecuTorch-XNNPACK and ONNX Runtime: post-training (static, calibrated) and from a
quantization-aware fine-tuned model, each checked against the float model it came from.

ExecuTorch: the PT2E flow — `torch.export` → torchao's `prepare_pt2e` (or `prepare_qat_pt2e`) with
ExecuTorch's `XNNPACKQuantizer` (per-channel symmetric int8 weights, static int8 activations) →
calibration → `convert_pt2e` → lowered with the XNNPACK partitioner like the fp32 file.
ONNX Runtime: static QDQ quantization of the fp32 ONNX file (`onnxruntime.quantization.quantize_static`,
per-channel weights) over the same calibration images; the activation type and `reduce_range` are
`ORT_INT8` below (why: docs/deploy.md, "int8").

Nothing here is specific to EdgeViT: the CNN/ViT baselines go through the same two flows, so `edgevit
bench --precision int8` compares like with like.
"""
from __future__ import annotations

import logging
import math
import random
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..errors import DataError, MissingFileError, UserError
from ..utils.images import size_hw

QUANT_FORMATS = ("pte", "onnx")
RANDOM = "random"  # the calibration "folder" that asks for random inputs (speed only: labelled as such)

# ONNX Runtime on x86 without VNNI multiplies u8 activations by s8 weights with pmaddubsw, whose 16-bit
# intermediate sums can saturate; 7-bit weights (reduce_range) keep them exact. s8 activations take a slower
# path there (measured: docs/deploy.md). On ARM (dot-product instructions) neither restriction applies.
ORT_INT8 = {"activation_type": "QUInt8", "weight_type": "QInt8", "reduce_range": True}


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


# ---- PT2E (ExecuTorch) -----------------------------------------------------------------------------
def xnnpack_quantizer(qat: bool = False):
    """ExecuTorch's XNNPACK quantizer: per-channel symmetric int8 weights, static per-tensor int8
    activations (QAT: the same with fake quantization); EdgeViT's channel LayerNorms stay float.

    Why the LayerNorms: their statistics (a mean, a variance, a reciprocal square root) through int8 lose
    what normalisation is for; measured on the digits XXS, logits SQNR 28.6 dB with them quantized, 33.0
    without (docs/deploy.md, "int8"). XNNPACK still runs them, in fp32, inside the same partition."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                          get_symmetric_quantization_config)
    from .fused import ChannelNorm

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_qat=qat))
    return quantizer.set_module_type(ChannelNorm, None)


def prepare_pt2e_model(model: nn.Module, x: torch.Tensor, qat: bool = False) -> torch.fx.GraphModule:
    """`model` exported at `x` with observers (PTQ) or fake quantizers (QAT: any batch size, train()/eval()
    switch as on a module) where the XNNPACK quantizer annotates the graph."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e, prepare_qat_pt2e

    if qat:
        batch = torch.export.Dim("batch", min=1, max=65536)
        gm = torch.export.export(model.train(), (x,), dynamic_shapes=({0: batch},)).module()
        return _with_train_eval(prepare_qat_pt2e(gm, xnnpack_quantizer(qat=True)))
    with torch.no_grad():
        gm = torch.export.export(model.eval(), (x,)).module()
    return prepare_pt2e(gm, xnnpack_quantizer())


# ---- quantization-aware training ----------------------------------------------------------------------
def _with_train_eval(prepared: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """train()/eval() for a prepared QAT graph (an exported graph has none of its own): torchao's switch of
    the train/eval op forms, plus the observers — on while training, off while evaluating, so validation
    images never move the quantization scales (eager QAT does the same with disable_observer)."""
    import types

    from torchao.quantization.pt2e import (disable_observer, enable_observer, move_exported_model_to_eval,
                                           move_exported_model_to_train)

    def train(self, mode: bool = True):
        (move_exported_model_to_train if mode else move_exported_model_to_eval)(self)
        self.apply(enable_observer if mode else disable_observer)
        for m in self.modules():
            m.training = mode
        return self

    prepared.train = types.MethodType(train, prepared)
    prepared.eval = types.MethodType(lambda self: self.train(False), prepared)
    return prepared


def qat_form(model: nn.Module) -> nn.Module:
    """The graph a QAT run trains and `export_int8` converts: for an EdgeViT its fused form (BN, CPE and
    LayerNorm affines folded, so the weights that get fake-quantized are the ones the file holds) in
    ExecuTorch's op forms but without the 16-channel padding (zero channels would start to train);
    other models as they are. Trainable: every weight is a parameter."""
    from ..models.edgevit import EdgeViT
    from . import BACKEND_FORMS, fuse

    if not isinstance(model, EdgeViT):
        return model
    return fuse(model, BACKEND_FORMS["executorch"].replace(pad=1)).train()


def prepare_qat(model: nn.Module, img_size, batch: int = 2) -> torch.fx.GraphModule:
    """`model` (release layout, float weights loaded) ready for quantization-aware fine-tuning."""
    from torchao.quantization.pt2e.fake_quantize import FakeQuantizeBase

    h, w = size_hw(img_size)
    x = torch.randn(max(batch, 2), 3, h, w, generator=torch.Generator().manual_seed(0))
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


def calibrate(prepared: torch.fx.GraphModule, images: torch.Tensor, batch: int = 1) -> None:
    """Run the calibration images through the observers (at the batch size the graph was exported with)."""
    with torch.no_grad():
        for i in range(0, len(images), batch):
            prepared(images[i:i + batch])


def convert_pt2e_model(prepared: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Observers/fake quantizers → quantize/dequantize pairs with the recorded scales (eval mode); the
    prepared model itself is left as it was (a QAT run keeps training it)."""
    import copy

    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    prepared = copy.deepcopy(prepared)
    move_exported_model_to_eval(prepared)
    return convert_pt2e(prepared)


def quantize_pt2e(model: nn.Module, x: torch.Tensor, images: torch.Tensor) -> torch.fx.GraphModule:
    """Post-training static int8 of `model` calibrated on `images` (N, 3, H, W)."""
    prepared = prepare_pt2e_model(model, x)
    calibrate(prepared, images)
    return convert_pt2e_model(prepared)


def save_pte_int8(quantized: torch.fx.GraphModule, x: torch.Tensor, path: Path) -> Dict[str, object]:
    """Lower a converted (quantize/dequantize) graph to XNNPACK and write the .pte; the partition report."""
    from .export import lower_program

    with torch.no_grad():
        ep = torch.export.export(quantized, (x,))
    prog, report = lower_program(ep)
    with open(path, "wb") as f:
        prog.write_to_file(f)
    return report


# ---- ONNX Runtime QDQ ------------------------------------------------------------------------------
def save_onnx_int8(model: nn.Module, x: torch.Tensor, path: Path, images: torch.Tensor,
                   op_types: Optional[Sequence[str]] = None, **options) -> Dict[str, object]:
    """fp32 ONNX export of `model`, then ONNX Runtime's static QDQ quantization calibrated on `images`
    (min/max of each activation), per-channel weights; `options` override ORT_INT8."""
    import tempfile

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from .export import save_onnx, strip_onnx

    cfg = {**ORT_INT8, **options}

    class Reader(CalibrationDataReader):  # the interface quantize_static pulls its inputs through
        def __init__(self, name: str):
            self.name, self.i = name, 0

        def get_next(self):
            if self.i >= len(images):
                return None
            self.i += 1
            return {self.name: images[self.i - 1:self.i].numpy()}

    with tempfile.TemporaryDirectory(prefix="edgevit-onnx-int8-") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        save_onnx(model, x, fp32)
        import onnx
        graph = onnx.load(str(fp32)).graph
        with _root_log_level(logging.ERROR):  # its advice to pre-process, per-channel axis notes on 1-d weights
            quantize_static(str(fp32), str(path), Reader(graph.input[0].name), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=getattr(QuantType, cfg["activation_type"]),
                            weight_type=getattr(QuantType, cfg["weight_type"]), reduce_range=cfg["reduce_range"],
                            op_types_to_quantize=op_types)
    strip_onnx(Path(path))  # (quantize_static writes its own doc strings)
    return {"onnx_quantization": {k: cfg[k] for k in ORT_INT8}}


@contextmanager
def _root_log_level(level: int):
    """onnxruntime.quantization logs through the root logger; quiet it for one call."""
    root = logging.getLogger()
    old = root.level
    root.setLevel(level)
    try:
        yield
    finally:
        root.setLevel(old)


# ---- one call: quantize, export, verify -----------------------------------------------------------------
def run_batch(run, images: torch.Tensor) -> torch.Tensor:
    """Outputs of a batch-1 runtime function over every image."""
    return torch.cat([run(images[i:i + 1]).float() for i in range(len(images))])


def export_int8(model: nn.Module, fmt: str, output, images: Optional[torch.Tensor], threads: int = 2,
                prepared: Optional[torch.fx.GraphModule] = None, calibrated: str = "images",
                img_size=None, check: Optional[torch.Tensor] = None, checked_on: str = "") -> Dict[str, object]:
    """Quantize `model` (eval, fused or not) to int8 for `fmt` ("pte"/"onnx"), write `output` atomically and
    check the file in its runtime against the float model on the calibration images.

    `prepared`: a QAT-fine-tuned PT2E graph (fake quantizers already hold their scales): converted as is,
    no calibration; the file is checked against that fake-quantized model (what the run trained and
    validated), on `images` if given, else on 8 random inputs of `img_size`. `check`: the images the file is
    measured on (`calibration_and_check`: ones calibration did not use; default the calibration images), named
    by `checked_on`. Returns the report: bytes, partitions (pte), top-1 agreement and logits SQNR."""
    from ..utils.io import atomic_path
    from .export import FORMAT_RUNTIME, load_file

    if fmt not in QUANT_FORMATS:
        raise UserError(f"int8 export is for {', '.join(QUANT_FORMATS)}, not {fmt!r}", option="format")
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
    report: Dict[str, object] = {"format": fmt, "runtime": FORMAT_RUNTIME[fmt], "output": str(output),
                                 "precision": "int8", "checked_against": "the float model" if prepared is None
                                 else "the fake-quantized QAT model", "img_size": list(x.shape[-2:]),
                                 "calibration": calibrated, "calibration_images": len(images),
                                 "checked_on": checked_on, "check_images": len(measured)}
    with atomic_path(output) as tmp:
        if fmt == "pte":
            if prepared is None:
                quantized = quantize_pt2e(model, x, images)
            else:
                quantized = convert_pt2e_model(prepared)
            report.update(save_pte_int8(quantized, x, tmp))
        else:
            if prepared is not None:
                raise UserError("a quantization-aware checkpoint exports to pte (the XNNPACK quantizer it "
                                "was trained with); ONNX Runtime files are quantized after training",
                                option="format")
            report.update(save_onnx_int8(model, x, tmp, images))
        got = run_batch(load_file(fmt, tmp, threads), measured)
        report.update(agreement(reference, got))
        report["bytes"] = tmp.stat().st_size
    return report
