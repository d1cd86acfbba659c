"""Where a model spends its time, per operator, from the runtime's own profiler.

    .venv/bin/python benchmarks/op_profile.py edgevit_xxs                          # ExecuTorch + XNNPACK, fused
    .venv/bin/python benchmarks/op_profile.py edgevit_xxs --unfused
    .venv/bin/python benchmarks/op_profile.py mobilenetv2_100 --runtime onnxruntime --top 10 --json prof.json

The model is exported exactly as `edgevit bench` does it, then run with the runtime's profiler on:
ExecuTorch's event tracer (ETDump, read with `executorch.devtools.Inspector`: one event per XNNPACK
operator) or ONNX Runtime's session profiling (one event per node of the optimised graph). Per operator
the median over the runs, then the total per operator kind ("Fully Connected GEMM", "Conv", "Gelu",
"ReorderOutput", ...). This is how the fused graph's per-backend forms were chosen (docs/deploy.md).
Per-operator times include the profiler's own overhead, so their sum is a little above the latency.
"""
from __future__ import annotations

import argparse
import collections
import json
import re
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from tqdm import tqdm

from edgevit.bench.runners import default_img_size, load_model
from edgevit.deploy.export import save_onnx, save_pte, session_options
from edgevit.utils.io import write_text_atomic


def _summary(model, fused, size, threads, runs, report, ops):
    kinds = collections.Counter()
    for o in ops:
        kinds[o["kind"]] += o["median_ms"]
    total = sum(kinds.values())
    return {"model": model, "fused": fused, "img_size": size, "threads": threads, "runs": runs,
            "export": report, "total_ms": total, "ops": len(ops),
            "by_kind": [{"kind": k, "ms": v, "share": v / total} for k, v in kinds.most_common()], "per_op": ops}


def profile_executorch(net, x, threads: int, runs: int, warmup: int, desc: str):
    from executorch.devtools import Inspector
    from executorch.extension.pybindings import portable_lib

    with tempfile.TemporaryDirectory() as tmp:
        pte, trace = Path(tmp) / "model.pte", Path(tmp) / "trace.etdp"
        report = save_pte(net, x, pte)
        portable_lib._unsafe_reset_threadpool(threads)
        method = portable_lib._load_for_executorch(str(pte), enable_etdump=True, debug_buffer_size=0)
        for _ in tqdm(range(warmup + runs), desc=desc, file=sys.stderr):
            method.forward((x,))
        method.write_etdump_result_to_file(str(trace))
        df = Inspector(etdump_path=str(trace)).to_dataframe()
    ops = []
    for name, raw in zip(df.event_name, df.raw):
        if re.search(r"Method::|Program::|DELEGATE_CALL|OPERATOR_CALL|Execute", name):
            continue
        ops.append({"op": name, "kind": re.sub(r" #\d+$", "", name), "median_ms": statistics.median(raw[warmup:])})
    return report, ops


def profile_onnxruntime(net, x, threads: int, runs: int, warmup: int, desc: str):
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        save_onnx(net, x, path)
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
            img_size: int | None = None):
    if runtime not in PROFILERS:
        raise ValueError(f"--runtime {runtime!r} is not one of {', '.join(PROFILERS)}")
    torch.set_num_threads(threads)
    net = load_model(model, fused=fused, runtime=runtime)
    size = img_size or default_img_size(net)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    report, ops = PROFILERS[runtime](net, x, threads, runs, 3, f"{model} ({runtime}, profiled)")
    return _summary(model, fused, size, threads, runs, report, ops)


PROFILERS = {"executorch": profile_executorch, "onnxruntime": profile_onnxruntime}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="an `edgevit bench` model name, e.g. edgevit_xxs or mobilenetv2_100")
    p.add_argument("--runtime", default="executorch", choices=list(PROFILERS))
    p.add_argument("--unfused", action="store_true", help="EdgeViT: the release graph instead of the fused one")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--img-size", type=int, default=None)
    p.add_argument("--top", type=int, default=0, help="also list the N slowest operators")
    p.add_argument("--json", default=None, help="write the whole profile to this file")
    args = p.parse_args()
    res = profile(args.model, not args.unfused, args.runtime, args.runs, args.threads, args.img_size)
    print(f"{args.model} ({'unfused' if args.unfused else 'fused'}, {args.runtime}): {res['ops']} operators, "
          f"{res['total_ms']:.2f} ms in total (median per operator, summed)")
    for k in res["by_kind"]:
        print(f"  {k['ms']:7.3f} ms {100 * k['share']:5.1f}%  {k['kind']}")
    for o in sorted(res["per_op"], key=lambda o: -o["median_ms"])[:args.top]:
        print(f"    {o['median_ms']:.3f} ms  {o['op']}")
    if args.json:
        write_text_atomic(args.json, json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
