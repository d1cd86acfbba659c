"""ADE20K-layout semantic segmentation data (ADEChallengeData2016, or the synthetic shapes).

    ROOT/images/SPLIT/NAME.{jpg,png}        ROOT/annotations/SPLIT/NAME.png   (SPLIT: training, validation)

Labels follow mmsegmentation's ADE20K convention: 0 = "other" -> ignored (255) and classes shift
down by one (``reduce_zero_label``), 255 = ignore.  Training pipeline as mmseg's ADE20K 512x512
config: random rescale of the (2048, 512) scale by 0.5-2.0, random 512x512 crop (padded with ignore),
horizontal flip.  Evaluation resizes to fit the (2048, 512) scale; predictions are resized back to
the label's full size.  A label PNG of the wrong size or with out-of-range values is a ValueError
naming the file.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import Dataset
from torchvision.transforms.functional import pil_to_tensor

from ..errors import MissingFileError, UserError
from ..utils.images import read_image_for

IGNORE = 255
IMAGE_EXTS = (".jpg", ".jpeg", ".png")


def read_class_names(root: str | Path, num_classes: Optional[int] = None) -> List[str]:
    """ROOT/classes.txt (one name per line, in reduced-label order) if present, else class_0..N-1."""
    f = Path(root) / "classes.txt"
    if f.is_file():
        names = [ln.strip() for ln in f.read_text().splitlines() if ln.strip()]
        if num_classes is not None and len(names) != num_classes:
            raise UserError(f"{num_classes}, but {f} lists {len(names)} classes", option="num_classes")
        return names
    return [f"class_{i}" for i in range(num_classes or 150)]


def normalize(img: torch.Tensor) -> torch.Tensor:
    """uint8/float 0..1 [3, H, W] -> ImageNet-normalised float."""
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1)
    return (img - mean) / std


def fit_scale(h: int, w: int, scale: Sequence[int]) -> Tuple[int, int]:
    """mmseg ``Resize(keep_ratio=True)``: largest size with long side <= max(scale), short <= min(scale)."""
    f = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return max(1, int(h * f + 0.5)), max(1, int(w * f + 0.5))  # a 3000x10 strip keeps at least one row


class ADESegmentation(Dataset):
    def __init__(self, root: str | Path, split: str, num_classes: int = 150, reduce_zero_label: bool = True,
                 train: bool = False, crop_size: int = 512, scale: Sequence[int] = (2048, 512),
                 ratio_range: Sequence[float] = (0.5, 2.0), seed: int = 0):
        self.root = Path(root)
        self.img_dir, self.ann_dir = self.root / "images" / split, self.root / "annotations" / split
        for d in (self.img_dir, self.ann_dir):
            if not d.is_dir():
                raise MissingFileError(f"{self.root}: expected directory {d} (ADE20K layout: "
                                       "images/SPLIT and annotations/SPLIT)", option="data")
        if crop_size % 32:
            raise UserError(f"{crop_size}: must be a multiple of 32 (EdgeViT's total stride)", option="crop_size")
        self.images = sorted(p for p in self.img_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        if not self.images:
            raise MissingFileError(f"no images (.jpg/.png) in {self.img_dir}")
        self.labels = [self.ann_dir / (p.stem + ".png") for p in self.images]
        missing = [str(p) for p in self.labels if not p.is_file()]
        if missing:
            raise MissingFileError(f"{len(missing)} label PNG(s) missing for images in {self.img_dir}: "
                                    f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        self.num_classes, self.reduce_zero_label, self.train = num_classes, reduce_zero_label, train
        self.crop_size, self.scale, self.ratio_range = crop_size, tuple(scale), tuple(ratio_range)
        self.seed, self.epoch = seed, 0

    def __len__(self) -> int:
        return len(self.images)

    def load(self, idx: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(image float 0..1 [3, H, W], label int64 [H, W] in 0..num_classes-1 or 255), checked."""
        ipath, lpath = self.images[idx], self.labels[idx]
        try:
            with Image.open(lpath) as lm:
                if lm.mode not in ("L", "P", "I", "I;16"):
                    raise UserError(f"label {lpath}: mode {lm.mode}, expected a single-channel PNG of class ids")
                lab = np.array(lm, dtype=np.int64)
            img = read_image_for(ipath, (lab.shape[1], lab.shape[0]))
        except OSError as e:
            raise UserError(f"cannot read {ipath} or {lpath} ({e})") from e
        if lab.shape != (img.size[1], img.size[0]):
            raise UserError(f"label {lpath} is {lab.shape[1]}x{lab.shape[0]} but image {ipath} is "
                             f"{img.size[0]}x{img.size[1]}")
        if self.reduce_zero_label:
            lab = np.where(lab == 0, IGNORE, lab - 1)
            lab[lab == IGNORE - 1] = IGNORE
        bad = np.unique(lab[(lab >= self.num_classes) & (lab != IGNORE)])
        if bad.size:
            shown = (bad + 1 if self.reduce_zero_label else bad)[:10].tolist()
            after = f" after reduce-zero-label (file values 1..{self.num_classes})" if self.reduce_zero_label else ""
            raise UserError(f"label {lpath} has class values {shown} outside 0..{self.num_classes - 1}{after}"
                            " and not 255 (ignore)")
        return pil_to_tensor(img).float().div_(255), torch.from_numpy(lab)

    def __getitem__(self, idx: int):
        img, lab = self.load(idx)
        if not self.train:
            h, w = fit_scale(*img.shape[-2:], self.scale)
            img = F.interpolate(img[None], size=(h, w), mode="bilinear", align_corners=False)[0]
            return normalize(img), lab  # label stays at full size: metrics are taken there
        # per-sample randomness from (seed, epoch, index): identical after a resume
        rng = np.random.default_rng((self.seed, self.epoch, idx))
        ratio = rng.uniform(*self.ratio_range)
        h, w = fit_scale(*img.shape[-2:], [int(s * ratio) for s in self.scale])
        img = F.interpolate(img[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        lab = F.interpolate(lab[None, None].float(), size=(h, w), mode="nearest")[0, 0].long()
        c = self.crop_size
        y0, x0 = int(rng.integers(0, max(h - c, 0) + 1)), int(rng.integers(0, max(w - c, 0) + 1))
        img, lab = img[:, y0:y0 + c, x0:x0 + c], lab[y0:y0 + c, x0:x0 + c]
        if rng.random() < 0.5:
            img, lab = img.flip(-1), lab.flip(-1)
        img = normalize(img)
        ph, pw = c - img.shape[1], c - img.shape[2]
        if ph or pw:  # pad to the crop size: image with 0 (after normalisation, as mmseg), label with ignore
            img = F.pad(img, (0, pw, 0, ph), value=0.0)
            lab = F.pad(lab, (0, pw, 0, ph), value=IGNORE)
        return img, lab
