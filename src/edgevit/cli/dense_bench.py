"""`edgevit detect|segment bench`: the dense models' latency in a runtime (`edgevit.bench.dense`)."""
from __future__ import annotations

import argparse

from ..models import VARIANTS
from .args import add_overwrite_arg, add_progress_arg
from .outputs import check_output_file, emit_results


def add_bench_parser(sub, task: str) -> None:
    from ..dense import registry
    from ..deploy import runtimes
    from ..utils.options import image_size, nonneg_int, positive_int, thread_count

    ours = [a for a in registry.entries(task) if a.edgevit]
    others = [a.name for a in registry.entries(task) if not a.edgevit]
    p = sub.add_parser("bench", help=f"latency of the {task} models in a runtime, fused and release body",
                       description=f"{', '.join(a.name for a in ours)} beside {', '.join(others)}: each made by "
                                   "the dense export (the one checked writer; random weights) into a temporary "
                                   "folder and read back with the public loader, then --runs interleaved rounds, "
                                   "median with a 95% confidence interval, params and GMACs; post-processing of "
                                   "raw-output files timed separately. A model the runtime cannot take, or a "
                                   "file below its precision's rule, is listed as not measured with the reason.")
    p.add_argument("--runtime", default="executorch", choices=[r.name for r in runtimes.RUNTIMES.values() if r.format],
                   help="the runtime whose files are timed (default executorch)")
    p.add_argument("--models", nargs="+", default=None, metavar="ARCH",
                   help=f"EdgeViT heads ({', '.join(a.name for a in ours)}; default: "
                        f"{', '.join(a.name for a in ours if a.bench)})")
    p.add_argument("--variants", nargs="+", default=["edgevit_xxs"], choices=VARIANTS, help="EdgeViT bodies")
    p.add_argument("--edgevit-form", default="both", choices=("fused", "unfused", "both"))
    p.add_argument("--no-baselines", dest="baselines", action="store_false", help="leave torchvision's out")
    p.add_argument("--img-size", type=image_size, default=None, help="square input for every model (default: "
                                                                     "each model's, 512 / 320)")
    if any(a.quantizable for a in ours):
        p.add_argument("--precision", nargs="+", default=["fp32"], choices=runtimes.all_precisions(),
                       help="precisions (each model once per precision, interleaved; the runtime's writers: "
                            f"{runtimes.precision_help()}); calibrated ones on random inputs (timing only)")
        p.add_argument("--argmax", action="store_true", help="end every model with its class map (uint8) instead "
                                                             "of logits at the input size")
    p.add_argument("--threads", type=thread_count, default=2)
    p.add_argument("--runs", type=positive_int, default=30)
    p.add_argument("--warmup", type=nonneg_int, default=5)
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE",
                   help="write the results document to FILE (or print it with no FILE)")
    p.add_argument("--csv", default=None, metavar="FILE")
    add_overwrite_arg(p, "the --json / --csv files")
    add_progress_arg(p)
    p.set_defaults(func=run_bench, _task=task)


def run_bench(args: argparse.Namespace) -> int:

    from ..bench.dense import dense_plan, format_dense_table, run_dense_bench, to_dense_csv
    from ..deploy import runtimes
    from .args import show_progress

    for flag, path in (("--json", args.json if args.json != "-" else None), ("--csv", args.csv)):
        if path:
            check_output_file(path, flag, overwrite=args.overwrite)
    rt = runtimes.get(args.runtime)
    rt.require(writing=True)
    precisions = list(dict.fromkeys(getattr(args, "precision", ["fp32"])))
    entries = dense_plan(args._task, args.variants, args.edgevit_form, args.models, args.baselines, precisions,
                         runtime=args.runtime)
    doc = run_dense_bench(args._task, entries, args.runtime, args.threads, args.runs, args.warmup, args.img_size,
                          show_progress=show_progress(args), argmax=bool(getattr(args, "argmax", False)))
    emit_results(args, doc, format_dense_table(doc), to_dense_csv(doc))
    return 0
