"""ExecuTorch with its XNNPACK delegate (.pte): torch.export -> edge dialect -> XnnpackPartitioner -> program.

int8 is the PT2E flow: `torch.export` -> torchao's `prepare_pt2e` (or `prepare_qat_pt2e`) with ExecuTorch's
`XNNPACKQuantizer` (per-channel symmetric int8 weights, static int8 activations) -> calibration ->
`convert_pt2e` -> lowered with the XNNPACK partitioner like the fp32 file.
"""
from __future__ import annotations

import copy
import re
import statistics
import sys
import tempfile
import types
from pathlib import Path
from typing import Dict, List, Sequence

import torch
import torch.nn as nn

from ...models.fused import ChannelNorm, Forms
from ...utils.quiet import filter_native_stderr
from ..forms import holds_edgevit
from .base import Float16Graph, Package, Runtime, fp32, half, image_size, int8

PACKAGE = Package("executorch")


# ---- fp32 ------------------------------------------------------------------------------------------
def lower_program(ep: torch.export.ExportedProgram):
    """An exported program (fp32, or int8 with quantize/dequantize pairs) -> edge dialect with the XNNPACK
    partitioner -> (ExecuTorch program, partition report)."""
    PACKAGE.require()
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()])
    report = partition_report(edge.exported_program().graph_module)
    return edge.to_executorch(), report


def partition_report(gm: torch.fx.GraphModule) -> Dict[str, object]:
    """Delegate partitions and the ops left to portable kernels, from ExecuTorch's own
    `get_delegation_info` (its `getitem` nodes only unpack a delegate's outputs: not counted as ops)."""
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(gm)
    others = {op: b.non_delegated for op, b in info.delegation_by_operator.items()
              if b.non_delegated and op != "getitem"}
    return {"delegate_partitions": info.num_delegated_subgraphs, "non_delegated_ops": sum(others.values()),
            "non_delegated": dict(sorted(others.items()))}


def write_program(ep: torch.export.ExportedProgram, path: Path) -> Dict[str, object]:
    prog, report = lower_program(ep)
    with open(path, "wb") as f:
        prog.write_to_file(f)
    return report


def save_pte(model: nn.Module, x: torch.Tensor, path: Path) -> Dict[str, object]:
    PACKAGE.require()
    with torch.no_grad():
        ep = torch.export.export(model.eval(), (x,))
    return write_program(ep, path)


# ExecuTorch's XNNPACK threadpool is one per process, and a loaded method keeps the pool it was loaded under: a
# reset (`_unsafe_reset_threadpool`, the only setting there is) frees that pool under every method loaded before
# it, which then crashed or hung in `execute` some calls later (an `input_size` read after a 1-thread load did so).
# So the pool is reset only when the count changes, and each `load`'s method is loaded again if the pool changed
# since it was loaded.
_POOL = {"threads": None, "generation": 0}


def threadpool(threads: int) -> int:
    """Set XNNPACK's threadpool to `threads` (only if it holds another count); the pool's generation."""
    if _POOL["threads"] != threads:
        PACKAGE.require()
        from executorch.extension.pybindings import portable_lib

        with filter_native_stderr():  # (the C++ runtime's CPU-probe lines, printed on first use)
            portable_lib._unsafe_reset_threadpool(threads)
        _POOL.update(threads=threads, generation=_POOL["generation"] + 1)
    return _POOL["generation"]


def executorch_program(path: Path, etdump: bool = False):
    """The program at `path` loaded by ExecuTorch's public `Runtime` (with ETDump profiling if asked). It owns its
    methods' memory-planned arenas and the file's data: keep it as long as a method of it runs."""
    PACKAGE.require()
    from executorch.runtime import Runtime as ETRuntime

    with filter_native_stderr():
        return ETRuntime.get().load_program(Path(path), enable_etdump=etdump)


def load(path: Path, threads: int = 2):
    loaded: Dict[str, object] = {}

    def method():
        generation = threadpool(threads)
        if loaded.get("generation") != generation:  # (first call, or another load changed the pool since)
            program = executorch_program(path)
            loaded.update(generation=generation, program=program, method=program.load_method("forward"))
        return loaded["method"]
    method()

    def run(*inputs) -> list:
        outs = method().execute(tuple(torch.from_numpy(a) for a in inputs))
        return [o.numpy().copy() for o in outs]
    return run


def _program(path: Path):
    """The .pte's program as ExecuTorch's own serializer reads it back."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    program = deserialize_pte_binary(Path(path).read_bytes())
    return getattr(program, "program", program)


def planned_memory(path: Path) -> int:
    """Bytes of the program's memory-planned buffers (ExecuTorch's ahead-of-time plan for every tensor outside the
    constants, in the file's execution plan; XNNPACK's own workspace inside a delegate is not in it)."""
    return sum(sum(plan.non_const_buffer_sizes) for plan in _program(path).execution_plan)


def delegation(path: Path) -> Dict[str, int]:
    """Delegate calls and the kernel calls outside them in the program's instructions (what the runtime executes)."""
    kinds = [type(i.instr_args).__name__ for plan in _program(path).execution_plan for chain in plan.chains
             for i in chain.instructions]
    return {"delegate_partitions": kinds.count("DelegateCall"), "ops_outside": kinds.count("KernelCall")}


def input_size(path: Path):
    return image_size(executorch_program(path).metadata("forward").input_tensor_meta(0).sizes())


def profile(path: Path, x: torch.Tensor, threads: int, runs: int, warmup: int, desc: str = "profiled") -> List[dict]:
    """Run the program warmup + runs times with ETDump on (ExecuTorch's event tracer, read with
    `executorch.devtools.Inspector`); one row per delegate operator, its median over the timed runs."""
    from executorch.devtools import Inspector
    from tqdm import tqdm

    threadpool(threads)
    program = executorch_program(path, etdump=True)
    method = program.load_method("forward")
    for _ in tqdm(range(warmup + runs), desc=desc, file=sys.stderr):
        method.execute((x,))
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.etdp"
        program.write_etdump_result_to_file(str(trace), str(Path(tmp) / "debug.bin"))  # (no debug buffer kept)
        df = Inspector(etdump_path=str(trace)).to_dataframe()
    ops = []
    for name, raw in zip(df.event_name, df.raw):
        if re.search(r"Method::|Program::|DELEGATE_CALL|OPERATOR_CALL|Execute", name):
            continue
        ops.append({"op": name, "kind": re.sub(r" #\d+$", "", name), "median_ms": statistics.median(raw[warmup:])})
    return ops


def describe(report: Dict[str, object]) -> str:
    others = report.get("non_delegated") or {}
    return (f"XNNPACK delegate partitions: {report['delegate_partitions']}, non-delegated ops: "
            f"{report['non_delegated_ops']}" + (f" ({', '.join(f'{k} x{v}' for k, v in others.items())})"
                                                 if report["non_delegated_ops"] else ""))


# ---- int8: PT2E with the XNNPACK quantizer -------------------------------------------------------------
def short_convs(model: nn.Module, min_k: int) -> List[str]:
    """The names of `model`'s convolutions whose reduction (input channels per group x kernel area) is below
    `min_k`: where int8 GEMMs on CPUs without VNNI lose to fp32 (docs/deploy.md, "int8")."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)
            and m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1] < min_k]


def xnnpack_quantizer(qat: bool = False, float_modules: Sequence[str] = ()):
    """ExecuTorch's XNNPACK quantizer: per-channel symmetric int8 weights, static per-tensor int8
    activations (QAT: the same with fake quantization); EdgeViT's channel LayerNorms stay float, and the modules
    named in `float_modules` (a form: `short_convs`).

    Why the LayerNorms: their statistics (a mean, a variance, a reciprocal square root) through int8 lose
    what normalisation is for (docs/deploy.md, "int8", has the logits SQNR with and without). XNNPACK still
    runs them, in fp32, inside the same partition."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_qat=qat))
    if float_modules:  # (set_module_name takes no None config: a filter of the nodes to annotate instead)
        from torchao.quantization.pt2e.quantizer import get_module_name_filter

        skip = [get_module_name_filter(name) for name in float_modules]
        quantizer = quantizer.set_filter_function(lambda node: not any(f(node) for f in skip))
    return quantizer.set_module_type(ChannelNorm, None)


def _with_train_eval(prepared: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """train()/eval() for a prepared QAT graph (an exported graph has none of its own): torchao's switch of
    the train/eval op forms, plus the observers — on while training, off while evaluating, so validation
    images never move the quantization scales (eager QAT does the same with disable_observer)."""
    from torchao.quantization.pt2e import (
        disable_observer,
        enable_observer,
        move_exported_model_to_eval,
        move_exported_model_to_train,
    )

    def train(self, mode: bool = True):
        (move_exported_model_to_train if mode else move_exported_model_to_eval)(self)
        self.apply(enable_observer if mode else disable_observer)
        for m in self.modules():
            m.training = mode
        return self

    prepared.train = types.MethodType(train, prepared)
    prepared.eval = types.MethodType(lambda self: self.train(False), prepared)
    return prepared


def prepare_pt2e_model(model: nn.Module, x: torch.Tensor, qat: bool = False,
                       float_modules: Sequence[str] = ()) -> torch.fx.GraphModule:
    """`model` exported at `x` with observers (PTQ) or fake quantizers (QAT: any batch size, train()/eval()
    switch as on a module) where the XNNPACK quantizer annotates the graph."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e, prepare_qat_pt2e

    if qat:
        batch = torch.export.Dim("batch", min=1, max=65536)
        gm = torch.export.export(model.train(), (x,), dynamic_shapes=({0: batch},)).module()
        return _with_train_eval(prepare_qat_pt2e(gm, xnnpack_quantizer(qat=True, float_modules=float_modules)))
    with torch.no_grad():
        gm = torch.export.export(model.eval(), (x,)).module()
    return prepare_pt2e(gm, xnnpack_quantizer(float_modules=float_modules))


def calibrate(prepared: torch.fx.GraphModule, images: torch.Tensor, batch: int = 1) -> None:
    """Run the calibration images through the observers (at the batch size the graph was exported with)."""
    with torch.no_grad():
        for i in range(0, len(images), batch):
            prepared(images[i:i + batch])


def convert_pt2e_model(prepared: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Observers/fake quantizers -> quantize/dequantize pairs with the recorded scales (eval mode); the
    prepared model itself is left as it was (a QAT run keeps training it)."""
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    prepared = copy.deepcopy(prepared)
    move_exported_model_to_eval(prepared)
    return convert_pt2e(prepared)


def quantize_pt2e(model: nn.Module, x: torch.Tensor, images: torch.Tensor,
                  float_below_k: int = 0) -> torch.fx.GraphModule:
    """Post-training static int8 of `model` calibrated on `images` (N, 3, H, W); `float_below_k`: convolutions
    with a shorter reduction stay float (`short_convs`; a form benchmarks/quant_targets.py measures)."""
    prepared = prepare_pt2e_model(model, x, float_modules=short_convs(model, float_below_k) if float_below_k else ())
    calibrate(prepared, images)
    return convert_pt2e_model(prepared)


# The post-training int8 file of an EdgeViT leaves the convolutions with a shorter reduction float inside the same
# XNNPACK graph: below 32, its depthwise convolutions (K = 9 and 25; the fused XXS has 22 of 88), memory-bound in
# either precision, so int8 saves them nothing and costs requantisation and accuracy. Every 1x1 convolution is int8,
# stage 1's over 48 channels included: the earlier bound of 64, which kept those float too, measured faster than
# all-int8 on a Xeon with AMX (whose int8 tiles reduce over 64) but slower than this one on an AMD EPYC with VNNI,
# and phones' dot-product int8 has no 64-deep block (docs/deploy.md, "ExecuTorch int8"). Other models (the CNN
# baselines) keep the quantizer's default: MobileNetV2 is slower that way, so its faster file is the baseline. QAT
# files quantize every convolution (as the QAT checkpoints already written were trained).
PTQ_FLOAT_BELOW_K = 32


def ptq_float_below_k(model: nn.Module) -> int:
    """The `quantize_pt2e` reduction bound of the post-training int8 file: PTQ_FLOAT_BELOW_K for an EdgeViT (or
    a model holding one), 0 (every convolution int8) for other models."""
    return PTQ_FLOAT_BELOW_K if holds_edgevit(model) else 0


def ptq_float_convs(model: nn.Module) -> List[str]:
    """The convolutions the post-training int8 file leaves float."""
    return short_convs(model, ptq_float_below_k(model))


def save_pte_ptq(model: nn.Module, x: torch.Tensor, path: Path, images: torch.Tensor) -> Dict[str, object]:
    """The post-training int8 .pte: `quantize_pt2e` calibrated on `images`, `ptq_float_convs` left float; the
    report says how many those are (`float_convs`)."""
    report = save_pte_int8(quantize_pt2e(model, x, images, ptq_float_below_k(model)), x, path)
    return {**report, "float_convs": len(ptq_float_convs(model))}


def save_pte_int8(quantized: torch.fx.GraphModule, x: torch.Tensor, path: Path) -> Dict[str, object]:
    """Lower a converted (quantize/dequantize) graph to XNNPACK and write the .pte; the partition report."""
    with torch.no_grad():
        ep = torch.export.export(quantized, (x,))
    return write_program(ep, path)


RUNTIME = Runtime(
    name="executorch", title="ExecuTorch + XNNPACK", format="pte", suffixes=(".pte",), packages=(PACKAGE,),
    forms=Forms(embed="s2d", ln="conv", prop="shuffle", sample="pool", pad=16),
    writers={
        "fp32": fp32(save_pte),
        "int8": int8(save_pte_ptq, "PT2E + XNNPACK quantizer (an EdgeViT's depthwise convolutions float)"),
        # (XNNPACK has no fp16 GELU and delegates no dtype casts: an erf GELU in fp16 or fp32 leaves the delegate)
        "fp16": half(lambda model, x, path: save_pte(Float16Graph(model, gelu="sigmoid"), x, path),
                     "the graph in fp16 on XNNPACK's fp16 kernels, GELU in its tanh form as x*sigmoid(...)")},
    load=load, input_size=input_size, planned_memory=planned_memory, delegation=delegation,
    worker=lambda path, defaults: {},
    # (NHWC float: one delegate partition, nothing outside; uint8: its cast, and for NHWC the transpose, run on
    # the portable kernels beside the partition)
    input_layouts=("NCHW", "NHWC"), input_dtypes=("float32", "uint8"),
    save_qat=lambda prepared, x, path: save_pte_int8(convert_pt2e_model(prepared), x, path),
    profile=profile, describe=describe)
