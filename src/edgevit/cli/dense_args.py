"""What `edgevit detect` and `edgevit segment` share: their training options and start, the run's inputs,
loading a trained model, the predict output."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from ..models import VARIANTS
from ..utils.inputs import require_dir
from ..utils.writes import print_json
from .args import add_json_arg, add_overwrite_arg, add_progress_arg
from .config import apply_config
from .outputs import check_output_dir, check_output_file, emit_results


def add_train_common(p: argparse.ArgumentParser) -> None:
    from ..utils.options import nonneg_float, nonneg_int, positive_float, positive_int, rate

    p.add_argument("--config", default=None, help="YAML file of option: value defaults (e.g. configs/dense_*.yaml)")
    p.add_argument("--model", default="edgevit_xxs", choices=VARIANTS, help="EdgeViT variant")
    p.add_argument("--backbone-checkpoint", default=None,
                   help="ImageNet EdgeViT checkpoint (this project's or the authors' layout) for the backbone")
    p.add_argument("--data", required=False, help="data set root")
    p.add_argument("--output", required=False, help="run directory (last.pth, best.pth, metrics.jsonl, config.yaml)")
    p.add_argument("--batch-size", type=positive_int, default=2,
                   help="images per process, as edgevit train's batch_size (the paper: 2 on each of 8 GPUs, 16 in "
                        "all)")
    p.add_argument("--lr", type=positive_float, default=1e-4)
    p.add_argument("--weight-decay", type=nonneg_float, default=1e-4)
    p.add_argument("--drop-path", type=rate, default=0.1, help="backbone stochastic depth rate")
    p.add_argument("--fpn-channels", type=positive_int, default=256,
                   help="FPN width (paper: 256; smaller only for quick CPU runs, the heads dominate the cost)")
    p.add_argument("--clip-grad", type=positive_float, default=None, help="clip the gradient norm to this value")
    p.add_argument("--workers", type=nonneg_int, default=2, help="DataLoader worker processes per process")
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic kernels (on CPU, kill + --resume auto then equals a straight run)")
    p.add_argument("--resume", default=None, help="'auto' (RUN_DIR/last.pth if present) or a checkpoint path")
    p.add_argument("--overwrite", action="store_true",
                   help="start again in an --output that holds a run (its checkpoints and logs are deleted first)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--log-every", type=positive_int, default=20, help="iterations between metrics.jsonl loss lines")
    add_progress_arg(p)
    add_json_arg(p)


def start_dense_train(args: argparse.Namespace, task: str) -> argparse.Namespace:
    """Config file applied, required options present, the run directory and a --resume file checked: all
    before any work (data sets, model)."""
    from ..errors import ConfigError
    from ..train.state import RUN_FILES, recover_run_dir

    args = apply_config(args, args._parser)
    for n in ("data", "output"):
        if getattr(args, n) in (None, ""):
            raise ConfigError(f"--{n} is required (on the command line or in the --config file)")
    if args.resume and args.overwrite:
        raise ConfigError("--resume and --overwrite exclude each other: continue the run, or start it again")
    if os.environ.get("RANK", "0") == "0":
        recover_run_dir(args.output, "--output")  # a replacement killed outright: the run that is there
    check_output_dir(args.output, "--output", overwrite=args.overwrite, holds=RUN_FILES, resume=bool(args.resume),
                     inputs=[("--data", args.data)])
    if args.resume and args.resume != "auto":
        from ..dense.engine import STATE_KEYS
        from ..train.state import load_training_state

        load_training_state(args.resume, f"edgevit {task} train", STATE_KEYS)
    return args


def run_inputs(args: argparse.Namespace) -> list:
    """(option, path) of the files a dense training run reads: refused inside a run directory it replaces."""
    return [(k, getattr(args, k, None)) for k in ("backbone_checkpoint", "data", "config")]


def setup_run(args: argparse.Namespace):
    from ..train.distributed import init_distributed
    from ..train.state import set_determinism

    info = init_distributed(args.device)
    set_determinism(args.seed + info.rank, args.deterministic)
    return info


def config_of(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if k not in ("func", "json") and not k.startswith("_")}


def report_train(args: argparse.Namespace, result: dict, key: str) -> int:
    """Print how a dense training run ended (`edgevit detect|segment train`)."""
    if args.json:
        print_json({"run_dir": str(args.output), **result})
    else:
        state = "stopped (resume with --resume auto)" if result["stopped"] else "finished"
        last = result["last_eval"] or {}
        print(f"{state} at iteration {result['iteration']}; last {key} {last.get(key, float('nan')):.4f}, "
              f"best {result['best'] if result['best'] is not None else float('nan'):.4f}; run dir {args.output}")
    return 0


def predict_output(args: argparse.Namespace, suffix: str) -> Path:
    """--out, or IMAGE's stem + suffix in the current directory: a .png name that is not the input and does not
    exist (unless --overwrite); checked before any work."""
    from ..errors import ConfigError

    out = Path(args.out) if args.out else Path(Path(args.image).stem + suffix)
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out {out}: expected a .png file name")
    return check_output_file(out, "--out", overwrite=args.overwrite, inputs=[args.image])


def add_predict_output_args(p: argparse.ArgumentParser, suffix: str) -> None:
    p.add_argument("--out", default=None, help=f"output PNG (default: IMAGE_STEM{suffix} here)")
    add_overwrite_arg(p, "--out")


def load_trained(args: argparse.Namespace, task: str):
    """(distributed info, the dense model of --checkpoint on its device) for eval / predict."""
    from ..dense.engine import load_dense_checkpoint
    from ..train.distributed import init_distributed

    info = init_distributed(args.device)
    return info, load_dense_checkpoint(args.checkpoint, task).to(info.device)


def load_image_tensor(path: str):
    """An image file as a float [3, H, W] tensor in [0, 1] (the detectors' input), by the shared reader."""
    from torchvision.transforms.functional import pil_to_tensor

    from ..utils.images import read_image

    return pil_to_tensor(read_image(path)).to(torch.float32).div_(255)


# ---------------------------------------------------------------- export and exported files
def add_export_parser(sub, task: str, archs: str) -> argparse.ArgumentParser:
    """`edgevit detect|segment export`: the options both take (the caller adds its own)."""
    from ..deploy.export import TOLERANCE
    from ..deploy.runtimes import formats
    from ..utils.options import image_size, thread_count

    p = sub.add_parser("export", help=f"export a trained {archs} model (fused EdgeViT body) for a runtime, checked "
                                      "in it",
                       description=f"Fuse the EdgeViT body for the runtime, export at a fixed input size, run the "
                                   f"file in its runtime on a seeded input and compare with PyTorch: logits and raw "
                                   f"head outputs to max |diff| {TOLERANCE:g}, class maps on 99.9% of pixels, "
                                   "detections one by one (score 1e-3, box 0.05 px; masks mean |diff| "
                                   f"{TOLERANCE:g}); int8 files report SQNR and class-map agreement. FILE.json "
                                   "beside it says what the file is and how to read its outputs (docs/dense.md).")
    p.add_argument("--checkpoint", required=True, help=f"last.pth / best.pth of `edgevit {task} train`")
    p.add_argument("--format", required=True, choices=formats(), help="output format")
    p.add_argument("--img-size", type=image_size, nargs="+", default=None, metavar="SIZE",
                   help="input size: one side (square) or H W, multiples of 32 (default: "
                        + ("512" if task == "segment" else "ssdlite 320; retinanet, maskrcnn the checkpoint's "
                           "min and max size, rounded up to 32") + ")")
    p.add_argument("--no-fuse", action="store_true", help="export the release-layout EdgeViT body as is")
    p.add_argument("--threads", type=thread_count, default=2, help="threads for the runtime check (default 2)")
    p.add_argument("-o", "--output", required=True, help="file to write (atomically, after a successful check), "
                                                         "and FILE.json beside it")
    add_overwrite_arg(p, "-o and its FILE.json")
    add_json_arg(p)
    p.set_defaults(func=run_export, _task=task)
    return p


def _export_size(args: argparse.Namespace, meta: dict):
    from ..dense import registry
    from ..errors import ConfigError

    if args.img_size is not None:
        if len(args.img_size) > 2:
            raise ConfigError(f"--img-size {' '.join(map(str, args.img_size))}: expected one side or H W")
        size = (args.img_size[0], args.img_size[-1])
    elif "min_size" in meta and registry.get(meta["arch"]).resize == "fit":  # a detector trained at a size
        size = tuple(-(-int(meta[k]) // 32) * 32 for k in ("min_size", "max_size"))
    else:
        size = (registry.get(meta["arch"]).size,) * 2
    return size  # (multiples of 32: --img-size's type, and the defaults are rounded up)


def run_export(args: argparse.Namespace) -> int:
    from ..dense.engine import load_dense_checkpoint
    from ..dense.export import export_dense
    from ..dense.graphs import check_exportable
    from ..deploy import runtimes
    from ..deploy.export import sidecar_path
    from ..errors import ConfigError

    rt = runtimes.by_format(args.format)
    if not str(args.output).lower().endswith(rt.suffixes):
        raise ConfigError(f"-o {args.output}: expected a {' or '.join(rt.suffixes)} file name for --format "
                          f"{args.format}")
    for companion in rt.files(args.output)[1:]:  # (OpenVINO's .bin, ncnn's .bin: written with -o, refused alike)
        check_output_file(companion, "-o", overwrite=args.overwrite, inputs=[args.checkpoint])
    check_output_file(args.output, "-o", overwrite=args.overwrite, inputs=[args.checkpoint])
    check_output_file(sidecar_path(args.output), "-o's sidecar", overwrite=args.overwrite, inputs=[args.checkpoint])
    precision = getattr(args, "quantize", None) or "fp32"
    calibrated = runtimes.calibrated(precision)
    if calibrated and not args.calib:
        raise ConfigError(f"--quantize {precision} needs --calib ROOT (the training images to calibrate on)")
    if args._task == "segment" and not calibrated:
        for flag, value in (("--calib", args.calib), ("--calib-split", args.calib_split),
                            ("--calib-images", args.calib_images)):
            if value is not None:
                raise ConfigError(f"{flag}: only used with a calibrated --quantize "
                                  f"({', '.join(p for p in runtimes.all_precisions() if runtimes.calibrated(p))})")
    model = load_dense_checkpoint(args.checkpoint, args._task)
    meta = model.meta
    argmax = bool(getattr(args, "argmax", False))
    check_exportable(meta["arch"], args.format, argmax, precision)
    size = _export_size(args, meta)
    rt.require(writing=True)
    calibration = None
    if calibrated:
        from ..dense.export import segmentation_calibration

        require_dir(args.calib, "--calib", "an ADE20K-layout root")
        calibration = segmentation_calibration(args.calib, args.calib_split or "training", meta, size,
                                               args.calib_images or 64)
    report = export_dense(model, args.format, args.output, size, argmax=argmax,
                          max_detections=getattr(args, "max_detections", None), fused=not args.no_fuse,
                          threads=args.threads, meta=meta, precision=precision, calibration=calibration)
    report = {"checkpoint": str(args.checkpoint), **report}
    if args.json:
        print_json(report)
        return 0
    if report["precision"] != "fp32" and "sqnr_db" in report:
        check = (f"{report['precision']} vs fp32 on {report['checked_on']}: logits SQNR {report['sqnr_db']:.1f} dB, "
                 f"class map agrees on {100 * report['pixel_agreement']:.2f}% of pixels")
    elif "max_abs_diff" in report:
        check = f"max |diff| to PyTorch {report['max_abs_diff']:.2e}"
    elif "pixel_agreement" in report:
        check = f"class map agrees with PyTorch's on {100 * report['pixel_agreement']:.2f}% of pixels"
    else:
        tied = f" (+{report['detections_tied']} tied, either kept)" if report["detections_tied"] else ""
        check = (f"{report['detections_checked']} detections as PyTorch's{tied}, max box diff "
                 f"{report['max_box_diff']:.2e} px, max score diff {report['max_score_diff']:.2e}")
    extra = rt.describe(report)
    print(f"wrote {args.output} + {Path(report['sidecar']).name} ({report['bytes'] / 1e6:.2f} MB, {args.format} "
          f"{report['precision']}, {'fused' if report['fused'] else 'unfused'} {meta['variant']} {meta['arch']}, "
          f"{size[0]}x{size[1]}, outputs {', '.join(report['outputs'])}); {report['runtime']}: {check}"
          + (f"; {extra}" if extra else ""))
    return 0


def add_model_source_args(p: argparse.ArgumentParser, task: str) -> None:
    """--checkpoint or --exported (exactly one)."""
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--checkpoint", help=f"last.pth / best.pth of `edgevit {task} train`")
    g.add_argument("--exported", metavar="FILE", help=f"a file of `edgevit {task} export` (its FILE.json beside "
                                                      "it), run in its runtime")
    from ..utils.options import thread_count

    p.add_argument("--threads", type=thread_count, default=2, help="with --exported: threads of the file's "
                                                                   "runtime (default 2)")


def load_model_or_file(args: argparse.Namespace, task: str):
    """(distributed info, the model or exported file, its meta) for eval / predict."""
    if getattr(args, "exported", None):
        from ..dense.files import load_dense_file
        from ..errors import ConfigError
        from ..train.distributed import init_distributed

        if args.device not in ("auto", "cpu"):
            raise ConfigError(f"--device {args.device}: an --exported file runs in its runtime on the CPU")
        f = load_dense_file(args.exported, task, threads=args.threads)
        meta = f.meta.get("model_meta") or {}
        return init_distributed("cpu"), f, meta
    info, model = load_trained(args, task)
    return info, model, model.meta


# ---------------------------------------------------------------- bench
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
    if task == "segment":
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
