"""What `edgevit train` builds before its loop: the data (`train_data`), the model with its pretrained, resumed or
QAT weights (`build_model`, `load_pretrained`, `load_model_weights`), the objective and distiller, precision,
optimiser, schedule and EMA (`optimization`). The loop that runs them is `edgevit.train.loop.Trainer`."""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Dict, Optional

import timm
import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3

from ..errors import UserError
from ..models import VARIANTS, CheckpointError, fit_report, load_checkpoint, read_state_dict
from ..models.edgevit import checkpoint_filter_fn
from .data import eval_transform, train_transform
from .datasets import build_train_data
from .distributed import (
    DistInfo,
)
from .loaders import EpochSeeded, build_eval_loader, build_train_sampler
from .recipe import amp_dtype, scaled_lr

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def _shown(names) -> str:
    names = list(names)
    return ", ".join(map(str, names[:6])) + (f", ... ({len(names)} in all)" if len(names) > 6 else "")


def _head_keys(model: torch.nn.Module) -> set:
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)] for p in head.parameters()} if head is not None else set()


def _filtered(model, sd: Dict[str, torch.Tensor], name: str) -> Dict[str, torch.Tensor]:
    return checkpoint_filter_fn(sd, model) if name in VARIANTS else sd


def load_pretrained(model: torch.nn.Module, path: str, model_name: str, model_kwargs: Optional[dict] = None) -> None:
    """Fine-tuning: every weight from `path` (ours or the authors' layout) except the classifier head,
    which keeps its fresh initialisation."""
    raw = read_state_dict(path)  # unreadable -> its own message (not "does not fit")
    try:
        load_checkpoint(model, path, skip=tuple(_head_keys(model)))
    except CheckpointError as e:
        trained = raw.get("config") if isinstance(raw.get("config"), dict) else {}
        hint = ""
        if trained and (trained.get("model_kwargs") or {}) != (model_kwargs or {}):
            hint = (f"it was trained as {trained.get('model')} with model_kwargs "
                    f"{json.dumps(trained.get('model_kwargs') or {})}: give the same; ")
        raise UserError(f"{path} does not fit {model_name} (apart from the head): {hint}{e}",
                        option="pretrained") from e


def prepare_qat_model(model: torch.nn.Module, cfg: Dict[str, Any], load: bool) -> torch.nn.Module:
    """The float `pretrained` weights (all of them: QAT keeps the task) loaded into `model` (unless a resume
    will load the run's own), then its graph prepared with fake quantizers (edgevit.deploy.quantize)."""
    from ..deploy.quantize import is_qat_checkpoint, prepare_qat

    path = cfg["pretrained"]
    if is_qat_checkpoint(path):
        raise UserError(f"{path} is already a quantization-aware checkpoint; resume its run, or start from "
                        "the float checkpoint it came from", option="pretrained")
    if load:
        try:
            load_checkpoint(model, path)
        except CheckpointError as e:
            raise UserError(f"{path} does not fit {cfg['model']} with {cfg['num_classes']} classes (QAT "
                            f"fine-tunes the task it was trained on, head included): {e}", option="pretrained") from e
    return prepare_qat(model, cfg["img_size"], cfg["batch_size"])


def load_model_weights(model, sd, path, cfg) -> None:
    """Resume: the checkpoint must fit exactly; a head of another class count gets a fine-tuning hint."""
    if not cfg["qat"]:  # (a QAT run's weights are the fake-quantized fused graph's, loaded as they are)
        sd = _filtered(model, sd, cfg["model"])
    problems = fit_report(model, sd)
    if problems:
        target = model.state_dict()
        conflicts = {k for k in sd if k in target and sd[k].shape != target[k].shape}
        if conflicts and conflicts <= _head_keys(model):
            raise UserError(f"checkpoint {path}: its classifier head does not fit {cfg['num_classes']} classes "
                            f"({problems}); to fine-tune it on new classes, start a new run from it as pretrained "
                            f"weights (pretrained={path}, num_classes={cfg['num_classes']}, a new output directory)")
        raise UserError(f"checkpoint {path} does not fit {cfg['model']}: {problems}")
    model.load_state_dict(sd)


def build_distiller(cfg: Dict[str, Any], num_classes: int, device, channels_last: bool, state, resume_from):
    """The run's Distiller (edgevit.train.distill), or None. The teacher is not saved in the run's checkpoints:
    its checkpoint's checksum is (in the config), and a resumed run refuses a teacher that is not the same."""
    if not cfg.get("teacher"):
        return None
    from .distill import Distiller, build_teacher, file_sha256

    had = (state.get("config") or {}).get("teacher_sha256") if state is not None else None
    given = cfg.get("teacher_checkpoint")
    if state is not None and given and not Path(given).is_file() and given == (state.get("config") or {}).get(
            "teacher_checkpoint"):  # the run's own teacher, taken from it, has moved
        raise UserError(f"the run {resume_from} was distilled from the teacher checkpoint {given} (checksum "
                        f"{str(had)[:12]}), which is no longer there: give its new place", option="teacher_checkpoint")
    sha = file_sha256(given) if given else None
    if state is not None and had != sha:
        raise UserError(f"{cfg.get('teacher_checkpoint') or '(timm pretrained weights)'}: not the teacher the run "
                        f"{resume_from} was distilled from (checksum {str(sha)[:12]} vs {str(had)[:12]}); resume "
                        "with that teacher, or start a new run", option="teacher_checkpoint")
    cfg["teacher_sha256"] = sha
    teacher, size = build_teacher(cfg["teacher"], cfg.get("teacher_checkpoint"), num_classes, device, channels_last)
    return Distiller(teacher, cfg["distillation"], cfg["distillation_alpha"], cfg["distillation_tau"], size,
                     cfg["img_size"], device)


def check_compiler(device_type: str) -> None:
    """torch.compile's inductor writes C++ for CPUs and Triton kernels for CUDA; a missing toolchain would
    surface as an inductor traceback at the first step. Say what is missing, in one line, before training."""
    import importlib.util
    import shutil

    if device_type == "cuda":
        if importlib.util.find_spec("triton") is None:
            raise UserError("on CUDA needs the 'triton' package (pip install triton), or train without it",
                            option="compile")
        return
    from torch._inductor import config as inductor_config

    compilers = [c for c in inductor_config.cpp.cxx if c]
    if not any(shutil.which(c) for c in compilers):
        raise UserError(f"on {device_type} needs a C++ compiler ({' or '.join(compilers)}) on PATH: install one "
                        "(e.g. apt install g++), or train without it", option="compile")


def train_data(cfg: Dict[str, Any], info: DistInfo, state, resume_from):
    """The run's data: training set, its sampler and batches per epoch, the validation loader; `cfg` gets the
    class count. An ImageFolder (checked), any timm dataset name, or a stream such as WebDataset shards
    (train/datasets.py says how a stream's epochs, shards per process and resume work)."""
    device = info.device
    data = build_train_data(cfg, train_transform(cfg), eval_transform(cfg["img_size"], cfg["crop_pct"],
                                                                      cfg["eval_interpolation"]),
                            info.rank, info.world_size)
    classes = data.classes
    if state is not None and state.get("classes") and list(state["classes"]) != list(classes):
        run_only = [c for c in state["classes"] if c not in classes]
        data_only = [c for c in classes if c not in state["classes"]]
        differ = (f"only the run has {_shown(run_only)}; only the data has {_shown(data_only)}"
                  if run_only or data_only else "the same names in another order")
        raise UserError(f"checkpoint {resume_from}: the run was trained on the classes "
                        f"{_shown(state['classes'])}, but the data {cfg['data']} has {_shown(classes)} ({differ}); "
                        f"resume on the run's data, or fine-tune it on these classes in a new run "
                        f"(pretrained={resume_from}, a new output directory)", option="resume")
    num_classes = cfg["num_classes"] or len(classes)
    if cfg["num_classes"] and cfg["num_classes"] != len(classes):
        raise UserError(f"{cfg['num_classes']}, but the data {cfg['data']} has {len(classes)} classes",
                        option="num_classes")
    cfg = {**cfg, "num_classes": num_classes}
    for note in data.notes:
        warnings.warn(note)
    train_set, val_set = data.make_train(), data.val
    if data.streamed:  # each process's share of the epoch, in whole batches (timm's reader)
        sampler, per_process = None, len(train_set)
    else:
        sampler = build_train_sampler(train_set, cfg, info.rank, info.world_size, cfg["seed"])
        per_process = len(sampler)
        train_set = EpochSeeded(train_set, cfg["seed"], info.rank)
    steps = per_process // cfg["batch_size"]
    updates_per_epoch = steps // cfg["accum_steps"]
    if updates_per_epoch < 1:
        raise UserError(f"{cfg['batch_size']} x accum_steps {cfg['accum_steps']}: more than the "
                        f"{per_process} training images per process of {cfg['data']} (no full optimizer step)",
                        option="batch_size")
    steps = updates_per_epoch * cfg["accum_steps"]
    eval_bs = cfg["eval_batch_size"] or max(1, int(1.5 * cfg["batch_size"]))
    val_loader = build_eval_loader(val_set, eval_bs, cfg["workers"], device, info.rank, info.world_size)

    return cfg, data, train_set, sampler, steps, updates_per_epoch, val_loader


def objective(cfg: Dict[str, Any]):
    """(mixup/cutmix or None, the loss): the recipe's targets."""
    num_classes = cfg["num_classes"]
    mixup_on = cfg["mixup"] > 0 or cfg["cutmix"] > 0
    mixup_fn = Mixup(mixup_alpha=cfg["mixup"], cutmix_alpha=cfg["cutmix"], prob=cfg["mixup_prob"],
                     switch_prob=cfg["mixup_switch_prob"], mode=cfg["mixup_mode"],
                     label_smoothing=cfg["smoothing"], num_classes=num_classes) if mixup_on else None
    if mixup_on and cfg["batch_size"] % 2:
        raise UserError(f"{cfg['batch_size']}: mixup/cutmix need an even batch per process", option="batch_size")
    if mixup_on:
        criterion = SoftTargetCrossEntropy()  # smoothing is inside the mixed targets
    elif cfg["smoothing"] > 0:
        criterion = LabelSmoothingCrossEntropy(smoothing=cfg["smoothing"])
    else:
        criterion = torch.nn.CrossEntropyLoss()

    return mixup_fn, criterion


def build_model(cfg: Dict[str, Any], device: torch.device, state) -> tuple:
    """(the model on its device, channels_last): the recipe's model, its pretrained or QAT start, gradient
    checkpointing."""
    num_classes = cfg["num_classes"]
    if not timm.is_model(cfg["model"]):
        raise UserError(f"{cfg['model']!r} is not a known model; EdgeViTs: {', '.join(VARIANTS)}", option="model")
    head_kw = {"distill_head": True} if cfg["distill_head"] else {}
    model = timm.create_model(cfg["model"], num_classes=num_classes, drop_rate=cfg["drop"],
                              drop_path_rate=cfg["drop_path"], **head_kw, **cfg["model_kwargs"])
    if cfg["distill_head"]:
        model.set_distilled_training(True)  # training: (class, distillation) logits; evaluation: their average
    if cfg["qat"]:  # fine-tune the same task with int8 fake quantization: every weight kept, head included
        model = prepare_qat_model(model, cfg, state is None)
    elif cfg["pretrained"]:
        load_pretrained(model, cfg["pretrained"], cfg["model"], cfg["model_kwargs"])
    if cfg["grad_checkpointing"]:
        if not hasattr(model, "set_grad_checkpointing"):
            raise UserError(f"{cfg['model']} has no gradient checkpointing (timm's set_grad_checkpointing)",
                            option="grad_checkpointing")
        model.set_grad_checkpointing(True)
    channels_last = cfg["channels_last"] if cfg["channels_last"] is not None else device.type == "cuda"
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model, channels_last


def precision_setup(cfg: Dict[str, Any], device: torch.device) -> tuple:
    """(amp name, autocast dtype or None, GradScaler or None), decided once for the run."""
    dtype_name = amp_dtype(cfg, device.type)
    if dtype_name == "float16" and device.type != "cuda":
        raise UserError(f"float16 needs CUDA (its GradScaler and fp16 kernels); on {device.type} use bfloat16 "
                        "(CPU autocast) or none", option="amp")
    autocast_dtype = _DTYPES.get(dtype_name) if dtype_name else None
    scaler = torch.amp.GradScaler(device.type) if autocast_dtype == torch.float16 else None
    return dtype_name, autocast_dtype, scaler


def optimization(cfg: Dict[str, Any], model: torch.nn.Module, world_size: int, updates_per_epoch: int) -> tuple:
    """(peak lr, optimizer, schedule, EMA or None): timm's optimizer and scheduler factories, the linear scaling
    rule."""
    lr = scaled_lr(cfg, world_size)
    if cfg["min_lr"] > lr:  # the cosine would climb from the peak to min_lr
        if "min_lr" in cfg.get("_given", ()):
            raise UserError(f"{cfg['min_lr']}: above the peak learning rate {lr:.3g} (lr, or base_lr scaled by the "
                            "global batch); the schedule would rise instead of decay", option="min_lr")
        warnings.warn(f"min_lr {cfg['min_lr']} (the default) is above the peak learning rate {lr:.3g} of this "
                      f"global batch: min_lr set to {lr:.3g} (a constant learning rate after warm-up)")
        cfg["min_lr"] = lr
    opt_kwargs = {"eps": cfg["opt_eps"]}
    if cfg["opt_betas"]:
        opt_kwargs["betas"] = tuple(cfg["opt_betas"])
    optimizer = create_optimizer_v2(model, opt=cfg["opt"], lr=lr, weight_decay=cfg["weight_decay"],
                                    momentum=cfg["momentum"], **opt_kwargs)
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=cfg["sched"], num_epochs=cfg["epochs"] - cfg["cooldown_epochs"],
        warmup_epochs=cfg["warmup_epochs"], warmup_lr=cfg["warmup_lr"], min_lr=cfg["min_lr"],
        cooldown_epochs=cfg["cooldown_epochs"], step_on_epochs=not cfg["sched_on_updates"],
        updates_per_epoch=updates_per_epoch)
    ema = ModelEmaV3(model, decay=cfg["model_ema_decay"]) if cfg["model_ema"] else None

    return lr, optimizer, scheduler, ema
