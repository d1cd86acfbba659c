"""COCO-format detection / instance-segmentation data (pycocotools), validated up front.

Bad input policy (the torchvision reference scripts' conventions):
* a missing image file, an annotation with an unknown category id, a malformed bbox, or an
  image whose real size differs from the json -> ValueError / FileNotFoundError naming it;
* a box that is degenerate (w or h < 1 px after clipping) or lies outside its image, and crowd
  regions -> skipped, counted in ``.skipped`` and reported once (a warning on stderr).
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms.functional import pil_to_tensor

from ..errors import MissingFileError, UserError
from ..utils.images import read_image_for
from ..utils.inputs import require_file


def load_coco(ann_file: str | Path):
    """pycocotools COCO object, with the json checked first (pycocotools would assert or KeyError)."""
    from pycocotools.coco import COCO

    ann_file = require_file(ann_file, "annotation file")
    try:
        data = json.loads(ann_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"annotation file {ann_file}: not valid JSON ({e})") from e
    if not isinstance(data, dict) or not all(k in data for k in ("images", "annotations", "categories")):
        raise UserError(f"annotation file {ann_file}: expected a COCO json with 'images', 'annotations' "
                         "and 'categories'")
    for key, fields in (("images", ("id", "file_name", "width", "height")), ("categories", ("id", "name")),
                        ("annotations", ("id", "image_id", "category_id", "bbox"))):
        for item in data[key]:
            missing = [f for f in fields if f not in item]
            if missing:
                raise UserError(f"annotation file {ann_file}: an entry of '{key}' lacks {missing}: "
                                 f"{json.dumps(item)[:200]}")
    cat_ids = {c["id"] for c in data["categories"]}
    img_ids = {im["id"] for im in data["images"]}
    for a in data["annotations"]:
        if a["category_id"] not in cat_ids:
            raise UserError(f"annotation file {ann_file}: annotation id {a['id']} has unknown category_id "
                             f"{a['category_id']} (categories: {sorted(cat_ids)})")
        if a["image_id"] not in img_ids:
            raise UserError(f"annotation file {ann_file}: annotation id {a['id']} refers to unknown image_id "
                             f"{a['image_id']}")
        b = a["bbox"]
        if not (isinstance(b, list) and len(b) == 4
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in b)
                and b[2] >= 0 and b[3] >= 0):
            raise UserError(f"annotation file {ann_file}: annotation id {a['id']} has bbox {b!r}; "
                             "expected [x, y, width, height] of finite numbers, width and height >= 0")
        a.setdefault("iscrowd", 0)
        a.setdefault("area", float(b[2] * b[3]))
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress chatter
        coco.createIndex()
    return coco


class CocoDetection(Dataset):
    """Items: (image float tensor [3, H, W] in 0..1, target dict for torchvision detectors).

    ``labels`` are 0-based contiguous (sorted category ids); a detector adds its ``label_offset``."""

    def __init__(self, ann_file: str | Path, img_dir: str | Path, train: bool = False, masks: bool = False,
                 seed: int = 0):
        self.ann_file, self.img_dir = Path(ann_file), Path(img_dir)
        if not self.img_dir.is_dir():
            raise MissingFileError(f"image directory {self.img_dir}: no such directory")
        self.coco = load_coco(self.ann_file)
        self.train, self.masks, self.seed, self.epoch = train, masks, seed, 0
        self.cat_ids = sorted(self.coco.getCatIds())
        self.cat_to_label = {c: i for i, c in enumerate(self.cat_ids)}
        self.class_names = [self.coco.cats[c]["name"] for c in self.cat_ids]
        self.ids = sorted(self.coco.imgs)
        missing = [self.coco.imgs[i]["file_name"] for i in self.ids
                   if not (self.img_dir / self.coco.imgs[i]["file_name"]).is_file()]
        if missing:
            raise MissingFileError(f"{len(missing)} image file(s) listed in {self.ann_file} are missing from "
                                    f"{self.img_dir}: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        self.skipped = {"crowd": 0, "degenerate": 0, "outside_image": 0}
        self.annotations: Dict[int, List[Tuple[dict, List[float]]]] = {}
        for image_id in self.ids:
            info = self.coco.imgs[image_id]
            kept = []
            for a in self.coco.imgToAnns.get(image_id, []):
                box = self._clean_box(a, info["width"], info["height"])
                if box is not None:
                    kept.append((a, box))
            self.annotations[image_id] = kept
        if any(self.skipped.values()):
            print(f"edgevit: {self.ann_file}: skipped {sum(self.skipped.values())} annotation(s): "
                  + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in self.skipped.items() if v), file=sys.stderr)

    def _clean_box(self, a: dict, width: int, height: int) -> Optional[List[float]]:
        if a.get("iscrowd", 0):
            self.skipped["crowd"] += 1
            return None
        x, y, w, h = (float(v) for v in a["bbox"])
        if w <= 0 or h <= 0:
            self.skipped["degenerate"] += 1
            return None
        x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + w, float(width)), min(y + h, float(height))
        if x2 <= 0 or y2 <= 0 or x >= width or y >= height:
            self.skipped["outside_image"] += 1
            return None
        if x2 - x1 < 1 or y2 - y1 < 1:
            self.skipped["degenerate"] += 1
            return None
        return [x1, y1, x2, y2]

    def __len__(self) -> int:
        return len(self.ids)

    def load_image(self, image_id: int) -> torch.Tensor:
        info = self.coco.imgs[image_id]
        path = self.img_dir / info["file_name"]
        img = read_image_for(path, (info["width"], info["height"]))
        if img.size != (info["width"], info["height"]):
            raise UserError(f"image {path} is {img.size[0]}x{img.size[1]} but {self.ann_file} says "
                             f"{info['width']}x{info['height']}")
        return pil_to_tensor(img).float().div_(255)

    def __getitem__(self, idx: int):
        image_id = self.ids[idx]
        img = self.load_image(image_id)
        anns = self.annotations[image_id]
        target = {
            "image_id": image_id,
            "boxes": torch.tensor([b for _, b in anns], dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor([self.cat_to_label[a["category_id"]] for a, _ in anns], dtype=torch.int64),
        }
        if self.masks:
            h, w = img.shape[-2:]
            m = [self.coco.annToMask(a) if "segmentation" in a else _box_mask(b, h, w) for a, b in anns]
            target["masks"] = torch.from_numpy(np.stack(m)) if m else torch.zeros(0, h, w, dtype=torch.uint8)
        if self.train:  # per-sample randomness from (seed, epoch, index): identical after a resume
            rng = np.random.default_rng((self.seed, self.epoch, idx))
            if rng.random() < 0.5:
                img = img.flip(-1)
                w = img.shape[-1]
                target["boxes"][:, [0, 2]] = w - target["boxes"][:, [2, 0]]
                if self.masks:
                    target["masks"] = target["masks"].flip(-1)
        return img, target


def _box_mask(box: List[float], h: int, w: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=np.uint8)
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    m[y1:y2, x1:x2] = 1
    return m


def collate(batch):
    return tuple(zip(*batch))


def resolve_split(root: str | Path, split: str) -> Tuple[Path, Path]:
    """(annotation json, image dir) of a split: ROOT/annotations/instances_SPLIT.json and the first of
    ROOT/SPLIT (COCO 2017 layout) or ROOT/images/SPLIT (the synthetic set's layout) that exists."""
    root = Path(root)
    if not root.is_dir():
        raise MissingFileError(f"{root}: no such directory", option="data")
    ann = root / "annotations" / f"instances_{split}.json"
    if not ann.is_file():
        raise MissingFileError(f"{root}: expected {ann} (COCO layout: annotations/instances_SPLIT.json)",
                               option="data")
    for d in (root / split, root / "images" / split):
        if d.is_dir():
            return ann, d
    raise MissingFileError(f"{root}: no image directory {root / split} or {root / 'images' / split}", option="data")
