"""`edgevit predict IMAGE`: top-k classes of one image with the standard evaluation transform.

With a training checkpoint of this project, the model name, class names, image size and crop come
from the checkpoint; otherwise ImageNet's 1000 names, 224 px and crop 0.875 (timm's defaults)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from timm.data import ImageNetInfo

from ..errors import DataError
from ..models import VARIANTS
from ..train.data import eval_transform
from ..utils.images import read_image, warn_if_not_trained_size
from ..utils.inputs import require_file
from ..utils.options import crop_pct, image_size, positive_int, thread_count
from ..utils.writes import print_json
from .args import add_json_arg


def read_labels(path: str | Path, num_classes: int) -> list[str]:
    """Class names from a text file (one per line) or a JSON list of strings."""
    path = require_file(path, "--labels")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"--labels {path}: not a text file (expected one class name per line, or a JSON list)")
    if path.suffix == ".json":
        try:
            names = json.loads(text)
        except ValueError as e:
            raise DataError(f"--labels {path}: not valid JSON ({e})") from None
        if not isinstance(names, list) or not all(isinstance(n, (str, int)) for n in names):
            raise DataError(f"--labels {path}: expected a JSON list of class names")
        names = [str(n) for n in names]
    else:
        names = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(names) != num_classes:
        raise DataError(f"--labels {path}: {len(names)} names for a model with {num_classes} classes")
    return names


def predict(model: torch.nn.Module, image: Image.Image, topk: int = 5, img_size: int = 224,
            crop_pct: float = 0.875, interpolation: str = "bicubic") -> tuple[list[int], list[float]]:
    x = eval_transform(img_size, crop_pct, interpolation)(image).unsqueeze(0)
    with torch.no_grad():
        probs = model(x).softmax(-1)[0]
    p, idx = probs.topk(min(topk, probs.numel()))
    return idx.tolist(), p.tolist()


def run_exported(args: argparse.Namespace, image) -> int:
    """Top-k of an exported file, from the file alone (its metadata: input, preprocessing, class names)."""
    from ..deploy import load_exported
    from ..errors import ConfigError

    for flag, value in (("--model", args.model), ("--img-size", args.img_size), ("--crop-pct", args.crop_pct)):
        if value is not None:
            raise ConfigError(f"{flag}: not used with --exported (the file says its model, size and crop)")
    m = load_exported(args.exported, args.threads)
    dense = _dense_task(args.exported) if m.metadata is None else None
    if dense:
        raise ConfigError(f"--exported {args.exported}: a {dense[1]} file of `edgevit {dense[0]} export`; "
                          f"`edgevit {dense[0]} predict --exported` reads it")
    if m.metadata is None:
        raise ConfigError(f"--exported {args.exported}: the file carries no edgevit metadata (an earlier or foreign "
                          "export): export it again with `edgevit export`, or predict with --checkpoint")
    meta = m.metadata
    names = read_labels(args.labels, meta.num_classes) if args.labels else list(meta.class_names)
    probs = m.classify(image)
    idx = np.argsort(-probs, kind="stable")[:args.topk]
    result = {"image": str(args.image), "model": meta.model, "exported": str(args.exported), "format": m.format,
              "precision": meta.precision, "img_size": list(meta.input_size), "crop_pct": meta.crop_pct,
              "top": [{"index": int(i), "label": names[i], "prob": float(probs[i])} for i in idx]}
    return _show(args, result)


def _dense_task(path) -> tuple | None:
    """(task, architecture) when `path` is a detector's or segmenter's exported file (its sidecar says so)."""
    from ..deploy.metadata import sidecar_path

    try:
        side = json.loads(sidecar_path(path).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if isinstance(side, dict) and "edgevit_dense_file" in side:
        return str(side.get("task")), str(side.get("arch"))
    return None


def _show(args: argparse.Namespace, result: dict) -> int:
    if args.json:
        print_json(result)
    else:
        for r in result["top"]:
            print(f"{r['prob']:7.2%}  {r['index']:>4}  {r['label']}")
    return 0


def run(args: argparse.Namespace) -> int:
    image = read_image(args.image)
    if args.exported:
        if args.checkpoint:
            from ..errors import ConfigError
            raise ConfigError("--checkpoint and --exported exclude each other: the exported file holds its model")
        return run_exported(args, image)
    from ..train.evaluate import inference_model

    model, meta = inference_model(args.model, args.checkpoint)
    names, cfg = meta["classes"], meta["config"]
    if args.labels:
        names = read_labels(args.labels, model.num_classes)
    elif names is None:
        names = (ImageNetInfo().label_descriptions() if model.num_classes == 1000
                 else [str(i) for i in range(model.num_classes)])
    warn_if_not_trained_size(args.img_size, cfg.get("img_size"), f"predicting {args.image}")
    img_size = args.img_size or int(cfg.get("img_size") or 224)
    crop_pct = args.crop_pct or float(cfg.get("crop_pct") or 0.875)
    idx, probs = predict(model, image, args.topk, img_size, crop_pct, cfg.get("eval_interpolation") or "bicubic")
    if args.topk > model.num_classes:
        print(f"edgevit predict: warning: --topk {args.topk}: the model has {model.num_classes} classes; all are "
              "shown", file=sys.stderr)
    if not args.checkpoint:
        print("edgevit predict: warning: no --checkpoint given: random weights (no trained EdgeViT weights are "
              "published), so these classes are meaningless", file=sys.stderr)
    result = {"image": str(args.image), "model": cfg.get("model") or args.model or "edgevit_xxs",
              "checkpoint": args.checkpoint, "img_size": img_size, "crop_pct": crop_pct,
              "top": [{"index": i, "label": names[i], "prob": p} for i, p in zip(idx, probs)]}
    return _show(args, result)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="top-k classes of an image", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image", help="image file (any format PIL reads)")
    p.add_argument("--model", default=None,
                   help=f"{', '.join(VARIANTS)} or any timm model (default: the checkpoint's, else edgevit_xxs)")
    p.add_argument("--checkpoint", default=None, help="weights: this project's or the authors' .pth/.safetensors")
    p.add_argument("--exported", default=None, metavar="FILE",
                   help="an exported file (edgevit export), run in its own runtime from the file alone: its metadata "
                        "gives the model, input, preprocessing and class names")
    p.add_argument("--threads", type=thread_count, default=2, help="runtime threads for --exported (default 2)")
    p.add_argument("--topk", type=positive_int, default=5)
    p.add_argument("--labels", default=None, help="class names: text file (one per line) or JSON list")
    p.add_argument("--img-size", type=image_size, default=None,
                   help="default: the checkpoint's training size, else 224")
    p.add_argument("--crop-pct", type=crop_pct, default=None, help="default: the checkpoint's, else 0.875")
    add_json_arg(p)
    p.set_defaults(func=run)
