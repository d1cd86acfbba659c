"""MNN (.mnn): the model's ONNX file (`onnxruntime.save_onnx`) converted by MNN's converter, run by MNN's
Module API on its CPU backend.

The converter is called as the library function the `mnnconvert` script wraps (`_tools.mnnconvert`), never
through that script or `mnnquant`: both import `MNN.tools.utils.log`, which runs `pip install
aliyun-log-python-sdk` into whatever Python is first on PATH and uploads the conversion's details to Alibaba's
log service. It runs in a child process whose working directory is its own temporary folder: the converter
writes the weights to `.__convert_external_data.bin` in the working directory, reads them back and deletes it,
so two conversions in one directory (two exports, two test workers) swap weights and write wrong files. Its
progress (printed from C++) is read only to explain a failure.

The file carries what MNN's format has no field for in its `bizCode` string: `edgevit <precision> 1x3xHxW`
(the input size, and whether the weights are stored in fp16). fp32 files run with MNN's "high" precision; fp16
files (`--fp16` weights) with "low", which on ARMv8.2 CPUs computes in fp16 and on x86 stays fp32 arithmetic
over fp16-stored weights.

int8 files come from MNN's own post-training quantizer (`_tools.mnnquant`, the library behind `quantized.out`),
run in a child process: on a bad input it aborts the process it runs in (std::length_error, double free) instead
of raising. It reads calibration *image files* and applies `(pixel - mean) * normal` itself, so the calibration
batch (already through the model's eval transform) is written as 8-bit PNGs at the input size with a per-channel
affine map that MNN's mean/normal undo (error at most half a step of 1/255 of each channel's range: enough for
range statistics). Its EMA method is the one that works on these graphs (KL crashes in its first pass, ADMM
corrupts its heap, both in MNN 3.6.1). Weights are per-channel symmetric int8, activations per-tensor int8.
The quantizer drops the bizCode; the file is passed through the converter once more (MNN to MNN, which keeps the
int8 weights and scales) to write it back.
"""
from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

from ...models.fused import Forms
from ...utils.quiet import capture_native_output
from .base import ConversionError, Package, Runtime, fp32, half, image_size, int8
from .onnxruntime import save_onnx

REQUIREMENTS = "requirements-edge.txt"
PACKAGE = Package("MNN", "MNN", REQUIREMENTS)
BIZ = "edgevit"
# Opset 20's native Gelu becomes MNN's own GELU kernel, an approximation (max error 4.7e-4 per activation over
# [-6, 6]; the authors' reference logits stay within 1e-4). Opset 18 would spell GELU as Erf and four elementwise
# ops, exact, but MNN's Erf is slow enough to cost more than the fused forms gain (docs/deploy.md, "MNN").
OPSET = 20
WINOGRAD_MEMORY_LEVEL = 3  # MNN's Interpreter::HintMode value (the Python binding takes the number)
# MNN's CPU precision mode for each precision a file holds
MODES = {"fp32": "high", "fp16": "low"}
# MNN's default Winograd units for 3x3 convolutions (up to F(6x6, 3x3)) are off by ~1e-3 of the output's scale in
# fp32 (measured: docs/deploy.md); level 0 keeps the small, accurate units
HINTS = ((WINOGRAD_MEMORY_LEVEL, 0),)


def _convert(source: Path, path: Path, precision: str, source_format: str = "ONNX", hw=None) -> str:
    """MNN's converter on `source` (an ONNX file, or an MNN file of input size `hw` to rewrite); returns its output
    (for the report); a failure is one ConversionError."""
    h, w = hw or _onnx_hw(source)
    argv = ["-f", source_format, "--modelFile", Path(source), "--MNNModel", Path(path),
            "--bizCode", f"{BIZ} {precision} 1x3x{h}x{w}"] + (["--fp16"] if precision == "fp16" else [])
    # (mnnconvert returns True whether or not it converted: the file and its log tell)
    code, text = _tool("mnnconvert", argv)
    if code != 0 or not path.is_file() or "Converted Success" not in text:
        raise conversion_error(text)
    return text


def _tool(name: str, argv) -> Tuple[int, str]:
    """MNN's `_tools.<name>` (the library behind its `mnnconvert`/`mnnquant` scripts) on `argv`, in a child process
    working in a folder of its own (the Paths in `argv` made absolute for it); returns its exit status and output."""
    code = f"import sys, _tools; _tools.{name}(['{name}', *sys.argv[1:]])"
    args = [str(a.resolve()) if isinstance(a, Path) else str(a) for a in argv]
    with tempfile.TemporaryDirectory(prefix="edgevit-mnn-cwd-") as cwd:
        done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, errors="replace",
                              cwd=cwd)
    return done.returncode, done.stdout + done.stderr


def _quantize(fp32: Path, path: Path, images: torch.Tensor, workdir: Path) -> str:
    """MNN's quantizer on `fp32`, calibrated on `images` (N, 3, H, W, normalized), in a child process; returns
    its output; a failure is one ConversionError."""
    from PIL import Image

    folder = workdir / "calibration"
    folder.mkdir()
    a = images.detach().float().numpy()
    lo, hi = a.min(axis=(0, 2, 3)), a.max(axis=(0, 2, 3))
    step = np.maximum(hi - lo, 1e-6) / 255.0  # x = (pixel - mean) * normal with pixel in 0..255
    for i, img in enumerate(a):
        pixels = np.rint((img - lo[:, None, None]) / step[:, None, None]).clip(0, 255).astype(np.uint8)
        Image.fromarray(pixels.transpose(1, 2, 0), "RGB").save(folder / f"{i:04d}.png")
    config = {"format": "RGB", "mean": (-lo / step).tolist(), "normal": step.tolist(),
              "width": int(a.shape[3]), "height": int(a.shape[2]), "path": f"{folder.resolve()}/",
              "used_image_num": len(a), "feature_quantize_method": "EMA", "weight_quantize_method": "MAX_ABS"}
    (workdir / "quant.json").write_text(json.dumps(config))
    status, text = _tool("mnnquant", [Path(fp32), Path(path), Path(workdir) / "quant.json"])
    if status != 0 or not path.is_file() or "Quantize model done" not in text:
        how = f"exit status {status}" if status >= 0 else f"killed by signal {-status}"
        lines = [ln.strip() for ln in text.splitlines() if re.search(r"error|fail|not|what\(\)", ln, re.I)]
        raise ConversionError(f"MNN's quantizer failed ({how}): " + (lines[-1][:200] if lines else "no file written"))
    return text


def conversion_error(text: str) -> ConversionError:
    """One line from the converter's output: the op it does not support (and the node), else its last error."""
    op = re.search(r"(?:not support|Don't support|unsupported)[^\n]*?(?:op|type)[^\w\n]*(\w+)[^\n]*", text, re.I)
    if op:
        return ConversionError(f"MNN's converter cannot convert {op.group(1)}: {op.group(0).strip()[:200]}")
    lines = [ln.strip() for ln in text.splitlines() if re.search(r"error|fail|not", ln, re.I)]
    return ConversionError("MNN's converter failed: " + (lines[-1][:200] if lines else "no file written"))


def _onnx_hw(onnx: Path):
    import onnx as onnx_lib

    dims = onnx_lib.load(str(onnx), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return image_size([d.dim_value for d in dims])


def _save(model: nn.Module, x: torch.Tensor, path: Path, precision: str,
          images: Optional[torch.Tensor] = None) -> Dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="edgevit-mnn-") as tmp:
        onnx = Path(tmp) / "model.onnx"
        save_onnx(model, x, onnx, opset=OPSET)
        if precision != "int8":
            _convert(onnx, Path(path), precision)
        else:
            fp32, int8 = Path(tmp) / "fp32.mnn", Path(tmp) / "int8.mnn"
            _convert(onnx, fp32, "fp32")
            _quantize(fp32, int8, images, Path(tmp))
            _convert(int8, Path(path), "int8", "MNN", image_size(x.shape))  # (the quantizer dropped the bizCode)
    return {"mnn_precision": precision, **mnn_report(path)}


def mnn_report(path: Path) -> Dict[str, object]:
    """The file's ops by kind (MNN's names), with the layout conversions among them (ConvertTensor: between
    MNN's packed NC4HW4 layout and NCHW)."""
    with capture_native_output():
        import MNN.expr as F

        kinds = Counter(v.op_type for v in F.load_as_dict(str(path)).values())
    kinds.pop("Const", None)
    return {"mnn_ops": sum(kinds.values()), "layout_conversions": kinds.get("ConvertTensor", 0),
            "op_counts": dict(kinds.most_common())}


def describe(report: Dict[str, object]) -> str:
    return (f"{report['mnn_ops']} MNN ops, {report['layout_conversions']} of them layout conversions "
            f"(ConvertTensor); weights {report['mnn_precision']}")


def save_mnn(model: nn.Module, x: torch.Tensor, path: Path) -> Dict[str, object]:
    return _save(model, x, path, "fp32")


class HeadInEights(nn.Module):
    """The model with its classifier head (`get_classifier()`, a Linear) padded with zero rows to a multiple of 8
    outputs, the extra outputs sliced off. MNN 3.6.1's int8 kernels on ARM CPUs with i8mm (Cortex-A710 and later
    phone cores) compute a wrong value for each output of a head past its last multiple of 8 (measured in the aarch64
    lane: a 10-class head's last two logits; right on x86 and on cores without i8mm; docs/deploy.md, "On ARM")."""

    def __init__(self, model: nn.Module, multiple: int = 8):
        super().__init__()
        self.model = copy.deepcopy(model)
        head = self.model.get_classifier()
        self.classes = head.out_features
        padded = nn.Linear(head.in_features, self.classes + (-self.classes % multiple), bias=head.bias is not None)
        with torch.no_grad():
            padded.weight.zero_()
            padded.weight[:self.classes] = head.weight
            if head.bias is not None:
                padded.bias.zero_()
                padded.bias[:self.classes] = head.bias
        parent, _, name = next(n for n, m in self.model.named_modules() if m is head).rpartition(".")
        setattr(self.model.get_submodule(parent) if parent else self.model, name, padded)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[..., :self.classes]


def save_mnn_int8(model: nn.Module, x: torch.Tensor, path: Path, images: torch.Tensor) -> Dict[str, object]:
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if isinstance(head, nn.Linear) and head.out_features % 8:
        model = HeadInEights(model)
    return _save(model, x, path, "int8", images)


def save_mnn_fp16(model: nn.Module, x: torch.Tensor, path: Path) -> Dict[str, object]:
    return _save(model, x, path, "fp16")


def file_info(path: Path) -> Dict[str, object]:
    """What the file's bizCode says: precision and input shape (None for an .mnn written elsewhere)."""
    with capture_native_output():  # (importing MNN prints its CPU feature probe)
        import MNN.nn

        info = MNN.nn.load_module_from_file(str(path), [], []).get_info()
    m = re.fullmatch(rf"{BIZ} (\w+) 1x(\d+)x(\d+)x(\d+)", str(info.get("bizCode", "")))
    return {"precision": m.group(1), "input": tuple(int(v) for v in m.groups()[1:])} if m else \
        {"precision": "fp32", "input": None}


def load(path: Path, threads: int = 2):
    info = file_info(path)
    import MNN.expr as F
    import MNN.nn

    config = {"backend": "CPU", "numThread": threads, "precision": MODES.get(info["precision"], "high")}
    with capture_native_output():  # ("MNN use high precision", the CPU feature probe)
        manager = MNN.nn.create_runtime_manager((config,))
        for hint, value in HINTS:
            manager.set_hint(hint, value)
        net = MNN.nn.load_module_from_file(str(path), [], [], runtime_manager=manager)

    def run(*inputs) -> list:
        outs = net.forward([F.const(np.ascontiguousarray(a), list(a.shape), F.NCHW) for a in inputs])
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        # outputs of convolutions come back in MNN's packed NC4HW4 layout: converted to NCHW
        return [np.array(F.convert(o, F.NCHW).read() if o.data_format == F.NC4HW4 else o.read()) for o in outs]
    return run


def aarch64_settings(path: Path, defaults: str) -> Dict[str, object]:
    """The lane's settings (`Runtime.worker`): `load`'s precision mode and hints, or MNN's own defaults (precision
    "normal", its Winograd units)."""
    if defaults == "runtime":
        return {"config": {}, "hints": []}
    return {"config": {"precision": MODES.get(file_info(path)["precision"], "high")}, "hints": [list(h) for h in HINTS]}


def input_size(path: Path):
    shape = file_info(path)["input"]
    return (shape[1], shape[2]) if shape else None


RUNTIME = Runtime(
    name="mnn", title="MNN (.mnn, MNN's converter from ONNX, checked in MNN's CPU backend)", format="mnn",
    suffixes=(".mnn",), packages=(PACKAGE,), export_packages=(Package("onnx"), Package("onnxscript")),
    forms=Forms(qkv="merged", ln="native", sample="pool"),
    writers={
        "fp32": fp32(save_mnn),
        "int8": int8(save_mnn_int8, "MNN's post-training quantizer (EMA activation ranges, per-channel weights)"),
        "fp16": half(save_mnn_fp16, "fp16 weights, MNN's low precision (fp16 arithmetic on ARMv8.2)")},
    load=load, input_size=input_size, describe=describe,
    input_layouts=("NCHW", "NHWC"),  # (its loader feeds float32: no uint8 input)
    worker=aarch64_settings)
