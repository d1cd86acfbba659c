"""`edgevit segment train|eval|predict|export|shapes`: Semantic FPN or LR-ASPP on an EdgeViT (ADE20K layout).

Defaults are the paper's ADE20K recipe (PVT's mmseg Semantic FPN): 512x512 random crops of the
(2048, 512) scale x0.5-2.0, AdamW lr 1e-4 (weight decay 1e-4), batch 16, 80k iterations, poly decay.
Multi-GPU: `torchrun --nproc-per-node N -m edgevit.cli.main segment train ...`.
"""
from __future__ import annotations

import argparse
import sys

from ..utils.inputs import require_dir
from ..utils.options import image_size, nonneg_int, positive_float, positive_int
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


def _scale(text: str):
    try:
        vals = [int(v) for v in str(text).split(",")]
    except ValueError:
        vals = []
    if isinstance(text, (list, tuple)):  # from a config file
        vals = [v for v in text if isinstance(v, int) and not isinstance(v, bool)]
        vals = vals if len(vals) == len(text) else []
    if len(vals) != 2 or min(vals) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected LONG,SHORT (e.g. 2048,512)")
    return vals


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-classes", type=positive_int, default=None,
                   help="classes after reduce-zero-label (default: lines of ROOT/classes.txt, else 150)")
    p.add_argument("--no-reduce-zero-label", dest="reduce_zero_label", action="store_false",
                   help="labels are already 0..N-1 (255 = ignore) instead of ADE20K's 0 = other, 1..N")


def _train_args(t: argparse.ArgumentParser) -> None:
    _add_data_args(t)
    t.add_argument("--train-split", default="training")
    t.add_argument("--val-split", default="validation")
    t.add_argument("--iters", type=positive_int, default=80000)
    t.add_argument("--crop-size", type=image_size, default=512)
    t.add_argument("--scale", type=_scale, default=[2048, 512], help="LONG,SHORT resize scale before x0.5-2.0")
    t.add_argument("--poly-power", type=positive_float, default=1.0)
    t.add_argument("--eval-every", type=nonneg_int, default=8000, help="iterations between evaluations (0: end only)")
    t.add_argument("--save-every", type=positive_int, default=2000, help="iterations between checkpoints")


def register(subparsers) -> None:
    register_task(subparsers, DenseTask(
        "segment", "semantic segmentation", "an ADE20K-layout data set (root)", "semfpn", "validation",
        "mIoU, mAcc and pixel accuracy of a trained checkpoint or an exported file",
        "segment one image; writes a colour-overlay PNG", "_seg.png", _train_args, run_train, run_eval,
        run_predict))


def _dataset(args, split: str, train: bool, num_classes: int, reduce_zero_label: bool, scale, crop_size=512):
    from ..dense.ade import ADESegmentation

    return ADESegmentation(args.data, split, num_classes=num_classes, reduce_zero_label=reduce_zero_label,
                           train=train, crop_size=crop_size, scale=scale, seed=args.seed if train else 0)


def run_train(args: argparse.Namespace) -> int:
    from ..dense.ade import read_class_names
    from ..dense.engine import evaluate_segmenter, fit, poly_schedule, segmentation_loss
    from ..dense.models import create_segmenter
    from ..train.distributed import cleanup_distributed

    args = start_dense_train(args, "segment")
    require_dir(args.data, "--data", "an ADE20K-layout root")
    names = read_class_names(args.data, args.num_classes)
    n = args.num_classes = len(names)
    train_set = _dataset(args, args.train_split, True, n, args.reduce_zero_label, args.scale, args.crop_size)
    val_set = _dataset(args, args.val_split, False, n, args.reduce_zero_label, args.scale)
    info = setup_run(args)
    try:
        model = create_segmenter(n, args.model, args.backbone_checkpoint, drop_path_rate=args.drop_path,
                                 fpn_channels=args.fpn_channels, arch=args.arch)
        meta = {"arch": args.arch, "variant": args.model, "num_classes": n, "class_names": names,
                "scale": list(args.scale), "reduce_zero_label": bool(args.reduce_zero_label),
                "fpn_channels": args.fpn_channels}
        result = fit(model, train_set, None, segmentation_loss,
                     lambda m, d: evaluate_segmenter(m, val_set, d, class_names=names, progress=show_progress(args)),
                     run_dir=args.output, total_iters=args.iters, batch_size=args.batch_size, lr=args.lr,
                     weight_decay=args.weight_decay, schedule=poly_schedule(args.iters, args.poly_power),
                     eval_every=args.eval_every, save_every=args.save_every, metric_key="mIoU", meta=meta,
                     cfg=config_of(args), dist_info=info, resume=args.resume, seed=args.seed,
                     workers=args.workers, clip_grad=args.clip_grad, log_every=args.log_every,
                     overwrite=args.overwrite, progress=show_progress(args), inputs=run_inputs(args))
    finally:
        cleanup_distributed()
    return report_train(args, result, "mIoU") if info.is_main else 0


def run_eval(args: argparse.Namespace) -> int:
    from ..dense.engine import evaluate_segmenter

    info, model, meta = load_model_or_file(args, "segment")
    ds = _dataset(args, args.split, False, int(meta["num_classes"]), bool(meta["reduce_zero_label"]), meta["scale"])
    scores = evaluate_segmenter(model, ds, info, class_names=meta["class_names"], progress=show_progress(args))
    source = {"exported": str(args.exported)} if args.exported else {"checkpoint": str(args.checkpoint)}
    scores = {**source, "arch": meta["arch"], "split": args.split, **scores}
    if args.json:
        print_json(scores)
    else:
        print(f"mIoU {scores['mIoU']:.4f}  mAcc {scores['mAcc']:.4f}  aAcc {scores['aAcc']:.4f}  "
              f"({scores['num_images']} images)")
        for name, iou in scores["per_class_iou"].items():
            print(f"  {name:<20} {'-' if iou is None else f'{iou:.4f}'}")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    import torch.nn.functional as F

    from ..dense.ade import fit_scale, normalize
    from ..dense.engine import segment_logits
    from ..dense.visualize import draw_segmentation, save_png

    out = predict_output(args, "_seg.png")
    img = load_image_tensor(args.image)
    info, model, meta = load_model_or_file(args, "segment")
    h, w = fit_scale(*img.shape[-2:], meta["scale"])
    x = normalize(F.interpolate(img[None], size=(h, w), mode="bilinear", align_corners=False)[0])
    if args.exported:
        pred = model.segment(x, img.shape[-2:])
    else:
        pred = segment_logits(model, x.to(info.device), img.shape[-2:]).argmax(0).cpu()
    save_png(draw_segmentation(img, pred, model.num_classes), out)
    names = meta["class_names"]
    counts = pred.flatten().bincount(minlength=model.num_classes)
    frac = {names[i]: round(float(c) / pred.numel(), 4) for i, c in enumerate(counts.tolist()) if c}
    if args.json:
        print_json({"image": args.image, "output": str(out), "size": list(pred.shape), "class_fractions": frac})
    else:
        for name, f in sorted(frac.items(), key=lambda kv: -kv[1]):
            print(f"{name:<20} {100 * f:6.2f}%")
        print(f"wrote {out}", file=sys.stderr)
    return 0
