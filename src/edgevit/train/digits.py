"""scikit-learn's bundled handwritten digits (1,797 real 8x8 scans, UCI) as an ImageFolder: no download."""
from __future__ import annotations

from pathlib import Path
from typing import Dict

import numpy as np
from PIL import Image
from ..errors import OutputError, UserError

__all__ = ["export_digits"]


def export_digits(out: str | Path, size: int = 64, val_fraction: float = 0.2, seed: int = 0) -> Dict[str, object]:
    """Write OUT/train/<digit>/*.png and OUT/val/<digit>/*.png, a stratified split, images upscaled to
    `size` x `size` (bicubic, grey levels 0..16 mapped to 0..255, white digit on black as scanned)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if size < 8:
        raise UserError(f"{size}: expected at least 8 (the scans are 8x8)", option="size")
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"{val_fraction}: expected a value between 0 and 1", option="val_fraction")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise OutputError(f"digits output {out}: directory is not empty (choose a new one; nothing was written)")
    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().clip(0, 255).astype(np.uint8)
    idx = np.arange(len(images))
    train_idx, val_idx = train_test_split(idx, test_size=val_fraction, stratify=digits.target, random_state=seed)
    counts: Dict[str, Dict[str, int]] = {}
    for split, ids in (("train", train_idx), ("val", val_idx)):
        counts[split] = {}
        for i in sorted(ids):
            label = str(int(digits.target[i]))
            d = out / split / label
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i], mode="L").resize((size, size), Image.BICUBIC).save(d / f"{i:04d}.png")
            counts[split][label] = counts[split].get(label, 0) + 1
    return {"out": str(out), "size": size, "num_images": int(len(images)), "classes": 10,
            "train": sum(counts["train"].values()), "val": sum(counts["val"].values()),
            "per_class": {s: dict(sorted(c.items(), key=lambda kv: int(kv[0]))) for s, c in counts.items()}}
