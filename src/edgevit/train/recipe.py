"""The training recipe: every option, its default (the paper's = DeiT's ImageNet recipe), and how a
run's config is resolved: defaults < YAML (`--config`) < command-line flags.

The defaults follow the authors' release (saic-fi/edgevit `src/main.py`, DeiT's script): AdamW, lr 5e-4 per
512 images (= 1e-3 per 1024) scaled linearly with the global batch, weight decay 0.05 (timm exempts 1-d
params: norms, biases), 300 epochs, 5 warm-up epochs from 1e-6, cosine to 1e-5, RandAugment
rand-m9-mstd0.5-inc1, mixup 0.8 / cutmix 1.0, random erasing 0.25, label smoothing 0.1, EMA 0.99996,
repeated augmentation (3 repeats), drop path 0.1. The release sets drop path by its `--drop-path` default
(0.1) and its README trains every variant with that default, so 0.1 is used for XXS, XS and S alike.
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Any, Dict, Optional

from .state import load_config

__all__ = ["RECIPE", "DROP_PATH", "add_recipe_args", "resolve_config", "scaled_lr"]

# name: (default, type, help).  `type` is used for command-line parsing; YAML values keep their own type.
RECIPE: Dict[str, tuple] = {
    # run
    "data": (None, str, "dataset root holding train/ and val/ in ImageFolder layout (required)"),
    "output": (None, str, "run directory: checkpoints, config.yaml, metrics.jsonl (required)"),
    "model": ("edgevit_xxs", str, "EdgeViT variant or any timm model"),
    "model_kwargs": ({}, json.loads, "extra model constructor kwargs as JSON, e.g. '{\"depths\": [1,1,1,1]}'"),
    "num_classes": (None, int, "classes (default: number of class folders in train/)"),
    "pretrained": (None, str, "fine-tune: load this checkpoint (ours or the authors'), re-initialise the head"),
    "resume": (None, str, "'auto' (RUN_DIR/last.pth if present) or a checkpoint path to continue from"),
    "seed": (0, int, "random seed (each rank adds its rank)"),
    "deterministic": (False, bool, "deterministic kernels; on CPU, kill + resume gives the same weights"),
    "device": ("auto", str, "auto, cpu, cuda"),
    # schedule and optimiser
    "epochs": (300, int, "training epochs"),
    "batch_size": (128, int, "images per process per step"),
    "accum_steps": (1, int, "gradient accumulation steps (global batch = batch_size x processes x accum_steps)"),
    "lr": (None, float, "peak learning rate (default: base_lr x global_batch / base_batch)"),
    "base_lr": (1e-3, float, "learning rate for a global batch of base_batch"),
    "base_batch": (1024, int, "the global batch base_lr refers to"),
    "opt": ("adamw", str, "timm optimizer name"),
    "opt_eps": (1e-8, float, "optimizer epsilon"),
    "opt_betas": (None, float, "optimizer betas (default: the optimizer's, (0.9, 0.999) for AdamW as DeiT)"),
    "momentum": (0.9, float, "SGD momentum (ignored by AdamW)"),
    "weight_decay": (0.05, float, "weight decay (not on norms, biases: timm's filter_bias_and_bn)"),
    "clip_grad": (None, float, "clip the gradient norm to this value"),
    "sched": ("cosine", str, "timm scheduler name"),
    "sched_on_updates": (False, bool, "update the lr every optimizer step instead of every epoch (DeiT: epoch)"),
    "warmup_epochs": (5, int, "linear warm-up epochs"),
    "warmup_lr": (1e-6, float, "learning rate at the start of warm-up"),
    "min_lr": (1e-5, float, "learning rate at the end of the cosine"),
    "cooldown_epochs": (0, int, "epochs at min_lr after the cosine (the run lasts epochs in total)"),
    # augmentation and regularisation
    "img_size": (224, int, "training crop and evaluation size (multiple of 32 for EdgeViT)"),
    "scale": ([0.08, 1.0], float, "RandomResizedCrop scale range"),
    "ratio": ([3 / 4, 4 / 3], float, "RandomResizedCrop aspect ratio range"),
    "hflip": (0.5, float, "horizontal flip probability"),
    "aa": ("rand-m9-mstd0.5-inc1", str, "timm auto-augment policy ('none' to disable)"),
    "color_jitter": (0.4, float, "colour jitter (timm uses it only when aa is off)"),
    "train_interpolation": ("bicubic", str, "training resize interpolation"),
    "reprob": (0.25, float, "random erasing probability"),
    "remode": ("pixel", str, "random erasing mode"),
    "recount": (1, int, "random erasing count"),
    "mixup": (0.8, float, "mixup alpha (0 disables)"),
    "cutmix": (1.0, float, "cutmix alpha (0 disables)"),
    "mixup_prob": (1.0, float, "probability of applying mixup or cutmix to a batch"),
    "mixup_switch_prob": (0.5, float, "probability of cutmix instead of mixup when both are on"),
    "mixup_mode": ("batch", str, "batch, pair or elem"),
    "smoothing": (0.1, float, "label smoothing"),
    "drop_path": (None, float, "stochastic depth rate (default: per variant, see DROP_PATH)"),
    "drop": (0.0, float, "dropout before the head"),
    "repeated_aug": (True, bool, "repeated augmentation sampler (DeiT; 3 repeats)"),
    "model_ema": (True, bool, "keep an exponential moving average of the weights (evaluated too)"),
    "model_ema_decay": (0.99996, float, "EMA decay per optimizer step"),
    # evaluation
    "crop_pct": (0.875, float, "evaluation: resize to img_size/crop_pct, center-crop img_size"),
    "eval_interpolation": ("bicubic", str, "evaluation resize interpolation"),
    "eval_batch_size": (None, int, "evaluation batch per process (default: 1.5 x batch_size as DeiT)"),
    # performance
    "workers": (min(8, os.cpu_count() or 1), int, "data-loading worker processes per training process"),
    "amp": ("auto", str, "mixed precision: auto (bfloat16 on CUDA, off on CPU), bfloat16, float16, none"),
    "channels_last": (None, bool, "channels_last memory format (default: on for CUDA)"),
    "compile": (False, bool, "torch.compile the model"),
    "threads": (None, int, "CPU intra-op threads per process (default: torch's; 1 is often fastest on a busy CPU)"),
    # logging
    "tensorboard": (False, bool, "also write TensorBoard scalars to RUN_DIR/tensorboard"),
    "progress": (True, bool, "tqdm progress bars on stderr (rank 0)"),
    "stop_after_epochs": (None, int, "debug: stop (as if killed) after this many epochs of this invocation"),
}

# Stochastic depth per variant: the release trains all three with DeiT's --drop-path default, 0.1.
DROP_PATH = {"edgevit_xxs": 0.1, "edgevit_xs": 0.1, "edgevit_s": 0.1}
DEFAULT_DROP_PATH = 0.1

_SHORT = {"data": ["--data"], "output": ["--output", "-o"], "config": ["--config"]}


def add_recipe_args(p: argparse.ArgumentParser) -> None:
    """One flag per recipe option. Defaults are suppressed so that only flags given explicitly override YAML."""
    p.add_argument("--config", default=None, help="YAML file of recipe options (keys as below, with underscores)")
    for name, (default, typ, help_) in RECIPE.items():
        flags = [f"--{name.replace('_', '-')}"] + [f for f in _SHORT.get(name, []) if f != f"--{name}"]
        text = f"{help_} (default: {default})" if default not in (None, {}) else help_
        if typ is bool:
            p.add_argument(*flags, dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                           help=text)
        elif isinstance(default, list) or name == "opt_betas":
            p.add_argument(*flags, dest=name, type=typ, nargs="+", default=argparse.SUPPRESS, help=text)
        else:
            p.add_argument(*flags, dest=name, type=typ, default=argparse.SUPPRESS, help=text)


def resolve_config(args: argparse.Namespace | Dict[str, Any]) -> Dict[str, Any]:
    """defaults < YAML < explicit flags; unknown YAML keys and missing required options are errors."""
    given = dict(vars(args)) if isinstance(args, argparse.Namespace) else dict(args)
    cfg = {k: (list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v)
           for k, (v, _, _) in RECIPE.items()}
    config_path = given.pop("config", None)
    if config_path:
        loaded = load_config(config_path)
        unknown = sorted(set(loaded) - set(RECIPE))
        if unknown:
            raise ValueError(f"--config {config_path}: unknown option(s) {unknown}; known: {sorted(RECIPE)}")
        cfg.update(loaded)
    cfg.update({k: v for k, v in given.items() if k in RECIPE})
    for key in ("data", "output"):
        if not cfg.get(key):
            raise ValueError(f"--{key} is required (on the command line or in the --config YAML)")
    if cfg["drop_path"] is None:
        cfg["drop_path"] = DROP_PATH.get(cfg["model"], DEFAULT_DROP_PATH)
    if cfg["aa"] in ("none", "", None):
        cfg["aa"] = None
    for key in ("epochs", "batch_size", "accum_steps", "img_size"):
        if int(cfg[key]) < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be >= 1, got {cfg[key]}")
    if cfg["amp"] not in ("auto", "bfloat16", "float16", "none"):
        raise ValueError(f"--amp {cfg['amp']!r}: expected auto, bfloat16, float16 or none")
    if cfg["model_kwargs"] is None:
        cfg["model_kwargs"] = {}
    if not isinstance(cfg["model_kwargs"], dict):
        raise ValueError(f"model_kwargs must be a mapping, got {cfg['model_kwargs']!r}")
    cfg["config"] = str(config_path) if config_path else None
    return cfg


def scaled_lr(cfg: Dict[str, Any], world_size: int) -> float:
    """The linear scaling rule: base_lr x (batch_size x world_size x accum_steps) / base_batch."""
    if cfg["lr"] is not None:
        return float(cfg["lr"])
    global_batch = cfg["batch_size"] * world_size * cfg["accum_steps"]
    return cfg["base_lr"] * global_batch / cfg["base_batch"]


def amp_dtype(cfg: Dict[str, Any], device_type: str) -> Optional[str]:
    if cfg["amp"] == "none" or (cfg["amp"] == "auto" and device_type != "cuda"):
        return None
    if cfg["amp"] == "auto":
        return "bfloat16"
    return cfg["amp"]
