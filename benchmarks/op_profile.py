"""Where a model spends its time, per operator, from the runtime's own profiler.

    .venv/bin/python benchmarks/op_profile.py edgevit_xxs                          # ExecuTorch + XNNPACK, fused
    .venv/bin/python benchmarks/op_profile.py edgevit_xxs --unfused
    .venv/bin/python benchmarks/op_profile.py mobilenetv2_100 --runtime onnxruntime --top 10 --json prof.json
    .venv/bin/python benchmarks/op_profile.py edgevit_xxs --runtime onnxruntime --precision int8 \
        --calib out/demo/digits/train --checkpoint out/demo/digits_run/best.pth   # the int8 file
    .venv/bin/python benchmarks/op_profile.py edgevit_xxs --precision fp16        # any precision the runtime writes

The model is exported exactly as `edgevit bench` does it, then run with the runtime's profiler on:
ExecuTorch's event tracer (ETDump, read with `executorch.devtools.Inspector`: one event per XNNPACK
operator) or ONNX Runtime's session profiling (one event per node of the optimised graph). Per operator
the median over the runs, then the total per operator kind ("Fully Connected GEMM", "Conv", "Gelu",
"ReorderOutput", ...). This is how the fused graph's per-backend forms were chosen (docs/deploy.md).
Per-operator times include the profiler's own overhead, so their sum is a little above the latency.
`--runtime litert`: ai-edge-litert's Python interpreter has no per-operator timer, so the profile is the
file's op inventory (ops by kind, TRANSPOSEs, XNNPACK partitions and the ops outside them) and its median
latency; the forms were compared by timing whole files (benchmarks/litert_targets.py --forms).
"""
from __future__ import annotations

import argparse
import json
import sys

from edgevit.bench.profile import PROFILED_RUNTIMES, profile
from edgevit.deploy.runtimes import reduced_precisions
from edgevit.errors import UserError
from edgevit.utils.writes import write_text_atomic


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="an `edgevit bench` model name, e.g. edgevit_xxs or mobilenetv2_100")
    p.add_argument("--runtime", default="executorch", choices=list(PROFILED_RUNTIMES))
    p.add_argument("--unfused", action="store_true", help="EdgeViT: the release graph instead of the fused one")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--img-size", type=int, default=None)
    p.add_argument("--precision", default="fp32", choices=("fp32", *reduced_precisions()),
                   help="the file's precision, as `edgevit bench --precision` writes it (one the runtime has)")
    p.add_argument("--calib", default=None, help="int8 and its forms: calibration images (a folder) or 'random'")
    p.add_argument("--checkpoint", default=None, help="weights (e.g. the digits XXS of make demo)")
    p.add_argument("--top", type=int, default=0, help="also list the N slowest operators")
    p.add_argument("--json", default=None, help="write the whole profile to this file")
    args = p.parse_args()
    try:
        res = profile(args.model, not args.unfused, args.runtime, args.runs, args.threads, args.img_size,
                      args.precision, args.calib, args.checkpoint)
    except UserError as e:  # (a precision the runtime does not write, a missing calibration folder: exit 2)
        p.error(str(e))
    if args.runtime == "litert":  # no per-operator times from its Python interpreter: the op inventory
        e = res["export"]
        print(f"{args.model} ({'unfused' if args.unfused else 'fused'}, litert, fp32): median {res['median_ms']:.2f} "
              f"ms; {e['ops']} ops ({e['transposes']} TRANSPOSE), {e['xnnpack_partitions']} XNNPACK partitions, "
              f"{e['ops_outside_xnnpack']} ops outside them {e['outside_xnnpack']}")
        for kind, n in e["op_counts"].items():
            print(f"  {n:5d}  {kind}")
        if args.json:
            write_text_atomic(args.json, json.dumps(res, indent=2) + "\n")
        return 0
    print(f"{args.model} ({'unfused' if args.unfused else 'fused'}, {args.runtime}, {args.precision}): "
          f"{res['ops']} operators, "
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
