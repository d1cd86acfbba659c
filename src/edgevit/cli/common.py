"""Argument helpers shared by the subcommands."""
from __future__ import annotations

import argparse

import timm
import torch

from .. import models as _models  # noqa: F401  (registers the EdgeViTs with timm)
from ..models import VARIANTS, load_checkpoint
from ..utils.io import print_json


def add_model_args(p: argparse.ArgumentParser, default: str = "edgevit_xxs", checkpoint: bool = True) -> None:
    p.add_argument("--model", default=default, help=f"EdgeViT variant ({', '.join(VARIANTS)}) or any timm model")
    if checkpoint:
        p.add_argument("--checkpoint", default=None, help="weights: this project's or the authors' .pth/.safetensors")


def add_json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def create_model(name: str, checkpoint: str | None = None, **kwargs) -> torch.nn.Module:
    """An eval-mode model by name, with a checkpoint if given; unknown name -> ValueError with choices."""
    if not timm.is_model(name):
        raise ValueError(f"--model {name!r} is not a known model; EdgeViTs: {', '.join(VARIANTS)} "
                         "(or any name from timm.list_models())")
    model = timm.create_model(name, **kwargs)
    if checkpoint:
        if name in VARIANTS:
            load_checkpoint(model, checkpoint)
        else:
            timm.models.load_checkpoint(model, checkpoint, weights_only=True)
    return model.eval()


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
