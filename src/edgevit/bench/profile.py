"""Per-operator times from each runtime's own profiler (used by benchmarks/op_profile.py and
benchmarks/xnnpack_gemm_tile.py): ExecuTorch's event tracer (ETDump, read with
`executorch.devtools.Inspector`: one event per XNNPACK operator) and ONNX Runtime's session profiling (one
event per node of the optimised graph). Per operator: the median over the timed runs."""
from __future__ import annotations

import collections
import statistics
import tempfile
from pathlib import Path
from typing import List, Tuple

import torch

from ..deploy import runtimes
from ..errors import UserError
from .runners import check_precision, default_img_size, load_model


def summary(model, fused, size, threads, runs, report, ops):
    kinds = collections.Counter()
    for o in ops:
        kinds[o["kind"]] += o["median_ms"]
    total = sum(kinds.values())
    return {"model": model, "fused": fused, "img_size": size, "threads": threads, "runs": runs,
            "export": report, "total_ms": total, "ops": len(ops),
            "by_kind": [{"kind": k, "ms": v, "share": v / total} for k, v in kinds.most_common()], "per_op": ops}


def profile_file(runtime: str, net, x, threads: int, runs: int, warmup: int, desc: str,
                 precision: str = "fp32", images=None) -> Tuple[dict, List[dict]]:
    """`net` written to `runtime`'s `precision` file (a calibrated precision: on `images`) by the one checked
    writer, and profiled by the runtime's own profiler (its record's `profile`): (export report, per-operator
    rows)."""
    from ..deploy.export import export_model

    rt = runtimes.get(runtime)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"model{rt.suffix}"
        report = export_model(net, rt, path, tuple(x.shape[-2:]), threads, x if precision == "fp32" else None,
                              precision, images)
        return report, rt.profile(path, x, threads, runs, warmup, desc)


def profile(model: str, fused: bool = True, runtime: str = "executorch", runs: int = 20, threads: int = 2,
            img_size: int | None = None, precision: str = "fp32", calib: str | None = None,
            checkpoint: str | None = None) -> dict:
    """`model` exported as `edgevit bench` does it (`precision`: as `bench --precision`; int8 and its forms
    calibrated on `calib`), profiled in `runtime`: totals per operator kind ("by_kind", slowest first) and per operator
    ("per_op")."""
    if runtime not in PROFILED_RUNTIMES:
        raise UserError(f"{runtime!r} is not one of {', '.join(PROFILED_RUNTIMES)}", option="runtime")
    if runtime == "litert":
        if precision != "fp32":
            raise UserError(f"{precision!r}: the LiteRT profile is fp32", option="precision")
        return profile_litert(model, fused, runs, threads, img_size, checkpoint)
    check_precision(runtimes.get(runtime), precision)
    torch.set_num_threads(threads)
    net = load_model(model, fused=fused, runtime=runtime, checkpoint=checkpoint)
    size = img_size or default_img_size(net)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    from ..deploy.quantize import model_calibration

    images = model_calibration(net, calib, 64, size) if runtimes.calibrated(precision) else None
    report, ops = profile_file(runtime, net, x, threads, runs, 3, f"{model} ({runtime} {precision}, profiled)",
                               precision, images)
    return {**summary(model, fused, size, threads, runs, report, ops), "precision": precision}


# runtimes with a per-operator profiler, and LiteRT (profile_litert: its Python interpreter has no per-operator timer)
PROFILED_RUNTIMES = (*(r.name for r in runtimes.RUNTIMES.values() if r.profile), "litert")


def profile_litert(model: str, fused: bool = True, runs: int = 20, threads: int = 2,
                   img_size: int | None = None, checkpoint: str | None = None) -> dict:
    """LiteRT's side of the profile. ai-edge-litert's Python interpreter exposes no per-operator timings (its
    profiler is C++ only), so this reports what its op details do tell: the file's ops by kind, the layout
    transposes, the XNNPACK delegate's partitions and the ops left outside them (edgevit.deploy.runtimes.
    litert.tflite_report), with the file's median latency over `runs`."""
    from ..deploy import load_exported
    from ..deploy.export import export_model
    from .bench import time_runner

    torch.set_num_threads(threads)
    net = load_model(model, fused=fused, runtime="litert", checkpoint=checkpoint)
    size = img_size or default_img_size(net)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.tflite"
        report = export_model(net, "tflite", path, size, threads, x)
        run, a = load_exported(path, threads), x.numpy()
        times = time_runner(lambda: run(a), runs, 3)
    return {"model": model, "fused": fused, "img_size": size, "threads": threads, "runs": runs, "export": report,
            "median_ms": statistics.median(times)}
