"""`edgevit bench`: latency with the paper's protocol (batch 1, fp32, CPU, warm-up, N timed passes)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import ConfigError
from ..utils.options import image_size, nonneg_int, positive_int, thread_count
from .args import add_overwrite_arg, add_progress_arg, show_progress
from .outputs import check_output_file, emit_results


def register(sub: argparse._SubParsersAction) -> None:
    from ..bench.bench import DEFAULT_MODELS, FORMS, GROUPS
    from ..bench.matrix import MATRIX_MODELS
    from ..deploy.runtimes import RUNTIMES, all_precisions, names
    p = sub.add_parser("bench", help="CPU latency of EdgeViTs and baselines, batch 1, fp32 or int8",
                       description="Batch 1, fp32, CPU: every model built and warmed up, then --runs rounds, each "
                                   "timing every model once in a new random order (load on the machine hits "
                                   "all alike); median with a 95% confidence interval, pairs whose intervals "
                                   "overlap marked '~'. EdgeViTs run fused and unfused; baselines in timm's "
                                   "deploy form; the paper's Table 2 params/FLOPs beside them. Default models: "
                                   + ", ".join(DEFAULT_MODELS))
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), metavar="MODEL",
                   help="model names (EdgeViT variants or any timm model) or groups: "
                        + "; ".join(f"{g} = {' '.join(ms)}" for g, ms in GROUPS.items()))
    p.add_argument("--runtime", default="eager", choices=(*names(), "all"),
                   help="runtime (default eager); all = the runtime x precision matrix: every runtime that writes a "
                        "file and is installed, each --precision it has (default models there: "
                        f"{' '.join(MATRIX_MODELS)})")
    p.add_argument("--threads", type=thread_count, default=2, help="CPU threads (default 2)")
    p.add_argument("--runs", type=positive_int, default=50, help="timed forward passes per model (default 50)")
    p.add_argument("--warmup", type=nonneg_int, default=10, help="untimed passes before timing (default 10)")
    p.add_argument("--img-size", type=image_size, default=None,
                   help="square input size for every model (default: each model's own, MobileViT 256)")
    p.add_argument("--edgevit-form", default="both", choices=FORMS, help="EdgeViTs fused, unfused or both")
    p.add_argument("--ablations", action="store_true",
                   help="add the paper's Table-4 variants of XXS, each scaled to 0.52-0.56 GMACs, and print the "
                        "paper's Table 4 beside them with whether its orderings hold here")
    p.add_argument("--precision", nargs="+", default=["fp32"], choices=(*all_precisions(), "all"),
                   help="one or more (each model once per precision, interleaved in the same rounds), or all the "
                        "runtime has: " + "; ".join(f"{r.name} {'/'.join(r.precisions)}" for r in RUNTIMES.values()
                                                    if r.format) + ". Each is the file export --quantize of "
                        "that name writes (int8: full-integer; int8-...: the runtime's other int8 forms)")
    p.add_argument("--calib", default=None, metavar="DIR",
                   help="int8 calibration images (a folder), or 'random' (timing only, labelled so)")
    p.add_argument("--calib-images", type=positive_int, default=64, help="calibration images per model (default 64)")
    p.add_argument("--keep-going", action="store_true", help="skip a model that fails to export/run")
    p.add_argument("--checkpoint", default=None, metavar="CK",
                   help="--runtime all: the EdgeViT's weights (a training run's checkpoint); baselines stay random")
    p.add_argument("--data", default=None, metavar="VAL",
                   help="--runtime all: an ImageFolder split: each file's top-1 on it (models with --checkpoint) "
                        "and the images the files are compared with PyTorch on")
    p.add_argument("--check-images", type=positive_int, default=16,
                   help="--runtime all: images each file is compared with PyTorch fp32 on (default 16)")
    p.add_argument("--min-top1", type=float, default=None, metavar="PCT",
                   help="--runtime all with --checkpoint and --data: a file whose top-1 is under PCT is a failed cell "
                        "(❌, not timed)")
    p.add_argument("--plot", default=None, metavar="FILE",
                   help="--runtime all: latency by cell as a .png or .svg")
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE",
                   help="write the results document to FILE (or print it with no FILE)")
    p.add_argument("--csv", default=None, metavar="FILE", help="write the result rows as CSV")
    add_overwrite_arg(p, "the --json / --csv files")
    add_progress_arg(p)
    p.set_defaults(func=run)


def precisions_arg(asked, rt) -> list:
    """--precision as a list: "all" = every precision `rt` writes; one the runtime lacks is refused by name."""
    from ..deploy.runtimes import RUNTIMES

    if "all" in asked:
        has = list(rt.precisions or ("fp32",))
        others = [p for r in RUNTIMES.values() for p in r.precisions if p not in has]
        if others:  # said, not silently dropped
            import warnings

            warnings.warn(f"--precision all: --runtime {rt.name} has {'/'.join(has)} only; "
                          f"{', '.join(dict.fromkeys(others))} not run (--runtime all runs every runtime's)")
        return has
    precisions = list(dict.fromkeys(asked))
    for p in precisions:
        if p not in (rt.precisions or ("fp32",)):
            which = " or ".join(r.name for r in RUNTIMES.values() if p in r.precisions)
            raise ConfigError(f"--precision {p} runs in --runtime {which}, not {rt.name}")
    return precisions


def run(args: argparse.Namespace) -> int:
    from ..bench.bench import ablation_check, add_paper_columns, format_ablations, format_table, plan, run_bench, to_csv
    from ..deploy import runtimes

    for flag, path in (("--json", args.json if args.json != "-" else None), ("--csv", args.csv)):
        if path:  # (two outputs that are one file are refused there)
            check_output_file(path, flag, overwrite=args.overwrite)
    if args.runtime == "all":
        return run_matrix_command(args)
    for flag, dest in (("--checkpoint", "checkpoint"), ("--data", "data"), ("--plot", "plot"),
                       ("--min-top1", "min_top1")):
        if getattr(args, dest) is not None:
            raise ConfigError(f"{flag}: only used with --runtime all")
    rt = runtimes.get(args.runtime)
    rt.require()
    precisions = precisions_arg(args.precision, rt)
    if any(runtimes.calibrated(p) for p in precisions):
        from ..deploy.quantize import RANDOM, calibration_files

        if args.calib is None:
            raise ConfigError(f"--precision {next(p for p in precisions if runtimes.calibrated(p))} needs "
                              "--calib DIR (calibration images), or --calib random for timing only")
        if args.calib != RANDOM:
            calibration_files(args.calib, 1)  # a folder without images: refused before any model is built
    elif args.calib is not None or "calib_images" in getattr(args, "_explicit", ()):
        flag = "--calib" if args.calib is not None else "--calib-images"
        raise ConfigError(f"{flag}: only used with --precision int8")
    entries = plan(args.models, args.edgevit_form, args.ablations, precisions)
    doc = run_bench(entries, args.runtime, args.threads, args.runs, args.warmup, args.img_size,
                    show_progress=show_progress(args), on_error="skip" if args.keep_going else "raise",
                    calib=args.calib, calib_images=args.calib_images)
    add_paper_columns(doc)
    if args.ablations:
        doc["ablation_check"] = ablation_check(doc)
    table = format_table(doc) + ("\n\n" + format_ablations(doc["ablation_check"]) if args.ablations else "")
    emit_results(args, doc, table, to_csv(doc))
    return 0


def run_matrix_command(args: argparse.Namespace) -> int:
    """`bench --runtime all`: the runtime x precision matrix (edgevit.bench.matrix)."""
    from ..bench.bench import to_csv
    from ..bench.matrix import MATRIX_MODELS, ROW_KEYS, format_matrix, plot_matrix, run_matrix
    from ..deploy.quantize import RANDOM, calibration_files
    from ..utils.inputs import require_file

    explicit = getattr(args, "_explicit", ())
    for flag, dest in (("--ablations", "ablations"), ("--edgevit-form", "edgevit_form")):
        if dest in explicit or (dest == "ablations" and args.ablations):
            raise ConfigError(f"{flag}: not used with --runtime all (each cell runs the fused EdgeViT)")
    if args.plot:
        if Path(args.plot).suffix.lower() not in (".png", ".svg"):
            raise ConfigError(f"--plot {args.plot}: expected a .png or .svg file name")
        check_output_file(args.plot, "--plot", overwrite=args.overwrite)
    if args.min_top1 is not None and not (args.checkpoint and args.data and 0 <= args.min_top1 <= 100):
        raise ConfigError(f"--min-top1 {args.min_top1:g}: expected a percentage in [0, 100], with --checkpoint and "
                          "--data (the files' top-1 it is a floor on)")
    if args.checkpoint:
        require_file(args.checkpoint, "--checkpoint")
    if args.data and not Path(args.data).is_dir():
        raise ConfigError(f"--data {args.data}: no such folder; expected an ImageFolder split (class folders)")
    if args.calib and args.calib != RANDOM:
        calibration_files(args.calib, 1)
    models = args.models if "models" in explicit else list(MATRIX_MODELS)
    doc = run_matrix(models, ("all",), args.precision, checkpoint=args.checkpoint, data=args.data,
                     calib=args.calib, calib_images=args.calib_images, check_images=args.check_images,
                     runs=args.runs, warmup=args.warmup, threads=args.threads, img_size=args.img_size,
                     show_progress=show_progress(args), min_top1=args.min_top1)
    emit_results(args, doc, format_matrix(doc), to_csv(doc, ROW_KEYS))
    if args.plot and doc["results"]:
        plot_matrix(doc, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0
