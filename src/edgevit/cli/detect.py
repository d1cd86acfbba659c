"""`edgevit detect train|eval|predict|shapes`: RetinaNet / Mask R-CNN with an EdgeViT + FPN backbone.

Defaults are the paper's COCO recipe (mmdetection 1x): shorter side 800 / longer <= 1333,
AdamW lr 1e-4 (weight decay 1e-4), batch 16, 12 epochs with x0.1 at epochs 8 and 11, 500 warm-up
iterations.  Multi-GPU: `torchrun --nproc-per-node N -m edgevit.cli.main detect train ...`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List

from ..utils.io import print_json
from .common import add_json_arg, report_train


# ---------------------------------------------------------------- shared with `edgevit segment`
def add_train_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="YAML file of option: value defaults (e.g. configs/dense_*.yaml)")
    p.add_argument("--model", default="edgevit_xxs", help="EdgeViT variant: edgevit_xxs, edgevit_xs, edgevit_s")
    p.add_argument("--backbone-checkpoint", default=None,
                   help="ImageNet EdgeViT checkpoint (this project's or the authors' layout) for the backbone")
    p.add_argument("--data", required=False, help="data set root")
    p.add_argument("--output", required=False, help="run directory (last.pth, best.pth, metrics.jsonl, config.yaml)")
    p.add_argument("--batch-size", type=int, default=16, help="total over all processes (paper: 16)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--drop-path", type=float, default=0.1, help="backbone stochastic depth rate")
    p.add_argument("--fpn-channels", type=int, default=256,
                   help="FPN width (paper: 256; smaller only for quick CPU runs, the heads dominate the cost)")
    p.add_argument("--clip-grad", type=float, default=None, help="clip the gradient norm to this value")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes per process")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic kernels (on CPU, kill + --resume auto then equals a straight run)")
    p.add_argument("--resume", default=None, help="'auto' (RUN_DIR/last.pth if present) or a checkpoint path")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--log-every", type=int, default=20, help="iterations between metrics.jsonl loss lines")
    add_json_arg(p)


def require(args: argparse.Namespace, *names: str) -> None:
    for n in names:
        if getattr(args, n) in (None, ""):
            raise ValueError(f"--{n.replace('_', '-')} is required")


def positive(args: argparse.Namespace, *names: str) -> None:
    for n in names:
        if getattr(args, n) is not None and getattr(args, n) <= 0:
            raise ValueError(f"--{n.replace('_', '-')} {getattr(args, n)}: must be positive")


def setup_run(args: argparse.Namespace):
    from ..train.distributed import init_distributed
    from ..train.state import set_determinism

    info = init_distributed(args.device)
    set_determinism(args.seed + info.rank, args.deterministic)
    return info


def with_config(args: argparse.Namespace) -> argparse.Namespace:
    """--config FILE: its keys (option names, '-' or '_') replace options still at their defaults."""
    if not args.config:
        return args
    from ..train.state import load_config

    cfg = load_config(args.config)
    known = set(vars(args))
    unknown = [k for k in cfg if k.replace("-", "_") not in known]
    if unknown:
        raise ValueError(f"--config {args.config}: unknown option(s) {unknown}")
    # command-line values win: only options still at their parser default take the file's value
    parser = args._parser
    for k, v in cfg.items():
        dest = k.replace("-", "_")
        if getattr(args, dest) == parser.get_default(dest):
            setattr(args, dest, v)
    return args


def config_of(args: argparse.Namespace) -> Dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k not in ("func", "json") and not k.startswith("_")}


def add_shapes_parser(sub) -> None:
    p = sub.add_parser("shapes", help="write the bundled synthetic shapes set (COCO json + ADE20K layout)")
    p.add_argument("output", help="directory to write (images/, annotations/, classes.txt)")
    p.add_argument("--num-train", type=int, default=200)
    p.add_argument("--num-val", type=int, default=50)
    p.add_argument("--size", type=int, default=192, help="image side in pixels (multiple of 32)")
    p.add_argument("--max-shapes", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--colours", choices=("class", "random"), default="class",
                   help="class: one hue per class (quick to learn); random: class told by form only")
    add_json_arg(p)
    p.set_defaults(func=run_shapes)


def run_shapes(args: argparse.Namespace) -> int:
    from ..dense.shapes import generate

    positive(args, "num_train", "num_val", "size", "max_shapes")
    counts = generate(args.output, args.num_train, args.num_val, args.size, args.max_shapes, args.seed,
                      args.colours)
    result = {"output": str(args.output), **counts}
    if args.json:
        print_json(result)
    else:
        print(f"wrote {counts['training_images']} training / {counts['validation_images']} validation images "
              f"({counts['training_instances']} / {counts['validation_instances']} shapes) to {args.output}")
    return 0


def load_image(path: str):
    import torch
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"image {p}: no such file")
    try:
        with Image.open(p) as im:
            return pil_to_tensor(im.convert("RGB")).to(torch.float32).div_(255)
    except OSError as e:
        raise ValueError(f"image {p}: cannot be read as an image ({e})") from e


def predict_output(args: argparse.Namespace, suffix: str) -> Path:
    """--out, or IMAGE's stem + suffix in the current directory; a .png name (checked before any work)."""
    out = Path(args.out) if args.out else Path(Path(args.image).stem + suffix)
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out {out}: expected a .png file name")
    return out


def load_trained(args: argparse.Namespace, task: str):
    """(distributed info, the dense model of --checkpoint on its device) for eval / predict."""
    from ..dense.engine import load_dense_checkpoint
    from ..train.distributed import init_distributed

    info = init_distributed(args.device)
    return info, load_dense_checkpoint(args.checkpoint, task).to(info.device)


# ---------------------------------------------------------------- detect
def register(subparsers) -> None:
    det = subparsers.add_parser("detect", help="object detection / instance segmentation (RetinaNet, Mask R-CNN)")
    sub = det.add_subparsers(dest="detect_command", metavar="ACTION", required=True)

    t = sub.add_parser("train", help="train on a COCO-format data set")
    t.add_argument("--arch", choices=("retinanet", "maskrcnn"), default="retinanet")
    add_train_common(t)
    t.add_argument("--train-split", default="train2017", help="ROOT/annotations/instances_SPLIT.json + images")
    t.add_argument("--val-split", default="val2017")
    t.add_argument("--epochs", type=int, default=12)
    t.add_argument("--milestones", type=int, nargs="+", default=[8, 11], help="epochs where lr drops x0.1")
    t.add_argument("--warmup-iters", type=int, default=500)
    t.add_argument("--min-size", type=int, default=800, help="shorter image side")
    t.add_argument("--max-size", type=int, default=1333, help="longest image side cap")
    t.add_argument("--max-iters", type=int, default=None, help="stop after this many iterations (quick runs)")
    t.add_argument("--eval-every", type=int, default=1, help="epochs between evaluations (0: only at the end)")
    t.set_defaults(func=run_train, _parser=t)

    e = sub.add_parser("eval", help="COCO AP (bbox, and segm for Mask R-CNN) of a trained checkpoint")
    e.add_argument("--checkpoint", required=True, help="last.pth / best.pth of `edgevit detect train`")
    e.add_argument("--data", required=True, help="COCO-format root")
    e.add_argument("--split", default="val2017")
    e.add_argument("--device", default="auto")
    add_json_arg(e)
    e.set_defaults(func=run_eval)

    pr = sub.add_parser("predict", help="detect objects in one image; writes a PNG with boxes/labels/masks")
    pr.add_argument("image")
    pr.add_argument("--checkpoint", required=True, help="last.pth / best.pth of `edgevit detect train`")
    pr.add_argument("--out", default=None, help="output PNG (default: IMAGE_STEM_det.png here)")
    pr.add_argument("--score-thresh", type=float, default=0.5)
    pr.add_argument("--device", default="auto")
    add_json_arg(pr)
    pr.set_defaults(func=run_predict)

    add_shapes_parser(sub)


def run_train(args: argparse.Namespace) -> int:
    from ..dense.coco import CocoDetection, collate, resolve_split
    from ..dense.engine import detection_loss, evaluate_detector, fit, iters_per_epoch, step_schedule
    from ..dense.models import create_detector
    from ..train.distributed import cleanup_distributed

    args = with_config(args)
    require(args, "data", "output")
    positive(args, "epochs", "batch_size", "lr", "min_size", "max_size", "max_iters", "fpn_channels")
    masks = args.arch == "maskrcnn"
    train_ann, train_dir = resolve_split(args.data, args.train_split)
    val_ann, val_dir = resolve_split(args.data, args.val_split)
    train_set = CocoDetection(train_ann, train_dir, train=True, masks=masks, seed=args.seed)
    val_set = CocoDetection(val_ann, val_dir, train=False)  # AP is computed against the json, no masks needed
    if val_set.cat_ids != train_set.cat_ids:
        raise ValueError(f"{val_ann} and {train_ann} have different category ids "
                         f"({val_set.cat_ids} vs {train_set.cat_ids})")
    info = setup_run(args)
    try:
        model = create_detector(args.arch, len(train_set.cat_ids), args.model, args.backbone_checkpoint,
                                min_size=args.min_size, max_size=args.max_size, drop_path_rate=args.drop_path,
                                fpn_channels=args.fpn_channels)
        ipe = iters_per_epoch(len(train_set), args.batch_size, info.world_size)
        total = args.epochs * ipe if args.max_iters is None else min(args.max_iters, args.epochs * ipe)
        meta = {"arch": args.arch, "variant": args.model, "num_classes": len(train_set.cat_ids),
                "class_names": train_set.class_names, "cat_ids": list(train_set.cat_ids),
                "min_size": args.min_size, "max_size": args.max_size, "fpn_channels": args.fpn_channels}
        result = fit(model, train_set, collate, detection_loss,
                     lambda m, d: evaluate_detector(m, val_set, d),
                     run_dir=args.output, total_iters=total, batch_size=args.batch_size, lr=args.lr,
                     weight_decay=args.weight_decay,
                     schedule=step_schedule(args.warmup_iters, [m * ipe for m in args.milestones]),
                     eval_every=args.eval_every * ipe, save_every=ipe, metric_key="bbox_AP", meta=meta,
                     cfg=config_of(args), dist_info=info, resume=args.resume, seed=args.seed,
                     workers=args.workers, clip_grad=args.clip_grad, log_every=args.log_every)
    finally:
        cleanup_distributed()
    return report_train(args, result, "bbox_AP") if info.is_main else 0


def run_eval(args: argparse.Namespace) -> int:
    from ..dense.coco import CocoDetection, resolve_split
    from ..dense.engine import evaluate_detector

    info, model = load_trained(args, "detect")
    ann, img_dir = resolve_split(args.data, args.split)
    ds = CocoDetection(ann, img_dir)
    if list(ds.cat_ids) != list(model.meta["cat_ids"]):
        raise ValueError(f"{ann}: category ids {ds.cat_ids} differ from the checkpoint's {model.meta['cat_ids']}")
    scores = evaluate_detector(model, ds, info)
    scores = {"checkpoint": str(args.checkpoint), "arch": model.arch, "split": args.split, **scores}
    if args.json:
        print_json(scores)
    else:
        for t in ("bbox", "segm"):
            if f"{t}_AP" in scores:
                print(f"{t}: " + "  ".join(f"{k} {scores[f'{t}_{k}']:.4f}"
                                           for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")))
        print(f"{scores['num_images']} images, {scores['num_detections']} detections")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    import torch

    from ..dense.visualize import draw_detections, save_png

    out = predict_output(args, "_det.png")
    img = load_image(args.image)
    info, model = load_trained(args, "detect")
    # the detector's own pre-NMS score cut (0.05) must not hide what --score-thresh asks to see
    heads = model if model.arch == "retinanet" else model.roi_heads
    heads.score_thresh = min(heads.score_thresh, args.score_thresh)
    with torch.no_grad():
        det = model([img.to(info.device)])[0]
    keep = det["scores"] >= args.score_thresh
    det = {k: v[keep].cpu() for k, v in det.items()}
    det["labels"] = det["labels"] - model.label_offset
    names: List[str] = list(model.meta["class_names"])
    save_png(draw_detections(img, det, names), out)
    rows = [{"label": int(l), "name": names[int(l)], "score": round(float(s), 4),
             "box_xyxy": [round(float(v), 1) for v in b]}
            for l, s, b in zip(det["labels"], det["scores"], det["boxes"])]
    if "masks" in det:
        for r, m in zip(rows, det["masks"]):
            r["mask_area"] = int((m[0] >= 0.5).sum())
    if args.json:
        print_json({"image": args.image, "output": str(out), "detections": rows})
    else:
        for r in rows:
            print(f"{r['name']:<16} {r['score']:.3f}  box {r['box_xyxy']}")
        print(f"{len(rows)} detection(s) >= {args.score_thresh}; wrote {out}", file=sys.stderr)
    return 0
