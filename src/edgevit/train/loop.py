"""`edgevit train`: the DeiT/EdgeViT ImageNet recipe assembled from timm's pieces, one process or torchrun.

Read top to bottom: setup (processes, data, model, optimiser, schedule, EMA), resume, then the epoch loop
(train one epoch, evaluate, log, checkpoint). The shared machinery (distributed, state, guard, logging) is
also used by the dense-prediction trainer.
"""
from __future__ import annotations

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
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..errors import DataError, UserError
from ..models import VARIANTS, CheckpointError, fit_report, load_checkpoint, read_state_dict, save_checkpoint
from ..models.edgevit import checkpoint_filter_fn
from ..utils.io import to_plain
from .data import (
    EpochSeeded,
    build_eval_loader,
    build_train_loader,
    build_train_sampler,
    eval_transform,
    train_transform,
)
from .datasets import SkipCounter, build_train_data, stream_loader
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
from .logging import MetricsLogger
from .recipe import amp_dtype, public_config, resumed_config, scaled_lr
from .state import (
    CheckpointManager,
    RunDirectory,
    capture_rng_state,
    load_training_state,
    restore_rng_state,
    save_config,
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
    sd = _filtered(model, sd, cfg["model"]) if not cfg["qat"] else sd
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

    sha = file_sha256(cfg["teacher_checkpoint"]) if cfg.get("teacher_checkpoint") else None
    had = (state.get("config") or {}).get("teacher_sha256") if state is not None else None
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


@one_line_when_a_peer_stops
def train(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Run (or continue) a training run described by a resolved config (see recipe.resolve_config)."""
    info = init_distributed(cfg["device"])
    inputs = [(k, cfg.get(k)) for k in ("pretrained", "data", "config")]
    try:
        with RunDirectory(cfg["output"], cfg["resume"], cfg["overwrite"], info.is_main, inputs) as run:
            return _train(cfg, info, run)
    finally:
        cleanup_distributed()


def _train(cfg: Dict[str, Any], info: DistInfo, run: RunDirectory) -> Dict[str, Any]:
    device = info.device
    run_dir = Path(cfg["output"])
    set_determinism(cfg["seed"] + info.rank, cfg["deterministic"])
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])

    ckpt = CheckpointManager(run_dir, info.is_main, run)
    resume_from = ckpt.resume_path(cfg["resume"])
    state = (load_training_state(resume_from, "edgevit train", ("model", "optimizer", "scheduler", "epoch", "rng"))
             if resume_from is not None else None)  # checked before any work
    notes: list = []
    if state is not None:  # the run's own recipe (a changed one is refused by name)
        cfg, notes = resumed_config(cfg, state.get("config"), resume_from)
        check_distillation(cfg, set(cfg.get("_given", ())), lambda key: key)

    # ---- data ---------------------------------------------------------------------------------------
    # An ImageFolder (checked), any timm dataset name, or a stream such as WebDataset shards (train/datasets.py
    # says how a stream's epochs, shards per process and resume work).
    data = build_train_data(cfg, train_transform(cfg), eval_transform(cfg["img_size"], cfg["crop_pct"],
                                                                      cfg["eval_interpolation"]),
                            info.rank, info.world_size)
    classes = data.classes
    if state is not None and state.get("classes") and list(state["classes"]) != list(classes):
        run_only = [c for c in state["classes"] if c not in classes]
        data_only = [c for c in classes if c not in state["classes"]]
        differ = (f"only the run has {_shown(run_only)}; only the data has {_shown(data_only)}" if run_only or data_only
                  else "the same names in another order")
        raise UserError(f"checkpoint {resume_from}: the run was trained on the classes {_shown(state['classes'])}, "
                        f"but the data {cfg['data']} has {_shown(classes)} ({differ}); resume on the run's data, or "
                        f"fine-tune it on these classes in a new run (pretrained={resume_from}, a new output "
                        "directory)", option="resume")
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

    # ---- model, optimiser, schedule, EMA ------------------------------------------------------------
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
    dtype_name = amp_dtype(cfg, device.type)
    if dtype_name == "float16" and device.type != "cuda":
        raise UserError(f"float16 needs CUDA (its GradScaler and fp16 kernels); on {device.type} use bfloat16 "
                        "(CPU autocast) or none", option="amp")
    autocast_dtype = _DTYPES.get(dtype_name) if dtype_name else None
    scaler = torch.amp.GradScaler(device.type) if autocast_dtype == torch.float16 else None
    distiller = _distiller(cfg, num_classes, device, channels_last, state, resume_from)

    lr = scaled_lr(cfg, info.world_size)
    if cfg["min_lr"] > lr:  # the cosine would climb from the peak to min_lr
        if "min_lr" in cfg.get("_given", ()):
            raise UserError(f"{cfg['min_lr']}: above the peak learning rate {lr:.3g} (lr, or base_lr scaled by the "
                            "global batch); the schedule would rise instead of decay", option="min_lr")
        warnings.warn(f"min_lr {cfg['min_lr']} (the default) is above the peak learning rate {lr:.3g} of this global "
                      f"batch: min_lr set to {lr:.3g} (a constant learning rate after warm-up)")
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

    ddp_model = model
    if cfg["compile"]:
        check_compiler(device.type)
        ddp_model = torch.compile(ddp_model)
    if info.distributed:
        # Depthwise kernels [C, 1, k, k] get gradients whose stride on the size-1 dim differs from the bucket's;
        # the layouts are the same memory order, so DDP's warning about it says nothing useful.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        ddp_model = DistributedDataParallel(ddp_model, device_ids=[device.index] if device.type == "cuda" else None,
                                            gradient_as_bucket_view=True)

    # ---- resume -------------------------------------------------------------------------------------
    start_epoch, skip_steps, num_updates = 0, 0, 0
    carried_loss, carried_steps = 0.0, 0  # a resumed epoch's loss before the stop (its train_loss covers all of it)
    if cfg["warmup_epochs"] >= cfg["epochs"]:  # (warned only once every input has been checked)
        warnings.warn(f"warmup_epochs {cfg['warmup_epochs']} >= epochs {cfg['epochs']}: the learning rate never "
                      "reaches its peak")
    elif cfg["warmup_epochs"] + cfg["cooldown_epochs"] >= cfg["epochs"]:
        warnings.warn(f"warmup_epochs {cfg['warmup_epochs']} + cooldown_epochs {cfg['cooldown_epochs']} >= epochs "
                      f"{cfg['epochs']}: no epoch is left for the cosine, and the learning rate never reaches its peak")
    for note in notes:
        warnings.warn(note)
    if state is not None:
        _load_model_weights(model, state["model"], resume_from, cfg)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        if ema is not None and state.get("model_ema") is not None:
            ema.module.load_state_dict(state["model_ema"])
        ckpt.restore(state)
        start_epoch, skip_steps = int(state["epoch"]), int(state.get("step_in_epoch", 0))
        num_updates = int(state["num_updates"])
        if skip_steps:
            carried_loss = float(state["metrics"].get("epoch_loss_sum", 0.0))
            carried_steps = int(state["metrics"].get("epoch_loss_steps", 0))
        if start_epoch >= cfg["epochs"]:
            warnings.warn(f"the run already has its {start_epoch} epoch(s) of epochs {cfg['epochs']}: nothing to train "
                          "(raise epochs to continue it)")
        rngs = state["rng"]
        if len(rngs) == info.world_size:
            restore_rng_state(rngs[info.rank])
        else:  # another process count: new streams, but still seeded and distinct per rank
            set_determinism(cfg["seed"] + info.rank + 1000 * start_epoch, cfg["deterministic"])
        _log(info, f"resumed from {resume_from}: epoch {start_epoch}" + (f", step {skip_steps}" if skip_steps else ""))
    elif cfg["resume"] == "auto":
        _log(info, f"no {ckpt.last_path} to resume: starting a new run")

    lr = float(optimizer.param_groups[0].get("initial_lr", lr))  # (a resumed run's is its own, restored)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(run_dir, {**public_config(cfg), "lr": lr, "world_size": info.world_size,
                              "global_batch": cfg["batch_size"] * info.world_size * cfg["accum_steps"]})
    metrics_log = MetricsLogger(run_dir, info.is_main, tensorboard=cfg["tensorboard"])
    _log(info, f"training {cfg['model']} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params) on "
               f"{data.num_train} images / {num_classes} classes ({data.describe}), {info.world_size} process(es) on "
               f"{device.type}, "
               f"global batch {cfg['batch_size'] * info.world_size * cfg['accum_steps']}, lr {lr:.3g}, "
               f"amp {dtype_name or 'off'}, epochs {start_epoch}->{cfg['epochs']}"
               + (", repeated augmentation off (a stream is read once per epoch)" if data.streamed else ""))

    def training_state(epoch: int, step_in_epoch: int, metrics: Dict[str, Any]) -> Dict[str, Any]:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                "model_ema": ema.module.state_dict() if ema is not None else None,
                "epoch": epoch, "step_in_epoch": step_in_epoch, "num_updates": num_updates,
                "rng": _gather_rng(info), "config": to_plain(public_config(cfg)), "classes": list(classes),
                "metrics": metrics}

    # ---- epochs -------------------------------------------------------------------------------------
    summary: Dict[str, Any] = {"run_dir": str(run_dir), "stopped": None}
    skips = SkipCounter() if data.streamed else None  # samples a stream's reader skipped (counted per epoch)
    epochs_done = 0
    with GracefulStop() as stop:
        for epoch in range(start_epoch, cfg["epochs"]):
            if data.streamed:  # a fresh reader each epoch: the epoch's stream depends on (seed, epoch, rank) only
                train_set = data.make_train() if epoch > start_epoch else train_set
                train_set.set_epoch(epoch)
                loader = _skipped(stream_loader(train_set, cfg["batch_size"], cfg["workers"], device, cfg["seed"],
                                                epoch, info.rank, skips), skip_steps, cfg["progress"] and info.is_main)
            else:
                loader = build_train_loader(train_set, sampler, cfg, device, epoch, skip_steps, info.rank)
            ddp_model.train()
            t0 = time.time()
            loss_sum = torch.zeros((), dtype=torch.float64)
            n_steps, interrupted = 0, False
            total = steps - skip_steps
            bar = tqdm(total=total, desc=f"epoch {epoch + 1}/{cfg['epochs']}", disable=not (
                cfg["progress"] and info.is_main), dynamic_ncols=True, file=sys.stderr)
            data_wait = 0.0  # seconds the step loop sat waiting for the loader (host side)
            t_fetch = time.perf_counter()
            for i, (images, target) in enumerate(loader):
                data_wait += time.perf_counter() - t_fetch
                if i >= total:
                    break
                step = skip_steps + i
                images = images.to(device, non_blocking=True)
                target = target.to(device, non_blocking=True)
                if mixup_fn is not None:
                    images, target = mixup_fn(images, target)
                if channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                last_micro = (step + 1) % cfg["accum_steps"] == 0
                sync = nullcontext() if (last_micro or not info.distributed) else ddp_model.no_sync()
                with sync:
                    with torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext():
                        outputs = ddp_model(images)
                        loss = (distiller.loss(images, outputs, target, criterion) if distiller is not None
                                else criterion(outputs, target))
                    loss_all, stop_all = agree(loss, stop, step, epoch)  # every process decides alike
                    scaled = loss / cfg["accum_steps"]
                    (scaler.scale(scaled) if scaler else scaled).backward()
                if last_micro:
                    if scaler is not None:
                        if cfg["clip_grad"]:
                            scaler.unscale_(optimizer)
                            dispatch_clip_grad(model.parameters(), cfg["clip_grad"])
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        if cfg["clip_grad"]:
                            dispatch_clip_grad(model.parameters(), cfg["clip_grad"])
                        optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    num_updates += 1
                    if ema is not None:
                        ema.update(model, step=num_updates)
                    scheduler.step_update(num_updates)
                loss_sum += loss_all / info.world_size
                n_steps += 1
                lr_now = optimizer.param_groups[0]["lr"]
                ips = (n_steps * cfg["batch_size"] * info.world_size) / max(time.time() - t0, 1e-9)
                bar.update(1)
                bar.set_postfix(loss=f"{loss_all / info.world_size:.4f}", lr=f"{lr_now:.3g}",
                                img_s=f"{ips:.1f}", data_wait=f"{data_wait / max(time.time() - t0, 1e-9):.0%}")
                if last_micro and stop_all:
                    interrupted = True
                    break
                t_fetch = time.perf_counter()
            bar.close()
            epoch_time = time.time() - t0

            if interrupted:  # SIGTERM/SIGINT: save where we are, exit; --resume auto continues from this step
                ckpt.save(training_state(epoch, skip_steps + n_steps, {
                    "interrupted": True, "epoch_loss_sum": carried_loss + loss_sum.item(),
                    "epoch_loss_steps": carried_steps + n_steps}))
                barrier()
                _log(info, f"stopped by signal at epoch {epoch + 1}, step {skip_steps + n_steps}; saved "
                           f"{ckpt.last_path}; resume the run to continue")
                summary["stopped"] = "signal"
                summary["signal"] = int(stop.signum or 0)
                break

            skip_steps = 0
            scheduler.step(epoch + 1)
            broadcast_buffers(model)  # evaluate (and save) rank 0's statistics on every rank
            if ema is not None:
                broadcast_buffers(ema.module)
            amp_eval = autocast_dtype if device.type == "cuda" else None
            show = cfg["progress"] and info.is_main
            val = evaluate(model, val_loader, device, amp_eval, channels_last, progress=show, desc="val",
                           strict=False)  # (a stream's missing validation samples: decided once the epoch is saved)
            record: Dict[str, Any] = {
                "epoch": epoch + 1,
                "train_loss": (carried_loss + loss_sum.item()) / max(carried_steps + n_steps, 1),
                "lr": optimizer.param_groups[0]["lr"], "val_top1": val["top1"], "val_top5": val["top5"],
                "val_loss": val["loss"], "val_images": val["num_images"], "epoch_time_s": epoch_time,
                "images_per_s": n_steps * cfg["batch_size"] * info.world_size / max(epoch_time, 1e-9),
                "data_wait_share": data_wait / max(epoch_time, 1e-9)}
            if distiller is not None:  # the teacher's forward passes, as a share of the epoch
                record["teacher_share"] = distiller.take_seconds() / max(epoch_time, 1e-9)
            if skips is not None:  # (a stream: summed over processes)
                record["skipped_samples"] = int(all_reduce_sum(torch.tensor(float(skips.take()), device=device)).item())
            carried_loss, carried_steps = 0.0, 0
            if ema is not None:
                ev = evaluate(ema.module, val_loader, device, amp_eval, channels_last, desc="val ema")
                record.update(ema_val_top1=ev["top1"], ema_val_top5=ev["top5"])
            ckpt.save(training_state(epoch + 1, 0, record), metric=val["top1"], higher_is_better=True)
            metrics_log.log(record)
            barrier()
            _log(info, f"epoch {epoch + 1}/{cfg['epochs']}: train loss {record['train_loss']:.4f}, val top-1 "
                       f"{val['top1']:.2f}%, top-5 {val['top5']:.2f}%"
                       + (f", EMA top-1 {record['ema_val_top1']:.2f}%" if ema is not None else "")
                       + f", {record['images_per_s']:.1f} img/s ({record['data_wait_share']:.0%} of the "
                       "epoch waiting for data)"
                       + (f", {record['skipped_samples']} unreadable samples skipped"
                          if record.get("skipped_samples") else "")
                       + (f", teacher {record['teacher_share']:.0%} of the epoch" if distiller is not None else ""))
            summary.update(last=record)
            epochs_done += 1
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
            if cfg["stop_after_epochs"] and epochs_done >= cfg["stop_after_epochs"] and epoch + 1 < cfg["epochs"]:
                summary["stopped"] = "stop_after_epochs"
                _log(info, f"stopping after {epochs_done} epoch(s) (stop_after_epochs); resume the run to continue")
                break
            stop_now = all_reduce_sum(torch.tensor(float(stop.requested), device=device)).item() > 0
            if stop_now and epoch + 1 < cfg["epochs"]:  # signal during evaluation: the epoch is already saved
                summary["stopped"], summary["signal"] = "signal", int(stop.signum or 0)
                _log(info, f"stopped by signal after epoch {epoch + 1}; resume the run to continue")
                break
    metrics_log.close()
    if skips is not None:
        skips.detach()

    if summary["stopped"] is None and info.is_main and not cfg["qat"]:  # (a QAT graph's weights are only
        # meaningful with its quantizers: its last.pth/best.pth is what `edgevit export --quantize` takes)
        recorded = public_config(cfg)  # the weights carry their preprocessing (input size, crop, classes)
        save_checkpoint(model, run_dir / "model.safetensors", recorded, list(classes))
        if ema is not None:
            save_checkpoint(ema.module, run_dir / "model_ema.safetensors", recorded, list(classes))
    summary.update(best_val_top1=ckpt.best, epochs_completed=epochs_done,
                   checkpoint=str(ckpt.last_path),
                   best_checkpoint=str(ckpt.best_path) if ckpt.best is not None else None)
    return summary


