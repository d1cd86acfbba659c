"""Top-1/top-5 evaluation with the standard center crop, for this project's and the authors' checkpoints."""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..deploy.export import run_batch
from ..errors import DataError, UserError
from ..models.checkpoint import model_from_checkpoint
from ..utils.images import size_hw, warn_if_not_trained_size
from .data import eval_transform
from .distributed import all_reduce_sum
from .loaders import build_eval_loader

__all__ = ["evaluate", "evaluate_checkpoint", "evaluate_exported"]


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, device: torch.device, amp_dtype: Optional[torch.dtype] = None,
             channels_last: bool = False, progress: bool = False, desc: str = "eval",
             strict: bool = True) -> Dict[str, float]:
    """Top-1, top-5 (%) and mean cross-entropy over every image of `loader`, summed across processes. A stream
    that yields fewer samples than its shards declare (its reader skipped some) is a `DataError` when `strict`,
    else counted in "missing_samples" (the training loop saves its epoch first, then decides)."""
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # n, top1 hits, top5 hits, loss sum
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    for images, target in tqdm(loader, desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        images = images.to(device, non_blocking=True)
        target = target.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast:
            logits = model(images)
        logits = logits.float()
        k = min(5, logits.shape[1])
        topk = logits.topk(k, dim=1).indices
        hits = topk.eq(target[:, None])
        sums += torch.stack([
            torch.tensor(float(target.numel()), dtype=torch.float64, device=device),
            hits[:, :1].sum().double(), hits.sum().double(),
            F.cross_entropy(logits, target, reduction="sum").double()])
    declared = torch.tensor([float(getattr(loader.dataset, "declared_samples", 0) or 0)], dtype=torch.float64,
                            device=device)  # a stream's own count (this process's shards)
    all_reduce_sum(sums)
    all_reduce_sum(declared)
    missing = int(declared.item() - sums[0].item()) if declared.item() else 0
    if missing > 0 and strict:  # webdataset skips a sample it cannot read
        raise DataError(missing_samples_message(getattr(loader.dataset, "where", "the data"), int(sums[0].item()),
                                                int(declared.item())))
    n = max(sums[0].item(), 1.0)
    out = {"num_images": int(sums[0].item()), "top1": 100.0 * sums[1].item() / n,
           "top5": 100.0 * sums[2].item() / n, "loss": sums[3].item() / n}
    if declared.item():
        out["missing_samples"] = max(missing, 0)
    return out


def missing_samples_message(where: str, got: int, declared: int) -> str:
    return (f"{where}: evaluated {got} of the {declared} samples its shards declare; the others could not be read "
            "(webdataset's 'Handling webdataset error ... Ignoring.' lines above give each error, not its shard): "
            "mend or drop them (and their count in _info.json) before trusting an accuracy")


def inference_model(model_name: Optional[str], checkpoint, ema: bool = False, model_kwargs=None):
    """(eval-mode model, meta) of any checkpoint the package reads: a float one (models.model_from_checkpoint), or
    a quantization-aware run's, as the fake-quantized graph it trained (eval and predict take both)."""
    from ..deploy.quantize import is_qat_checkpoint, load_qat_model

    if checkpoint and is_qat_checkpoint(checkpoint):
        model, _, meta = load_qat_model(checkpoint, ema=ema)
        model.num_classes = int(meta["config"]["num_classes"])
        return model, meta
    return model_from_checkpoint(model_name, checkpoint, ema=ema, model_kwargs=model_kwargs)


def evaluate_checkpoint(data: str | Path, checkpoint: str | Path, model_name: Optional[str] = None,
                        img_size: Optional[int] = None, crop_pct: Optional[float] = None,
                        interpolation: Optional[str] = None, batch_size: int = 100, workers: int = 2,
                        device: Optional[torch.device] = None, ema: bool = False, progress: bool = True,
                        model_kwargs: Optional[dict] = None, rank: int = 0, world_size: int = 1,
                        dataset: Optional[str] = None, split: Optional[str] = None) -> Dict[str, Any]:
    """Evaluate `checkpoint` on `data`: an ImageFolder (e.g. DIR/val, or a training root), or the `split`
    (default: validation) of the timm dataset `dataset` in `data` (e.g. 'wds/NAME' shards). Options not given
    come from the training config stored in the checkpoint, then the recipe's defaults (224, crop 0.875,
    bicubic)."""
    from .datasets import build_eval_data, check_eval_data

    device = device or torch.device("cpu")
    check_eval_data(data, dataset, split)  # bad data is refused before the model is read
    from .recipe import check_model_options

    if model_kwargs is not None:
        check_model_options(model_name or "edgevit_xxs", model_kwargs)
    model, meta = inference_model(model_name, checkpoint, ema=ema, model_kwargs=model_kwargs)
    cfg, classes, model_name = meta["config"], meta["classes"], meta["name"]
    warn_if_not_trained_size(img_size, cfg.get("img_size"), f"evaluating {checkpoint}")
    img_size = int(img_size or cfg.get("img_size") or 224)
    crop_pct = float(crop_pct or cfg.get("crop_pct") or 0.875)
    interpolation = interpolation or cfg.get("eval_interpolation") or "bicubic"
    images, data_classes, where = build_eval_data(data, dataset, split, eval_transform(img_size, crop_pct,
                                                                                      interpolation),
                                                  classes, rank, world_size)
    if data_classes is not None and model.num_classes != len(data_classes):
        raise UserError(f"checkpoint {checkpoint} has a {model.num_classes}-class head but the data {where} has "
                        f"{len(data_classes)} classes")
    model.to(device).eval()

    loader = build_eval_loader(images, batch_size, workers, device, rank, world_size)
    metrics = evaluate(model, loader, device, progress=progress and rank == 0)
    return {"model": model_name, "checkpoint": str(checkpoint), "data": where, "ema": ema,
            "img_size": img_size, "crop_pct": crop_pct, "num_classes": int(model.num_classes),
            "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 4), **metrics}


class _FileModule(torch.nn.Module):
    """An exported file's batch-1 run function as a module for `evaluate`, run image by image; `prepare`: the
    batch as the file takes it (from the metadata: scaling, normalisation, dtype, layout); `probabilities`: the
    file answers class probabilities (an app-ready file), given to `evaluate` as their logarithms, which its
    softmax cross-entropy turns back into the same probabilities (so the loss is the file's own)."""

    def __init__(self, run, prepare=None, probabilities: bool = False):
        super().__init__()
        self.run, self.prepare, self.probabilities = run, prepare, probabilities

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.prepare is None:
            return run_batch(self.run, x.contiguous())
        y = torch.cat([torch.from_numpy(np.ascontiguousarray(self.run(self.prepare(x[i:i + 1].numpy()))[0]))
                       for i in range(len(x))]).float()
        return y.clamp_min(torch.finfo(torch.float32).tiny).log() if self.probabilities else y


def evaluate_exported(data: str | Path, exported: str | Path, img_size=None, crop_pct: Optional[float] = None,
                      interpolation: Optional[str] = None, checkpoint: Optional[str | Path] = None,
                      batch_size: int = 50, workers: int = 2, threads: int = 2,
                      progress: bool = True, dataset: Optional[str] = None, split: Optional[str] = None
                      ) -> Dict[str, Any]:
    """Top-1/top-5 of an exported file (.pte/.onnx/.ptl/.pt) run in its own runtime on the ImageFolder
    `data` (or the `split` of the timm dataset `dataset` there), with the same transform and metrics as
    `evaluate_checkpoint`. The input size comes from the
    file (pte, onnx) or `img_size`; crop and interpolation from `checkpoint`'s training config if given
    (the file does not carry them), else the recipe's defaults. Classes: the sorted class folders, the
    order `edgevit train` gives them."""
    from ..deploy.export import load_exported
    from ..deploy.runtimes import first_output
    from ..models.checkpoint import checkpoint_weights
    from .datasets import build_eval_data, check_eval_data

    check_eval_data(data, dataset, split)
    m = load_exported(exported, threads)
    fmt, size, meta = m.format, m.input_size, m.metadata
    run = m.run if meta is not None else first_output(m.run)
    cfg, classes = {}, None
    if checkpoint:
        w = checkpoint_weights(checkpoint)
        cfg, classes = w["config"] or {}, w["classes"]
    if meta is not None:  # the file says how it is fed
        if classes is not None and list(classes) != list(meta.class_names):
            raise UserError(f"{exported}: its classes ({', '.join(meta.class_names[:5])}...) differ from "
                            f"{checkpoint}'s", option="checkpoint")
        classes = classes or list(meta.class_names)
        size = meta.input_size
        cfg = {"img_size": cfg.get("img_size"), "crop_pct": meta.crop_pct, "eval_interpolation": meta.interpolation}
    if size is None:
        size = img_size or cfg.get("img_size")
        if size is None:
            raise UserError(f"{exported}: a .{fmt} file does not record its input size: give the size it "
                            "was exported at", option="img_size")
    elif img_size is not None and size_hw(img_size) != tuple(size):
        raise UserError(f"{'x'.join(map(str, size_hw(img_size)))}, but {exported} was exported at "
                        f"{size[0]}x{size[1]}", option="img_size")
    if meta is None and not checkpoint and (crop_pct is None or interpolation is None):
        import warnings
        warnings.warn(f"{exported}: the file does not record the crop and interpolation it was trained with; "
                      "using crop 0.875 / bicubic unless given (or pass the checkpoint it came from)")
    warn_if_not_trained_size(size, cfg.get("img_size"), f"{exported} runs")
    crop_pct = float(crop_pct or cfg.get("crop_pct") or 0.875)
    interpolation = interpolation or cfg.get("eval_interpolation") or "bicubic"
    # with metadata: the image in [0, 1], then what the file takes (`FileMetadata.file_input`); without: normalised
    plain = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)} if meta is not None else {}
    images, data_classes, where = build_eval_data(data, dataset, split, eval_transform(
        size_hw(size), crop_pct, interpolation, **plain), classes)
    model = _FileModule(run, meta.file_input if meta is not None else None,
                        probabilities=meta is not None and meta.probabilities)
    first = next(iter(images), None)
    if first is None:
        raise UserError(f"{where}: holds no images", option="data")
    probe = model(first[0][None])
    if data_classes is not None and probe.shape[-1] != len(data_classes):
        raise UserError(f"{exported} answers {probe.shape[-1]} classes but the data {where} has "
                        f"{len(data_classes)} classes")
    torch.set_num_threads(threads)
    loader = build_eval_loader(images, batch_size, workers, torch.device("cpu"), 0, 1)
    metrics = evaluate(model, loader, torch.device("cpu"), progress=progress, desc=f"eval {fmt}")
    h, w = size_hw(size)
    return {"exported": str(exported), "format": fmt, "data": where, "img_size": [h, w],
            "crop_pct": crop_pct, "interpolation": interpolation, "num_classes": int(probe.shape[-1]), **metrics}
