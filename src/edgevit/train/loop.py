"""`edgevit train`: the DeiT/EdgeViT ImageNet recipe assembled from timm's pieces, one process or torchrun.

Read top to bottom: setup (processes, data, model, optimiser, schedule, EMA), resume, then the epoch loop
(train one epoch, evaluate, log, checkpoint). The shared machinery (distributed, state, guard, logging) is
also used by the dense-prediction trainer.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Dict, Optional

import timm
import torch
import torch.distributed as dist
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3, dispatch_clip_grad
from tqdm import tqdm

from ..errors import DataError, UserError
from ..models import VARIANTS, CheckpointError, fit_report, load_checkpoint, read_state_dict, save_checkpoint
from ..models.edgevit import checkpoint_filter_fn
from ..utils.io import to_plain
from .data import eval_transform, train_transform
from .datasets import build_train_data
from .distill import check_distillation
from .distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    broadcast_buffers,
    cleanup_distributed,
    init_distributed,
    one_line_when_a_peer_stops,
)
from .evaluate import evaluate, missing_samples_message
from .guard import GracefulStop, agree
from .loaders import EpochSeeded, SkipCounter, build_eval_loader, build_train_loader, build_train_sampler, stream_loader
from .recipe import amp_dtype, public_config, resumed_config, scaled_lr
from .run import TrainingRun, autocast_context, training_run
from .state import (
    capture_rng_state,
    restore_rng_state,
    set_determinism,
)

__all__ = ["train"]

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def _log(info: DistInfo, msg: str) -> None:
    if info.is_main:
        print(msg, file=sys.stderr, flush=True)


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


def _load_model_weights(model, sd, path, cfg) -> None:
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


def _distiller(cfg: Dict[str, Any], num_classes: int, device, channels_last: bool, state, resume_from):
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


def _skipped(loader, n: int, progress: bool):
    """The loader's batches after its first `n`, which are read and dropped with the RNG saved and restored around
    them: a stream cannot seek, and a resumed run must continue with the training RNG where the stop left it."""
    it = iter(loader)
    if n:
        saved = capture_rng_state()
        for _ in tqdm(range(n), desc="skipping the batches already trained", disable=not progress, leave=False,
                      dynamic_ncols=True, file=sys.stderr):
            next(it)
        restore_rng_state(saved)
    return it


def _gather_rng(info: DistInfo) -> list:
    """Every process's RNG state (rank order), so a resumed DDP run continues each stream."""
    mine = capture_rng_state()
    if not info.distributed:
        return [mine]
    out = [None] * info.world_size
    dist.all_gather_object(out, mine)
    return out


STATE_KEYS = ("model", "optimizer", "scheduler", "epoch", "rng")


@one_line_when_a_peer_stops
def train(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Run (or continue) a training run described by a resolved config (see recipe.resolve_config)."""
    info = init_distributed(cfg["device"])
    inputs = [(k, cfg.get(k)) for k in ("pretrained", "data", "config")]
    try:
        with training_run(cfg["output"], cfg["resume"], cfg["overwrite"], info, inputs, "edgevit train",
                          STATE_KEYS) as run:
            trainer = Trainer.setup(cfg, info, run)
            return trainer.fit()
    finally:
        cleanup_distributed()


def _train_data(cfg: Dict[str, Any], info: DistInfo, state, resume_from):
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


def _objective(cfg: Dict[str, Any]):
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


def _build_model(cfg: Dict[str, Any], device: torch.device, state) -> tuple:
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


def _precision(cfg: Dict[str, Any], device: torch.device) -> tuple:
    """(amp name, autocast dtype or None, GradScaler or None), decided once for the run."""
    dtype_name = amp_dtype(cfg, device.type)
    if dtype_name == "float16" and device.type != "cuda":
        raise UserError(f"float16 needs CUDA (its GradScaler and fp16 kernels); on {device.type} use bfloat16 "
                        "(CPU autocast) or none", option="amp")
    autocast_dtype = _DTYPES.get(dtype_name) if dtype_name else None
    scaler = torch.amp.GradScaler(device.type) if autocast_dtype == torch.float16 else None
    return dtype_name, autocast_dtype, scaler


def _optimization(cfg: Dict[str, Any], model: torch.nn.Module, world_size: int, updates_per_epoch: int) -> tuple:
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


@dataclasses.dataclass
class Trainer:
    """Everything a run trains with, built once by `setup`; `fit` runs the epochs, `train_epoch` one epoch,
    `step` one (micro-)batch, `end_epoch` the evaluation, checkpoint and log that close an epoch."""

    cfg: Dict[str, Any]
    info: DistInfo
    run: TrainingRun
    data: Any  # build_train_data's TrainData
    train_set: Any
    sampler: Any
    steps: int  # (micro-)batches per epoch
    val_loader: Any
    classes: list
    model: torch.nn.Module
    ddp_model: torch.nn.Module
    criterion: Any
    mixup_fn: Any
    distiller: Any
    optimizer: Any
    scheduler: Any
    scaler: Any
    ema: Any
    ctx: Any  # the forward pass's precision (autocast or nothing), decided once
    amp_eval: Optional[torch.dtype]
    channels_last: bool
    lr: float
    start_epoch: int = 0
    skip_steps: int = 0
    num_updates: int = 0
    carried_loss: float = 0.0  # a resumed epoch's loss before the stop (its train_loss covers all of it)
    carried_steps: int = 0
    skips: Any = None

    # ---- setup ------------------------------------------------------------------------------------------
    @classmethod
    def setup(cls, cfg: Dict[str, Any], info: DistInfo, run: TrainingRun) -> "Trainer":
        """Processes, data, model, optimiser, schedule, EMA, precision; then the resumed state, if any."""
        device = info.device
        set_determinism(cfg["seed"] + info.rank, cfg["deterministic"])
        if cfg["threads"]:
            torch.set_num_threads(cfg["threads"])
        state, resume_from = run.state, run.resume_from
        notes: list = []
        if state is not None:  # the run's own recipe (a changed one is refused by name)
            cfg, notes = resumed_config(cfg, state.get("config"), resume_from)
            check_distillation(cfg, set(cfg.get("_given", ())), lambda key: key)

        cfg, data, train_set, sampler, steps, updates_per_epoch, val_loader = _train_data(cfg, info, state,
                                                                                          resume_from)
        mixup_fn, criterion = _objective(cfg)
        model, channels_last = _build_model(cfg, device, state)
        dtype_name, autocast_dtype, scaler = _precision(cfg, device)
        distiller = _distiller(cfg, cfg["num_classes"], device, channels_last, state, resume_from)

        lr, optimizer, scheduler, ema = _optimization(cfg, model, info.world_size, updates_per_epoch)
        ddp_model = model
        if cfg["compile"]:
            check_compiler(device.type)
            ddp_model = torch.compile(ddp_model)
        ddp_model = run.parallel(ddp_model)

        trainer = cls(cfg=cfg, info=info, run=run, data=data, train_set=train_set, sampler=sampler, steps=steps,
                      val_loader=val_loader, classes=list(data.classes), model=model, ddp_model=ddp_model,
                      criterion=criterion, mixup_fn=mixup_fn, distiller=distiller, optimizer=optimizer,
                      scheduler=scheduler, scaler=scaler, ema=ema, ctx=autocast_context(device, autocast_dtype),
                      amp_eval=autocast_dtype if device.type == "cuda" else None, channels_last=channels_last,
                      lr=lr, skips=SkipCounter() if data.streamed else None)
        if cfg["warmup_epochs"] >= cfg["epochs"]:  # (warned only once every input has been checked)
            warnings.warn(f"warmup_epochs {cfg['warmup_epochs']} >= epochs {cfg['epochs']}: the learning rate never "
                          "reaches its peak")
        elif cfg["warmup_epochs"] + cfg["cooldown_epochs"] >= cfg["epochs"]:
            warnings.warn(f"warmup_epochs {cfg['warmup_epochs']} + cooldown_epochs {cfg['cooldown_epochs']} >= "
                          f"epochs {cfg['epochs']}: no epoch is left for the cosine, and the learning rate never "
                          "reaches its peak")
        for note in notes:
            warnings.warn(note)
        if state is not None:
            trainer.resume(state)
        elif cfg["resume"] == "auto":
            _log(info, f"no {run.ckpt.last_path} to resume: starting a new run")
        trainer.lr = float(optimizer.param_groups[0].get("initial_lr", lr))  # (a resumed run's is its own)
        run.start({**public_config(cfg), "lr": trainer.lr, "world_size": info.world_size,
                   "global_batch": cfg["batch_size"] * info.world_size * cfg["accum_steps"]},
                  tensorboard=cfg["tensorboard"])
        _log(info, f"training {cfg['model']} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params) on "
                   f"{data.num_train} images / {len(data.classes)} classes ({data.describe}), {info.world_size} "
                   f"process(es) on {device.type}, "
                   f"global batch {cfg['batch_size'] * info.world_size * cfg['accum_steps']}, lr {trainer.lr:.3g}, "
                   f"amp {dtype_name or 'off'}, epochs {trainer.start_epoch}->{cfg['epochs']}"
                   + (", repeated augmentation off (a stream is read once per epoch)" if data.streamed else ""))
        return trainer

    def resume(self, state: Dict[str, Any]) -> None:
        """Every part's state from the checkpoint, the epoch and step to continue from, each process's RNG."""
        cfg, info = self.cfg, self.info
        _load_model_weights(self.model, state["model"], self.run.resume_from, cfg)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("model_ema") is not None:
            self.ema.module.load_state_dict(state["model_ema"])
        self.run.restore(state)
        self.start_epoch, self.skip_steps = int(state["epoch"]), int(state.get("step_in_epoch", 0))
        self.num_updates = int(state["num_updates"])
        if self.skip_steps:
            self.carried_loss = float(state["metrics"].get("epoch_loss_sum", 0.0))
            self.carried_steps = int(state["metrics"].get("epoch_loss_steps", 0))
        if self.start_epoch >= cfg["epochs"]:
            warnings.warn(f"the run already has its {self.start_epoch} epoch(s) of epochs {cfg['epochs']}: nothing "
                          "to train (raise epochs to continue it)")
        rngs = state["rng"]
        if len(rngs) == info.world_size:
            restore_rng_state(rngs[info.rank])
        else:  # another process count: new streams, but still seeded and distinct per rank
            set_determinism(cfg["seed"] + info.rank + 1000 * self.start_epoch, cfg["deterministic"])
        _log(info, f"resumed from {self.run.resume_from}: epoch {self.start_epoch}"
             + (f", step {self.skip_steps}" if self.skip_steps else ""))

    def training_state(self, epoch: int, step_in_epoch: int, metrics: Dict[str, Any]) -> Dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler else None,
                "model_ema": self.ema.module.state_dict() if self.ema is not None else None,
                "epoch": epoch, "step_in_epoch": step_in_epoch, "num_updates": self.num_updates,
                "rng": _gather_rng(self.info), "config": to_plain(public_config(self.cfg)), "classes": self.classes,
                "metrics": metrics}

    # ---- the epochs --------------------------------------------------------------------------------------
    def fit(self) -> Dict[str, Any]:
        cfg, info, ckpt = self.cfg, self.info, self.run.ckpt
        summary: Dict[str, Any] = {"run_dir": str(self.run.path), "stopped": None}
        epochs_done = 0
        with GracefulStop() as stop:
            for epoch in range(self.start_epoch, cfg["epochs"]):
                n_steps, loss_sum, epoch_time, data_wait, interrupted = self.train_epoch(epoch, stop)
                if interrupted:  # SIGTERM/SIGINT: save where we are, exit; --resume auto continues from this step
                    step = self.skip_steps + n_steps
                    saved = ckpt.save(self.training_state(epoch, step, {
                        "interrupted": True, "epoch_loss_sum": self.carried_loss + loss_sum,
                        "epoch_loss_steps": self.carried_steps + n_steps}), complete=False)
                    barrier()
                    _log(info, f"stopped by signal at epoch {epoch + 1}, step {step}; " + (
                        f"saved {ckpt.last_path}; resume the run to continue" if saved else
                        "the new run completed no epoch, so the run it was to replace is kept and these steps are "
                        "not saved"))
                    summary["stopped"], summary["signal"] = "signal", int(stop.signum or 0)
                    break
                record = self.end_epoch(epoch, n_steps, loss_sum, epoch_time, data_wait)
                summary.update(last=record)
                epochs_done += 1
                if cfg["stop_after_epochs"] and epochs_done >= cfg["stop_after_epochs"] and epoch + 1 < cfg["epochs"]:
                    summary["stopped"] = "stop_after_epochs"
                    _log(info, f"stopping after {epochs_done} epoch(s) (stop_after_epochs); resume the run to "
                               "continue")
                    break
                stop_now = all_reduce_sum(torch.tensor(float(stop.requested), device=info.device)).item() > 0
                if stop_now and epoch + 1 < cfg["epochs"]:  # signal during evaluation: the epoch is already saved
                    summary["stopped"], summary["signal"] = "signal", int(stop.signum or 0)
                    _log(info, f"stopped by signal after epoch {epoch + 1}; resume the run to continue")
                    break
        self.run.close()
        if self.skips is not None:
            self.skips.detach()
        if summary["stopped"] is None and info.is_main and not cfg["qat"]:  # (a QAT graph's weights are only
            # meaningful with its quantizers: its last.pth/best.pth is what `edgevit export --quantize` takes)
            recorded = public_config(cfg)  # the weights carry their preprocessing (input size, crop, classes)
            save_checkpoint(self.model, self.run.path / "model.safetensors", recorded, self.classes)
            if self.ema is not None:
                save_checkpoint(self.ema.module, self.run.path / "model_ema.safetensors", recorded, self.classes)
        summary.update(best_val_top1=ckpt.best, epochs_completed=epochs_done, checkpoint=str(ckpt.last_path),
                       best_checkpoint=str(ckpt.best_path) if ckpt.best is not None else None)
        return summary

    def loader(self, epoch: int):
        """The epoch's batches from `skip_steps` on: a map-style dataset's sampler starts there (SkipSampler); a
        stream, which cannot seek, is read from its start and the first batches dropped (`_skipped`)."""
        cfg, info = self.cfg, self.info
        if not self.data.streamed:
            return build_train_loader(self.train_set, self.sampler, cfg, info.device, epoch, self.skip_steps,
                                      info.rank)
        # a fresh reader each epoch: the epoch's stream depends on (seed, epoch, rank) only
        self.train_set = self.data.make_train() if epoch > self.start_epoch else self.train_set
        self.train_set.set_epoch(epoch)
        return _skipped(stream_loader(self.train_set, cfg["batch_size"], cfg["workers"], info.device, cfg["seed"],
                                      epoch, info.rank, self.skips), self.skip_steps, cfg["progress"] and info.is_main)

    def train_epoch(self, epoch: int, stop: GracefulStop):
        """One epoch (from `skip_steps` on): (steps run, summed loss, seconds, seconds waiting for data,
        stopped by a signal)."""
        cfg, info = self.cfg, self.info
        loader = self.loader(epoch)
        self.ddp_model.train()
        t0 = time.time()
        loss_sum = torch.zeros((), dtype=torch.float64)
        n_steps, interrupted = 0, False
        total = self.steps - self.skip_steps
        bar = tqdm(total=total, desc=f"epoch {epoch + 1}/{cfg['epochs']}", disable=not (
            cfg["progress"] and info.is_main), dynamic_ncols=True, file=sys.stderr)
        data_wait = 0.0  # seconds the step loop sat waiting for the loader (host side)
        t_fetch = time.perf_counter()
        for i, (images, target) in enumerate(loader):
            data_wait += time.perf_counter() - t_fetch
            if i >= total:
                break
            loss_all, stop_all, last_micro = self.step(images, target, self.skip_steps + i, epoch, stop)
            loss_sum += loss_all / info.world_size
            n_steps += 1
            ips = (n_steps * cfg["batch_size"] * info.world_size) / max(time.time() - t0, 1e-9)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_all / info.world_size:.4f}", lr=f"{self.optimizer.param_groups[0]['lr']:.3g}",
                            img_s=f"{ips:.1f}", data_wait=f"{data_wait / max(time.time() - t0, 1e-9):.0%}")
            if last_micro and stop_all:
                interrupted = True
                break
            t_fetch = time.perf_counter()
        bar.close()
        return n_steps, loss_sum.item(), time.time() - t0, data_wait, interrupted

    def step(self, images: torch.Tensor, target: torch.Tensor, step: int, epoch: int, stop: GracefulStop):
        """One micro-batch: forward and backward; on the last micro-batch of an accumulation, the optimizer step,
        the EMA and the schedule. Returns (the loss summed over processes, whether every process stops, whether
        this was the accumulation's last micro-batch)."""
        cfg, info, device = self.cfg, self.info, self.info.device
        images = images.to(device, non_blocking=True)
        target = target.to(device, non_blocking=True)
        if self.mixup_fn is not None:
            images, target = self.mixup_fn(images, target)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        last_micro = (step + 1) % cfg["accum_steps"] == 0
        sync = nullcontext() if (last_micro or not info.distributed) else self.ddp_model.no_sync()
        with sync:
            with self.ctx:
                outputs = self.ddp_model(images)
                loss = (self.distiller.loss(images, outputs, target, self.criterion) if self.distiller is not None
                        else self.criterion(outputs, target))
            loss_all, stop_all = agree(loss, stop, step, epoch)  # every process decides alike
            scaled = loss / cfg["accum_steps"]
            (self.scaler.scale(scaled) if self.scaler else scaled).backward()
        if last_micro:
            if self.scaler is not None and cfg["clip_grad"]:
                self.scaler.unscale_(self.optimizer)
            if cfg["clip_grad"]:
                dispatch_clip_grad(self.model.parameters(), cfg["clip_grad"])
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.num_updates += 1
            if self.ema is not None:
                self.ema.update(self.model, step=self.num_updates)
            self.scheduler.step_update(self.num_updates)
        return loss_all, stop_all, last_micro

    def end_epoch(self, epoch: int, n_steps: int, loss_sum: float, epoch_time: float,
                  data_wait: float) -> Dict[str, Any]:
        """The schedule's epoch step, evaluation (and the EMA's), the checkpoint, the log line; then what the
        epoch found wrong in the data (after it is saved: mend it, then resume)."""
        cfg, info, ckpt = self.cfg, self.info, self.run.ckpt
        self.skip_steps = 0
        self.scheduler.step(epoch + 1)
        broadcast_buffers(self.model)  # evaluate (and save) rank 0's statistics on every rank
        if self.ema is not None:
            broadcast_buffers(self.ema.module)
        show = cfg["progress"] and info.is_main
        val = evaluate(self.model, self.val_loader, info.device, self.amp_eval, self.channels_last, progress=show,
                       desc="val", strict=False)  # (a stream's missing validation samples: decided once saved)
        record: Dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": (self.carried_loss + loss_sum) / max(self.carried_steps + n_steps, 1),
            "lr": self.optimizer.param_groups[0]["lr"], "val_top1": val["top1"], "val_top5": val["top5"],
            "val_loss": val["loss"], "val_images": val["num_images"], "epoch_time_s": epoch_time,
            "images_per_s": n_steps * cfg["batch_size"] * info.world_size / max(epoch_time, 1e-9),
            "data_wait_share": data_wait / max(epoch_time, 1e-9)}
        if self.distiller is not None:  # the teacher's forward passes, as a share of the epoch
            record["teacher_share"] = self.distiller.take_seconds() / max(epoch_time, 1e-9)
        if self.skips is not None:  # (a stream: summed over processes)
            record["skipped_samples"] = int(all_reduce_sum(torch.tensor(float(self.skips.take()),
                                                                        device=info.device)).item())
        self.carried_loss, self.carried_steps = 0.0, 0
        if self.ema is not None:
            ev = evaluate(self.ema.module, self.val_loader, info.device, self.amp_eval, self.channels_last,
                          desc="val ema")
            record.update(ema_val_top1=ev["top1"], ema_val_top5=ev["top5"])
        ckpt.save(self.training_state(epoch + 1, 0, record), metric=val["top1"], higher_is_better=True)
        self.run.log.log(record)
        barrier()
        _log(info, f"epoch {epoch + 1}/{cfg['epochs']}: train loss {record['train_loss']:.4f}, val top-1 "
                   f"{val['top1']:.2f}%, top-5 {val['top5']:.2f}%"
                   + (f", EMA top-1 {record['ema_val_top1']:.2f}%" if self.ema is not None else "")
                   + f", {record['images_per_s']:.1f} img/s ({record['data_wait_share']:.0%} of the "
                   "epoch waiting for data)"
                   + (f", {record['skipped_samples']} unreadable samples skipped"
                      if record.get("skipped_samples") else "")
                   + (f", teacher {record['teacher_share']:.0%} of the epoch" if self.distiller is not None else ""))
        if val.get("missing_samples"):  # the epoch is saved: an accuracy over fewer samples is not reported
            raise DataError(missing_samples_message(f"epoch {epoch + 1}: the validation split of {cfg['data']}",
                                                    val["num_images"], val["num_images"] + val["missing_samples"])
                            + f"; {ckpt.last_path} holds the epoch: resume once mended")
        if record.get("skipped_samples", 0) > cfg["max_skipped"]:  # the epoch is saved: fix, then resume
            raise DataError(f"epoch {epoch + 1}: the reader skipped {record['skipped_samples']} training samples "
                            f"of {cfg['data']} it could not read (webdataset's 'Ignoring' lines give each error, "
                            f"not its shard), more than max_skipped {cfg['max_skipped']}; {ckpt.last_path} holds "
                            "the epoch: mend or drop them (and their count in _info.json), or allow them with "
                            "max_skipped, and resume")
        return record
