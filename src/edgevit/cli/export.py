"""`edgevit export`: fuse an EdgeViT, export it (ExecuTorch/ONNX/TorchScript lite/TorchScript), verify it."""
from __future__ import annotations

import argparse

from ..errors import ConfigError
from ..utils.options import image_size, positive_int
from .common import add_json_arg, add_model_args, add_overwrite_arg, add_progress_arg, check_output_file


SUFFIXES = {"pte": (".pte",), "onnx": (".onnx",), "ptl": (".ptl",), "torchscript": (".pt", ".pth", ".torchscript")}


def register(sub: argparse._SubParsersAction) -> None:
    from ..deploy.export import FORMATS
    p = sub.add_parser("export", help="fuse and export a model for deployment, checked in its runtime",
                       description="Fuse (EdgeViTs), export, then run the file in its runtime on a random "
                                   "input and compare with PyTorch (error if max |diff| > 1e-3). pte = "
                                   "ExecuTorch + XNNPACK, onnx = ONNX (checked with onnxruntime), ptl = "
                                   "TorchScript lite interpreter, torchscript = frozen TorchScript.")
    add_model_args(p)
    p.add_argument("--format", required=True, choices=FORMATS, help="output format")
    p.add_argument("--img-size", type=image_size, default=224, help="square input size, a multiple of 32 (default 224)")
    p.add_argument("--no-fuse", action="store_true", help="export the release-layout graph as is")
    p.add_argument("--threads", type=positive_int, default=2, help="threads for the runtime check (default 2)")
    p.add_argument("-o", "--output", required=True, help="file to write (atomically, after a successful check)")
    add_overwrite_arg(p, "-o")
    add_progress_arg(p)
    add_json_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..bench.runners import load_model
    from ..deploy import fuse
    from ..deploy.export import FORMAT_RUNTIME, export_model, require_runtime
    from ..models import VARIANTS
    from ..utils.io import print_json

    check_output_file(args.output, "-o", overwrite=args.overwrite, inputs=[args.checkpoint])
    suffixes = SUFFIXES[args.format]
    if not str(args.output).lower().endswith(suffixes):
        raise ConfigError(f"-o {args.output}: expected a {' or '.join(suffixes)} file name for --format {args.format}")
    require_runtime(FORMAT_RUNTIME[args.format])
    model = load_model(args.model, fused=False, checkpoint=args.checkpoint)
    fused = args.model in VARIANTS and not args.no_fuse
    if fused:
        model = fuse(model, FORMAT_RUNTIME[args.format])
    report = export_model(model, args.format, args.output, img_size=args.img_size, threads=args.threads)
    report = {"model": args.model, "fused": fused, **report}
    if args.json:
        print_json(report)
    else:
        extra = ""
        if args.format == "pte":
            extra = (f"; XNNPACK delegate partitions: {report['delegate_partitions']}, non-delegated ops: "
                     f"{report['non_delegated_ops']}"
                     + (f" ({', '.join(f'{k} x{v}' for k, v in report['non_delegated'].items())})"
                        if report["non_delegated_ops"] else ""))
        print(f"wrote {args.output} ({report['bytes'] / 1e6:.2f} MB, {args.format}, "
              f"{'fused' if fused else 'unfused'} {args.model}, {args.img_size}x{args.img_size}); "
              f"{report['runtime']} vs PyTorch max |diff| {report['max_abs_diff']:.2e}{extra}")
    return 0
