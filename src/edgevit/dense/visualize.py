"""Prediction pictures: boxes, labels, scores and masks (torchvision's draw utilities), or a colour overlay."""
from __future__ import annotations

from pathlib import Path
from typing import List, Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from ..errors import UserError
from ..utils.writes import atomic_path


def palette(n: int) -> List[tuple]:
    """n distinct colours (a fixed golden-ratio walk on the hue circle, so a class keeps its colour)."""
    import colorsys

    return [tuple(int(255 * c) for c in colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.75, 0.95)) for i in range(n)]


def draw_detections(image: torch.Tensor, det: dict, class_names: Sequence[str], mask_thresh: float = 0.5
                    ) -> torch.Tensor:
    """image float 0..1 [3, H, W]; det with boxes/labels (0-based)/scores[/masks [N,1,H,W] probs]."""
    img = (image.clamp(0, 1) * 255).to(torch.uint8)
    colours = palette(len(class_names))
    labels = [int(v) for v in det["labels"]]
    if "masks" in det and len(labels):
        masks = det["masks"][:, 0] >= mask_thresh
        img = draw_segmentation_masks(img, masks, alpha=0.45, colors=[colours[i] for i in labels])
    if len(labels):
        text = [f"{class_names[i]} {float(s):.2f}" for i, s in zip(labels, det["scores"])]
        img = draw_bounding_boxes(img, det["boxes"], labels=text, colors=[colours[i] for i in labels], width=2)
    return img


def draw_segmentation(image: torch.Tensor, pred: torch.Tensor, num_classes: int, alpha: float = 0.5
                      ) -> torch.Tensor:
    """Colour overlay of a [H, W] class map on an image (float 0..1 [3, H, W])."""
    colours = torch.tensor(palette(num_classes), dtype=torch.float32) / 255
    overlay = colours[pred.long().clamp(0, num_classes - 1)].permute(2, 0, 1)
    out = (1 - alpha) * image.clamp(0, 1) + alpha * overlay
    return (out * 255).round().to(torch.uint8)


def save_png(img: torch.Tensor, path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise UserError(f"{path}: expected a .png file name", option="out")
    with atomic_path(path) as tmp:
        Image.fromarray(img.permute(1, 2, 0).cpu().numpy().astype(np.uint8)).save(tmp, format="PNG")
    return path
