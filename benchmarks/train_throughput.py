"""Training speed in timm's benchmark.py manner: forward, backward and optimizer step timed apart, per model and form.

    .venv/bin/python benchmarks/train_throughput.py [--models edgevits deit_tiny_patch16_224 mobilenetv2_100 peers]
        [--forms eager channels_last bf16 compile adamw-fused fused-attn-off] [--device cpu|cuda] [--batch 32]
        [--rounds 5] [--warmup 2] [--profile MODEL ...] [--teacher MODEL] [--json out.json]

(a) The training step of the paper's recipe (DeiT's: AdamW, 224 x 224, label smoothing 0.1, EMA; mixup off:
synthetic batches) for every model x form, in interleaved rounds (every round runs every model x form once in a new
random order: load on the machine lands on all alike), each step's forward (with the loss), backward and optimizer
step (+ EMA update) timed apart (CUDA synchronised between phases). Per row: the median of each phase, the step's
95% interval, images/s, and GMAC/s: forward MACs x images / forward time, and fwd+bwd MACs (3 x forward: the
backward pass computes the gradients of the inputs and of the weights, each about one forward) x images / (forward +
backward time): how well each model turns multiply-adds into training speed, across sizes.
Forms: eager (fp32, NCHW), channels_last, bf16 (autocast; on a CPU only with AVX512-BF16 or AMX, else skipped with
why), channels_last+bf16, compile (torch.compile, inductor; compile time reported apart, not in the medians),
adamw-fused (torch's fused AdamW kernel instead of timm's foreach AdamW), fused-attn-off (timm's fused attention,
on by default, turned off: what it gives).
(b) --profile MODEL: one step of each named model under torch.profiler (eager form): the time by operator kind
(depthwise / dense convolution, matmul, normalisation, activation, softmax-attention, elementwise, layout copies,
optimizer) for forward+backward and the top operators: where the time goes.
(c) The input pipeline per worker: JPEG decode (a 500 x 375 image, ImageNet's typical size) + the recipe's train
transform (RandomResizedCrop, flip, RandAugment rand-m9-mstd0.5-inc1, random erasing) + mixup/cutmix, in this
one process; how many loader workers keep one device fed at each row's step rate.
"""
from __future__ import annotations

import argparse
import io
import json
import random
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data import Mixup
from timm.optim import create_optimizer_v2
from timm.utils import ModelEmaV3
from tqdm import tqdm

import edgevit  # noqa: F401  (registers the EdgeViTs)
from edgevit.bench.bench import cpu_flags, cpu_name, expand_models, median_ci
from edgevit.models.complexity import count_gmacs
from edgevit.train.data import train_transform
from edgevit.train.recipe import RECIPE
from edgevit.utils.writes import write_text_atomic

MODELS = ["edgevits", "deit_tiny_patch16_224", "mobilenetv2_100", "peers"]
FORMS = {  # form -> (channels_last, autocast dtype, torch.compile, fused AdamW, timm fused attention)
    "eager": (False, None, False, False, True),
    "channels_last": (True, None, False, False, True),
    "bf16": (False, torch.bfloat16, False, False, True),
    "channels_last+bf16": (True, torch.bfloat16, False, False, True),
    "compile": (False, None, True, False, True),
    "adamw-fused": (False, None, False, True, True),
    "fused-attn-off": (False, None, False, False, False),
}
PHASES = ("forward_ms", "backward_ms", "optimizer_ms")


def form_lacks(form: str, device: torch.device) -> Optional[str]:
    """Why this machine cannot run `form` as that form (None: it can): bf16 autocast on a CPU without bf16 matrix
    instructions runs emulated, far slower than fp32, which times the emulation, not the form."""
    if FORMS[form][1] is torch.bfloat16 and device.type == "cpu":
        if not {"avx512_bf16", "amx_bf16"} & set(cpu_flags()):
            return "this CPU has neither AVX512-BF16 nor AMX: bf16 would be emulated"
    return None


@dataclass
class Trainee:
    """One model x form, ready to take training steps on a fixed synthetic batch, each phase timed apart."""
    name: str
    form: str
    model: torch.nn.Module
    forward: object
    opt: torch.optim.Optimizer
    ema: ModelEmaV3
    x: torch.Tensor
    y: torch.Tensor
    amp: Optional[torch.dtype]
    device: torch.device
    gmacs: float
    distiller: object = None
    compile_s: float = 0.0

    def step(self) -> Dict[str, float]:
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        t0 = time.perf_counter()
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            out = self.forward(self.x)
            loss = F.cross_entropy(out, self.y, label_smoothing=0.1) if self.distiller is None else \
                self.distiller.loss(self.x, out, self.y, lambda o, t: F.cross_entropy(o, t, label_smoothing=0.1))
        sync()
        t1 = time.perf_counter()
        loss.backward()
        sync()
        t2 = time.perf_counter()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.ema.update(self.model)
        sync()
        t3 = time.perf_counter()
        return {"forward_ms": 1e3 * (t1 - t0), "backward_ms": 1e3 * (t2 - t1), "optimizer_ms": 1e3 * (t3 - t2)}


def trainee(name: str, form: str, batch: int, device: torch.device, distiller=None, warmup: int = 2) -> Trainee:
    """`name` in `form` with AdamW (lr 5e-4 x batch / 512, weight decay 0.05: DeiT's) and EMA, after `warmup` steps
    (the first of which compiles, for the compile form: its time is `compile_s`)."""
    channels_last, amp, compiled, fused_adamw, fused_attn = FORMS[form]
    timm.layers.set_fused_attn(fused_attn)  # (read by each attention module as it is built)
    try:
        model = timm.create_model(name, num_classes=1000).to(device).train()
    finally:
        timm.layers.set_fused_attn(True)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    lr = 5e-4 * batch / 512
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05, fused=True) if fused_adamw else \
        create_optimizer_v2(model, opt="adamw", lr=lr, weight_decay=0.05)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 224, 224, generator=g).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), generator=g).to(device)
    gmacs = count_gmacs(timm.create_model(name, num_classes=1000).eval(), 224)
    t = Trainee(name, form, model, torch.compile(model) if compiled else model, opt, ModelEmaV3(model, decay=0.99996),
                x, y, amp, device, gmacs, distiller)
    for i in range(warmup):
        t0 = time.perf_counter()
        t.step()
        if i == 0 and compiled:
            t.compile_s = time.perf_counter() - t0
    return t


def time_phases(trainees: List[Trainee], rounds: int, seed: int = 0, progress=None) -> List[List[Dict[str, float]]]:
    """Each trainee's phase times over `rounds` interleaved rounds (every round runs every trainee once, in a new
    random order)."""
    rng = random.Random(seed)
    out: List[List[Dict[str, float]]] = [[] for _ in trainees]
    order = list(range(len(trainees)))
    for _ in range(rounds):
        rng.shuffle(order)
        for i in order:
            out[i].append(trainees[i].step())
            if progress is not None:
                progress.update(1)
    return out


def summarize(t: Trainee, steps: List[Dict[str, float]], batch: int) -> dict:
    med = {k: statistics.median(s[k] for s in steps) for k in PHASES}
    totals = [sum(s[k] for k in PHASES) for s in steps]
    step_ms = statistics.median(totals)
    lo, hi = median_ci(totals)
    return {"model": t.name, "form": t.form, **med, "step_ms": step_ms, "step_ci_ms": [lo, hi],
            "images_per_s": batch / (step_ms / 1e3), "gmacs": t.gmacs,
            "forward_gmac_per_s": t.gmacs * batch / (med["forward_ms"] / 1e3),
            "fwd_bwd_gmac_per_s": 3 * t.gmacs * batch / ((med["forward_ms"] + med["backward_ms"]) / 1e3),
            "compile_s": t.compile_s or None}


# operator kinds of a training step's profile: (kind, test on the aten op name and its input shapes)
def op_kind(name: str, shapes) -> str:
    n = name.lower()
    if "convolution" in n or "conv" in n:
        # a weight [C, 1, k, k] (the 2nd input forward, the 3rd in convolution_backward): depthwise
        groups_dw = any(len(s) == 4 and s[1] == 1 and s[0] > 1 for s in (shapes or [])[1:3])
        return "depthwise conv" if groups_dw else "conv"
    if any(k in n for k in ("addmm", "mm", "bmm", "linear", "matmul")):
        return "matmul"
    if any(k in n for k in ("scaled_dot_product", "softmax", "_flash", "attention")):
        return "attention/softmax"
    if any(k in n for k in ("norm", "batch_norm")):
        return "normalisation"
    if any(k in n for k in ("gelu", "relu", "silu", "hardswish", "sigmoid", "tanh")):
        return "activation"
    if any(k in n for k in ("copy_", "clone", "contiguous", "permute", "transpose", "cat", "pad", "_to_copy")):
        return "layout copies"
    if any(k in n for k in ("_foreach", "adam", "lerp", "sqrt", "addcdiv", "addcmul")):
        return "optimizer/EMA"
    return "elementwise/other"


def profile_step(t: Trainee, top: int = 12) -> dict:
    """One step under torch.profiler: self CPU time by operator kind and the top operators."""
    import os

    from torch.profiler import ProfilerActivity, profile

    os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # (its start/stop lines on stderr say nothing here)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        t.step()
    kinds: Dict[str, float] = defaultdict(float)
    ops, gemms = [], []
    for e in prof.key_averages(group_by_input_shape=True):
        if not e.key.startswith("aten::"):
            continue
        ms = e.self_cpu_time_total / 1e3
        kinds[op_kind(e.key, e.input_shapes)] += ms
        ops.append({"op": e.key, "shapes": str(e.input_shapes)[:80], "calls": e.count, "self_ms": ms})
        mkn = gemm_shape(e.key, e.input_shapes)
        if mkn and ms > 0:
            gemms.append({"mkn": mkn, "calls": e.count, "ms": ms,
                          "gmac_per_s": mkn[0] * mkn[1] * mkn[2] * e.count / (ms / 1e3) / 1e9})
    total = sum(kinds.values())
    ops.sort(key=lambda o: -o["self_ms"])
    gemms = sorted(gemms, key=lambda g: -g["ms"])[:8]
    for g in gemms:  # (after the profiled step: the same kernel at the same shape, alone)
        g["alone_gmac_per_s"] = gemm_alone(g["mkn"])
    return {"model": t.name, "total_ms": total,
            "kinds": {k: {"ms": v, "share": v / total} for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
            "top_ops": ops[:top], "gemms": gemms}


def gemm_shape(op: str, shapes) -> Optional[tuple]:
    """(M, K, N) of a 2-D matrix product in the profile (aten::mm [[M, K], [K, N]], aten::addmm [[N], [M, K], [K,
    N]]), else None."""
    shapes = [s for s in (shapes or []) if s]
    if op in ("aten::mm", "aten::addmm") and len(shapes) >= 2:
        a, b = shapes[-2], shapes[-1]
        if len(a) == 2 and len(b) == 2 and a[1] == b[0]:
            return a[0], a[1], b[1]
    return None


def gemm_alone(mkn: tuple, reps: int = 5) -> float:
    """GMAC/s of torch.mm at one (M, K, N) alone, on this machine's threads: what the kernel reaches at that shape
    (the floor a model built of such products trains at)."""
    m, k, n = mkn
    a, b = torch.randn(m, k), torch.randn(k, n)
    torch.mm(a, b)
    t0 = time.perf_counter()
    for _ in range(reps):
        torch.mm(a, b)
    return m * k * n * reps / (time.perf_counter() - t0) / 1e9


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
    p.add_argument("--models", nargs="+", default=MODELS,
                   help="model names or the bench's groups (edgevits, peers, peers-xxs ...); default: "
                        + " ".join(MODELS))
    p.add_argument("--forms", nargs="+", default=["eager"], choices=list(FORMS))
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5, help="timed steps per model x form (interleaved rounds)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--profile", nargs="*", default=[], metavar="MODEL",
                   help="also profile one eager step of each (where the time goes, by operator kind)")
    p.add_argument("--teacher", default=None, metavar="MODEL",
                   help="also time each model's distilled step with this timm teacher (DeiT's hard distillation), "
                        "and the teacher's share of it")
    p.add_argument("--no-pipeline", action="store_true", help="skip the input pipeline's rate")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("train_throughput: --device cuda but CUDA is not available")
    models = expand_models(args.models)
    skipped = {f: why for f in args.forms if (why := form_lacks(f, device))}
    forms = [f for f in args.forms if f not in skipped]
    plan = [(m, f, None) for f in forms for m in models]
    if args.teacher:
        plan += [(m, "eager", args.teacher) for m in models]
    bar = tqdm(total=len(plan), desc="build + warm up", unit="model", file=sys.stderr)
    trainees = []
    for m, f, teacher in plan:
        bar.set_postfix_str(f"{m} {f}" + (f" + teacher {teacher}" if teacher else ""))
        d = teacher_distiller(teacher, device, FORMS[f][0]) if teacher else None
        t = trainee(m, f, args.batch, device, d, args.warmup)
        if teacher:
            t.name = f"{m} + teacher {teacher}"
        trainees.append(t)
        bar.update(1)
    bar.close()
    bar = tqdm(total=len(trainees) * args.rounds, desc="interleaved rounds", unit="step", file=sys.stderr)
    steps = time_phases(trainees, args.rounds, progress=bar)
    bar.close()
    rows = [summarize(t, s, args.batch) for t, s in zip(trainees, steps)]
    for t, row in zip(trainees, rows):
        if t.distiller is not None:  # the teacher's forward alone on the same batch, against the distilled step
            row["teacher_ms"] = teacher_ms(t.distiller, args.batch, device, t.amp, False, args.rounds)
            row["teacher_share"] = row["teacher_ms"] / row["step_ms"]
            plain = next(r for r in rows if r["model"] == t.name.split(" + ")[0] and r["form"] == "eager")
            row["overhead_vs_plain"] = row["step_ms"] / plain["step_ms"]
    profiles = [profile_step(trainee(m, "eager", args.batch, device, warmup=1)) for m in expand_models(args.profile)]
    pipe = None if args.no_pipeline else pipeline_rate()
    flags = " ".join(cpu_flags())
    print(f"training step (AdamW, 224 px, label smoothing 0.1, EMA; synthetic batch), {args.device} "
          f"({cpu_name()}; {flags}), batch {args.batch}, {args.threads} threads, {args.rounds} interleaved rounds "
          "(medians):")
    print("| model | form | forward ms | backward ms | optimizer+EMA ms | step ms [95% CI] | img/s | GMACs/img | "
          "fwd GMAC/s | fwd+bwd GMAC/s |" + (" workers to feed it |" if pipe else ""))
    print("|---|---|---|---|---|---|---|---|---|---|" + ("---|" if pipe else ""))
    for r in rows:
        print(f"| {r['model']} | {r['form']} | {r['forward_ms']:.0f} | {r['backward_ms']:.0f} | "
              f"{r['optimizer_ms']:.0f} | {r['step_ms']:.0f} [{r['step_ci_ms'][0]:.0f}, {r['step_ci_ms'][1]:.0f}] | "
              f"{r['images_per_s']:.1f} | {r['gmacs']:.3f} | {r['forward_gmac_per_s']:.1f} | "
              f"{r['fwd_bwd_gmac_per_s']:.1f} |"
              + (f" {r['images_per_s'] / pipe['images_per_s']:.2f} |" if pipe else "")
              + (f" compiled in {r['compile_s']:.0f} s" if r["compile_s"] else "")
              + (f" ({r['overhead_vs_plain']:.2f}x the plain step; teacher {r['teacher_share']:.0%} of it)"
                 if "teacher_share" in r else ""))
    for f, why in skipped.items():
        print(f"form {f}: not run ({why})")
    for prof in profiles:
        print(f"\nwhere {prof['model']}'s eager step goes (torch.profiler, self CPU time, {prof['total_ms']:.0f} ms):")
        print("  " + ", ".join(f"{k} {v['share']:.0%}" for k, v in prof["kinds"].items()))
        for o in prof["top_ops"][:8]:
            print(f"  {o['self_ms']:8.1f} ms  x{o['calls']:<4} {o['op']} {o['shapes']}")
        print("  its largest matrix products, GMAC/s in the step and alone (torch.mm at that shape):")
        for g in prof["gemms"]:
            print(f"  {'x'.join(map(str, g['mkn'])):>18} (M x K x N) x{g['calls']:<3} {g['ms']:7.1f} ms  "
                  f"{g['gmac_per_s']:6.1f} in the step, {g['alone_gmac_per_s']:6.1f} alone")
    if pipe:
        print(f"input pipeline, one worker: {pipe['images_per_s']:.1f} img/s (decode {pipe['decode_ms']:.1f} ms, "
              f"transform {pipe['transform_ms']:.1f} ms, mixup/cutmix {pipe['mixup_ms_per_image']:.2f} ms per image)")
    if args.json:
        doc = {"args": vars(args), "cpu": cpu_name(), "cpu_flags": cpu_flags(), "torch": torch.__version__,
               "steps": rows, "skipped_forms": skipped, "profiles": profiles, "pipeline": pipe}
        write_text_atomic(args.json, json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
