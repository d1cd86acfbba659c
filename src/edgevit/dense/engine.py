"""Training, evaluation and prediction loops for the detectors and the segmenter.

A thin script over library models, like torchvision's detection references: the process group,
atomic checkpoints, RNG capture, graceful stop, non-finite guard, metrics log and config file all
come from ``edgevit.train`` (shared with classification training).  What is here is the loop.

Exact resume: the loop is iteration-based; data order comes from ``DistributedSampler`` seeded by
(seed, epoch), augmentation randomness from (seed, epoch, index), and DataLoader worker seeds from a
private generator, so a run stopped after iteration k (SIGTERM/SIGINT -> save -> exit) and resumed with
``--resume auto`` sees exactly the batches and random state a straight run would.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from timm.optim import create_optimizer_v2
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from ..errors import UserError
from ..models.checkpoint import CheckpointError
from ..train.distributed import DistInfo, all_reduce_sum, one_line_when_a_peer_stops
from ..train.guard import GracefulStop, agree
from ..train.loaders import ShardSampler, SkipSampler, leave_signals_to_the_trainer
from ..train.run import training_run
from ..train.state import capture_rng_state, load_training_state, restore_rng_state
from . import registry
from .ade import IGNORE
from .files import DenseFile
from .metrics import coco_evaluate, confusion_matrix, detections_to_coco, segmentation_scores
from .models import create_dense

SINGLE = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"), distributed=False)


# ---------------------------------------------------------------- schedules (mmdet 1x / mmseg poly)
Schedule = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]


def step_schedule(warmup_iters: int, milestones: Sequence[int], warmup_ratio: float = 0.001,
                  gamma: float = 0.1) -> Schedule:
    """mmdet's 1x per iteration: linear warm-up from `warmup_ratio`, then x`gamma` at each milestone
    (torch's LinearLR then MultiStepLR; the milestones count from the start of training)."""
    from torch.optim.lr_scheduler import LinearLR, MultiStepLR, SequentialLR

    def make(opt: torch.optim.Optimizer):
        if warmup_iters <= 0:
            return MultiStepLR(opt, list(milestones), gamma)
        return SequentialLR(opt, [LinearLR(opt, warmup_ratio, 1.0, warmup_iters),
                                  MultiStepLR(opt, [m - warmup_iters for m in milestones], gamma)],
                            milestones=[warmup_iters])
    return make


def poly_schedule(total_iters: int, power: float = 1.0) -> Schedule:
    """mmseg's poly decay per iteration to 0 (power 1.0 as PVT's / EdgeViT's Semantic FPN config): torch's
    PolynomialLR."""
    from torch.optim.lr_scheduler import PolynomialLR

    return lambda opt: PolynomialLR(opt, total_iters, power)


# ---------------------------------------------------------------- the loop
STATE_KEYS = ("model", "optimizer", "scheduler", "iteration", "rng", "meta")


def _command(arch: str) -> str:
    return f"edgevit {registry.get(arch).task} train"


@one_line_when_a_peer_stops
def fit(model: nn.Module, train_set, collate_fn: Optional[Callable], loss_fn: Callable, evaluate: Callable,
        *, run_dir: str | Path, total_iters: int, batch_size: int, lr: float, weight_decay: float,
        schedule: Schedule, eval_every: int, save_every: int, metric_key: str, meta: Dict[str, Any],
        cfg: Dict[str, Any], dist_info: DistInfo = SINGLE, resume: Optional[str] = None, seed: int = 0,
        workers: int = 0, clip_grad: Optional[float] = None, log_every: int = 20,
        overwrite: bool = False, progress: bool = True, inputs: Sequence[tuple] = ()) -> Dict[str, Any]:
    """Train for `total_iters` iterations of `batch_size` images per process; returns {"iteration", "stopped",
    "last_eval", "best"}. `inputs`: (option, path) of the files the run reads (refused inside a run directory
    being replaced)."""
    with training_run(run_dir, resume, overwrite, dist_info, inputs, _command(meta["arch"]), STATE_KEYS) as run:
        device, world = dist_info.device, dist_info.world_size
        sampler = DistributedSampler(train_set, num_replicas=world, rank=dist_info.rank, shuffle=True, seed=seed,
                                     drop_last=True)
        per_epoch = len(sampler) // batch_size
        if per_epoch == 0:
            raise UserError(f"{batch_size} per process x {world} process(es): more than the training set "
                            f"({len(train_set)} images)", option="batch_size")

        meta = {**meta, "batch_per_process": batch_size}  # (what an epoch is depends on it: resumed only alike)
        model.to(device)
        optimizer = create_optimizer_v2(model, "adamw", lr=lr, weight_decay=weight_decay)  # no decay on norms/biases
        scheduler = schedule(optimizer)
        it = 0
        if run.state is not None:
            state = run.state
            if state["meta"].get("arch") != meta["arch"] or state["meta"].get("variant") != meta["variant"]:
                raise CheckpointError(f"checkpoint {run.resume_from}: a {state['meta'].get('arch')} / "
                                      f"{state['meta'].get('variant')} run, not {meta['arch']} / {meta['variant']}")
            saved = state["meta"].get("batch_per_process")
            if saved is None:  # written when batch_size counted every process
                raise UserError(f"{batch_size}: checkpoint {run.resume_from} was saved when batch_size counted the "
                                f"images of all processes; it now counts one process's: resume with that run's "
                                f"batch_size divided by its number of processes ({world} here)", option="batch_size")
            if saved != batch_size:
                raise UserError(f"{batch_size}: the run {run.resume_from} trains {saved} images per process; resume "
                                "it with the same (another batch changes what an epoch and an iteration are)",
                                option="batch_size")
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            restore_rng_state(state["rng"])
            run.restore(state)
            it = int(state["iteration"])
        logger = run.start(cfg)
        ddp = run.parallel(model)

        def snapshot() -> Dict[str, Any]:
            return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "iteration": it, "rng": capture_rng_state(), "meta": meta}

        last_eval: Optional[Dict[str, Any]] = None
        stopped = False
        bar = tqdm(total=total_iters, initial=it, desc="train", disable=not (progress and dist_info.is_main),
                   dynamic_ncols=True)
        with GracefulStop() as stop:
            while it < total_iters and not stopped:
                epoch, skip = divmod(it, per_epoch)
                sampler.set_epoch(epoch)
                train_set.epoch = epoch
                loader = DataLoader(train_set, batch_size=batch_size,
                                    sampler=SkipSampler(sampler, skip * batch_size, positions=False),
                                    collate_fn=collate_fn, num_workers=workers, drop_last=True,
                                    worker_init_fn=leave_signals_to_the_trainer if workers else None,
                                    generator=torch.Generator().manual_seed(seed * 100003 + epoch))
                for batch in loader:
                    ddp.train()
                    loss, parts = loss_fn(ddp, batch, device)
                    loss_all, stop_all = agree(loss, stop, it, epoch)  # every process decides alike (DDP)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if clip_grad:
                        nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
                    optimizer.step()
                    scheduler.step()
                    it += 1
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss_all / world:.3f}")
                    if it % log_every == 0 or it == total_iters:
                        logger.log({"step": it, "epoch": epoch, "lr": optimizer.param_groups[0]["lr"],
                                    "loss": loss.item(), **{k: v.item() for k, v in parts.items()}})
                    do_eval = (eval_every > 0 and it % eval_every == 0) or it == total_iters
                    metric = None
                    if do_eval:
                        last_eval = evaluate(model, dist_info)
                        metric = last_eval[metric_key]
                        logger.log({"step": it, "epoch": epoch, **{k: v for k, v in last_eval.items()
                                                                   if not isinstance(v, dict)}})
                    scheduled = do_eval or it % save_every == 0 or it == total_iters
                    if scheduled or stop_all:  # (a stop's own save does not replace a run kept aside)
                        run.ckpt.save(snapshot(), metric, complete=scheduled)
                    if stop_all:
                        stopped = True
                        break
                    if it >= total_iters:
                        break
        bar.close()
        return {"iteration": it, "stopped": stopped, "last_eval": last_eval, "best": run.ckpt.best}


# ---------------------------------------------------------------- detection
def detection_loss(model: nn.Module, batch, device: torch.device):
    images, targets = batch
    offset = _unwrap(model).label_offset
    images = [im.to(device) for im in images]
    targets = [{k: (v.to(device) + offset if k == "labels" else v.to(device)) if torch.is_tensor(v) else v
                for k, v in t.items()} for t in targets]
    parts = model(images, targets)
    return sum(parts.values()), {k: v.detach() for k, v in parts.items()}


@torch.no_grad()
def evaluate_detector(model: nn.Module, dataset, dist_info: DistInfo = SINGLE, progress: bool = True
                      ) -> Dict[str, Any]:
    """COCO bbox (and segm for Mask R-CNN) AP on `dataset`; flat keys bbox_AP, bbox_AP50, ...

    `model`: a torchvision detector, or an exported file (`dense.files.DenseFile`: run in its runtime, its
    labels 0-based)."""
    exported = isinstance(model, DenseFile)
    if not exported:
        model.eval()
    mine = ShardSampler(len(dataset), dist_info.rank, dist_info.world_size)  # each image once, no padding
    results: List[dict] = []
    for i in tqdm(mine, desc="eval", disable=not (progress and dist_info.is_main), dynamic_ncols=True):
        img, target = dataset[i]
        out = model.detect(img) if exported else model([img.to(dist_info.device)])[0]
        results += detections_to_coco([out], [target["image_id"]], dataset.cat_ids,
                                      0 if exported else model.label_offset)
    if dist_info.distributed:
        gathered: List[Any] = [None] * dist_info.world_size
        dist.all_gather_object(gathered, results)
        results = [r for part in gathered for r in part]
    iou_types = ("bbox", "segm") if registry.get(model.arch).masks else ("bbox",)
    scores = coco_evaluate(dataset.coco, results, iou_types, image_ids=dataset.ids)
    flat: Dict[str, Any] = {f"{t}_{k}": v for t, s in scores.items() for k, v in s.items()}
    flat["num_images"], flat["num_detections"] = len(dataset), len(results)
    return flat


# ---------------------------------------------------------------- segmentation
def segmentation_loss(model: nn.Module, batch, device: torch.device):
    images, labels = batch
    loss = F.cross_entropy(model(images.to(device)), labels.to(device), ignore_index=IGNORE)
    return loss, {}


@torch.no_grad()
def pad_for_detector(img: torch.Tensor, min_size: int, max_size: int, floor: int = 32) -> torch.Tensor:
    """Zero-pad the short side (bottom/right, so box coordinates stay those of `img`) of an image whose
    aspect ratio is so extreme that torchvision's resize (short side to `min_size`, long side capped at
    `max_size`) would leave it under `floor` px (one backbone stride; 0 px ends in a size error)."""
    h, w = img.shape[-2:]
    f = min(min_size / min(h, w), max_size / max(h, w))
    need = math.ceil(floor / f)
    ph, pw = max(0, need - h), max(0, need - w)
    return F.pad(img, (0, pw, 0, ph)) if ph or pw else img


def segment_logits(model: nn.Module, img: torch.Tensor, out_size: Sequence[int]) -> torch.Tensor:
    """mmseg 'whole' inference: pad to a multiple of 32, forward, crop, resize to `out_size` -> [C, H, W]."""
    h, w = img.shape[-2:]
    ph, pw = (-h) % 32, (-w) % 32
    x = F.pad(img[None], (0, pw, 0, ph))
    logits = model(x)[..., :h, :w]
    return F.interpolate(logits, size=tuple(out_size), mode="bilinear", align_corners=False)[0]


@torch.no_grad()
def evaluate_segmenter(model: nn.Module, dataset, dist_info: DistInfo = SINGLE, progress: bool = True,
                       class_names: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """mIoU, mAcc, aAcc (and per-class IoU) on `dataset`. `model`: a segmenter, or an exported file
    (`dense.files.DenseFile`, run in its runtime at its fixed input size)."""
    exported = isinstance(model, DenseFile)
    if not exported:
        model.eval()
    n = model.num_classes
    conf = torch.zeros(n, n, dtype=torch.int64, device=dist_info.device)
    mine = ShardSampler(len(dataset), dist_info.rank, dist_info.world_size)  # each image once, no padding
    for i in tqdm(mine, desc="eval", disable=not (progress and dist_info.is_main), dynamic_ncols=True):
        img, lab = dataset[i]
        if exported:
            pred = model.segment(img, lab.shape).to(dist_info.device)
        else:
            pred = segment_logits(model, img.to(dist_info.device), lab.shape).argmax(0)
        conf += confusion_matrix(pred, lab.to(dist_info.device), n, IGNORE)
    all_reduce_sum(conf)
    scores = segmentation_scores(conf.cpu(), class_names)
    scores["num_images"] = len(dataset)
    return scores


# ---------------------------------------------------------------- trained checkpoints
def load_dense_checkpoint(path: str | Path, kind: str) -> nn.Module:
    """A model from a `detect train` / `segment train` checkpoint (last.pth / best.pth), eval mode,
    with `.meta` (arch, variant, class names, sizes)."""
    state = load_training_state(path, f"edgevit {kind} train", ("model", "meta"))
    meta = state["meta"]
    archs = registry.names(kind)
    if meta.get("arch") not in archs:
        other = "segment" if kind == "detect" else "detect"
        raise UserError(f"{path}: a {meta.get('arch')} checkpoint; `edgevit {kind}` takes {', '.join(archs)} "
                        f"(`edgevit {other}` the others)", option="checkpoint")
    options = {k: int(meta[k]) for k in ("min_size", "max_size", "fpn_channels") if k in meta}
    model = create_dense(meta["arch"], int(meta["num_classes"]), meta["variant"], drop_path_rate=0.0, **options)
    model.load_state_dict(state["model"])
    model.meta = meta
    return model.eval()


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def iters_per_epoch(dataset_len: int, batch_size: int, world_size: int = 1) -> int:
    """Iterations in one epoch as `fit` runs them (DistributedSampler with drop_last, `batch_size` per process)."""
    return (dataset_len // world_size) // batch_size
