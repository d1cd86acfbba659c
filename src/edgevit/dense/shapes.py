"""Synthetic shapes: a small offline data set in both COCO and ADE20K layouts.

    ROOT/images/{training,validation}/shapes_000000.png        RGB images
    ROOT/annotations/instances_{training,validation}.json      COCO: boxes, polygons (squares,
                                                               triangles) and RLE masks (circles)
    ROOT/annotations/{training,validation}/shapes_000000.png   semantic labels, ADE20K convention:
                                                               0 = unlabeled (unused), 1 = background,
                                                               2.. = the shape classes

With reduce-zero-label the segmenter sees 4 classes (background, circle, square, triangle); the
detector sees 3 categories (COCO ids 1-3).  Shapes do not overlap, so every polygon is exactly the
visible region.  By default each class has its own hue (circles reddish, squares greenish, triangles
bluish, jittered) so that a from-scratch backbone learns it in a few hundred CPU iterations;
``colours="random"`` makes the class tell-able by form only (a harder set).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image, ImageDraw

from ..errors import UserError

CATEGORIES = [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}, {"id": 3, "name": "triangle"}]
SEG_CLASSES = ["background"] + [c["name"] for c in CATEGORIES]  # after reduce-zero-label
SPLITS = ("training", "validation")
CLASS_HUES = {1: 0.0, 2: 1 / 3, 3: 2 / 3}  # red, green, blue
COLOURS = ("class", "random")


def _shape_polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> List[Tuple[float, float]]:
    n = 4 if kind == "square" else 3
    return [(cx + r * math.cos(angle + 2 * math.pi * k / n), cy + r * math.sin(angle + 2 * math.pi * k / n))
            for k in range(n)]


def _class_colour(rng: np.random.Generator, cat: int) -> np.ndarray:
    import colorsys

    h = (CLASS_HUES[cat] + rng.uniform(-0.06, 0.06)) % 1.0
    return np.array([int(255 * c) for c in colorsys.hsv_to_rgb(h, rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0))])


def make_image(rng: np.random.Generator, size: int, max_shapes: int, colours: str = "class"):
    """One image, its semantic label map (ADE convention) and its instances [(cat_id, mask, poly|None)]."""
    bg = rng.integers(0, 256, 3) if colours == "random" else rng.integers(0, 90, 3)  # dark backgrounds
    img = Image.new("RGB", (size, size), tuple(int(c) for c in bg))
    label = Image.new("L", (size, size), 1)
    inst = Image.new("L", (size, size), 0)
    d_img, d_lab, d_inst = ImageDraw.Draw(img), ImageDraw.Draw(label), ImageDraw.Draw(inst)
    placed: List[Tuple[float, float, float]] = []
    instances = []
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        for _attempt in range(30):  # rejection-sample a place that does not touch another shape
            r = float(rng.uniform(0.08, 0.2) * size)
            cx, cy = (float(v) for v in rng.uniform(r + 1, size - r - 1, 2))
            if all(math.hypot(cx - x, cy - y) > r + q + 3 for x, y, q in placed):
                break
        else:
            continue
        placed.append((cx, cy, r))
        cat = int(rng.integers(1, len(CATEGORIES) + 1))
        kind = CATEGORIES[cat - 1]["name"]
        pick = (lambda: rng.integers(0, 256, 3)) if colours == "random" else (lambda: _class_colour(rng, cat))
        colour = pick()
        while np.abs(colour - bg).sum() < 120:  # keep the shape visible against the background
            colour = pick()
        fill = tuple(int(c) for c in colour)
        k = len(instances) + 1
        if kind == "circle":
            box = [cx - r, cy - r, cx + r, cy + r]
            for d, v in ((d_img, fill), (d_lab, cat + 1), (d_inst, k)):
                d.ellipse(box, fill=v)
            poly = None
        else:
            poly = _shape_polygon(kind, cx, cy, r, float(rng.uniform(0, 2 * math.pi)))
            for d, v in ((d_img, fill), (d_lab, cat + 1), (d_inst, k)):
                d.polygon(poly, fill=v)
        instances.append((cat, k, poly))
    arr = np.asarray(img).astype(np.int16) + rng.integers(-12, 13, (size, size, 3))  # sensor-like noise
    inst_arr = np.asarray(inst)
    out = [(cat, inst_arr == k, poly) for cat, k, poly in instances]
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8)), label, out


def generate(root: str | Path, num_train: int = 200, num_val: int = 50, size: int = 192, max_shapes: int = 3,
             seed: int = 0, colours: str = "class") -> Dict[str, int]:
    """Write the data set under `root`; returns counts. Deterministic for a given seed."""
    from pycocotools import mask as mask_utils

    root = Path(root)
    if size % 32:
        raise UserError(f"{size}: must be a multiple of 32 (EdgeViT's total stride)", option="size")
    if colours not in COLOURS:
        raise UserError(f"{colours!r}: expected one of {list(COLOURS)}", option="colours")
    rng = np.random.default_rng(seed)
    counts = {}
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(SEG_CLASSES) + "\n")  # segmentation names, reduced order
    for split, n in zip(SPLITS, (num_train, num_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
        coco = {"info": {"description": f"edgevit synthetic shapes ({split}), seed {seed}, colours {colours}"},
                "images": [], "annotations": [], "categories": CATEGORIES}
        for i in range(n):
            name = f"shapes_{i:06d}.png"
            img, label, instances = make_image(rng, size, max_shapes, colours)
            img.save(root / "images" / split / name)
            label.save(root / "annotations" / split / name)
            image_id = i + 1
            coco["images"].append({"id": image_id, "file_name": name, "width": size, "height": size})
            for cat, mask, poly in instances:
                if poly is None:  # circle: RLE of the drawn mask, box = the mask's extent
                    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                    seg = {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}
                else:  # polygon, box = its extent and area = its rasterised area, as COCO defines them
                    seg = [[round(c, 2) for xy in poly for c in xy]]
                    rle = mask_utils.merge(mask_utils.frPyObjects(seg, size, size))
                x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
                coco["annotations"].append({
                    "id": len(coco["annotations"]) + 1, "image_id": image_id, "category_id": cat,
                    "bbox": [x, y, w, h], "area": float(mask_utils.area(rle)), "iscrowd": 0,
                    "segmentation": seg})
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
        counts[f"{split}_images"] = n
        counts[f"{split}_instances"] = len(coco["annotations"])
    return counts
