"""`edgevit train`: the paper's (DeiT) ImageNet recipe on an ImageFolder; one process or torchrun."""
from __future__ import annotations

import argparse
import os
import sys

from ..errors import ConfigError, UserError
from .args import HelpWithDefaults, add_json_arg
from .outputs import check_output_dir


def register(subparsers) -> None:
    from ..train.recipe import add_recipe_args

    p = subparsers.add_parser(
        "train", help="train an EdgeViT (DeiT recipe; torchrun for several GPUs/nodes)",
        description="Train on DIR/train, evaluate on DIR/val every epoch. Defaults are the paper's recipe; "
                    "every option can be set in a --config YAML (same names, underscores) and overridden by "
                    "flags. Under torchrun each process uses one GPU (NCCL) or CPU (gloo).",
        formatter_class=HelpWithDefaults)
    add_recipe_args(p)
    add_json_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..train.data import SampleError, sample_error_message
    from ..train.loop import train
    from ..train.recipe import resolve_config
    from ..utils.writes import print_json

    as_json = args.json
    from ..train.state import RUN_FILES, recover_run_dir

    # only what the command line gave (args._explicit, the one way every command layers a --config file under
    # its flags): the recipe's defaults < the config file < these
    given = getattr(args, "_explicit", None)
    cfg = resolve_config({k: v for k, v in vars(args).items() if k not in ("func", "command", "json", "_explicit")
                          and (given is None or k in given or k == "config")})
    if cfg["resume"] and cfg["overwrite"]:
        raise ConfigError("--resume and --overwrite exclude each other: continue the run, or start it again")
    if os.environ.get("RANK", "0") == "0":
        recover_run_dir(cfg["output"], "--output")  # a replacement killed outright: the run that is there
    check_output_dir(cfg["output"], "--output", overwrite=cfg["overwrite"], holds=RUN_FILES, resume=bool(cfg["resume"]),
                     inputs=[("--data", cfg["data"])])
    cfg["progress"] = cfg["progress"] and sys.stderr.isatty()
    args.output, args.amp = cfg["output"], cfg["amp"]  # for the message after a divergence
    try:
        summary = train(cfg)
    except SampleError as e:  # re-raised by a DataLoader worker with its traceback in the message
        raise UserError(sample_error_message(e)) from None
    if as_json:
        print_json(summary)
    if summary.get("stopped") == "signal":
        return 128 + summary.get("signal", 15)
    return 0
