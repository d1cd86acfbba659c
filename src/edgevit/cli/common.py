"""Argument helpers shared by the subcommands."""
from __future__ import annotations

import argparse

import timm
import torch

from ..models import VARIANTS, CheckpointError, fit_report
from ..models.checkpoint import checkpoint_weights, head_classes
from ..models.edgevit import checkpoint_filter_fn
from ..utils.io import print_json


def add_model_args(p: argparse.ArgumentParser, default: str = "edgevit_xxs", checkpoint: bool = True) -> None:
    p.add_argument("--model", default=default, help=f"EdgeViT variant ({', '.join(VARIANTS)}) or any timm model")
    if checkpoint:
        p.add_argument("--checkpoint", default=None, help="weights: this project's or the authors' .pth/.safetensors")


def add_json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def model_from_checkpoint(name: str | None, checkpoint: str | None = None,
                          **kwargs) -> tuple[torch.nn.Module, dict]:
    """(eval-mode model, {"config": training config or {}, "classes": class names or None}).

    With a checkpoint, the model name (if `name` is None), its constructor options and the number of
    classes come from the checkpoint, so a model trained on 10 classes loads as such; explicit kwargs win.
    Unknown model name -> ValueError listing the EdgeViTs; a checkpoint that does not fit -> CheckpointError."""
    meta = {"config": {}, "classes": None}
    if checkpoint:
        w = checkpoint_weights(checkpoint)
        meta = {"config": w["config"] or {}, "classes": w["classes"]}
        name = name or meta["config"].get("model")
        kwargs = {**(meta["config"].get("model_kwargs") or {}), **kwargs}
    name = name or "edgevit_xxs"
    if not timm.is_model(name):
        raise ValueError(f"--model {name!r} is not a known model; EdgeViTs: {', '.join(VARIANTS)} "
                         "(or any name from timm.list_models())")
    if not checkpoint:
        return timm.create_model(name, **kwargs).eval(), meta
    # unwraps {"model": ...} / DDP prefixes for any model; renames the authors' EdgeViT layout
    state_dict = checkpoint_filter_fn(w["state_dict"], timm.create_model(name, **{**kwargs, "num_classes": 1}))
    kwargs.setdefault("num_classes", head_classes(state_dict) or 1000)
    model = timm.create_model(name, **kwargs)
    problems = fit_report(model, state_dict)
    if problems:
        raise CheckpointError(f"checkpoint {checkpoint} does not fit {name}: {problems}")
    model.load_state_dict(state_dict)
    return model.eval(), meta


def create_model(name: str | None, checkpoint: str | None = None, **kwargs) -> torch.nn.Module:
    """An eval-mode model by name (EdgeViT or any timm model), with a checkpoint's weights if given."""
    return model_from_checkpoint(name, checkpoint, **kwargs)[0]


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
