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
import os
from typing import Any, Dict, Optional

from ..errors import ConfigError, UserError
from ..utils.options import (
    check_pair,
    choice,
    crop_fraction,
    crop_pct,
    image_size,
    json_object,
    nonneg_float,
    nonneg_int,
    open_fraction,
    positive_float,
    positive_int,
    probability,
    rate,
    read_config,
    thread_count,
)

__all__ = ["RECIPE", "DROP_PATH", "add_recipe_args", "resolve_config", "resumed_config", "public_config", "scaled_lr"]

INTERPOLATION = choice("bicubic", "bilinear", "nearest", "random")

# name: (default, check, help). `check` parses and range-checks a flag's text and a YAML value alike
# (edgevit.utils.options), so nonsense is refused before any work, naming the flag or the file and key.
RECIPE: Dict[str, tuple] = {
    # run
    "data": (None, str, "dataset root: train/ and val/ in ImageFolder layout, or the root of the dataset named by "
                        "dataset, e.g. WebDataset shards and their _info.json (required)"),
    "dataset": ("", str, "timm dataset name: '' or folder (ImageFolder, default), tar, torch/NAME, wds/NAME "
                         "(WebDataset shards), hfds/NAME, hfids/NAME, tfds/NAME"),
    "train_split": (None, str, "training split (default: train)"),
    "val_split": (None, str, "validation split (default: val/ for folders, the first of val, validation, ... for "
                             "shards; validation for other datasets)"),
    "output": (None, str, "run directory: checkpoints, config.yaml, metrics.jsonl (required)"),
    "model": ("edgevit_xxs", str, "EdgeViT variant or any timm model"),
    "model_kwargs": ({}, json_object, "extra model constructor kwargs as JSON, e.g. '{\"depths\": [1,1,1,1]}'"),
    "num_classes": (None, positive_int, "classes (default: number of class folders in train/)"),
    "pretrained": (None, str, "fine-tune: load this checkpoint (ours or the authors'), re-initialise the head"),
    "qat": (False, bool, "quantization-aware fine-tuning of the pretrained checkpoint (same classes, head kept) "
                         "for an int8 ExecuTorch file (export --quantize int8): the fused graph with XNNPACK's "
                         "fake quantizers; fp32 only (no amp, compile, channels_last), no drop path"),
    # distillation (DeiT's, as the authors' release trains): off unless a teacher is given
    "teacher": (None, str, "distil from this timm model (EdgeViTs included): DeiT's --teacher-model"),
    "teacher_checkpoint": (None, str, "the teacher's weights: this project's, timm's or the authors' layout "
                                      "(default: timm's pretrained weights, where timm can fetch them)"),
    "distillation": ("none", choice("none", "soft", "hard"), "DeiT's distillation: none, soft (KL at temperature "
                                                              "tau) or hard (cross-entropy on the teacher's argmax)"),
    "distillation_alpha": (0.5, probability, "weight of the distillation term (1 - alpha on the labels)"),
    "distillation_tau": (1.0, positive_float, "soft distillation temperature"),
    "distill_head": (False, bool, "EdgeViT: a second classifier trained on the teacher's targets; eval and predict "
                                  "average the two heads, export merges them into one"),
    "resume": (None, str, "'auto' (RUN_DIR/last.pth if present) or a checkpoint path to continue from"),
    "overwrite": (False, bool, "start again in an output directory that holds a run: its checkpoints, config and "
                               "metrics are deleted first (without it such a directory is refused)"),
    "seed": (0, nonneg_int, "random seed (each rank adds its rank)"),
    "deterministic": (False, bool, "deterministic kernels; on CPU, kill + resume gives the same weights"),
    "device": ("auto", str, "auto, cpu, cuda"),
    # schedule and optimiser
    "epochs": (300, positive_int, "training epochs"),
    "batch_size": (128, positive_int, "images per process per step"),
    "accum_steps": (1, positive_int,
                    "gradient accumulation steps (global batch = batch_size x processes x accum_steps)"),
    "lr": (None, nonneg_float, "peak learning rate (default: base_lr x global_batch / base_batch)"),
    "base_lr": (1e-3, positive_float, "learning rate for a global batch of base_batch"),
    "base_batch": (1024, positive_int, "the global batch base_lr refers to"),
    "opt": ("adamw", str, "timm optimizer name"),
    "opt_eps": (1e-8, positive_float, "optimizer epsilon"),
    "opt_betas": (None, rate, "optimizer betas (default: the optimizer's, (0.9, 0.999) for AdamW as DeiT)"),
    "momentum": (0.9, rate, "SGD momentum (ignored by AdamW)"),
    "weight_decay": (0.05, nonneg_float, "weight decay (not on norms, biases: timm's filter_bias_and_bn)"),
    "clip_grad": (None, positive_float, "clip the gradient norm to this value"),
    "sched": ("cosine", str, "timm scheduler name"),
    "sched_on_updates": (False, bool, "update the lr every optimizer step instead of every epoch (DeiT: epoch)"),
    "warmup_epochs": (5, nonneg_int, "linear warm-up epochs"),
    "warmup_lr": (1e-6, nonneg_float, "learning rate at the start of warm-up"),
    "min_lr": (1e-5, nonneg_float, "learning rate at the end of the cosine"),
    "cooldown_epochs": (0, nonneg_int, "epochs at min_lr after the cosine (the run lasts epochs in total)"),
    # augmentation and regularisation
    "img_size": (224, image_size, "training crop and evaluation size (multiple of 32 for EdgeViT)"),
    "scale": ([0.08, 1.0], crop_fraction, "RandomResizedCrop scale range"),
    "ratio": ([3 / 4, 4 / 3], positive_float, "RandomResizedCrop aspect ratio range"),
    "hflip": (0.5, probability, "horizontal flip probability"),
    "aa": ("rand-m9-mstd0.5-inc1", str, "timm auto-augment policy ('none' to disable)"),
    "color_jitter": (0.4, nonneg_float, "colour jitter (timm uses it only when aa is off)"),
    "train_interpolation": ("bicubic", INTERPOLATION, "training resize interpolation"),
    "reprob": (0.25, probability, "random erasing probability"),
    "remode": ("pixel", choice("pixel", "rand", "const"), "random erasing mode"),
    "recount": (1, positive_int, "random erasing count"),
    "mixup": (0.8, nonneg_float, "mixup alpha (0 disables)"),
    "cutmix": (1.0, nonneg_float, "cutmix alpha (0 disables)"),
    "mixup_prob": (1.0, probability, "probability of applying mixup or cutmix to a batch"),
    "mixup_switch_prob": (0.5, probability, "probability of cutmix instead of mixup when both are on"),
    "mixup_mode": ("batch", choice("batch", "pair", "elem"), "batch, pair or elem"),
    "smoothing": (0.1, rate, "label smoothing"),
    "drop_path": (None, rate, "stochastic depth rate (default: per variant, see DROP_PATH)"),
    "drop": (0.0, rate, "dropout before the head"),
    "repeated_aug": (True, bool, "repeated augmentation sampler (DeiT; 3 repeats)"),
    "model_ema": (True, bool, "keep an exponential moving average of the weights (evaluated too)"),
    "model_ema_decay": (0.99996, open_fraction, "EMA decay per optimizer step"),
    # evaluation
    "crop_pct": (0.875, crop_pct, "evaluation: resize to img_size/crop_pct, center-crop img_size"),
    "eval_interpolation": ("bicubic", INTERPOLATION, "evaluation resize interpolation"),
    "eval_batch_size": (None, positive_int, "evaluation batch per process (default: 1.5 x batch_size as DeiT)"),
    # performance
    "workers": (min(8, os.cpu_count() or 1), nonneg_int, "data-loading worker processes per training process"),
    "amp": ("auto", choice("auto", "bfloat16", "float16", "none"),
            "mixed precision: auto (bfloat16 on CUDA, off on CPU), bfloat16, float16, none"),
    "channels_last": (None, bool, "channels_last memory format (default: on for CUDA)"),
    "compile": (False, bool, "torch.compile the model"),
    "grad_checkpointing": (False, bool, "recompute each stage's blocks in the backward pass (less activation "
                                        "memory for larger batches, about a third more compute; timm's "
                                        "set_grad_checkpointing)"),
    "threads": (None, thread_count,
                "CPU intra-op threads per process (default: torch's; 1 is often fastest on a busy CPU)"),
    # logging
    "tensorboard": (False, bool, "also write TensorBoard scalars to RUN_DIR/tensorboard"),
    "progress": (True, bool, "tqdm progress bars on stderr (rank 0)"),
    "stop_after_epochs": (None, positive_int, "debug: stop (as if killed) after this many epochs of this invocation"),
    "max_skipped": (0, nonneg_int, "streams: samples the reader may skip in an epoch (an image it cannot decode) "
                                   "before the run stops, after saving that epoch"),
}

# Stochastic depth per variant: the release trains all three with DeiT's --drop-path default, 0.1.
DROP_PATH = {"edgevit_xxs": 0.1, "edgevit_xs": 0.1, "edgevit_s": 0.1}
DEFAULT_DROP_PATH = 0.1

_SHORT = {"data": ["--data"], "output": ["--output", "-o"], "config": ["--config"]}


# each option's check for config files: list options take 2 values (scale, ratio) or any number (opt_betas)
RECIPE_CHECKS = {k: (check, 2 if isinstance(default, list) else (0 if k == "opt_betas" else None))
                 for k, (default, check, _) in RECIPE.items()}


def add_recipe_args(p: argparse.ArgumentParser) -> None:
    """One flag per recipe option, with the recipe's default (the command line passes `resolve_config` only the
    flags a user gave, so that those alone override a config file)."""
    p.add_argument("--config", default=None, help="YAML file of recipe options (keys as below, with underscores)")
    for name, (default, typ, help_) in RECIPE.items():
        flags = [f"--{name.replace('_', '-')}"] + [f for f in _SHORT.get(name, []) if f != f"--{name}"]
        text = f"{help_} (default: {default})" if default not in (None, {}) else help_
        if typ is bool:
            p.add_argument(*flags, dest=name, action=argparse.BooleanOptionalAction, default=default, help=text)
        elif isinstance(default, list) or name == "opt_betas":
            p.add_argument(*flags, dest=name, type=typ, nargs="+", default=default, help=text)
        else:
            p.add_argument(*flags, dest=name, type=typ, default=default, help=text)


def resolve_config(args: argparse.Namespace | Dict[str, Any]) -> Dict[str, Any]:
    """defaults < YAML < explicit flags. Every YAML value goes through the same check as its flag; unknown
    keys, missing required options and values that make no sense are `ConfigError`s naming the key."""
    given = dict(vars(args)) if isinstance(args, argparse.Namespace) else dict(args)
    cfg = {k: (list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v)
           for k, (v, _, _) in RECIPE.items()}
    config_path = given.pop("config", None)
    from_file = read_config(config_path, RECIPE_CHECKS) if config_path else {}
    cfg.update(from_file)
    flags = {k for k in given if k in RECIPE}
    cfg.update({k: v for k, v in given.items() if k in RECIPE})

    def origin(key: str) -> str:  # where a value came from, for messages
        return f"--{key.replace('_', '-')}" if key in flags or not config_path else f"config file {config_path}: {key}"

    for key in ("data", "output"):
        if not cfg.get(key):
            raise ConfigError(f"{key} is required (on the command line or in the config file)")
    if cfg["qat"]:
        _check_qat(cfg, origin)
    from .distill import check_distillation

    if not cfg["resume"]:  # (a resumed run's teacher comes from its checkpoint: checked once merged, in the loop)
        check_distillation(cfg, flags | set(from_file), origin)
    from .datasets import is_streamed

    if is_streamed(cfg["dataset"]) and cfg["repeated_aug"]:  # (unknown dataset forms are refused here too)
        if "repeated_aug" in flags or "repeated_aug" in from_file:
            raise ConfigError(f"{origin('repeated_aug')}: repeated augmentation needs random access to the images; "
                              f"a streamed dataset ({cfg['dataset']}) is read once per epoch")
        cfg["repeated_aug"] = False  # the recipe's default: off for streams, as in timm's train.py (said in the log)
    if cfg["drop_path"] is None:
        cfg["drop_path"] = DROP_PATH.get(cfg["model"], DEFAULT_DROP_PATH)
    if cfg["aa"] in ("none", "", None):
        cfg["aa"] = None
    for key in ("scale", "ratio"):
        check_pair(cfg[key], origin(key))
    if cfg["cooldown_epochs"] >= cfg["epochs"]:
        raise ConfigError(f"{origin('cooldown_epochs')} {cfg['cooldown_epochs']}: must be fewer than the "
                          f"{cfg['epochs']} epochs (the cooldown runs at min_lr after the cosine, within epochs)")
    if cfg["opt_betas"] is not None and len(cfg["opt_betas"]) != 2:
        raise ConfigError(f"{origin('opt_betas')} {cfg['opt_betas']}: expected two values (beta1 beta2)")
    if cfg["model_kwargs"] is None:
        cfg["model_kwargs"] = {}
    if not isinstance(cfg["model_kwargs"], dict):
        raise ConfigError(f"model_kwargs must be a mapping, got {cfg['model_kwargs']!r}")
    if cfg["opt"] not in _optimizers():
        raise ConfigError(f"opt {cfg['opt']!r}: not a timm optimizer; e.g. adamw, sgd, lamb")
    if cfg["sched"] not in SCHEDULERS:
        raise ConfigError(f"sched {cfg['sched']!r}: expected one of {', '.join(SCHEDULERS)}")
    if cfg["aa"]:
        _check_auto_augment(cfg["aa"])
    check_model_options(cfg["model"], cfg["model_kwargs"])
    cfg["config"] = str(config_path) if config_path else None
    cfg["_given"] = sorted(flags | set(from_file))  # what a resumed run may not silently change (resumed_config)
    return cfg


# What a resumed run may change: where and how it runs, not what it trains, and `clip_grad` (applied at every
# step, no state: the remedy for a run that diverged). `epochs` may change how long the run lasts; the
# learning-rate schedule keeps the length it was built with (restored with the scheduler).
# (`teacher_checkpoint` may move: the teacher is compared by name and by the checkpoint's checksum)
RESUME_MAY_CHANGE = ("output", "resume", "overwrite", "config", "data", "device", "workers", "threads", "progress",
                     "tensorboard", "stop_after_epochs", "max_skipped", "eval_batch_size", "teacher_checkpoint",
                     "compile", "channels_last", "grad_checkpointing", "clip_grad", "epochs")


def public_config(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """The config as recorded (config.yaml, checkpoints): without the private keys resolution adds."""
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def resumed_config(cfg: Dict[str, Any], saved: Optional[Dict[str, Any]], checkpoint) -> tuple:
    """(config, notes) of a resumed run: the recipe is the run's own (`saved`, from its checkpoint). Options not
    given now take the run's values; one given with another value is refused (the optimizer and scheduler
    state would override it while config.yaml recorded it), except the RESUME_MAY_CHANGE ones."""
    if not isinstance(saved, dict):
        return cfg, []
    given = set(cfg.get("_given", cfg))
    out, changed, notes = dict(cfg), [], []
    for k, v in saved.items():
        if k not in RECIPE or k in ("output", "resume", "overwrite"):
            continue
        now = cfg.get(k)
        same = (list(now) if isinstance(now, tuple) else now) == v
        if k == "epochs":  # the run's length unless given
            if k not in given:
                out[k] = v
            elif not same:
                notes.append(f"epochs {v} -> {now}: the learning-rate schedule keeps its {v}-epoch length (epochs "
                             "after it run at its last learning rate)")
            continue
        if k == "teacher_checkpoint":  # may move: the run's unless given (compared by checksum, in the loop)
            if k not in given:
                out[k] = v
            continue
        if k in RESUME_MAY_CHANGE:  # this invocation's own (its values, or the defaults)
            continue
        if k in given and not same:
            had = "base_lr scaled by the global batch" if k == "lr" and v is None else repr(v)
            changed.append(f"{k} {now!r} (the run has {had})")
        else:
            out[k] = v
    if changed:
        raise ConfigError(f"checkpoint {checkpoint}: resuming keeps the run's recipe, but "
                          f"{'; '.join(changed)} differ; leave them out to continue the run as it was, or start a "
                          "new run (another output directory, or overwrite) with them", option="resume")
    return out, notes


def _check_qat(cfg: Dict[str, Any], origin) -> None:
    """QAT fine-tunes a trained float model in fp32 on one exported graph: the options that would change
    that graph or its precision are refused by name."""
    if not cfg["pretrained"]:
        raise ConfigError(f"{origin('qat')}: quantization-aware training fine-tunes a trained model: give "
                          f"{origin('pretrained')} (the float checkpoint)")
    if cfg["amp"] in ("bfloat16", "float16"):
        raise ConfigError(f"{origin('amp')} {cfg['amp']}: quantization-aware training runs in fp32 (its fake "
                          "quantizers model int8 steps that a 16-bit float cannot hold)")
    cfg["amp"] = "none"
    for key in ("compile", "channels_last", "grad_checkpointing"):
        if cfg[key]:
            raise ConfigError(f"{origin(key)}: not available with quantization-aware training (an exported graph)")
    cfg["channels_last"] = False
    for key in ("drop_path", "drop"):  # the fused graph QAT trains has neither (inference form)
        if cfg[key]:
            raise ConfigError(f"{origin(key)} {cfg[key]}: quantization-aware training runs the fused graph, "
                              "which has no stochastic depth or dropout")
        cfg[key] = 0.0


SCHEDULERS = ("cosine", "tanh", "step", "multistep", "plateau", "poly")


def _optimizers() -> set:
    from timm.optim import list_optimizers
    return set(list_optimizers())


def _check_auto_augment(policy: str) -> None:
    """timm parses the policy string only when the transform is built; build it now so a typo is one line."""
    from timm.data.auto_augment import augment_and_mix_transform, auto_augment_transform, rand_augment_transform

    hparams = dict(translate_const=100, img_mean=(124, 116, 104))
    try:
        if policy.startswith("rand"):
            rand_augment_transform(policy, hparams)
        elif policy.startswith("augmix"):
            augment_and_mix_transform(policy, hparams)
        else:
            auto_augment_transform(policy, hparams)
    except Exception as e:  # timm raises AssertionError/KeyError/ValueError for a malformed policy
        raise ConfigError(f"aa {policy!r}: not a timm augmentation policy such as rand-m9-mstd0.5-inc1, "
                          f"augmix-m5-w3, original or v0 ({type(e).__name__}: {e})") from None


def check_model_options(name: str, model_kwargs: Dict[str, Any]) -> None:
    """The model name and constructor options, checked by building the model without weights (meta device),
    so an unknown name or option is refused before data loading and training start."""
    import timm
    import torch

    if not timm.is_model(name):
        raise ConfigError(f"model {name!r} is not a known model (EdgeViTs: edgevit_xxs, edgevit_xs, edgevit_s, "
                          "or any name from timm.list_models())")
    try:
        try:
            with torch.device("meta"):  # no memory, no init time ...
                timm.create_model(name, **model_kwargs)
        except NotImplementedError:  # ... unless the constructor reads tensor values (EdgeViT's drop-path list)
            timm.create_model(name, **model_kwargs)
    except TypeError as e:  # an option the constructor does not take
        raise ConfigError(f"{model_kwargs}: not options of {name} ({e})", option="model_kwargs") from None
    except UserError as e:  # options the model refuses (EdgeViT names the constraint)
        raise ConfigError(f"{model_kwargs}: {e}", option="model_kwargs") from None


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
