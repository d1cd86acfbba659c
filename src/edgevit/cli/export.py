"""`edgevit export`: fuse an EdgeViT, export it to any runtime's file (`edgevit.deploy.runtimes`) in any precision
the runtime writes, through the one checked writer (`edgevit.deploy.export.export_model`)."""
from __future__ import annotations

import argparse

from ..errors import ConfigError
from ..utils.options import image_size, positive_int, thread_count
from .args import add_json_arg, add_model_args, add_overwrite_arg, add_progress_arg
from .outputs import check_export_output


def add_img_size_arg(p: argparse.ArgumentParser, default_help: str) -> None:
    p.add_argument("--img-size", type=image_size, nargs="+", default=None, metavar="SIZE",
                   help=f"input size: one side (square) or H W, multiples of 32 ({default_help})")


def img_size_arg(args: argparse.Namespace, default: int) -> int | tuple:
    """--img-size as an int (square) or (H, W); `default` when not given."""
    size = args.img_size
    if size is None:
        return default
    if len(size) > 2:
        raise ConfigError(f"--img-size {' '.join(map(str, size))}: expected one side or H W")
    return size[0] if len(size) == 1 or size[0] == size[1] else (size[0], size[1])


def add_quantize_args(p: argparse.ArgumentParser) -> None:
    from ..deploy.runtimes import precision_help, reduced_precisions

    p.add_argument("--quantize", choices=reduced_precisions(), default=None,
                   help=f"a reduced-precision file, each runtime's own flow ({precision_help()}); calibrated "
                        "precisions (int8...) need --calib; a quantization-aware checkpoint (train --qat) is "
                        "converted to the int8 it was trained as. Each file is refused below its precision's "
                        "rule (edgevit export --help's description)")
    p.add_argument("--calib", default=None, metavar="DIR",
                   help="calibration images (any folder of images, e.g. the train split), read with the "
                        "model's eval transform; 'random' = random inputs (timing only, labelled so). Also the "
                        "images 16-bit files are checked on")
    p.add_argument("--calib-images", type=positive_int, default=256,
                   help="how many calibration images (a seeded sample; default 256)")


def register(sub: argparse._SubParsersAction) -> None:
    from ..deploy.runtimes import RUNTIMES, formats
    from ..deploy.runtimes.base import FLOAT_RULE, HALF_RULE, INT8_RULE

    kinds = ", ".join(f"{r.format} = {r.title}" for r in RUNTIMES.values() if r.format)
    p = sub.add_parser("export", help="fuse and export a model for deployment (fp32 or int8), checked in its runtime",
                       description="Fuse (EdgeViTs), export, then run the file in its runtime and compare with "
                                   "PyTorch fp32; the file is written only if it meets its precision's rule: fp32 "
                                   f"{FLOAT_RULE.describe()} on a random input; int8 {INT8_RULE.describe()}, on "
                                   f"--calib images calibration did not use; fp16/bf16 {HALF_RULE.describe()}. "
                                   f"{kinds}.")
    add_model_args(p)
    p.add_argument("--format", required=True, choices=formats(), help="output format")
    add_img_size_arg(p, "default: the checkpoint's training size, else 224")
    p.add_argument("--no-fuse", action="store_true", help="export the release-layout graph as is")
    add_quantize_args(p)
    app_first = " and ".join(r.format for r in RUNTIMES.values() if r.format and r.default_layout == "NHWC")
    p.add_argument("--input-layout", choices=("nchw", "nhwc"), default=None,
                   help="nhwc: the file takes [1, H, W, 3] images in [0, 1] (what camera pipelines, MediaPipe and "
                        "the web pass), with the mean/std in the graph and class probabilities out; nchw: [1, 3, H, "
                        f"W], normalised by the app, logits out (default: nhwc for {app_first}, whose apps feed "
                        "NHWC; nchw for the others)")
    p.add_argument("--input-dtype", choices=("float32", "uint8"), default="float32",
                   help="uint8: the file takes camera bytes 0-255, scaled and normalised in the graph")
    p.add_argument("--threads", type=thread_count, default=2, help="threads for the runtime check (default 2)")
    p.add_argument("-o", "--output", required=True, help="file to write (atomically, after a successful check)")
    add_overwrite_arg(p, "-o")
    add_progress_arg(p)
    add_json_arg(p)
    p.set_defaults(func=run, _flags={"precision": "quantize"})  # (the library's `precision` is --quantize here)


def check_quantize_args(args: argparse.Namespace, fmt: str) -> None:
    """--quantize needs a format that has an int8 flow and --calib (or a QAT checkpoint); --calib alone
    means nothing."""
    from ..deploy.runtimes import RUNTIMES, by_format

    if args.quantize is None:
        for flag, dest in (("--calib", "calib"), ("--calib-images", "calib_images")):
            if dest in getattr(args, "_explicit", ()) or (dest == "calib" and args.calib is not None):
                raise ConfigError(f"{flag}: only used with --quantize int8")
        return
    if args.quantize not in by_format(fmt).precisions:
        which = " or ".join(r.format for r in RUNTIMES.values() if args.quantize in r.precisions)
        raise ConfigError(f"--quantize {args.quantize} is available for --format {which}, not {fmt}")


# images of --calib that calibration does not use, on which the int8 file's agreement and SQNR are measured
CHECK_IMAGES = 64


def calibration(args: argparse.Namespace, size, cfg: dict, model):
    """(images, label, check images, what they are) for --calib: the model's eval transform (the checkpoint's
    crop and interpolation, the model's mean/std) on --calib-images images of DIR and up to CHECK_IMAGES others,
    or random inputs when asked for by name."""
    from ..deploy.quantize import RANDOM, calibration_and_check

    images, check, checked_on = calibration_and_check(model, args.calib, args.calib_images, CHECK_IMAGES, size,
                                                      cfg.get("crop_pct"), cfg.get("eval_interpolation"))
    if args.calib == RANDOM:
        return images, "random (timing only: accuracy meaningless)", check, checked_on
    return images, f"{len(images)} images of {args.calib}", check, checked_on


def file_metadata(name: str, model, classes, size, precision: str, layout: str = "NCHW", dtype: str = "float32"):
    """What the file will say about itself (`deploy.metadata`): the model's preprocessing as timm resolves it (the
    checkpoint's size, crop and interpolation; the model's mean/std), its class names (the run's; ImageNet's for
    1000 classes; else the indices)."""
    from timm.data import ImageNetInfo, resolve_data_config

    from ..deploy.metadata import classifier_metadata
    from ..utils.images import size_hw

    n = int(model.num_classes)
    if not classes:
        classes = ImageNetInfo().label_descriptions() if n == 1000 else [str(i) for i in range(n)]
    app = (layout, dtype) != ("NCHW", "float32")
    return classifier_metadata(name, classes, size_hw(size), precision, resolve_data_config({}, model=model), n,
                               layout, dtype, "in the graph" if app else "app")


def run(args: argparse.Namespace) -> int:
    from ..deploy import fuse, runtimes
    from ..deploy.export import export_model
    from ..deploy.quantize import is_qat_checkpoint, load_qat_model, random_calibration
    from ..models import VARIANTS
    from ..models.checkpoint import model_from_checkpoint, read_state_dict
    from ..utils.images import warn_if_not_trained_size
    from ..utils.writes import print_json

    check_quantize_args(args, args.format)
    rt = check_export_output(args, [args.checkpoint, args.calib])
    qat = bool(args.checkpoint) and is_qat_checkpoint(args.checkpoint)
    if qat and args.quantize != "int8":
        raise ConfigError(f"--checkpoint {args.checkpoint} was trained quantization-aware (train --qat): "
                          "export it with --quantize int8 (the int8 it was trained as)")
    if qat and args.no_fuse:
        raise ConfigError("--no-fuse: a quantization-aware checkpoint exports the fused graph it was trained as")
    if runtimes.calibrated(args.quantize or "") and not qat and args.calib is None:
        raise ConfigError(f"--quantize {args.quantize} needs --calib DIR (calibration images, e.g. the train "
                          "split), or --calib random for a timing-only file")
    model, meta = model_from_checkpoint(args.model, args.checkpoint) if not qat else (None, None)
    cfg = meta["config"] if meta else read_state_dict(args.checkpoint)["config"]
    size = img_size_arg(args, int(cfg.get("img_size") or 224))
    warn_if_not_trained_size(size, cfg.get("img_size"), f"exporting {args.output}")
    if qat:
        prepared, model, meta = load_qat_model(args.checkpoint, size)
    name = meta["name"]
    precision = args.quantize or "fp32"
    # (the runtime's app layout for the files that take images; a full-integer file keeps the integer input its
    # runtime expects, and a quantization-aware checkpoint the graph it trained as: NCHW)
    layout = args.input_layout.upper() if args.input_layout else \
        "NCHW" if qat or rt.writer(precision).integer_input else rt.default_layout
    dtype = args.input_dtype
    app = (layout, dtype) != ("NCHW", "float32")
    for flag, value, takes in (("--input-layout", layout, "input_layouts"), ("--input-dtype", dtype, "input_dtypes")):
        if value not in getattr(rt, takes):
            which = [r.format for r in runtimes.RUNTIMES.values() if r.format and value in getattr(r, takes)]
            raise ConfigError(f"{flag} {value.lower() if flag == '--input-layout' else value}: {rt.name} files take "
                              f"{' or '.join(getattr(rt, takes))}; {', '.join(which)} take {value}")
    metadata = file_metadata(name, model, meta.get("classes"), size, precision, layout, dtype)
    fused = name in VARIANTS and not args.no_fuse
    if fused and not qat:  # (a QAT model is its fused form already)
        model = fuse(model, rt.name)
    if app:
        from timm.data import resolve_data_config

        from ..deploy.app_input import AppInput

        cfg_ = resolve_data_config({}, model=model)
        model = AppInput(model, layout, dtype, cfg_["mean"], cfg_["std"])
    if args.calib:  # int8: calibration images and others to check on; 16-bit floats: only images to check on
        images, label, check, checked_on = calibration(args, size, cfg, model)
        check = images if check is None else check
    elif precision != "fp32":
        images, label, check, checked_on = None, "", random_calibration(8, size, seed=1), "8 random inputs"
    else:
        images, label, check, checked_on = (None,) * 4
    report = export_model(model, args.format, args.output, img_size=size, threads=args.threads, precision=precision,
                          images=images if rt.writer(precision).calibrated else None, calibrated=label or "",
                          check_x=check, checked_on=checked_on or "", prepared=prepared if qat else None,
                          trained=bool(args.checkpoint) and args.calib not in (None, "random"), metadata=metadata)
    report = {"model": name, "fused": fused, **report}
    if args.json:
        print_json(report)
        return 0
    h, w = report["img_size"]
    extra = rt.describe(report)
    extra = f"; {extra}" if extra else ""
    if args.no_fuse and name in VARIANTS and not args.json:
        print(f"(--no-fuse: the release-layout graph of {name}, converted as it is, for comparison)")
    if args.quantize:
        check = (f"{report['runtime']} vs {report['checked_against']} in PyTorch on {report['checked_on']}: "
                 f"top-1 agreement {report['top1_agreement']:.1f}%, logits SQNR {report['sqnr_db']:.1f} dB")
    else:
        check = f"{report['runtime']} vs PyTorch max |diff| {report['max_abs_diff']:.2e}"
    print(f"wrote {args.output} ({report['bytes'] / 1e6:.2f} MB, {args.format} {report['precision']}, "
          f"{'fused' if fused else 'unfused'} {name}, {h}x{w}); {check}{extra}")
    return 0
