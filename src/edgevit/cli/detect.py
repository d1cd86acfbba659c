"""`edgevit detect train|eval|predict|shapes`: RetinaNet / Mask R-CNN with an EdgeViT + FPN backbone.

Defaults are the paper's COCO recipe (mmdetection 1x): shorter side 800 / longer <= 1333,
AdamW lr 1e-4 (weight decay 1e-4), batch 16, 12 epochs with x0.1 at epochs 8 and 11, 500 warm-up
iterations.  Multi-GPU: `torchrun --nproc-per-node N -m edgevit.cli.main detect train ...`.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from typing import List

from ..dense import registry
from ..errors import ConfigError
from ..utils.options import nonneg_int, positive_int, probability
from ..utils.writes import print_json
from .args import show_progress
from .dense_command import (
    DenseTask,
    config_of,
    load_image_tensor,
    load_model_or_file,
    predict_output,
    register_task,
    report_train,
    run_inputs,
    setup_run,
    start_dense_train,
)


def _train_args(t: argparse.ArgumentParser) -> None:
    t.add_argument("--train-split", default="train2017", help="ROOT/annotations/instances_SPLIT.json + images")
    t.add_argument("--val-split", default="val2017")
    t.add_argument("--epochs", type=positive_int, default=12)
    t.add_argument("--milestones", type=positive_int, nargs="+", default=[8, 11], help="epochs where lr drops x0.1")
    t.add_argument("--warmup-iters", type=nonneg_int, default=500)
    t.add_argument("--min-size", type=positive_int, default=800, help="shorter image side")
    t.add_argument("--max-size", type=positive_int, default=1333, help="longest image side cap")
    t.add_argument("--max-iters", type=positive_int, default=None, help="stop after this many iterations (quick runs)")
    t.add_argument("--eval-every", type=nonneg_int, default=1, help="epochs between evaluations (0: only at the end)")


def _predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--score-thresh", type=probability, default=0.5, help="keep detections scoring at least this")


def register(subparsers) -> None:
    register_task(subparsers, DenseTask(
        "detect", "object detection / instance segmentation", "a COCO-format data set (root)", "retinanet",
        "val2017", "COCO AP (bbox, and segm for instance masks) of a checkpoint or an exported file",
        "detect objects in one image; writes a PNG with boxes/labels/masks", "_det.png", _train_args, run_train,
        run_eval, run_predict, _predict_args))


def run_train(args: argparse.Namespace) -> int:
    from ..dense.coco import CocoDetection, collate, resolve_split
    from ..dense.engine import detection_loss, evaluate_detector, fit, iters_per_epoch, step_schedule
    from ..dense.models import create_detector
    from ..train.distributed import cleanup_distributed

    args = start_dense_train(args, "detect")
    arch = registry.get(args.arch, "detect")
    if args.batch_size < arch.min_batch:
        raise ConfigError(f"--batch-size {args.batch_size}: {args.arch} needs at least {arch.min_batch} images per "
                          "process in training (BatchNorm over its smallest feature maps)")
    if args.min_size > args.max_size:
        raise ConfigError(f"--min-size {args.min_size} is larger than --max-size {args.max_size}")
    if list(args.milestones) != sorted(set(args.milestones)):
        raise ConfigError(f"--milestones {' '.join(map(str, args.milestones))}: expected increasing epochs")
    if args.milestones[-1] > args.epochs and "milestones" in getattr(args, "_explicit", ()):
        warnings.warn(f"--milestones {args.milestones[-1]} is beyond --epochs {args.epochs}: that lr drop never "
                      "happens")
    masks = arch.masks
    train_ann, train_dir = resolve_split(args.data, args.train_split)
    val_ann, val_dir = resolve_split(args.data, args.val_split)
    train_set = CocoDetection(train_ann, train_dir, train=True, masks=masks, seed=args.seed)
    val_set = CocoDetection(val_ann, val_dir, train=False)  # AP is computed against the json, no masks needed
    if val_set.cat_ids != train_set.cat_ids:
        raise ConfigError(f"{val_ann} and {train_ann} have different category ids "
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
                     lambda m, d: evaluate_detector(m, val_set, d, progress=show_progress(args)),
                     run_dir=args.output, total_iters=total, batch_size=args.batch_size, lr=args.lr,
                     weight_decay=args.weight_decay,
                     schedule=step_schedule(args.warmup_iters, [m * ipe for m in args.milestones]),
                     eval_every=args.eval_every * ipe, save_every=ipe, metric_key="bbox_AP", meta=meta,
                     cfg=config_of(args), dist_info=info, resume=args.resume, seed=args.seed,
                     workers=args.workers, clip_grad=args.clip_grad, log_every=args.log_every,
                     overwrite=args.overwrite, progress=show_progress(args), inputs=run_inputs(args))
    finally:
        cleanup_distributed()
    return report_train(args, result, "bbox_AP") if info.is_main else 0


def run_eval(args: argparse.Namespace) -> int:
    from ..dense.coco import CocoDetection, resolve_split
    from ..dense.engine import evaluate_detector

    info, model, meta = load_model_or_file(args, "detect")
    ann, img_dir = resolve_split(args.data, args.split)
    ds = CocoDetection(ann, img_dir)
    if list(ds.cat_ids) != list(meta["cat_ids"]):
        raise ConfigError(f"{ann}: category ids {ds.cat_ids} differ from the model's {meta['cat_ids']}")
    scores = evaluate_detector(model, ds, info, progress=show_progress(args))
    source = {"exported": str(args.exported)} if args.exported else {"checkpoint": str(args.checkpoint)}
    scores = {**source, "arch": model.arch, "split": args.split, **scores}
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

    from ..dense.engine import pad_for_detector
    from ..dense.visualize import draw_detections, save_png

    out = predict_output(args, "_det.png")
    img = load_image_tensor(args.image)
    info, model, meta = load_model_or_file(args, "detect")
    if args.exported:
        if args.score_thresh < model.score_thresh and model.meta["outputs"][0] != "cls_logits":
            warnings.warn(f"--score-thresh {args.score_thresh}: {args.exported} applies its own cut "
                          f"{model.score_thresh:g} inside the graph; nothing below it can be shown")
        det = model.detect(img, score_thresh=args.score_thresh)
    else:
        # the detector's own pre-NMS score cut (0.05) must not hide what --score-thresh asks to see
        heads = getattr(model, "roi_heads", model)  # (a two-stage detector's cut is its RoI heads')
        heads.score_thresh = min(heads.score_thresh, args.score_thresh)
        padded = pad_for_detector(img, meta["min_size"], meta["max_size"])
        with torch.no_grad():
            det = model([padded.to(info.device)])[0]
        det["labels"] = det["labels"] - model.label_offset
    det["boxes"][:, 0::2] = det["boxes"][:, 0::2].clamp(0, img.shape[-1])  # padding is not part of the image
    det["boxes"][:, 1::2] = det["boxes"][:, 1::2].clamp(0, img.shape[-2])
    if "masks" in det:
        det["masks"] = det["masks"][..., :img.shape[-2], :img.shape[-1]]
    keep = det["scores"] >= args.score_thresh
    det = {k: v[keep].cpu() for k, v in det.items()}
    names: List[str] = list(meta["class_names"])
    save_png(draw_detections(img, det, names), out)
    rows = [{"label": int(lab), "name": names[int(lab)], "score": round(float(s), 4),
             "box_xyxy": [round(float(v), 1) for v in b]}
            for lab, s, b in zip(det["labels"], det["scores"], det["boxes"])]
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
