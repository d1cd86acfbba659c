"""ncnn (.ncnn.param + .ncnn.bin): the model's ONNX file (`onnxruntime.save_onnx`) converted by pnnx to ncnn's
layer graph, run by ncnn's Python binding on the CPU.

pnnx maps each ONNX op to an ncnn layer where ncnn has one and keeps the rest under pnnx's own names
(`Tensor.slice`, `Tensor.reshape`, ...), which ncnn cannot load: such a graph is refused in one line naming the
ops (the release EdgeViT's strided delegate slicing is one; the fused forms avoid it).

Precision: pnnx's default stores fp16 weights and ncnn's default computes in fp16 where the CPU can (ARMv8.2
phones; on x86, CPUs with AVX-512 FP16). An fp32 file here is fp32 weights (`fp16=0`) and `load` turns ncnn's
fp16/bf16 options off for it; an fp16 file (`fp16=1`) runs with them on. The file itself carries what a phone must
keep in fp32 (per-layer feature masks, `MASKS`), so an app that leaves ncnn's options as they are gets what was
checked. Which precision a file is, its weights say (ncnn's per-blob storage tag). The input shape is written into the
graph's Input layer (`0=W 1=H 2=C`), where ncnn's format keeps it.
"""
from __future__ import annotations

import re
import shutil
import struct
import subprocess
import tempfile
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

from ...models.fused import Forms
from .base import ConversionError, Package, Runtime, fp32, half, image_size
from .onnxruntime import save_onnx

REQUIREMENTS = "requirements-edge.txt"
PACKAGE = Package("ncnn", "ncnn", REQUIREMENTS)
PNNX = Package("pnnx", "pnnx", REQUIREMENTS)
FP16_TAG = 0x01306B47  # ncnn's tag before a weight blob stored as fp16 (fp32 blobs: 0)


def companions(path: Path) -> Tuple[Path, ...]:
    name = Path(path).name
    return (Path(path).with_name(name[:-len(".param")] + ".bin"),) if name.endswith(".param") else ()


def _graph(param: Path) -> List[List[str]]:
    """The layer lines of an ncnn .param file: [type, name, n_in, n_out, blobs..., params...]."""
    lines = Path(param).read_text().splitlines()
    if not lines or lines[0].strip() != "7767517":
        raise ValueError(f"{param}: not an ncnn param file (no 7767517 magic)")
    return [ln.split() for ln in lines[2:] if ln.strip()]


def _io_blobs(layers: List[List[str]]) -> Tuple[List[str], List[str]]:
    """The graph's input blobs (its Input layers') and output blobs (produced, never read), in order."""
    inputs = [layer[1] for layer in layers if layer[0] == "Input"]
    read, made = set(), []
    for layer in layers:
        n_in, n_out = int(layer[2]), int(layer[3])
        read.update(layer[4:4 + n_in])
        made += layer[4 + n_in:4 + n_in + n_out]
    outputs = [b for b in made if b not in read]
    if all(re.fullmatch(r"out\d+", b) for b in outputs):  # pnnx's names, in the ONNX graph's output order
        outputs.sort(key=lambda b: int(b[3:]))
    return inputs, outputs


def _pnnx(onnx: Path, param: Path, bin_: Path, shape, precision: str) -> None:
    PNNX.require()
    import pnnx

    work = onnx.parent
    argv = [pnnx.EXEC_PATH, str(onnx), f"inputshape=[{','.join(map(str, shape))}]",
            f"fp16={int(precision == 'fp16')}", f"ncnnparam={param}", f"ncnnbin={bin_}"]
    argv += [f"{k}={work / v}" for k, v in (("pnnxparam", "m.pnnx.param"), ("pnnxbin", "m.pnnx.bin"),
                                           ("pnnxpy", "m_pnnx.py"), ("pnnxonnx", "m.pnnx.onnx"),
                                           ("ncnnpy", "m_ncnn.py"))]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=work)
    if done.returncode != 0 or not param.is_file() or not bin_.is_file():
        last = [ln for ln in (done.stderr + done.stdout).splitlines() if ln.strip()][-1:] or ["no file written"]
        raise ConversionError(f"pnnx cannot convert the model to ncnn: {last[0][:200]}")


def _pnnx_shapes(pnnx_param: Path) -> Dict[str, Tuple[Optional[tuple], Optional[tuple]]]:
    """Layer name -> (first input shape, first output shape) from pnnx's own graph (`#12=(1,36,16,16)f32`)."""
    shapes = {}
    for ln in Path(pnnx_param).read_text().splitlines()[2:]:
        parts = ln.split()
        if len(parts) < 4:
            continue
        n_in, n_out = int(parts[2]), int(parts[3])
        blobs = parts[4:4 + n_in + n_out]
        known = dict(re.findall(r"#(\S+?)=\(([\d,]*)\)", ln))

        def shape(blob):
            return tuple(int(d) for d in known[blob].split(",") if d) if blob in known else None
        shapes[parts[1]] = (shape(blobs[0]) if n_in else None, shape(blobs[n_in]) if n_out else None)
    return shapes


def _modules_of(unknown: List[List[str]], shapes: Dict[str, tuple], model: nn.Module, x: torch.Tensor) -> List[str]:
    """The PyTorch modules behind pnnx layers ncnn lacks: the ONNX nodes of the same kind (pnnx's `Tensor.slice`
    is ONNX's Slice) that read the layer's input or write its output, by shape (pnnx renames every node and
    merges some, e.g. two one-axis Slices into one two-axis `Tensor.slice`), and their modules' paths and types."""
    from .onnxruntime import onnx_node_modules

    nodes = onnx_node_modules(model, x)
    found = []
    for layer in unknown:
        kind = layer[0].rsplit(".", 1)[-1].replace("_", "").lower()
        s_in, s_out = shapes.get(layer[1], (None, None))
        hits = [n["module"] for n in nodes if n["op_type"].lower() == kind and n["module"] and
                ((s_in and n["inputs"] and n["inputs"][0] == s_in) or (s_out and n["outputs"][0] == s_out))]
        for path in dict.fromkeys(hits):
            if path not in found:
                found.append(path)
    return [f"{p} ({type(model.get_submodule(p)).__name__})" for p in found]


def _check_layers(param: Path, pnnx_param: Path, model: nn.Module, x: torch.Tensor) -> Dict[str, object]:
    """ncnn has a layer for every op pnnx wrote (`param`), or one ConversionError naming the ops it lacks and the
    PyTorch modules of `model` they come from (found through pnnx's graph `pnnx_param`); the op report."""
    import ncnn

    layers = _graph(param)
    kinds = Counter(layer[0] for layer in layers)
    unknown = {k: n for k, n in kinds.items() if "." in k or ncnn.layer_to_index(k) < 0}
    if unknown:
        odd = [layer for layer in layers if layer[0] in unknown]
        where = f"layers {', '.join(layer[1] for layer in odd[:3])}" + ("..." if len(odd) > 3 else "")
        if pnnx_param.is_file():
            modules = _modules_of(odd, _pnnx_shapes(pnnx_param), model, x)
            if modules:
                where = "from " + ", ".join(modules[:3]) + (f" and {len(modules) - 3} more" if len(modules) > 3
                                                            else "")
        raise ConversionError("ncnn has no layer for " + ", ".join(f"{k} (x{n})" for k, n in unknown.items())
                              + f", which pnnx left in the graph ({where})")
    return {"ncnn_layers": len(layers), "permutes": kinds.get("Permute", 0), "op_counts": dict(kinds.most_common())}


def _with_input_shape(param: Path, shape) -> None:
    """Write the input's W, H, C into the Input layer (ncnn's own place for it)."""
    lines = param.read_text().splitlines()
    for i, ln in enumerate(lines):
        if ln.startswith("Input") and len(ln.split()) == 5:
            lines[i] = f"{ln} 0={shape[3]} 1={shape[2]} 2={shape[1]}"
            break
    param.write_text("\n".join(lines) + "\n")


# ncnn's per-layer feature mask (param id 31 of any layer, ncnn's layer.h): bits that turn an option off for that
# layer whatever the app sets: 1 no fp16 arithmetic, 2 no fp16 storage, 4 no bf16 storage
FEATMASK = 31
NO_FP16_ARITHMETIC, NO_FP16_STORAGE, NO_BF16_STORAGE = 1, 2, 4
# ncnn's defaults compute in fp16 on every CPU with fp16 arithmetic (phones since ARMv8.2), which an fp32 file must
# not; the fp16 file keeps fp16 storage, but its convolutions and fully connected layers, where fp16 accumulation
# loses most, compute in fp32 (masking fp16 *storage* on only some layers breaks ncnn's layout conversions). The
# forms and their accuracy, measured in the aarch64 lane: docs/deploy.md, "On ARM".
MASKS = {"fp32": (None, NO_FP16_ARITHMETIC | NO_FP16_STORAGE | NO_BF16_STORAGE),
         "fp16": (("Convolution", "ConvolutionDepthWise", "DeconvolutionDepthWise", "InnerProduct"),
                  NO_FP16_ARITHMETIC)}


def _with_feature_masks(param: Path, precision: str) -> None:
    """Write the precision's per-layer feature masks (`MASKS`) into the graph, so that the file computes as checked
    on a phone whatever options its app leaves on."""
    kinds, mask = MASKS[precision]
    lines = param.read_text().splitlines()
    for i, ln in enumerate(lines[2:], start=2):
        kind = ln.split()[0] if ln.strip() else ""
        if kind and kind != "Input" and (kinds is None or kind in kinds):
            lines[i] = f"{ln} {FEATMASK}={mask}"
    param.write_text("\n".join(lines) + "\n")


def feature_masks(path: Path) -> Dict[str, int]:
    """How many layers of the file carry each feature mask value (`MASKS`), by value."""
    found = Counter()
    for layer in _graph(path):
        for p in layer[4 + int(layer[2]) + int(layer[3]):]:
            if p.startswith(f"{FEATMASK}="):
                found[p.split("=", 1)[1]] += 1
    return dict(found)


def _save(model: nn.Module, x: torch.Tensor, path: Path, precision: str) -> Dict[str, object]:
    path = Path(path)
    (bin_,) = companions(path)
    with tempfile.TemporaryDirectory(prefix="edgevit-ncnn-") as tmp:
        onnx = Path(tmp) / "model.onnx"
        save_onnx(model, x, onnx)
        _pnnx(onnx, Path(tmp) / "m.ncnn.param", Path(tmp) / "m.ncnn.bin", tuple(x.shape), precision)
        report = _check_layers(Path(tmp) / "m.ncnn.param", Path(tmp) / "m.pnnx.param", model, x)
        _with_input_shape(Path(tmp) / "m.ncnn.param", tuple(x.shape))
        _with_feature_masks(Path(tmp) / "m.ncnn.param", precision)
        shutil.move(Path(tmp) / "m.ncnn.param", path)
        shutil.move(Path(tmp) / "m.ncnn.bin", bin_)
    return {**report, "ncnn_weights": precision, "ncnn_feature_masks": feature_masks(path)}


def save_ncnn(model: nn.Module, x: torch.Tensor, path: Path) -> Dict[str, object]:
    return _save(model, x, path, "fp32")


def save_ncnn_fp16(model: nn.Module, x: torch.Tensor, path: Path) -> Dict[str, object]:
    return _save(model, x, path, "fp16")


def weights_precision(path: Path) -> str:
    """fp16 or fp32, from the storage tag of the file's first weight blob."""
    (bin_,) = companions(path)
    with open(bin_, "rb") as f:
        head = f.read(4)
    return "fp16" if len(head) == 4 and struct.unpack("<I", head)[0] == FP16_TAG else "fp32"


def load_options(path: Path) -> Dict[str, bool]:
    """The ncnn options `load` sets for a file: fp16 storage and arithmetic as the file's weights are, no bf16."""
    fp16 = weights_precision(path) == "fp16"
    return {"use_fp16_packed": fp16, "use_fp16_storage": fp16, "use_fp16_arithmetic": fp16, "use_bf16_storage": False}


def aarch64_settings(path: Path, defaults: str) -> Dict[str, object]:
    """The lane's settings (`Runtime.worker`): the graph's blobs, and `load`'s options or ncnn's own defaults
    (fp16 storage and arithmetic on wherever the CPU has them: every phone since ARMv8.2)."""
    inputs, outputs = _io_blobs(_graph(path))
    return {"bin": str(companions(path)[0]), "inputs": inputs, "outputs": outputs,
            "opt": load_options(path) if defaults == "package" else {}}


def load(path: Path, threads: int = 2):
    import ncnn

    path = Path(path)
    (bin_,) = companions(path)
    inputs, outputs = _io_blobs(_graph(path))
    net = ncnn.Net()
    net.opt.num_threads = threads
    for key, value in load_options(path).items():
        setattr(net.opt, key, value)
    if net.load_param(str(path)) != 0 or net.load_model(str(bin_)) != 0:
        raise ValueError(f"ncnn could not load {path.name} with {bin_.name}")

    def run(*arrays) -> list:
        with net.create_extractor() as ex:
            for name, a in zip(inputs, arrays):
                ex.input(name, ncnn.Mat(np.ascontiguousarray(a[0])).clone())  # (ncnn's Mat has no batch axis)
            outs = []
            for name in outputs:
                rc, mat = ex.extract(name)
                if rc != 0:
                    raise RuntimeError(f"ncnn could not compute {name} of {path.name}")
                outs.append(np.array(mat)[None])
        return outs
    return run


def input_size(path: Path):
    for layer in _graph(path):
        if layer[0] == "Input":
            params = dict(p.split("=", 1) for p in layer[5:] if "=" in p)
            if not {"0", "1", "2"} <= set(params):
                return None
            return image_size([1, int(params["2"]), int(params["1"]), int(params["0"])])  # (c, h, w: NCHW or NHWC)
    return None


def misread(path: Path) -> Optional[str]:
    head = Path(path).read_bytes()[:16]
    if not re.match(rb"\s*7767517", head):
        return "not an ncnn param file (it does not start with ncnn's 7767517 magic)"
    return None


def describe(report: Dict[str, object]) -> str:
    return (f"{report['ncnn_layers']} ncnn layers, {report['permutes']} of them Permute; "
            f"weights {report['ncnn_weights']}")


RUNTIME = Runtime(
    name="ncnn", title="ncnn (.ncnn.param + .ncnn.bin, pnnx from ONNX, checked in ncnn)", format="ncnn",
    suffixes=(".ncnn.param", ".param"), packages=(PACKAGE,), export_packages=(PNNX, Package("onnx"),
                                                                             Package("onnxscript")),
    forms=Forms(qkv="merged", ln="native", sample="pool"),
    writers={"fp32": fp32(save_ncnn), "fp16": half(save_ncnn_fp16, "fp16 weights and ncnn's fp16 storage/arithmetic")},
    load=load, input_size=input_size, describe=describe, misread=misread, companions=companions,
    constant_outputs=False,  # (pnnx drops a constant output from the graph)
    input_layouts=("NCHW", "NHWC"),  # (its loader feeds float32: no uint8 input)
    worker=aarch64_settings)
