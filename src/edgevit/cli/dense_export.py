"""`edgevit detect|segment export`: a trained dense model through the one checked writer, in every precision the
runtime writes that the architecture's outputs can be judged in."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..utils.inputs import require_dir
from ..utils.writes import print_json
from .args import add_json_arg, add_overwrite_arg
from .outputs import check_export_output


def add_export_parser(sub, task: str) -> argparse.ArgumentParser:
    """`edgevit TASK export`, its options from the task's architectures (`dense.registry`): detectors keep
    `--max-detections`; architectures whose logits a precision's rule can judge (segmenters) take `--argmax` and
    every reduced precision the runtimes write (`--quantize`, calibrated on `--calib`)."""
    from ..dense import registry
    from ..deploy.export import TOLERANCE
    from ..deploy.runtimes import formats, precision_help, reduced_precisions
    from ..utils.options import image_size, positive_int, thread_count

    archs = [a for a in registry.entries(task) if a.edgevit]
    p = sub.add_parser("export", help=f"export a trained {', '.join(a.name for a in archs)} model (fused EdgeViT "
                                      "body) for a runtime, checked in it",
                       description=f"Fuse the EdgeViT body for the runtime, export at a fixed input size, run the "
                                   f"file in its runtime on a seeded input and compare with PyTorch: logits and raw "
                                   f"head outputs to max |diff| {TOLERANCE:g}, class maps on 99.9% of pixels, "
                                   "detections one by one (score 1e-3, box 0.05 px; masks mean |diff| "
                                   f"{TOLERANCE:g}); reduced-precision files by their precision's rule (logits SQNR, "
                                   "class-map agreement). FILE.json beside it says what the file is and how to read "
                                   "its outputs (docs/dense.md).")
    p.add_argument("--checkpoint", required=True, help=f"last.pth / best.pth of `edgevit {task} train`")
    p.add_argument("--format", required=True, choices=formats(), help="output format")
    sizes = "; ".join(f"{a.name} " + ("the checkpoint's min and max size, rounded up to 32" if "min_size" in a.options
                                     and a.resize == "fit" else str(a.size)) for a in archs)
    p.add_argument("--img-size", type=image_size, nargs="+", default=None, metavar="SIZE",
                   help=f"input size: one side (square) or H W, multiples of 32 (default: {sizes})")
    p.add_argument("--no-fuse", action="store_true", help="export the release-layout EdgeViT body as is")
    p.add_argument("--threads", type=thread_count, default=2, help="threads for the runtime check (default 2)")
    p.add_argument("-o", "--output", required=True, help="file to write (atomically, after a successful check), "
                                                         "and FILE.json beside it")
    if any(a.outputs != "logits" for a in archs):
        p.add_argument("--max-detections", type=positive_int, default=None,
                       help="detections kept per image after NMS (default: the model's; RetinaNet and SSDLite 300, "
                            "Mask R-CNN 100)")
    if any(a.quantizable for a in archs):
        p.add_argument("--argmax", action="store_true",
                       help="end the graph with the class map (uint8 up to 256 classes, else int32) instead of "
                            "logits")
        p.add_argument("--quantize", choices=reduced_precisions(), default=None,
                       help=f"a reduced-precision file by the runtime's own flow ({precision_help()}); calibrated "
                            "precisions (int8...) calibrate on --calib; refused below its precision's rule")
        p.add_argument("--input-layout", choices=("nchw", "nhwc"), default="nchw",
                       help="nhwc: the app-ready file MediaPipe's ImageSegmenter runs as it is: an NHWC image in "
                            "[0, 1], the mean/std in the graph, class probabilities [1, H, W, C] out, and (tflite) "
                            "the TFLite metadata with the class names (default nchw: normalised NCHW in, logits out)")
        p.add_argument("--calib", default=None, metavar="ROOT", help="ADE20K-layout root of the calibration images")
        p.add_argument("--calib-split", default=None, help="its split to calibrate on (default training)")
        p.add_argument("--calib-images", type=positive_int, default=None,
                       help="how many (a seeded sample; default 64)")
    add_overwrite_arg(p, "-o and its FILE.json")
    add_json_arg(p)
    p.set_defaults(func=run_export, _task=task, _flags={"precision": "quantize", "layout": "input_layout"})
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
    from ..errors import ConfigError

    rt = check_export_output(args, [args.checkpoint], sidecar=True)
    precision = getattr(args, "quantize", None) or "fp32"
    calibrated = runtimes.calibrated(precision)
    if calibrated and not args.calib:
        raise ConfigError(f"--quantize {precision} needs --calib ROOT (the training images to calibrate on)")
    if hasattr(args, "calib") and not calibrated:
        for flag, value in (("--calib", args.calib), ("--calib-split", args.calib_split),
                            ("--calib-images", args.calib_images)):
            if value is not None:
                raise ConfigError(f"{flag}: only used with a calibrated --quantize "
                                  f"({', '.join(p for p in runtimes.all_precisions() if runtimes.calibrated(p))})")
    model = load_dense_checkpoint(args.checkpoint, args._task)
    meta = model.meta
    argmax = bool(getattr(args, "argmax", False))
    layout = getattr(args, "input_layout", "nchw").upper()
    check_exportable(meta["arch"], args.format, argmax, precision, layout)
    size = _export_size(args, meta)
    calibration = None
    if calibrated:
        from ..dense.export import segmentation_calibration

        require_dir(args.calib, "--calib", "an ADE20K-layout root")
        calibration = segmentation_calibration(args.calib, args.calib_split or "training", meta, size,
                                               args.calib_images or 64)
    report = export_dense(model, args.format, args.output, size, argmax=argmax,
                          max_detections=getattr(args, "max_detections", None), fused=not args.no_fuse,
                          threads=args.threads, meta=meta, precision=precision, calibration=calibration,
                          layout=layout)
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
