"""OpenVINO (.xml + .bin): the model's ONNX file (the ONNX Runtime exporter, `onnxruntime.save_onnx`) read by
OpenVINO's ONNX front end and saved as IR with fp32 weights; run by OpenVINO's CPU plugin.

The conversion goes through `openvino.Core.read_model`, not `openvino.convert_model`: the two give the same graph
here, and the latter (like NNCF) reports usage to Google Analytics through `openvino-telemetry` unless an opt-out
file exists. `make` installs openvino and nncf without that package (requirements-edge.txt), and neither needs it.

Precision is a property of how the CPU plugin compiles the graph, not of the weights: its default on a CPU with
bf16 instructions (AVX-512 BF16, AMX) is bf16. Every file says its precision in its `rt_info`
(`edgevit/precision`), and `load` compiles it so: fp32 files in f32, `bf16` files with the bf16 hint. int8 is
NNCF's post-training quantization of the fp32 IR (`ov_int8` below), calibrated on the given images.
"""
from __future__ import annotations

import contextlib
import io
import logging
import statistics
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn as nn

from ...errors import UserError
from ...models.fused import Forms
from .base import Package, Runtime, fp32, half, image_size, int8
from .onnxruntime import save_onnx

REQUIREMENTS = "requirements-edge.txt"
PACKAGE = Package("openvino", "openvino", REQUIREMENTS)
NNCF = Package("nncf", "nncf", REQUIREMENTS)
PRECISION_KEY = ["edgevit", "precision"]
# the CPU plugin's inference precision for each precision a file can hold
HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # (int8: the layers outside the int8 ones run in f32)
# NNCF's settings for the int8 file: symmetric int8 activations and weights (PERFORMANCE), and the transformer
# model type, which leaves softmax, LayerNorm and the attention's scaling in float; docs/deploy.md has the
# measurements behind them
# overflow_fix ENABLE: weights in 7 bits, so that u8 x s8 products summed in pairs fit int16. x86 CPUs without VNNI
# (AVX2-only, e.g. AMD Zen 3, many Atom/Celeron edge boxes) compute int8 convolutions with vpmaddubsw, which
# saturates at int16; NNCF's default fixes only the first layer, and such a file, made anywhere, runs at ~4 dB SQNR
# and chance-level top-1 there (measured: docs/deploy.md, "OpenVINO int8 on CPUs without VNNI"). With VNNI the
# fix is not needed and costs the weights one bit of resolution.
OV_INT8 = {"preset": "PERFORMANCE", "model_type": "TRANSFORMER", "overflow_fix": "ENABLE"}


def companions(path: Path):
    return (Path(path).with_suffix(".bin"),)


def _core():
    PACKAGE.require()
    import openvino as ov
    return ov.Core()


def _read_onnx(model: nn.Module, x: torch.Tensor):
    """`model` at `x` as an OpenVINO model, through its ONNX file."""
    with tempfile.TemporaryDirectory(prefix="edgevit-openvino-") as tmp:
        onnx = Path(tmp) / "model.onnx"
        save_onnx(model, x, onnx)
        return _core().read_model(str(onnx))


def _save(ov_model, path: Path, precision: str) -> Dict[str, object]:
    import openvino as ov
    ov_model.set_rt_info(precision, PRECISION_KEY)
    ov.save_model(ov_model, str(path), compress_to_fp16=False)  # (its default stores fp16 weights)
    return openvino_report(path)


def save_openvino(model: nn.Module, x: torch.Tensor, path: Path) -> Dict[str, object]:
    return _save(_read_onnx(model, x), path, "fp32")


def save_openvino_bf16(model: nn.Module, x: torch.Tensor, path: Path) -> Dict[str, object]:
    """The fp32 IR, marked to run with the CPU plugin's bf16 inference precision (weights stay fp32 in the file:
    the plugin converts them when it compiles); one error where the CPU has no bf16 instructions (the plugin
    would run f32 and say nothing), so that a bf16 figure is never an f32 one: `check_cpu_bf16`"""
    check_cpu_bf16()
    return _save(_read_onnx(model, x), path, "bf16")


def int8_form(model: nn.Module) -> nn.Module:
    """The model in the form its int8 file is made of: a fused EdgeViT's LocalProp as the transposed conv. The
    fp32 form's depth-to-space (a per-channel 1x1 conv to C*r*r channels) is rejected by the CPU plugin once NNCF
    quantized it (its per-channel scales do not match the grouped conv's output channels: "Check
    'any_of(scale.size(), OC, 1U)' failed"); a copy is switched, the caller's model is left as it is."""
    import copy

    from ...models.edgevit import EdgeViT
    from ..forms import forms_of, is_fused, set_forms

    edgevits = [m for m in model.modules() if isinstance(m, EdgeViT)]
    if not edgevits or not is_fused(model) or forms_of(edgevits[0]).prop == "deconv":
        return model
    return set_forms(copy.deepcopy(model), forms_of(edgevits[0]).replace(prop="deconv"))


def save_openvino_int8(model: nn.Module, x: torch.Tensor, path: Path, images: torch.Tensor,
                       **options) -> Dict[str, object]:
    """NNCF post-training quantization of the fp32 IR over `images` (N, 3, H, W); `options` override OV_INT8."""
    NNCF.require()
    import nncf

    cfg = {**OV_INT8, **options}
    ov_model = _read_onnx(int8_form(model), x)
    data = nncf.Dataset([images[i:i + 1].numpy() for i in range(len(images))])
    nncf.set_log_level(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # its progress bars
        quantized = nncf.quantize(ov_model, data, subset_size=len(images),
                                  preset=getattr(nncf.QuantizationPreset, cfg["preset"]),
                                  model_type=getattr(nncf.ModelType, cfg["model_type"]) if cfg["model_type"] else None,
                                  advanced_parameters=nncf.AdvancedQuantizationParameters(
                                      overflow_fix=getattr(nncf.OverflowFix, cfg["overflow_fix"])))
    report = _save(quantized, path, "int8")
    report["nncf_quantization"] = cfg
    return report


def _precision_of(ov_model) -> str:
    """The precision the file says; an IR written elsewhere is fp32 (not the plugin's bf16 default)."""
    return ov_model.get_rt_info(PRECISION_KEY).astype(str) if ov_model.has_rt_info(PRECISION_KEY) else "fp32"


def _config(ov_model) -> Dict[str, object]:
    """The CPU plugin's settings for a file, threads aside: one stream, latency, the file's own precision (without
    the hint the plugin picks its own: bf16 on x86 CPUs with AMX, f16 on ARM)."""
    return {"NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": HINTS.get(_precision_of(ov_model), "f32")}


def aarch64_settings(path: Path, defaults: str) -> Dict[str, object]:
    """The lane's settings (`Runtime.worker`): `compiled`'s, or the plugin's own (its ARM default precision)."""
    return {"config": _config(_core().read_model(str(path))) if defaults == "package" else
            {"NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}}


def compiled(path: Path, threads: int = 2, profiling: bool = False):
    """The file compiled for the CPU: `threads` threads, one stream, the file's own precision."""
    core = _core()
    ov_model = core.read_model(str(path))
    config = {"INFERENCE_NUM_THREADS": threads, **_config(ov_model)}
    if profiling:
        config["PERF_COUNT"] = True
    return core.compile_model(ov_model, "CPU", config)


def load(path: Path, threads: int = 2):
    model = compiled(path, threads)
    request = model.create_infer_request()
    outputs = model.outputs

    def run(*inputs) -> list:
        result = request.infer(list(inputs))
        return [np.array(result[o]) for o in outputs]
    return run


def input_size(path: Path):
    shape = _core().read_model(str(path)).inputs[0].get_partial_shape()
    return image_size([d.get_length() for d in shape]) if shape.is_static else None


def openvino_report(path: Path) -> Dict[str, object]:
    """The compiled graph the CPU plugin runs (after its fusions): its layers by type, and by the precision each
    runs in (where bf16 or int8 stops: the layers left in f32)."""
    runtime = compiled(path, 1).get_runtime_model()
    layers = [(op.get_rt_info()["layerType"].value, op.get_rt_info()["runtimePrecision"].value)
              for op in runtime.get_ordered_ops()]
    layers = [(kind, precision) for kind, precision in layers if kind not in ("Const", "Input", "Output")]
    kinds = Counter(kind for kind, _ in layers)
    return {"openvino_layers": len(layers), "reorders": kinds.get("Reorder", 0),
            "layer_counts": dict(kinds.most_common()),
            "layer_precisions": dict(Counter(precision for _, precision in layers).most_common())}


def describe(report: Dict[str, object]) -> str:
    precisions = ", ".join(f"{k} x{v}" for k, v in (report.get("layer_precisions") or {}).items())
    return (f"{report['openvino_layers']} layers in the CPU plugin's compiled graph, {report['reorders']} of them "
            f"layout reorders; by precision: {precisions}")


def profile(path: Path, x: torch.Tensor, threads: int, runs: int, warmup: int, desc: str = "profiled") -> List[dict]:
    """The CPU plugin's per-layer counters (PERF_COUNT): one row per executed layer, its median time."""
    from tqdm import tqdm

    model = compiled(path, threads, profiling=True)
    request = model.create_infer_request()
    per_layer: Dict[tuple, list] = {}
    for i in tqdm(range(warmup + runs), desc=desc, file=sys.stderr):
        request.infer([x.numpy()])
        if i < warmup:
            continue
        for info in request.get_profiling_info():
            if info.status == info.Status.EXECUTED:
                per_layer.setdefault((info.node_type, info.node_name, info.exec_type), []).append(
                    info.real_time.total_seconds() * 1e3)
    return [{"op": name, "kind": f"{kind} ({exec_type})", "median_ms": statistics.median(ts)}
            for (kind, name, exec_type), ts in per_layer.items()]


def misread(path: Path) -> Optional[str]:
    """A truncated or foreign weights file: the .xml's constants read up to an offset the .bin does not reach."""
    import xml.etree.ElementTree as ET

    weights = Path(path).with_suffix(".bin")
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError):
        return "not an OpenVINO IR (.xml) file"
    ends = [int(d.get("offset")) + int(d.get("size")) for d in root.iter("data")
            if (d.get("offset") or "").isdigit() and (d.get("size") or "").isdigit()]
    have = weights.stat().st_size
    if ends and max(ends) > have:
        return (f"its weights file {weights.name} holds {have} bytes, but the .xml reads up to byte {max(ends)}: "
                "truncated, or another export's; export it again")
    return None


def cpu_lacks(precision: str) -> Optional[str]:
    """Why this CPU cannot run `precision` in OpenVINO's CPU plugin (bf16 without bf16 instructions), or None."""
    if precision != "bf16":
        return None
    caps = _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return None if "BF16" in caps else f"this CPU has no bf16 instructions (OpenVINO's capabilities: {', '.join(caps)})"


def check_cpu_bf16() -> None:
    """One UserError where the CPU has no bf16 instructions: the plugin would silently run f32."""
    why = cpu_lacks("bf16")
    if why:
        raise UserError(why, option="precision")


def write_metadata(path: Path, text: str) -> None:
    """The metadata as the IR's rt_info entry edgevit/metadata beside edgevit/precision (OpenVINO's place for a
    model's runtime information; `Model.get_rt_info(["edgevit", "metadata"])` reads it), written into the .xml
    (the weights are untouched)."""
    import xml.etree.ElementTree as ET

    tree = ET.parse(path)
    net = tree.getroot()
    info = net.find("rt_info")
    info = ET.SubElement(net, "rt_info") if info is None else info
    ours = info.find(PRECISION_KEY[0])
    ours = ET.SubElement(info, PRECISION_KEY[0]) if ours is None else ours
    for old in ours.findall("metadata"):
        ours.remove(old)
    ET.SubElement(ours, "metadata", value=text)
    tree.write(path, encoding="utf-8", xml_declaration=True)


def read_metadata(path: Path) -> Optional[str]:
    import xml.etree.ElementTree as ET

    try:
        node = ET.parse(path).getroot().find(f"rt_info/{PRECISION_KEY[0]}/metadata")
    except ET.ParseError:
        return None
    return None if node is None else node.get("value")


RUNTIME = Runtime(
    name="openvino", title="OpenVINO IR (.xml + .bin, checked in OpenVINO's CPU plugin)", format="openvino",
    suffixes=(".xml",), packages=(PACKAGE,),
    export_packages=(Package("onnx"), Package("onnxscript")),
    forms=Forms(qkv="split", ln="conv", sample="slice", prop="d2s"),
    writers={
        "fp32": fp32(save_openvino),
        "int8": int8(save_openvino_int8, "NNCF post-training quantization"),
        "bf16": half(save_openvino_bf16, "the CPU plugin's bf16 inference precision")},
    load=load, input_size=input_size, cpu_lacks=cpu_lacks,
    profile=profile, describe=describe, misread=misread, companions=companions, write_metadata=write_metadata,
    read_metadata=read_metadata, input_layouts=("NCHW", "NHWC"), input_dtypes=("float32", "uint8"),
    worker=aarch64_settings)
