"""`edgevit train`: the DeiT/EdgeViT ImageNet recipe assembled from timm's pieces, one process or torchrun.

Read top to bottom: setup (processes, and what `edgevit.train.build` builds: data, model, optimiser, schedule,
EMA), resume, then the epoch loop (train one epoch, evaluate, log, checkpoint). The shared machinery
(distributed, state, guard, logging) is also used by the dense-prediction trainer.
"""
from __future__ import annotations

import dataclasses
import sys
import time
import warnings
from contextlib import nullcontext
from typing import Any, Dict, Optional

import torch
import torch.distributed as dist
from timm.utils import dispatch_clip_grad
from tqdm import tqdm

from ..errors import DataError
from ..models import save_checkpoint
from ..utils.writes import to_plain
from .build import (
    build_distiller,
    build_model,
    check_compiler,
    load_model_weights,
    objective,
    optimization,
    precision_setup,
    train_data,
)
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
from .loaders import SkipCounter, build_train_loader, stream_loader
from .recipe import public_config, resumed_config
from .run import TrainingRun, autocast_context, training_run
from .state import (
    capture_rng_state,
    restore_rng_state,
    set_determinism,
)

__all__ = ["train"]


def _log(info: DistInfo, msg: str) -> None:
    if info.is_main:
        print(msg, file=sys.stderr, flush=True)


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

        cfg, data, train_set, sampler, steps, updates_per_epoch, val_loader = train_data(cfg, info, state,
                                                                                          resume_from)
        mixup_fn, criterion = objective(cfg)
        model, channels_last = build_model(cfg, device, state)
        dtype_name, autocast_dtype, scaler = precision_setup(cfg, device)
        distiller = build_distiller(cfg, cfg["num_classes"], device, channels_last, state, resume_from)

        lr, optimizer, scheduler, ema = optimization(cfg, model, info.world_size, updates_per_epoch)
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
        load_model_weights(self.model, state["model"], self.run.resume_from, cfg)
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
