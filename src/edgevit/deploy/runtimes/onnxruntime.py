"""ONNX Runtime (.onnx): torch.onnx's dynamo exporter at opset 20, run on ONNX Runtime's CPU provider.

int8 is ONNX Runtime's static QDQ quantization of the fp32 file (`onnxruntime.quantization.quantize_static`,
per-channel weights) over the calibration images; the activation type and `reduce_range` are `ORT_INT8` below
(why: docs/deploy.md, "int8").
"""
from __future__ import annotations

import ast
import collections
import json
import logging
import statistics
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from ...models.fused import Forms
from .base import Package, Runtime, fp32, image_size, int8

PACKAGE = Package("onnxruntime")
EXPORTER = (Package("onnx"), Package("onnxscript"))
# Opset 20 has a native Gelu op: ONNX Runtime runs it as one kernel where opset 18 spells it as five elementwise
# ops (Div, Erf, Add, Mul, Mul); docs/deploy.md has the measured difference. Every bench model exports at 20.
OPSET = 20

# ONNX Runtime on x86 without VNNI multiplies u8 activations by s8 weights with pmaddubsw, whose 16-bit
# intermediate sums can saturate; 7-bit weights (reduce_range) keep them exact. s8 activations take a slower
# path there (measured: docs/deploy.md). On ARM (dot-product instructions) neither restriction applies.
ORT_INT8 = {"activation_type": "QUInt8", "weight_type": "QInt8", "reduce_range": True}


def strip_onnx(path: Path) -> None:
    """Drop every node's metadata_props and doc strings (graph, nodes, values, functions) from an ONNX file: the
    exporter records the exporting machine's paths there (stack traces, module paths), which a shipped file
    must not carry."""
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


def save_onnx(model: nn.Module, x: torch.Tensor, path: Path, opset: int = OPSET) -> Dict[str, object]:
    for package in EXPORTER:
        package.require()
    with torch.no_grad():
        # the dynamo exporter (torch's default) with constant folding; one file, weights embedded
        prog = torch.onnx.export(model.eval(), (x,), dynamo=True, opset_version=opset, optimize=True,
                                 verbose=False)
        prog.save(str(path), external_data=False)
    strip_onnx(path)
    return {}


def onnx_node_modules(model: nn.Module, x: torch.Tensor, opset: int = OPSET) -> List[dict]:
    """Each node of `model`'s ONNX graph at `x` (the export `save_onnx` writes, before `strip_onnx` drops the
    metadata): {op_type, inputs: [shapes], outputs: [shapes], module: the dotted path of the module whose forward
    made it ("" for the model's own)}. For naming the PyTorch module behind a node a converter refuses."""
    with torch.no_grad():
        prog = torch.onnx.export(model.eval(), (x,), dynamo=True, opset_version=opset, optimize=True,
                                 verbose=False)

    def shape(v):
        return tuple(int(d) if isinstance(d, int) else -1 for d in v.shape) if v is not None and v.shape else None
    nodes = []
    for node in prog.model.graph.all_nodes():
        # the exporter's scopes, outermost first, as a list literal: ['', 'stages', 'stages.0', ..., 'slice_1']
        path = ast.literal_eval(dict(node.metadata_props).get("pkg.torch.onnx.name_scopes", "[]"))[:-1]
        nodes.append({"op_type": node.op_type, "inputs": [shape(v) for v in node.inputs],
                      "outputs": [shape(v) for v in node.outputs], "module": path[-1] if path else ""})
    return nodes


# no busy-waiting between ops: spinning threads only burn the cores that a phone (or a shared machine) needs for
# the other thread; it changes no result
CONFIG_ENTRIES = {"session.intra_op.allow_spinning": "0"}


def session_options(threads: int = 2):
    """The ONNX Runtime session options every EdgeViT session uses (bench, export check, profiling)."""
    PACKAGE.require()
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    for key, value in CONFIG_ENTRIES.items():
        so.add_session_config_entry(key, value)
    return so


def onnx_session(path: Path, threads: int = 2, options=None):
    import onnxruntime as ort
    return ort.InferenceSession(str(path), options or session_options(threads), providers=["CPUExecutionProvider"])


def load(path: Path, threads: int = 2):
    sess = onnx_session(path, threads)
    names = [i.name for i in sess.get_inputs()]

    def run(*inputs) -> list:
        return sess.run(None, dict(zip(names, inputs)))
    return run


def input_size(path: Path):
    shape = onnx_session(path, 1).get_inputs()[0].shape  # (a batch dimension may be named: dynamic)
    return image_size([1, *shape[1:]]) if all(isinstance(s, int) for s in shape[1:]) else None


def profile(path: Path, x: torch.Tensor, threads: int, runs: int, warmup: int, desc: str = "profiled") -> List[dict]:
    """ONNX Runtime's session profiling: one row per node of the optimised graph, its median kernel time."""
    from tqdm import tqdm

    with tempfile.TemporaryDirectory() as tmp:
        so = session_options(threads)
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "ort_profile")
        sess = onnx_session(path, threads, so)
        name, a = sess.get_inputs()[0].name, x.numpy()
        for _ in tqdm(range(warmup + runs), desc=desc, file=sys.stderr):
            sess.run(None, {name: a})
        events = json.loads(Path(sess.end_profiling()).read_text())
    per_node = collections.defaultdict(list)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_node[(e["args"]["op_name"], e["name"][:-len("_kernel_time")])].append(e["dur"] / 1e3)
    return [{"op": node, "kind": kind, "median_ms": statistics.median(d[warmup:])}
            for (kind, node), d in per_node.items()]


# ---- int8: static QDQ ---------------------------------------------------------------------------------
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


def short_convs(graph, min_k: int) -> List[str]:
    """The Conv nodes of an ONNX graph whose reduction (input channels per group x kernel area) is below `min_k`:
    where int8 GEMMs on CPUs without VNNI lose to fp32 (docs/deploy.md, "int8")."""
    weights = {t.name: tuple(t.dims) for t in graph.initializer}
    return [n.name for n in graph.node if n.op_type == "Conv" and len(weights.get(n.input[1], ())) == 4
            and int(np.prod(weights[n.input[1]][1:])) < min_k]


def gelu_tables(model) -> int:
    """Replace each DequantizeLinear -> Gelu -> QuantizeLinear chain of a QDQ ONNX graph (in place) by Cast ->
    Gather over a 256-entry table: the chain maps the 256 values of its 8-bit input to 8-bit outputs, so the
    table is that same function, made once here (float32 GELU, round half to even, saturate: what ONNX Runtime's
    DequantizeLinear, Gelu and QuantizeLinear compute). ONNX Runtime has no quantized GELU kernel and ONNX no
    lookup op, hence by hand; Gather reads an int8 index below 0 from the table's end, so the int8 table lists
    0..127 then -128..-1. Returns how many chains it replaced."""
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    consumers = collections.defaultdict(list)
    for n in graph.node:
        for i in n.input:
            consumers[i].append(n)
    outputs = {o.name for o in graph.output}

    def only_consumer(name: str, op_type: str):
        c = consumers.get(name, [])
        return c[0] if len(c) == 1 and c[0].op_type == op_type and name not in outputs else None

    def qparams(node):  # (scale, zero point) of a per-tensor Q/DQ node, or None
        if len(node.input) < 3 or node.input[1] not in consts or node.input[2] not in consts:
            return None
        scale, zp = consts[node.input[1]], consts[node.input[2]]
        return (np.float32(scale), zp.reshape(())) if scale.size == 1 and zp.size == 1 else None

    drop, new_at, tables = set(), {}, []  # (new_at: the Cast and Gather that go where each chain's DQ was)
    for dq in [n for n in graph.node if n.op_type == "DequantizeLinear"]:
        gelu = only_consumer(dq.output[0], "Gelu")
        q = gelu and only_consumer(gelu.output[0], "QuantizeLinear")
        pin, pout = qparams(dq), q and qparams(q)
        if not (q and pin and pout) or pin[1].dtype != pout[1].dtype or pin[1].dtype not in (np.uint8, np.int8) \
                or dict((a.name, a.s) for a in gelu.attribute).get("approximate", b"none") != b"none":
            continue
        info = np.iinfo(pin[1].dtype)
        codes = np.arange(256, dtype=np.int64)
        codes = np.where(codes > info.max, codes - 256, codes)  # int8: 0..127, -128..-1 (Gather's negative index)
        xs = torch.from_numpy(((codes - int(pin[1])).astype(np.float32) * pin[0]).astype(np.float32))
        ys = torch.nn.functional.gelu(xs).numpy() / pout[0]
        table = np.clip(np.rint(ys) + int(pout[1]), info.min, info.max).astype(pin[1].dtype)
        stem = f"gelu_table_{len(tables)}"
        tables.append(numpy_helper.from_array(table, f"{stem}_values"))
        new_at[id(dq)] = [helper.make_node("Cast", [dq.input[0]], [f"{stem}_index"], name=f"{stem}_cast",
                                           to=onnx.TensorProto.INT32),
                          helper.make_node("Gather", [f"{stem}_values", f"{stem}_index"], [q.output[0]],
                                           name=f"{stem}_gather", axis=0)]
        drop.update(id(n) for n in (dq, gelu, q))
    if not tables:
        return 0
    nodes = []
    for n in graph.node:
        nodes.extend(new_at.get(id(n), []))
        if id(n) not in drop:
            nodes.append(n)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(tables)
    return len(tables)


def save_onnx_int8(model: nn.Module, x: torch.Tensor, path: Path, images: torch.Tensor,
                   op_types: Optional[Sequence[str]] = None, float_below_k: int = 0, gelu_table: bool = False,
                   **options) -> Dict[str, object]:
    """fp32 ONNX export of `model`, then ONNX Runtime's static QDQ quantization calibrated on `images`
    (min/max of each activation), per-channel weights; `options` override ORT_INT8. `float_below_k`: convs whose
    reduction is shorter stay float (`short_convs`); `gelu_table`: each quantized GELU as a 256-entry table
    (`gelu_tables`). Both are forms measured in benchmarks/quant_targets.py, not the default."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

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
                            op_types_to_quantize=op_types,
                            nodes_to_exclude=short_convs(graph, float_below_k) if float_below_k else None)
    if gelu_table:
        quantized = onnx.load(str(path))
        gelu_tables(quantized)
        onnx.save(quantized, str(path))
    strip_onnx(Path(path))  # (quantize_static writes its own doc strings)
    return {"onnx_quantization": {k: cfg[k] for k in ORT_INT8}}


def write_metadata(path: Path, text: str) -> None:
    """The metadata as the model-level `metadata_props` entry "edgevit" (where ONNX keeps a model's own metadata;
    ONNX Runtime's `InferenceSession.get_modelmeta().custom_metadata_map` reads it)."""
    import onnx

    m = onnx.load(str(path))
    kept = [(p.key, p.value) for p in m.metadata_props if p.key != "edgevit"]
    del m.metadata_props[:]
    for k, v in [*kept, ("edgevit", text)]:
        m.metadata_props.add(key=k, value=v)
    onnx.save(m, str(path))


def read_metadata(path: Path) -> Optional[str]:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return next((p.value for p in m.metadata_props if p.key == "edgevit"), None)


def save_onnx_traced(model: nn.Module, x: torch.Tensor, path: Path) -> Dict[str, object]:
    """A graph through torch's TorchScript-based exporter, the path torchvision tests its two-stage detectors on:
    torch.export (the dynamo exporter) stops at torchvision's `batched_nms` (a branch on the number of boxes,
    unknown when tracing) inside the RPN and RoIHeads."""
    import warnings

    # the exporter's warnings (constant folding, traced size arithmetic) are about torchvision's code, not the
    # user's; the file is checked in ONNX Runtime next
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (x,), str(path), dynamo=False, opset_version=17)
    model.eval()  # (the exporter leaves the module in the mode it traced; restated)
    strip_onnx(path)
    return {"exporter": "torchscript"}


RUNTIME = Runtime(
    name="onnxruntime", title="ONNX (checked with onnxruntime)", format="onnx", suffixes=(".onnx",),
    packages=(PACKAGE,), export_packages=EXPORTER,
    forms=Forms(qkv="merged", ln="native", sample="pool"),
    writers={"fp32": fp32(save_onnx), "int8": int8(save_onnx_int8, "ONNX Runtime static QDQ")},
    load=load, input_size=input_size, profile=profile, detections_in_graph=True, write_traced=save_onnx_traced,
    write_metadata=write_metadata, read_metadata=read_metadata, input_layouts=("NCHW", "NHWC"),
    input_dtypes=("float32", "uint8"),
    # (ONNX Runtime's CPU kernels compute a float graph in fp32 on every CPU; its defaults change nothing here)
    worker=lambda path, defaults: {"entries": CONFIG_ENTRIES if defaults == "package" else {}})
