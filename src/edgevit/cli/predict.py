"""`edgevit predict IMAGE`: top-k classes of one image with the standard evaluation transform."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import timm
import torch
from PIL import Image, UnidentifiedImageError
from timm.data import ImageNetInfo, create_transform, resolve_data_config

from ..models import read_state_dict
from ..models.edgevit import checkpoint_filter_fn
from ..utils.io import print_json
from .common import add_json_arg, add_model_args, create_model


def load_image(path: str | Path) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path}: no such file")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"image {path}: not a readable image ({e})") from e


def checkpoint_num_classes(path: str) -> int | None:
    """Classes of a checkpoint's head (None if it has no head)."""
    sd = checkpoint_filter_fn(read_state_dict(path), timm.create_model("edgevit_xxs", num_classes=0))
    w = sd.get("head.weight")
    return int(w.shape[0]) if w is not None else None


def class_names(num_classes: int, labels: str | None, checkpoint: str | None) -> list[str]:
    """--labels file (one per line, or a JSON list); else `classes.txt` beside the checkpoint;
    else ImageNet's names for 1000 classes; else class indices."""
    candidates = [Path(labels)] if labels else []
    if checkpoint and not labels:
        candidates.append(Path(checkpoint).with_name("classes.txt"))
    for path in candidates:
        if not path.is_file():
            if labels:
                raise FileNotFoundError(f"--labels {path}: no such file")
            continue
        text = path.read_text()
        names = json.loads(text) if path.suffix == ".json" else [ln.strip() for ln in text.splitlines() if ln.strip()]
        if len(names) != num_classes:
            raise ValueError(f"labels {path}: {len(names)} names for a model with {num_classes} classes")
        return names
    if num_classes == 1000:
        info = ImageNetInfo()
        return [info.index_to_description(i) for i in range(1000)]
    return [str(i) for i in range(num_classes)]


def predict(model: torch.nn.Module, image: Image.Image, topk: int = 5) -> tuple[list[int], list[float]]:
    cfg = resolve_data_config(model=model)
    x = create_transform(**cfg)(image).unsqueeze(0)
    with torch.no_grad():
        probs = model(x).softmax(-1)[0]
    p, idx = probs.topk(min(topk, probs.numel()))
    return idx.tolist(), p.tolist()


def run(args: argparse.Namespace) -> int:
    if args.topk < 1:
        raise ValueError(f"--topk {args.topk}: must be at least 1")
    image = load_image(args.image)
    num_classes = checkpoint_num_classes(args.checkpoint) if args.checkpoint else 1000
    model = create_model(args.model, args.checkpoint, num_classes=num_classes or 1000)
    if not args.checkpoint:
        print("edgevit predict: no --checkpoint given: random weights (no trained EdgeViT weights are "
              "published), so these classes are meaningless", file=sys.stderr)
    names = class_names(model.num_classes, args.labels, args.checkpoint)
    idx, probs = predict(model, image, args.topk)
    result = {"image": str(args.image), "model": args.model, "checkpoint": args.checkpoint,
              "top": [{"index": i, "label": names[i], "prob": p} for i, p in zip(idx, probs)]}
    if args.json:
        print_json(result)
    else:
        for r in result["top"]:
            print(f"{r['prob']:7.2%}  {r['index']:>4}  {r['label']}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="top-k classes of an image", description=__doc__)
    p.add_argument("image", help="image file (any format PIL reads)")
    add_model_args(p)
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--labels", default=None, help="class names: text file (one per line) or JSON list")
    add_json_arg(p)
    p.set_defaults(func=run)
