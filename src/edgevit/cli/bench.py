"""`edgevit bench`: latency with the paper's protocol (batch 1, fp32, CPU, warm-up, N timed passes)."""
from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    from ..bench.bench import DEFAULT_MODELS, FORMS
    from ..bench.runners import RUNTIMES
    p = sub.add_parser("bench", help="CPU latency of EdgeViTs and baselines, batch 1 fp32",
                       description="Batch 1, fp32, CPU: warm-up, then --runs timed forward passes per model; "
                                   "mean ± std and median. EdgeViTs run fused and unfused; baselines in "
                                   "timm's deploy form. Default models: " + ", ".join(DEFAULT_MODELS))
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), metavar="MODEL",
                   help="model names (EdgeViT variants or any timm model)")
    p.add_argument("--runtime", default="eager", help=f"one of {', '.join(RUNTIMES)} (default eager)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    p.add_argument("--runs", type=int, default=50, help="timed forward passes per model (default 50)")
    p.add_argument("--warmup", type=int, default=10, help="untimed passes before timing (default 10)")
    p.add_argument("--img-size", type=int, default=None,
                   help="square input size for every model (default: each model's own, MobileViT 256)")
    p.add_argument("--edgevit-form", default="both", choices=FORMS, help="EdgeViTs fused, unfused or both")
    p.add_argument("--ablations", action="store_true",
                   help="add the paper's Table-4 variants of XXS, each scaled to 0.52-0.56 GMACs (printed)")
    p.add_argument("--keep-going", action="store_true", help="skip a model that fails to export/run")
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE",
                   help="write the results document to FILE (or print it with no FILE)")
    p.add_argument("--csv", default=None, metavar="FILE", help="write the result rows as CSV")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..bench.bench import format_table, plan, run_bench, to_csv
    from ..bench.runners import check_runtime, require_package
    from ..utils.io import print_json, write_text_atomic

    check_runtime(args.runtime)
    require_package(args.runtime)
    if args.threads < 1:
        raise ValueError(f"--threads {args.threads} must be >= 1")
    entries = plan(args.models, args.edgevit_form, args.ablations)
    doc = run_bench(entries, args.runtime, args.threads, args.runs, args.warmup, args.img_size,
                    on_error="skip" if args.keep_going else "raise")
    if args.json == "-":
        print_json(doc)
    else:
        print(format_table(doc))
        if args.json:
            write_text_atomic(args.json, json.dumps(doc, indent=2) + "\n")
            print(f"wrote {args.json}", file=sys.stderr)
    if args.csv:
        write_text_atomic(args.csv, to_csv(doc))
        print(f"wrote {args.csv}", file=sys.stderr)
    return 0
