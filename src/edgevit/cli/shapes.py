"""`edgevit detect shapes` / `edgevit segment shapes`: write the bundled synthetic shapes set."""
from __future__ import annotations

import argparse

from ..utils.writes import print_json
from .args import add_json_arg, add_overwrite_arg
from .outputs import check_output_dir


def add_shapes_parser(sub) -> None:
    from ..utils.options import image_size, nonneg_int, positive_int

    p = sub.add_parser("shapes", help="write the bundled synthetic shapes set (COCO json + ADE20K layout)")
    p.add_argument("output", help="directory to write (images/, annotations/, classes.txt); new or empty")
    p.add_argument("--num-train", type=positive_int, default=200)
    p.add_argument("--num-val", type=positive_int, default=50)
    p.add_argument("--size", type=image_size, default=192, help="image side in pixels (multiple of 32)")
    p.add_argument("--max-shapes", type=positive_int, default=3)
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--colours", choices=("class", "random"), default="class",
                   help="class: one hue per class (quick to learn); random: class told by form only")
    add_overwrite_arg(p, "the whole directory")
    add_json_arg(p)
    p.set_defaults(func=run_shapes)


def run_shapes(args: argparse.Namespace) -> int:
    from ..dense.shapes import generate
    from ..utils.writes import replace_dir

    check_output_dir(args.output, "output", overwrite=args.overwrite)
    with replace_dir(args.output) as tmp:  # no stale files from an earlier set, no half-written set
        counts = generate(tmp, args.num_train, args.num_val, args.size, args.max_shapes, args.seed, args.colours)
    result = {"output": str(args.output), **counts}
    if args.json:
        print_json(result)
    else:
        print(f"wrote {counts['training_images']} training / {counts['validation_images']} validation images "
              f"({counts['training_instances']} / {counts['validation_instances']} shapes) to {args.output}")
    return 0
