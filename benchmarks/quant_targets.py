"""int8 EdgeViT against int8 MobileNetV2: speed ratios taken in one interleaved run, and the accuracy of
each int8 file run in its own runtime — the targets of the int8 work (docs/deploy.md, "int8").

    make demo     # once: the digits data and the XXS its recipe trains (out/demo/...)
    .venv/bin/python benchmarks/quant_targets.py [--runtimes onnxruntime executorch] [--runs 40]
        [--forms] [--qat RUN/best.pth] [--json out.json]

Speed, at 224 x 224 (the paper's size), batch 1, 2 threads: the fused XXS with the digits weights and
MobileNetV2 (timm, random weights: speed does not depend on them), each fp32 and int8 (the files `edgevit
export --quantize int8` writes, calibrated on 64 images of the digits train split), timed in the same
shuffled rounds (`edgevit.bench.bench.time_runners`). `--forms` adds ONNX Runtime variants of the int8
XXS (activation type, reduce_range, which ops are quantized) to the same rounds.
Accuracy, at the checkpoint's own size on the digits val split: top-1 of the float model, of the fp32 file
and of the int8 file (each run in its runtime), and the int8 file's top-1 agreement with the fp32 one;
`--qat` adds the int8 ExecuTorch file of a quantization-aware run (`edgevit train --qat`).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from edgevit.bench.bench import time_runners
from edgevit.bench.runners import build_runner
from edgevit.deploy import fuse, runtimes
from edgevit.deploy import quantize as q
from edgevit.deploy.export import export_model, load_file
from edgevit.deploy.runtimes.onnxruntime import onnx_session, save_onnx_int8
from edgevit.errors import UserError
from edgevit.models.checkpoint import model_from_checkpoint
from edgevit.utils.images import eval_transform
from edgevit.utils.io import write_text_atomic

# ONNX Runtime variants of the int8 XXS tried against the default (deploy.runtimes.onnxruntime.ORT_INT8)
ORT_FORMS = {"s8 activations": dict(activation_type="QInt8"), "no reduce_range": dict(reduce_range=False),
             "GEMMs only (Conv/MatMul/Gemm)": dict(op_types=["Conv", "MatMul", "Gemm"])}


def speed(args, runtime: str, calib: str) -> dict:
    """One interleaved run: fp32/int8 x XXS/MobileNetV2 (+ the ORT forms); medians and the ratios."""
    runners = {}
    for model, ck in (("edgevit_xxs", args.checkpoint), ("mobilenetv2_100", None)):
        for precision in ("fp32", "int8"):
            print(f"building {model} {precision} ({runtime})", file=sys.stderr)
            runners[f"{model} {precision}"] = build_runner(model, runtime, img_size=224, threads=args.threads,
                                                           checkpoint=ck, precision=precision, calib=calib,
                                                           calib_images=64)
    keep = []
    if args.forms and runtime == "onnxruntime":
        net = runners["edgevit_xxs fp32"].model
        x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
        images = q.calibration_images(calib, 64, 224, 1.0)
        tmp = tempfile.TemporaryDirectory()
        keep.append(tmp)
        for name, opts in ORT_FORMS.items():
            print(f"building edgevit_xxs int8 [{name}]", file=sys.stderr)
            path = Path(tmp.name) / f"{len(runners)}.onnx"
            save_onnx_int8(net, x, path, images, **opts)
            sess = onnx_session(path, args.threads)
            feed = {sess.get_inputs()[0].name: x.numpy()}
            runners[f"edgevit_xxs int8 [{name}]"] = (lambda s=sess, f=feed: s.run(None, f))
    times = time_runners(list(runners.values()), args.runs, 5)
    med = {k: statistics.median(t) for k, t in zip(runners, times)}
    out = {"median_ms": med,
           "int8_speedup_xxs": med["edgevit_xxs fp32"] / med["edgevit_xxs int8"],
           "int8_speedup_mnv2": med["mobilenetv2_100 fp32"] / med["mobilenetv2_100 int8"],
           "xxs_over_mnv2_fp32": med["edgevit_xxs fp32"] / med["mobilenetv2_100 fp32"],
           "xxs_over_mnv2_int8": med["edgevit_xxs int8"] / med["mobilenetv2_100 int8"],
           "partitions": {k: r.info.get("delegate_partitions") for k, r in runners.items()
                          if hasattr(r, "info") and "delegate_partitions" in r.info}}
    out["forms_speedup"] = {k: med["edgevit_xxs fp32"] / v for k, v in med.items() if "[" in k}
    return out


def accuracy(args, runtime: str, val, qat: bool = False) -> dict:
    """Top-1 on the val split of the float model, the fp32 file and the int8 file (own runtimes)."""
    fmt = runtimes.get(runtime).format
    model, meta = model_from_checkpoint(None, args.checkpoint)
    cfg = meta["config"]
    size = int(cfg["img_size"])
    X, Y = val
    fused = fuse(model, runtime)
    with torch.no_grad():
        ref = fused(X)
    images = q.calibration_images(Path(args.data) / "train", 256, size, float(cfg["crop_pct"]),
                                  cfg.get("eval_interpolation") or "bicubic")
    with tempfile.TemporaryDirectory() as tmp:
        f32, i8 = Path(tmp) / f"fp32.{fmt}", Path(tmp) / f"int8.{fmt}"
        export_model(fused, fmt, f32, img_size=size, threads=args.threads)
        rep = q.export_int8(fused, fmt, i8, images, threads=args.threads, calibrated="digits train")
        got32 = q.run_batch(load_file(fmt, f32, args.threads), X)
        got8 = q.run_batch(load_file(fmt, i8, args.threads), X)
        out = {"float_top1": top1(ref, Y), "fp32_file_top1": top1(got32, Y), "int8_file_top1": top1(got8, Y),
               "int8_vs_fp32": q.agreement(got32, got8), "partitions": rep.get("delegate_partitions")}
        if qat and runtime == "executorch" and args.qat:
            prepared, form, _ = q.load_qat_model(args.qat)
            qf = Path(tmp) / "qat.pte"
            q.export_int8(form, "pte", qf, images[:8], threads=args.threads, prepared=prepared)
            gotq = q.run_batch(load_file("pte", qf, args.threads), X)
            out.update(qat_int8_file_top1=top1(gotq, Y), qat_int8_vs_fp32=q.agreement(got32, gotq))
    return out


def top1(logits: torch.Tensor, y: torch.Tensor) -> float:
    return (logits.argmax(1) == y).double().mean().item() * 100


def load_val(args) -> tuple:
    from torchvision.datasets import ImageFolder

    from edgevit.utils.images import read_image

    _, meta = model_from_checkpoint(None, args.checkpoint)
    cfg = meta["config"]
    tf = eval_transform(int(cfg["img_size"]), float(cfg["crop_pct"]), cfg.get("eval_interpolation") or "bicubic")
    ds = ImageFolder(str(Path(args.data) / "val"), tf, loader=read_image)
    X = torch.stack([ds[i][0] for i in range(len(ds))])
    return X, torch.tensor(ds.targets)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="out/demo/digits_run/best.pth", help="the digits XXS (make demo)")
    p.add_argument("--data", default="out/demo/digits", help="the digits data (make demo): train/ and val/")
    p.add_argument("--runtimes", nargs="+", default=["onnxruntime", "executorch"],
                   choices=[r.name for r in runtimes.RUNTIMES.values() if r.int8])
    p.add_argument("--runs", type=int, default=40, help="interleaved timing rounds")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--forms", action="store_true", help="also time ONNX Runtime variants of the int8 XXS")
    p.add_argument("--qat", default=None, help="a QAT run's checkpoint (edgevit train --qat) to compare with PTQ")
    p.add_argument("--no-speed", action="store_true")
    p.add_argument("--no-accuracy", action="store_true")
    p.add_argument("--json", default=None, help="also write the results to this file")
    args = p.parse_args()
    for path in (args.checkpoint, Path(args.data) / "train", Path(args.data) / "val"):
        if not Path(path).exists():
            raise SystemExit(f"{path}: missing; run `make demo` first (it trains the digits XXS)")
    torch.set_num_threads(args.threads)
    calib = str(Path(args.data) / "train")
    doc = {"threads": args.threads, "runs": args.runs, "speed": {}, "accuracy": {}}
    val = load_val(args) if not args.no_accuracy else None
    for rt in args.runtimes:
        if not args.no_speed:
            s = doc["speed"][rt] = speed(args, rt, calib)
            print(f"\n{rt}, 224x224, batch 1, {args.threads} threads, {args.runs} interleaved rounds (median ms):")
            for k, v in s["median_ms"].items():
                print(f"  {k:<46} {v:7.2f}")
            print(f"  int8 speed-up: XXS {s['int8_speedup_xxs']:.2f}x, MobileNetV2 {s['int8_speedup_mnv2']:.2f}x")
            print(f"  XXS / MobileNetV2: fp32 {s['xxs_over_mnv2_fp32']:.2f}, int8 {s['xxs_over_mnv2_int8']:.2f}")
            for k, v in s["forms_speedup"].items():
                print(f"  {k}: {v:.2f}x fp32")
            if s["partitions"]:
                print(f"  XNNPACK partitions: {s['partitions']}")
        if not args.no_accuracy:
            a = doc["accuracy"][rt] = accuracy(args, rt, val, qat=True)
            print(f"{rt}, digits val ({len(val[1])} images): float {a['float_top1']:.2f}%, fp32 file "
                  f"{a['fp32_file_top1']:.2f}%, int8 file {a['int8_file_top1']:.2f}% (top-1 agreement with fp32 "
                  f"{a['int8_vs_fp32']['top1_agreement']:.2f}%, SQNR {a['int8_vs_fp32']['sqnr_db']:.1f} dB)"
                  + (f"; QAT int8 file {a['qat_int8_file_top1']:.2f}% (agreement "
                     f"{a['qat_int8_vs_fp32']['top1_agreement']:.2f}%)" if "qat_int8_file_top1" in a else ""))
    if args.json:
        write_text_atomic(args.json, json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as e:
        raise SystemExit(f"quant_targets: {e}")
