"""`edgevit data`: write bundled real datasets to disk (no download)."""
from __future__ import annotations

import argparse

from ..errors import UserError
from ..train.digits import DIGITS_FORMATS
from ..utils.options import MAX_IMAGE_SIZE, nonneg_int, number, open_fraction, positive_int
from .args import add_json_arg, add_overwrite_arg
from .outputs import check_output_dir


def register(subparsers) -> None:
    p = subparsers.add_parser("data",
                              help="write a bundled dataset as an ImageFolder or WebDataset shards (no download)")
    sub = p.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    d = sub.add_parser("digits", help="scikit-learn's 1,797 handwritten 8x8 digit scans, stratified train/val",
                       description="Writes OUT/train/<0-9>/*.png and OUT/val/<0-9>/*.png (upscaled PNGs), or with "
                                   "--format wds WebDataset shards OUT/digits-{train,validation}-NNNNNN.tar (KEY.png + "
                                   "KEY.cls) and OUT/_info.json, as timm's 'wds/NAME' datasets read them.")
    d.add_argument("--out", required=True, help="new or empty output directory")
    d.add_argument("--format", choices=DIGITS_FORMATS, default="folder",
                   help="folder (ImageFolder, default) or wds (WebDataset shards)")
    d.add_argument("--shards", type=positive_int, default=None, help="wds: train shards (default 8)")
    d.add_argument("--val-shards", type=positive_int, default=None, help="wds: validation shards (default 4)")
    d.add_argument("--size", type=number(int, 8, MAX_IMAGE_SIZE), default=64, help="PNG side in pixels (default 64)")
    d.add_argument("--val-fraction", type=open_fraction, default=0.2, help="share of each class in val/ (default 0.2)")
    d.add_argument("--seed", type=nonneg_int, default=0, help="split seed (default 0)")
    d.add_argument("--train-fraction", type=number(float, 0, 1, lo_open=True), default=1.0,
                   help="keep this stratified share of train/ (same seed, same val/): a small-data set, e.g. 0.1 "
                        "(default 1)")
    add_overwrite_arg(d, "the whole directory")
    add_json_arg(d)
    d.set_defaults(func=run_digits)


def run_digits(args: argparse.Namespace) -> int:
    from ..train.digits import export_digits
    from ..utils.writes import print_json, replace_dir

    if args.format != "wds":
        for flag, value in (("--shards", args.shards), ("--val-shards", args.val_shards)):
            if value is not None:
                raise UserError(f"{flag}: only for --format wds")
    check_output_dir(args.out, "--out", overwrite=args.overwrite)
    with replace_dir(args.out) as tmp:  # a complete set or none; no stale files from an earlier one
        result = export_digits(tmp, args.size, args.val_fraction, args.seed, args.format, args.shards or 8,
                               args.val_shards or 4, args.train_fraction)
    result["out"] = str(args.out)
    if args.json:
        print_json(result)
    else:
        layout = ("ImageFolder" if args.format == "folder" else
                  ", ".join(f"{s['shards']} {name} shards" for name, s in result["splits"].items()))
        print(f"wrote {result['num_images']} digits ({result['train']} train, {result['val']} val, 10 classes, "
              f"{result['size']}x{result['size']} PNG; {layout}) to {result['out']}")
    return 0
