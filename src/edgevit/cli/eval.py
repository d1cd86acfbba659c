"""`edgevit eval`: top-1/top-5 of a checkpoint on an ImageFolder with the standard center crop."""
from __future__ import annotations

import argparse
import os
import sys

from ..errors import UserError
from ..utils.options import crop_pct, image_size, json_object, nonneg_int, positive_int, thread_count
from .args import add_json_arg, add_progress_arg, show_progress


def exported_kinds() -> str:
    """".pte: ExecuTorch + XNNPACK, .onnx: ..." from the runtime records."""
    from ..deploy.runtimes import RUNTIMES

    return "; ".join(f"{'/'.join(r.suffixes)}: {r.title.split(' (')[0]}" for r in RUNTIMES.values() if r.format)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="top-1/top-5 of a checkpoint on an ImageFolder (e.g. ImageNet val)",
        description="Resize to img_size/crop_pct, center-crop img_size, ImageNet mean/std. Works with this "
                    "project's checkpoints (training state or weights) and the authors' .pth. Options not "
                    "given come from the training config stored in the checkpoint.")
    p.add_argument("--data", required=True,
                   help="ImageFolder directory (one folder per class), or a training root: its val/ is used; or "
                        "the root of the dataset named by --dataset (e.g. WebDataset shards + _info.json)")
    p.add_argument("--dataset", default="",
                   help="timm dataset name, as for edgevit train: '' or folder (ImageFolder, default), tar, "
                        "torch/NAME, wds/NAME (WebDataset shards), hfds/NAME, hfids/NAME, tfds/NAME")
    p.add_argument("--split", default=None,
                   help="split to evaluate (default: DATA itself or DATA/val for folders, the validation split "
                        "of other datasets)")
    p.add_argument("--checkpoint", default=None,
                   help="last.pth/best.pth/model.safetensors or the authors' .pth (with --exported: optional, "
                        "only its crop, interpolation and classes are used)")
    p.add_argument("--exported", default=None, metavar="FILE",
                   help=f"evaluate an exported file ({exported_kinds()}) in its own runtime, fp32 or int8, instead "
                        "of a checkpoint")
    p.add_argument("--threads", type=thread_count, default=2, help="runtime threads for --exported (default 2)")
    p.add_argument("--model", default=None, help="model name (default: from the checkpoint, else edgevit_xxs)")
    p.add_argument("--model-kwargs", type=json_object, default=None,
                   help="model constructor kwargs as JSON (default: from the checkpoint's training config)")
    p.add_argument("--ema", action="store_true", help="evaluate the EMA weights of a training checkpoint")
    p.add_argument("--img-size", type=image_size, default=None, help="crop size (default: checkpoint's, else 224)")
    p.add_argument("--crop-pct", type=crop_pct, default=None, help="center-crop fraction (default 0.875)")
    p.add_argument("--interpolation", default=None, choices=("bicubic", "bilinear", "nearest"),
                   help="resize interpolation (default: the checkpoint's, else bicubic)")
    p.add_argument("--batch-size", type=positive_int, default=100)
    p.add_argument("--workers", type=nonneg_int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    add_progress_arg(p)
    add_json_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..train.data import SampleError, sample_error_message
    from ..train.distributed import cleanup_distributed, init_distributed
    from ..train.evaluate import evaluate_checkpoint
    from ..utils.writes import print_json

    if args.exported:
        return run_exported(args)
    if args.checkpoint is None:
        raise UserError("give --checkpoint (a PyTorch checkpoint) or --exported (an exported file)")
    info = init_distributed(args.device)
    try:
        result = evaluate_checkpoint(args.data, args.checkpoint, args.model, args.img_size, args.crop_pct,
                                     args.interpolation, args.batch_size, args.workers, info.device, args.ema,
                                     progress=show_progress(args), model_kwargs=args.model_kwargs, rank=info.rank,
                                     world_size=info.world_size, dataset=args.dataset, split=args.split)
    except SampleError as e:
        raise UserError(sample_error_message(e)) from None
    finally:
        cleanup_distributed()
    if not info.is_main:
        return 0
    if args.json:
        print_json(result)
    else:
        print(f"{result['model']} on {result['data']} ({result['num_images']} images, {result['img_size']} px, "
              f"crop {result['crop_pct']}): top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  "
              f"loss {result['loss']:.4f}", file=sys.stdout)
    return 0


def run_exported(args: argparse.Namespace) -> int:
    from ..train.data import SampleError, sample_error_message
    from ..train.evaluate import evaluate_exported
    from ..utils.writes import print_json

    for flag, value in (("--ema", args.ema), ("--model-kwargs", args.model_kwargs)):
        if value:
            raise UserError(f"{flag}: not used with --exported (the file holds its model)")
    if args.model is not None:
        raise UserError("--model: not used with --exported (the file holds its model)")
    try:
        result = evaluate_exported(args.data, args.exported, args.img_size, args.crop_pct, args.interpolation,
                                   args.checkpoint, args.batch_size, args.workers, args.threads,
                                   progress=show_progress(args), dataset=args.dataset, split=args.split)
    except SampleError as e:
        raise UserError(sample_error_message(e)) from None
    if args.json:
        print_json(result)
    else:
        h, w = result["img_size"]
        print(f"{result['exported']} ({result['format']}) on {result['data']} ({result['num_images']} images, "
              f"{h}x{w} px, crop {result['crop_pct']}): top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  "
              f"loss {result['loss']:.4f}", file=sys.stdout)
    return 0
