"""`edgevit data`: write bundled real datasets to disk (no download)."""
from __future__ import annotations

import argparse

from .common import add_json_arg


def register(subparsers) -> None:
    p = subparsers.add_parser("data", help="write a bundled dataset as an ImageFolder (no download)")
    sub = p.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    d = sub.add_parser("digits", help="scikit-learn's 1,797 handwritten 8x8 digit scans, stratified train/val",
                       description="Writes OUT/train/<0-9>/*.png and OUT/val/<0-9>/*.png (upscaled PNGs).")
    d.add_argument("--out", required=True, help="new or empty output directory")
    d.add_argument("--size", type=int, default=64, help="PNG side in pixels (default 64)")
    d.add_argument("--val-fraction", type=float, default=0.2, help="share of each class in val/ (default 0.2)")
    d.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    add_json_arg(d)
    d.set_defaults(func=run_digits)


def run_digits(args: argparse.Namespace) -> int:
    from ..train.digits import export_digits
    from ..utils.io import print_json

    result = export_digits(args.out, args.size, args.val_fraction, args.seed)
    if args.json:
        print_json(result)
    else:
        print(f"wrote {result['num_images']} digits ({result['train']} train, {result['val']} val, 10 classes, "
              f"{result['size']}x{result['size']} PNG) to {result['out']}")
    return 0
