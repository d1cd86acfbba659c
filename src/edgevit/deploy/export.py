"""Export a (fused) model to ExecuTorch (.pte, XNNPACK), ONNX, LiteRT (.tflite), TorchScript lite (.ptl) or
TorchScript, then run the file in its own runtime and compare with PyTorch.

Each format is written through the maintained exporter (torch.export + ExecuTorch's XNNPACK partitioner,
torch.onnx, litert-torch, torch.jit + optimize_for_mobile); this module only chains them and checks the result.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn

from ..utils.images import size_hw
from ..utils.io import atomic_path
from ..utils.quiet import filter_native_stderr
from ..errors import MissingDependencyError, UserError

FORMATS = ("pte", "onnx", "tflite", "ptl", "torchscript")
FORMAT_RUNTIME = {"pte": "executorch", "onnx": "onnxruntime", "tflite": "litert", "ptl": "ptl",
                  "torchscript": "torchscript"}
TOLERANCE = 1e-3


# The Python package each runtime needs (named in the ImportError when missing).
RUNTIME_PACKAGES = {"eager": "torch", "torchscript": "torch", "ptl": "torch", "onnxruntime": "onnxruntime",
                    "executorch": "executorch", "litert": "ai_edge_litert"}
# import name -> what to pip install; LiteRT is an optional extra (requirements-litert.txt, installed by `make`)
_PIP_NAMES = {"ai_edge_litert": "ai-edge-litert", "litert_torch": "litert-torch"}
_OPTIONAL = {"ai_edge_litert": "requirements-litert.txt", "litert_torch": "requirements-litert.txt"}


def require_module(package: str) -> None:
    """ImportError naming the package when it is not installed."""
    import importlib.util
    if importlib.util.find_spec(package) is None:
        pip = _PIP_NAMES.get(package, package)
        where = _OPTIONAL.get(package, "requirements.txt")
        raise MissingDependencyError(f"this needs the Python package {package!r}: pip install {pip} "
                                     f"(pinned in {where})")


def require_runtime(runtime: str) -> None:
    require_module(RUNTIME_PACKAGES[runtime])


# Python packages that write a format, beyond its runtime's
EXPORTER_PACKAGES = {"tflite": ("litert_torch",)}


def require_format(fmt: str) -> None:
    """The runtime and exporter packages `fmt` needs, checked before any work (one line naming the missing one)."""
    require_runtime(FORMAT_RUNTIME[fmt])
    for package in EXPORTER_PACKAGES.get(fmt, ()):
        require_module(package)


# ---- what a shipped file carries ----------------------------------------------------------------
# An app ships the exported file: it must not carry the exporting machine's paths (the virtual environment, the
# user's directories). The exporters record them as debugging aids: TorchScript's *.debug_pkl (source ranges
# with file names, per code file), the ONNX exporter's per-node metadata (stack traces, FX node names, module
# paths) and doc strings. The graphs, their op and node names, and the model's own metadata stay.
def strip_torch_archive(path: Path) -> None:
    """Rewrite a TorchScript / lite-interpreter archive without its *.debug_pkl records (with torch's own zip
    reader and writer, which keep the record alignment torch needs); loading and outputs are unchanged."""
    from ..utils.io import require_room

    require_room(path, path.stat().st_size)  # torch's writer aborts the process (a C++ terminate) on a full disk
    reader = torch._C.PyTorchFileReader(str(path))
    tmp = path.with_name(path.name + ".strip")
    try:
        writer = torch._C.PyTorchFileWriter(str(tmp))
        for name in reader.get_all_records():
            if name.endswith(".debug_pkl") or name in ("version", ".data/version"):  # (the writer adds the version)
                continue
            data = reader.get_record(name)
            writer.write_record(name, data, len(data))
        writer.write_end_of_file()
        del writer
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def strip_onnx(path: Path) -> None:
    """Drop every node's metadata_props and doc strings (graph, nodes, values, functions) from an ONNX file."""
    import onnx

    m = onnx.load(str(path))

    def clean(graph) -> None:
        graph.doc_string = ""
        for item in (*graph.node, *graph.input, *graph.output, *graph.value_info, *graph.initializer):
            if hasattr(item, "metadata_props"):
                del item.metadata_props[:]
            if hasattr(item, "doc_string"):
                item.doc_string = ""
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("g"):
                    clean(attr.g)
                for g in attr.graphs:
                    clean(g)
        if hasattr(graph, "metadata_props"):
            del graph.metadata_props[:]

    clean(m.graph)
    m.doc_string = ""
    for f in m.functions:
        f.doc_string = ""
        del f.metadata_props[:]
        for node in f.node:
            del node.metadata_props[:]
            node.doc_string = ""
    onnx.save(m, str(path))


# ---- TorchScript / lite interpreter --------------------------------------------------------------
def _weights_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def save_torchscript(model: nn.Module, x: torch.Tensor, path: Path) -> None:
    from ..utils.io import require_room

    require_room(path, 2 * _weights_bytes(model))  # (the file, then its stripped copy; torch's writer aborts)
    with torch.no_grad():
        traced = torch.jit.freeze(torch.jit.trace(model.eval(), x, check_trace=False))
    torch.jit.save(traced, str(path))
    strip_torch_archive(path)


def save_ptl(model: nn.Module, x: torch.Tensor, path: Path) -> Dict[str, object]:
    """The paper's runtime: trace -> optimize_for_mobile -> lite-interpreter bytecode.

    optimize_for_mobile needs a torch built with USE_XNNPACK=1; the x86 CPU wheels of torch 2.14 are not
    ("Mobile optimization only available with XNNPACK at the moment"), so there the traced graph is
    frozen instead (constants folded, no XNNPACK prepacking) and saved for the same lite interpreter."""
    from torch.utils.mobile_optimizer import optimize_for_mobile

    from ..utils.io import require_room

    require_room(path, 2 * _weights_bytes(model))  # (the file, then its stripped copy; torch's writer aborts)
    with torch.no_grad():
        traced = torch.jit.trace(model.eval(), x, check_trace=False)
        try:
            optimize_for_mobile(traced)._save_for_lite_interpreter(str(path))
            optimized = True
        except RuntimeError as e:
            if "XNNPACK is not enabled" not in str(e):
                raise
            torch.jit.freeze(traced)._save_for_lite_interpreter(str(path))
            optimized = False
    strip_torch_archive(path)
    return {"mobile_optimized": optimized}


def load_ptl(path: Path):
    from torch.jit.mobile import _load_for_lite_interpreter
    return _load_for_lite_interpreter(str(path))


# ---- ONNX ----------------------------------------------------------------------------------------
def save_onnx(model: nn.Module, x: torch.Tensor, path: Path, opset: int = 20) -> None:
    """Opset 20 has a native Gelu op: ONNX Runtime runs it as one kernel, where opset 18 spells it as five
    elementwise ops (Div, Erf, Add, Mul, Mul). Measured: EdgeViT-XXS 11.1 vs 12.9 ms (fused), 12.4 vs
    13.9 ms (release graph) on the 2-core VM; every bench model exports and checks at 20."""
    require_module("onnx")
    with torch.no_grad():
        # the dynamo exporter (torch's default) with constant folding; one file, weights embedded
        prog = torch.onnx.export(model.eval(), (x,), dynamo=True, opset_version=opset, optimize=True,
                                 verbose=False)
        prog.save(str(path), external_data=False)
    strip_onnx(path)


def session_options(threads: int = 2):
    """The ONNX Runtime session options every EdgeViT session uses (bench, export check, profiling)."""
    require_module("onnxruntime")
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    # no busy-waiting between ops: spinning threads only burn the cores that a phone (or a shared
    # machine) needs for the other thread; it changes no result
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def onnx_session(path: Path, threads: int = 2):
    import onnxruntime as ort
    return ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])


# ---- ExecuTorch + XNNPACK ------------------------------------------------------------------------
def lower_program(ep: torch.export.ExportedProgram):
    """An exported program (fp32, or int8 with quantize/dequantize pairs) -> edge dialect with the XNNPACK
    partitioner -> (ExecuTorch program, partition report)."""
    require_module("executorch")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()])
    report = partition_report(edge.exported_program().graph_module)
    return edge.to_executorch(), report


def lower_executorch(model: nn.Module, x: torch.Tensor):
    """torch.export of `model` at `x`, lowered: (ExecuTorch program, partition report)."""
    require_module("executorch")
    with torch.no_grad():
        ep = torch.export.export(model.eval(), (x,))
    return lower_program(ep)


def partition_report(gm: torch.fx.GraphModule) -> Dict[str, object]:
    """Delegate partitions and the ops left to portable kernels, from ExecuTorch's own
    `get_delegation_info` (its `getitem` nodes only unpack a delegate's outputs: not counted as ops)."""
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(gm)
    others = {op: b.non_delegated for op, b in info.delegation_by_operator.items()
              if b.non_delegated and op != "getitem"}
    return {"delegate_partitions": info.num_delegated_subgraphs, "non_delegated_ops": sum(others.values()),
            "non_delegated": dict(sorted(others.items()))}


def save_pte(model: nn.Module, x: torch.Tensor, path: Path) -> Dict[str, object]:
    prog, report = lower_executorch(model, x)
    with open(path, "wb") as f:
        prog.write_to_file(f)
    return report


def executorch_program(path: Path, threads: int = 2, etdump: bool = False):
    """The program at `path` loaded by ExecuTorch's public `Runtime` (with ETDump profiling if asked);
    XNNPACK's threadpool set to `threads` (the runtime has no public setting for it yet)."""
    require_module("executorch")
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime

    with filter_native_stderr():  # the C++ runtime's CPU-probe lines, printed on first use
        portable_lib._unsafe_reset_threadpool(threads)
        return Runtime.get().load_program(Path(path), enable_etdump=etdump)


def executorch_method(path: Path, threads: int = 2):
    """A loaded 'forward' method; XNNPACK's threadpool set to `threads`."""
    return executorch_program(path, threads).load_method("forward")


# ---- LiteRT (TensorFlow Lite) ----------------------------------------------------------------------
# litert-torch converts a torch.export program to a .tflite flatbuffer (NHWC inside: it inserts and cancels
# layout transposes itself); ai-edge-litert's interpreter runs it with its default CPU delegate (XNNPACK).
_LITERT_NOISE = ("LiteRT-Torch Convert", "ExportedProgram Run", "Decompositions", "MLIR Module", "Write Model",
                 "flatbuffer_export.cc", "Estimated count of arithmetic ops", "LiteRT Converter Passes",
                 "is an Enum subclass", "Lower to MLIR", "Run FX Passes", "Merge MLIR",
                 "All log messages before absl::InitializeLog()")


class ConversionError(UserError):
    """The converter cannot lower an op of the model; the message names the op and where it is."""


def _conversion_error(e: Exception, model: nn.Module) -> ConversionError:
    """One line from a converter failure: the aten op, the source line and module that call it, the reason."""
    import re

    text = str(e)
    op = re.search(r"target=torch\.ops\.([\w.]+)", text)
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\w+)\n\s*(.*)', text.split("Original traceback", 1)[-1])
    src = frames[-1] if frames else None  # the innermost frame: the model code that calls the op
    reason = (text.strip().splitlines() or [type(e).__name__])[0][:200]
    where = ""
    if src:
        file, line, func, code = src
        where = f" at {Path(file).name}:{line} in {func} ({code.strip()[:80]})"
        owner = next((n for n, m in model.named_modules() if type(m).forward.__code__.co_filename == file
                      and type(m).forward.__code__.co_name == func), None)
        if owner is not None:
            where += f", module {owner or type(model).__name__} ({type(model.get_submodule(owner)).__name__})"
    name = op.group(1) if op else type(e).__name__
    return ConversionError(f"litert-torch cannot convert {name}{where}: {reason}")


def save_tflite(model: nn.Module, x: torch.Tensor, path: Path) -> Dict[str, object]:
    """litert-torch conversion at `x` (batch 1, fp32) written to `path`; returns the op report."""
    require_module("litert_torch")
    import contextlib
    import io

    with filter_native_stderr(patterns=_LITERT_NOISE), contextlib.redirect_stdout(io.StringIO()):
        import litert_torch

        try:
            edge = litert_torch.convert(model.eval(), (x,))
        except (NotImplementedError, RuntimeError) as e:  # an op without a lowering: the user's model part
            raise _conversion_error(e, model) from e
        edge.export(str(path))
    return tflite_report(path)


def litert_interpreter(path: Path, threads: int = 2):
    require_module("ai_edge_litert")
    from ai_edge_litert.interpreter import Interpreter

    with filter_native_stderr(patterns=("INFO: Created TensorFlow Lite XNNPACK delegate",)):
        interp = Interpreter(model_path=str(path), num_threads=threads)
        interp.allocate_tensors()
    return interp


def tflite_report(path: Path) -> Dict[str, object]:
    """The file's ops by kind (LiteRT's builtin names), the layout changes among them, and what the interpreter's
    default XNNPACK delegate takes: its partitions and the ops left to LiteRT's own kernels.

    The interpreter lists the file's ops and then one DELEGATE node per partition; an op outside every
    partition is one whose output a partition (or the graph's output) reads without a partition producing it,
    found by walking back from those tensors through ops that no partition produces (the Python interpreter
    exposes no execution plan)."""
    from collections import Counter

    interp = litert_interpreter(path, 1)
    details = interp._get_ops_details()
    original = [op for op in details if op["op_name"] != "DELEGATE"]
    partitions = [op for op in details if op["op_name"] == "DELEGATE"]
    producer = {t: op for op in original for t in op["outputs"]}
    from_partitions = {t for d in partitions for t in d["outputs"]}
    outside, seen = {}, set()
    frontier = [t for d in partitions for t in d["inputs"]] + [o["index"] for o in interp.get_output_details()]
    while frontier:
        t = frontier.pop()
        if t in seen or t in from_partitions or t not in producer:
            continue
        seen.add(t)
        op = producer[t]
        outside[op["index"]] = op["op_name"]
        frontier.extend(op["inputs"])
    kinds = Counter(op["op_name"] for op in original)
    return {"ops": len(original), "transposes": kinds.get("TRANSPOSE", 0), "op_counts": dict(kinds.most_common()),
            "xnnpack_partitions": len(partitions), "ops_outside_xnnpack": len(outside),
            "outside_xnnpack": dict(Counter(outside.values()).most_common())}


def tflite_runner(path: Path, threads: int = 2) -> Callable[[torch.Tensor], torch.Tensor]:
    interp = litert_interpreter(path, threads)
    inp, out = interp.get_input_details()[0]["index"], interp.get_output_details()[0]["index"]

    def run(x: torch.Tensor) -> torch.Tensor:
        interp.set_tensor(inp, x.numpy())
        interp.invoke()
        return torch.from_numpy(interp.get_tensor(out).copy())
    return run


# ---- one call: fuse, export, verify ----------------------------------------------------------------
def save_file(fmt: str, model: nn.Module, x: torch.Tensor, path: Path) -> Dict[str, object]:
    """Write `model` traced/exported at `x` to `path` in `fmt`; returns the format's report (pte: partitions)."""
    if fmt == "pte":
        return save_pte(model, x, path)
    if fmt == "ptl":
        return save_ptl(model, x, path)
    if fmt == "tflite":
        return save_tflite(model, x, path)
    if fmt == "onnx":
        save_onnx(model, x, path)
    else:
        save_torchscript(model, x, path)
    return {}


def load_file(fmt: str, path: Path, threads: int = 2) -> Callable[[torch.Tensor], torch.Tensor]:
    """The exported file loaded in its own runtime, as a function of the input."""
    if fmt == "pte":
        method = executorch_method(path, threads)
        return lambda x: method.execute((x,))[0]
    if fmt == "onnx":
        sess = onnx_session(path, threads)
        name = sess.get_inputs()[0].name
        return lambda x: torch.from_numpy(sess.run(None, {name: x.numpy()})[0])
    if fmt == "tflite":
        return tflite_runner(path, threads)
    mod = load_ptl(path) if fmt == "ptl" else torch.jit.load(str(path))

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return mod(x)
    return run


def run_file(fmt: str, path: Path, x: torch.Tensor, threads: int = 2) -> torch.Tensor:
    """Run an exported file in its runtime on `x` (the check that the file works on its own)."""
    return load_file(fmt, path, threads)(x)


def export_model(model: nn.Module, fmt: str, output: os.PathLike | str, img_size: int | Tuple[int, int] = 224,
                 threads: int = 2, check_x: Optional[torch.Tensor] = None) -> Dict[str, object]:
    """Export `model` (already fused/eval) to `output` in `fmt` at `img_size` (square, or (H, W)); verify it
    in its runtime.

    The file is written beside `output` and renamed over it only after the check passes, so an existing
    file survives any failure.  Returns a report (max_abs_diff, size, partition counts for pte)."""
    if fmt not in FORMATS:
        raise UserError(f"{fmt!r} is not one of {', '.join(FORMATS)}", option="format")
    torch.set_num_threads(threads)
    h, w = size_hw(img_size)
    x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    if hasattr(model, "check_input"):
        model.check_input(x)
    check_x = x if check_x is None else check_x
    model = model.eval()
    with torch.no_grad():
        expected = model(check_x)
    report: Dict[str, object] = {"format": fmt, "runtime": FORMAT_RUNTIME[fmt], "output": str(output),
                                 "img_size": [h, w], "precision": "fp32"}
    with atomic_path(output) as tmp:
        report.update(save_file(fmt, model, x, tmp))
        got = run_file(fmt, tmp, check_x, threads)
        diff = (got.float() - expected).abs().max().item()
        report["max_abs_diff"] = diff
        if not diff <= TOLERANCE:
            raise UserError(f"{fmt} export of {output} disagrees with PyTorch: max |diff| {diff:.3g} > "
                             f"{TOLERANCE} (file not written)")
        report["bytes"] = tmp.stat().st_size
    return report


# ---- an exported file, opened for inference ---------------------------------------------------------
EXTENSIONS = {".pte": "pte", ".onnx": "onnx", ".tflite": "tflite", ".ptl": "ptl", ".pt": "torchscript", ".pth": "torchscript",
              ".torchscript": "torchscript"}


def format_of(path: os.PathLike | str) -> str:
    """The export format of a file, by its extension (one `UserError` naming the file otherwise)."""
    fmt = EXTENSIONS.get(Path(path).suffix.lower())
    if fmt is None:
        raise UserError(f"{path}: unknown exported-file extension; expected one of {', '.join(EXTENSIONS)}",
                        option="exported")
    return fmt


def input_size(fmt: str, path: Path) -> Optional[Tuple[int, int]]:
    """(H, W) the file was exported at (pte, onnx: from the file); None where the format does not say."""
    if fmt == "pte":
        sizes = executorch_program(path).load_method("forward").metadata.input_tensor_meta(0).sizes()
        return int(sizes[-2]), int(sizes[-1])
    if fmt == "onnx":
        shape = onnx_session(path).get_inputs()[0].shape
        return (int(shape[-2]), int(shape[-1])) if all(isinstance(s, int) for s in shape[-2:]) else None
    if fmt == "tflite":  # the converted signature keeps torch's NCHW input
        shape = litert_interpreter(path, 1).get_input_details()[0]["shape"]
        return int(shape[-2]), int(shape[-1])
    return None


def open_exported(path: os.PathLike | str, threads: int = 2):
    """(format, run function x -> logits, exported (H, W) or None) of an exported file in its own runtime.
    A missing file, an unknown extension or a file the runtime cannot load: one `UserError` naming it."""
    from ..utils.io import require_file

    path = require_file(path, "exported file")
    fmt = format_of(path)
    require_runtime(FORMAT_RUNTIME[fmt])
    try:
        # the runtime's own log lines about a file it cannot load say what our one line says
        with filter_native_stderr(patterns=("",)):
            return fmt, load_file(fmt, path, threads), input_size(fmt, path)
    except UserError:
        raise
    except Exception as e:  # the runtime's own loader: a corrupt/foreign file is the user's input, not a bug
        if fmt == "torchscript" and _is_training_checkpoint(path):
            raise UserError(f"{path}: a PyTorch checkpoint (weights), not an exported model; give it as the "
                            "checkpoint instead", option="exported") from e
        # torch's messages span lines and append advice about checkpoints: the first sentence, whole
        first = " ".join(str(e).split()).split(" This is an internal miniz error")[0]
        first = first if len(first) <= 300 else first[:297] + "..."
        raise UserError(f"{path}: {FORMAT_RUNTIME[fmt]} cannot load it as a .{fmt} file ({first or type(e).__name__})",
                        option="exported") from e


def _is_training_checkpoint(path: Path) -> bool:
    """A torch.save file of tensors (a checkpoint), as opposed to a TorchScript archive (it holds code/)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return not any("/code/" in n for n in names) and any(n.endswith("data.pkl") for n in names)
