"""Where training time goes: the model's training step alone, and the input pipeline alone, per worker.

    .venv/bin/python benchmarks/train_throughput.py [--models edgevit_xxs mobilenetv2_100 ...]
        [--device cpu|cuda] [--batch 64] [--amp none|bfloat16|float16] [--channels-last] [--teacher MODEL]
        [--json out.json]

(a) Training step (synthetic batch at 224 x 224: forward, loss, backward, AdamW step, EMA update) for each
model, timed in interleaved rounds (`edgevit.bench.bench.time_runners`, CUDA synchronised per step):
images/s and images/s x forward GMACs ("GMAC/s": how well the step turns multiply-adds into throughput,
comparable across models of different size).
(b) Input pipeline per worker process: JPEG decode (a 500 x 375 image, ImageNet's typical size) + the
DeiT recipe's train transform (RandomResizedCrop, flip, RandAugment rand-m9-mstd0.5-inc1, random erasing)
+ mixup/cutmix on the batch, in this one process: images/s per worker.
From both: how many loader workers keep one device fed at each model's step rate (printed).
"""
from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time

import numpy as np
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data import Mixup
from timm.optim import create_optimizer_v2
from timm.utils import ModelEmaV3

import edgevit  # noqa: F401  (registers the EdgeViTs)
from edgevit.bench.bench import time_runners
from edgevit.models.complexity import count_gmacs
from edgevit.train.data import train_transform
from edgevit.train.recipe import RECIPE
from edgevit.utils.writes import write_text_atomic

MODELS = ["edgevit_xxs", "edgevit_xs", "edgevit_s", "mobilenetv2_100", "pvt_v2_b0", "deit_tiny_patch16_224"]
DTYPES = {"none": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def teacher_distiller(teacher: str, device: torch.device, channels_last: bool, kind: str = "hard"):
    """The package's Distiller around `teacher` with random weights (timing only: its forward costs the same)."""
    from timm.task.distillation import DistillationTeacher

    from edgevit.train.distill import Distiller

    t = DistillationTeacher(timm.create_model(teacher, num_classes=1000).eval(), device=device).to(device)
    for p in t.parameters():
        p.requires_grad_(False)
    if channels_last:
        t = t.to(memory_format=torch.channels_last)
    return Distiller(t, kind, 0.5, 1.0, (224, 224), 224, device)


def teacher_ms(distiller, batch: int, device: torch.device, amp, channels_last: bool, steps: int) -> float:
    """Median ms of the teacher's part of a distilled step (re-normalise, forward) on a batch of that size."""
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(1)).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    out = []
    for _ in range(steps + 1):
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            distiller.teacher_logits(x)
        out.append(1e3 * distiller.take_seconds())
    return statistics.median(out[1:])


def step_runner(name: str, batch: int, device: torch.device, amp, channels_last: bool, distiller=None):
    """One training step of `name` on a fixed synthetic batch, as a callable (the loop's work, no data); with a
    `distiller`, the distilled step (the teacher's forward pass and DeiT's loss added)."""
    model = timm.create_model(name, num_classes=1000).to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = create_optimizer_v2(model, opt="adamw", lr=1e-4, weight_decay=0.05)
    ema = ModelEmaV3(model, decay=0.99996)
    scaler = torch.amp.GradScaler(device.type) if amp == torch.float16 else None
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 224, 224, generator=g).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), generator=g).to(device)

    def step():
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            out = model(x)
            loss = F.cross_entropy(out, y) if distiller is None else distiller.loss(x, out, y, F.cross_entropy)
        (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)
        ema.update(model)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return step, count_gmacs(timm.create_model(name, num_classes=1000).eval(), 224)


def pipeline_rate(images: int = 64, batch: int = 32) -> dict:
    """Images/s of decode + the recipe's train transform + mixup/cutmix, in one process (= one worker)."""
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    jpeg = buf.getvalue()
    cfg = {k: v for k, (v, _, _) in RECIPE.items()}
    cfg.update(img_size=224, aa="rand-m9-mstd0.5-inc1")
    transform = train_transform(cfg)
    mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=1000)
    t0 = time.perf_counter()
    decode = aug = 0.0
    tensors = []
    for _ in range(images):
        a = time.perf_counter()
        img = Image.open(io.BytesIO(jpeg)).convert("RGB")
        b = time.perf_counter()
        tensors.append(transform(img))
        c = time.perf_counter()
        decode, aug = decode + b - a, aug + c - b
    a = time.perf_counter()
    for i in range(0, images - batch + 1, batch):
        mixup(torch.stack(tensors[i:i + batch]), torch.zeros(batch, dtype=torch.long))
    mix = time.perf_counter() - a
    total = time.perf_counter() - t0
    return {"images_per_s": images / total, "decode_ms": 1e3 * decode / images, "transform_ms": 1e3 * aug / images,
            "mixup_ms_per_image": 1e3 * mix / max(images // batch * batch, 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=MODELS)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--amp", default="none", choices=list(DTYPES))
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--steps", type=int, default=5, help="timed steps per model (interleaved rounds)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--teacher", default=None, metavar="MODEL",
                   help="also time each model's distilled step with this timm teacher (DeiT's hard distillation), "
                        "and the teacher's share of it")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("train_throughput: --device cuda but CUDA is not available")
    if args.amp == "float16" and device.type != "cuda":
        raise SystemExit("train_throughput: --amp float16 needs --device cuda (use bfloat16 on CPU)")
    amp = DTYPES[args.amp]
    built = [(m, *step_runner(m, args.batch, device, amp, args.channels_last), None) for m in args.models]
    if args.teacher:
        for m in args.models:
            d = teacher_distiller(args.teacher, device, args.channels_last)
            built.append((f"{m} + teacher {args.teacher}", *step_runner(m, args.batch, device, amp,
                                                                        args.channels_last, d), d))
    times = time_runners([s for _, s, _, _ in built], args.steps, args.warmup)
    rows = []
    for (name, _, gmacs, d), ts in zip(built, times):
        ms = statistics.median(ts)
        ips = args.batch / (ms / 1e3)
        row = {"model": name, "step_ms": ms, "images_per_s": ips, "gmacs": gmacs, "gmac_per_s": ips * gmacs}
        if d is not None:  # the teacher's forward alone on the same batch, against the distilled step
            row["teacher_ms"] = teacher_ms(d, args.batch, device, amp, args.channels_last, args.steps)
            row["teacher_share"] = row["teacher_ms"] / ms
            plain = next(r for r in rows if r["model"] == name.split(" + ")[0])
            row["overhead_vs_plain"] = ms / plain["step_ms"]
        rows.append(row)
    pipe = pipeline_rate()
    print(f"training step, {args.device}, batch {args.batch}, amp {args.amp}, channels_last {args.channels_last}, "
          f"{args.threads} threads, {args.steps} interleaved rounds (median):")
    for r in rows:
        print(f"  {r['model']:<24} {r['step_ms']:9.1f} ms/step  {r['images_per_s']:8.1f} img/s  "
              f"{r['gmacs']:.3f} GMACs/img  {r['gmac_per_s']:7.1f} forward GMAC/s  "
              f"workers to feed it: {r['images_per_s'] / pipe['images_per_s']:.1f}"
              + (f"  ({r['overhead_vs_plain']:.2f}x the plain step; teacher {r['teacher_share']:.0%} of it)"
                 if "teacher_share" in r else ""))
    print(f"input pipeline, one worker: {pipe['images_per_s']:.1f} img/s (decode {pipe['decode_ms']:.1f} ms, "
          f"transform {pipe['transform_ms']:.1f} ms, mixup/cutmix {pipe['mixup_ms_per_image']:.2f} ms per image)")
    if args.json:
        write_text_atomic(args.json, json.dumps({"args": vars(args), "steps": rows, "pipeline": pipe}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
