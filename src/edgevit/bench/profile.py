"""Per-operator times from each runtime's own profiler (used by benchmarks/op_profile.py and
benchmarks/xnnpack_gemm_tile.py): ExecuTorch's event tracer (ETDump, read with
`executorch.devtools.Inspector`: one event per XNNPACK operator) and ONNX Runtime's session profiling (one
event per node of the optimised graph). Per operator: the median over the timed runs."""
from __future__ import annotations

import collections
import json
import re
import statistics
import sys
import tempfile
from pathlib import Path
from typing import List, Tuple

import torch
from tqdm import tqdm

from ..deploy.export import save_onnx, save_pte, session_options
from .runners import default_img_size, load_model
from ..errors import UserError


def _summary(model, fused, size, threads, runs, report, ops):
    kinds = collections.Counter()
    for o in ops:
        kinds[o["kind"]] += o["median_ms"]
    total = sum(kinds.values())
    return {"model": model, "fused": fused, "img_size": size, "threads": threads, "runs": runs,
            "export": report, "total_ms": total, "ops": len(ops),
            "by_kind": [{"kind": k, "ms": v, "share": v / total} for k, v in kinds.most_common()], "per_op": ops}


def executorch_op_times(pte: Path, x: torch.Tensor, threads: int, runs: int, warmup: int,
                        desc: str = "profiled") -> List[dict]:
    """Run the program at `pte` warmup + runs times with ETDump on; one row per delegate operator."""
    from executorch.devtools import Inspector

    from ..deploy.export import executorch_program

    program = executorch_program(pte, threads, etdump=True)  # the one ExecuTorch loader
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


def profile_executorch(net, x, threads: int, runs: int, warmup: int, desc: str,
                       int8_images=None) -> Tuple[dict, List[dict]]:
    from ..deploy.quantize import quantize_pt2e, save_pte_int8

    with tempfile.TemporaryDirectory() as tmp:
        pte = Path(tmp) / "model.pte"
        report = (save_pte(net, x, pte) if int8_images is None
                  else save_pte_int8(quantize_pt2e(net, x, int8_images), x, pte))
        return report, executorch_op_times(pte, x, threads, runs, warmup, desc)


def profile_onnxruntime(net, x, threads: int, runs: int, warmup: int, desc: str, int8_images=None):
    import onnxruntime as ort

    from ..deploy.quantize import save_onnx_int8

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        if int8_images is None:
            save_onnx(net, x, path)
        else:
            save_onnx_int8(net, x, path, int8_images)
        so = session_options(threads)
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "ort_profile")
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        name, a = sess.get_inputs()[0].name, x.numpy()
        for _ in tqdm(range(warmup + runs), desc=desc, file=sys.stderr):
            sess.run(None, {name: a})
        events = json.loads(Path(sess.end_profiling()).read_text())
    per_node = collections.defaultdict(list)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_node[(e["args"]["op_name"], e["name"][:-len("_kernel_time")])].append(e["dur"] / 1e3)
    ops = [{"op": node, "kind": kind, "median_ms": statistics.median(d[warmup:])}
           for (kind, node), d in per_node.items()]
    return {}, ops


def profile(model: str, fused: bool = True, runtime: str = "executorch", runs: int = 20, threads: int = 2,
            img_size: int | None = None, precision: str = "fp32", calib: str | None = None,
            checkpoint: str | None = None) -> dict:
    """`model` exported as `edgevit bench` does it (int8: as `bench --precision int8`, calibrated on
    `calib`), profiled in `runtime`: totals per operator kind ("by_kind", slowest first) and per operator
    ("per_op")."""
    if runtime not in PROFILED_RUNTIMES:
        raise UserError(f"{runtime!r} is not one of {', '.join(PROFILED_RUNTIMES)}", option="runtime")
    if runtime == "litert":
        if precision != "fp32":
            raise UserError(f"{precision!r}: the LiteRT profile is fp32", option="precision")
        return profile_litert(model, fused, runs, threads, img_size, checkpoint)
    torch.set_num_threads(threads)
    net = load_model(model, fused=fused, runtime=runtime, checkpoint=checkpoint)
    size = img_size or default_img_size(net)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    from ..deploy.quantize import model_calibration

    images = model_calibration(net, calib, 64, size) if precision == "int8" else None
    report, ops = PROFILERS[runtime](net, x, threads, runs, 3, f"{model} ({runtime} {precision}, profiled)",
                                     int8_images=images)
    return {**_summary(model, fused, size, threads, runs, report, ops), "precision": precision}


PROFILERS = {"executorch": profile_executorch, "onnxruntime": profile_onnxruntime}
PROFILED_RUNTIMES = (*PROFILERS, "litert")  # LiteRT: profile_litert (no per-operator timer)


def profile_litert(model: str, fused: bool = True, runs: int = 20, threads: int = 2,
                   img_size: int | None = None, checkpoint: str | None = None) -> dict:
    """LiteRT's side of the profile. ai-edge-litert's Python interpreter exposes no per-operator timings (its
    profiler is C++ only), so this reports what its op details do tell: the file's ops by kind, the layout
    transposes, the XNNPACK delegate's partitions and the ops left outside them (edgevit.deploy.export.
    tflite_report), with the file's median latency over `runs`."""
    from ..deploy.export import load_file, save_tflite
    from .bench import time_runner

    torch.set_num_threads(threads)
    net = load_model(model, fused=fused, runtime="litert", checkpoint=checkpoint)
    size = img_size or default_img_size(net)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.tflite"
        report = save_tflite(net, x, path)
        run = load_file("tflite", path, threads)
        times = time_runner(lambda: run(x), runs, 3)
    return {"model": model, "fused": fused, "img_size": size, "threads": threads, "runs": runs, "export": report,
            "median_ms": statistics.median(times)}
