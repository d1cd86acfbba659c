"""scikit-learn's bundled handwritten digits (1,797 real 8x8 scans, UCI) as an ImageFolder or as WebDataset
shards: no download, so every dataset path of `edgevit train` / `edgevit eval` is tested on real images."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image

from ..errors import OutputError, UserError
from .shards import write_wds_shards

__all__ = ["export_digits", "DIGITS_FORMATS"]

DIGITS_FORMATS = ("folder", "wds")
DIGITS_SCANS = 1797  # scikit-learn's load_digits
# WebDataset split names as timm's ImageNet shards (timm/imagenet-1k-wds) name them
_WDS_SPLITS = {"train": "train", "val": "validation"}


def _digits(size: int, val_fraction: float, seed: int, train_fraction: float = 1.0
            ) -> Dict[str, List[Tuple[int, int, Image.Image]]]:
    """{'train'|'val': [(scan index, label, size x size grey PIL image)]}: a stratified split, grey levels
    0..16 mapped to 0..255 (white digit on black as scanned), upscaled bicubic. `train_fraction` < 1 keeps a
    stratified, seeded share of the training split (the same val split: a small-data fine-tuning set)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().clip(0, 255).astype(np.uint8)
    idx = np.arange(len(images))
    train_idx, val_idx = train_test_split(idx, test_size=val_fraction, stratify=digits.target, random_state=seed)
    if train_fraction < 1.0:
        train_idx, _ = train_test_split(train_idx, train_size=train_fraction, stratify=digits.target[train_idx],
                                        random_state=seed)
    return {split: [(int(i), int(digits.target[i]),
                     Image.fromarray(images[i], mode="L").resize((size, size), Image.BICUBIC)) for i in sorted(ids)]
            for split, ids in (("train", train_idx), ("val", val_idx))}


def _write_folder(out: Path, splits) -> None:
    for split, items in splits.items():
        for i, label, img in items:
            d = out / split / str(label)
            d.mkdir(parents=True, exist_ok=True)
            img.save(d / f"{i:04d}.png")


def export_digits(out: str | Path, size: int = 64, val_fraction: float = 0.2, seed: int = 0, fmt: str = "folder",
                  shards: int = 8, val_shards: int = 4, train_fraction: float = 1.0) -> Dict[str, object]:
    """Write the digits, stratified train/val, `size` x `size` PNGs, as an ImageFolder (OUT/train/<digit>/*.png,
    OUT/val/<digit>/*.png) or as WebDataset shards (`shards` train, `val_shards` validation; see
    edgevit.train.shards.write_wds_shards)."""
    if size < 8:
        raise UserError(f"{size}: expected at least 8 (the scans are 8x8)", option="size")
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"{val_fraction}: expected a value between 0 and 1", option="val_fraction")
    if fmt not in DIGITS_FORMATS:
        raise UserError(f"{fmt!r}: expected one of {', '.join(DIGITS_FORMATS)}", option="format")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise OutputError(f"digits output {out}: directory is not empty (choose a new one; nothing was written)")
    n_val = math.ceil(val_fraction * DIGITS_SCANS)  # (scikit-learn's count for a fractional test_size)
    if n_val < 10 or DIGITS_SCANS - n_val < 10:
        raise UserError(f"{val_fraction}: keeps {n_val} of the {DIGITS_SCANS} scans for val/ and "
                        f"{DIGITS_SCANS - n_val} for train/; each needs at least one per class (10)",
                        option="val_fraction")
    if not 0.0 < train_fraction <= 1.0 or math.floor(train_fraction * (DIGITS_SCANS - n_val)) < 10:
        raise UserError(f"{train_fraction}: expected a share in (0, 1] that keeps at least one image per class",
                        option="train_fraction")
    splits = _digits(size, val_fraction, seed, train_fraction)
    result: Dict[str, object] = {"out": str(out), "format": fmt, "size": size,
                                 "num_images": sum(len(v) for v in splits.values()), "classes": 10,
                                 "train": len(splits["train"]), "val": len(splits["val"])}
    if fmt == "folder":
        _write_folder(out, splits)
    else:
        for split, n in (("train", shards), ("val", val_shards)):
            if n > len(splits[split]):
                raise UserError(f"{n}: more shards than the {len(splits[split])} {split} images",
                                option="shards" if split == "train" else "val_shards")
        info = write_wds_shards(out, "digits", {_WDS_SPLITS[s]: [(f"{i:04d}", img, label) for i, label, img in items]
                                                for s, items in splits.items()},
                                {_WDS_SPLITS["train"]: shards, _WDS_SPLITS["val"]: val_shards},
                                [str(c) for c in range(10)], seed)
        result["splits"] = {name: {"shards": len(s["filenames"]), "num_samples": s["num_samples"]}
                            for name, s in info["splits"].items()}
    counts = {s: {} for s in splits}
    for s, items in splits.items():
        for _, label, _ in items:
            counts[s][str(label)] = counts[s].get(str(label), 0) + 1
    result["per_class"] = {s: dict(sorted(c.items(), key=lambda kv: int(kv[0]))) for s, c in counts.items()}
    return result
