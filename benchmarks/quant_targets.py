"""Does EdgeViT-XXS keep its standing against MobileNetV2 in reduced precision? The targets of the
reduced-precision work (docs/deploy.md, "EdgeViT's standing in reduced precision"), checked on this machine.

    make demo     # once: the digits data and the XXS its recipe trains (out/demo/...)
    .venv/bin/python benchmarks/quant_targets.py [--runtimes all] [--precisions int8 fp16 bf16] [--runs 30]
        [--forms] [--json out.json]

For every runtime x reduced precision this machine can make (`edgevit.bench.matrix.run_matrix`: the fused XXS
with the digits weights and MobileNetV2, each exported through the runtime's own flow at 224 x 224, int8
calibrated on 64 digits train images, every file of a runtime timed in the same interleaved rounds):
- speed: XXS's speed-up over its own fp32 file >= 0.9 x MobileNetV2's speed-up over its fp32 file;
- accuracy: the XXS file's top-1 on the digits val split, run in its runtime, within 0.5 points of the fp32
  file's (its SQNR against PyTorch fp32 is reported beside).
A cell this machine cannot make (a package missing, bf16 on a CPU without it) is listed and not judged; a cell
that fails to build is a miss. Exit status 1 on any miss. The CPU and the ISA flags int8/bf16 speed depends on
go into the header and the JSON: the same rule on a CPU without VNNI judges what that CPU gives MobileNetV2.
`--forms` adds a second interleaved run of ONNX Runtime int8 variants of the XXS (activation type,
reduce_range, which ops are quantized), each as its speed-up over the XXS fp32 file in that run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

import torch

from edgevit.bench.bench import time_runners
from edgevit.bench.matrix import BASELINE, format_matrix, run_matrix
from edgevit.bench.runners import build_runner
from edgevit.deploy import quantize as q
from edgevit.deploy.runtimes.onnxruntime import onnx_session, save_onnx_int8
from edgevit.errors import UserError
from edgevit.utils.io import write_text_atomic

MODEL = "edgevit_xxs"
MIN_RATIO = 0.9  # XXS's speed-up / MobileNetV2's speed-up, each over its own fp32 file
MAX_DROP = 0.5  # top-1 points the reduced-precision file may lose against the fp32 file
# ONNX Runtime variants of the int8 XXS tried against the default (deploy.runtimes.onnxruntime.ORT_INT8)
ORT_FORMS = {"s8 activations": dict(activation_type="QInt8"), "no reduce_range": dict(reduce_range=False),
             "GEMMs only (Conv/MatMul/Gemm)": dict(op_types=["Conv", "MatMul", "Gemm"]),
             # (the reduction lengths where XNNPACK's and ORT's int8 GEMMs lose to fp32 without VNNI: docs/deploy.md)
             "convs with K < 144 float": dict(float_below_k=144), "convs with K < 64 float": dict(float_below_k=64)}


def standing(doc: dict, min_ratio: float = MIN_RATIO, max_drop: float = MAX_DROP) -> List[dict]:
    """One verdict per runtime x reduced precision of a matrix document (`run_matrix` with MODEL and BASELINE):
    the two speed-ups and their ratio, the XXS file's top-1 against its fp32 file's, SQNR, `met`; a cell whose
    files could not be made is `met: False` with why; a cell the machine cannot make is absent (doc["skipped"]
    without a model says why)."""
    rows = {(r["runtime"], r["precision"], r["model"]): r for r in doc["results"]}
    failed = {(s["runtime"], s["precision"]): s["why"] for s in doc["skipped"] if s.get("model")}
    cells = dict.fromkeys([(r["runtime"], r["precision"]) for r in doc["results"] if r["precision"] != "fp32"]
                          + [c for c in failed if c[1] != "fp32"])
    out = []
    for rt, p in cells:
        need = [(rt, p, MODEL), (rt, p, BASELINE), (rt, "fp32", MODEL), (rt, "fp32", BASELINE)]
        if any(k not in rows for k in need):
            why = failed.get((rt, p)) or failed.get((rt, "fp32")) or "a file of this cell was not made"
            out.append({"runtime": rt, "precision": p, "met": False, "why": why})
            continue
        x, b, x32 = rows[(rt, p, MODEL)], rows[(rt, p, BASELINE)], rows[(rt, "fp32", MODEL)]
        v = {"runtime": rt, "precision": p, "speedup_xxs": x["speedup_vs_fp32"], "speedup_mnv2": b["speedup_vs_fp32"],
             "xxs_over_mnv2": x["ratio_to_baseline"], "sqnr_db": x["sqnr_db"],
             "top1_agreement": x["top1_agreement"], "top1_fp32": x32.get("top1"), "top1": x.get("top1")}
        v["gain_ratio"] = v["speedup_xxs"] / v["speedup_mnv2"]
        v["speed_met"] = v["gain_ratio"] >= min_ratio
        if v["top1"] is None or v["top1_fp32"] is None:
            v["accuracy_met"], v["why"] = False, "no top-1 (the matrix ran without a checkpoint and val data)"
        else:
            v["top1_drop"] = v["top1_fp32"] - v["top1"]
            v["accuracy_met"] = v["top1_drop"] <= max_drop
        v["met"] = v["speed_met"] and v["accuracy_met"]
        out.append(v)
    return out


def format_standing(verdicts: List[dict], min_ratio: float = MIN_RATIO, max_drop: float = MAX_DROP) -> str:
    lines = [f"Target: XXS speed-up >= {min_ratio} x MobileNetV2's (each over its own fp32 file, one run), XXS "
             f"top-1 within {max_drop} points of its fp32 file.", "",
             "| runtime | precision | XXS speed-up | MNv2 speed-up | ratio | XXS top-1 fp32 -> file | SQNR dB | |",
             "|---|---|---|---|---|---|---|---|"]
    for v in verdicts:
        if "speedup_xxs" not in v:
            lines.append(f"| {v['runtime']} | {v['precision']} | – | – | – | – | – | miss: {v['why']} |")
            continue
        top1 = f"{v['top1_fp32']:.2f} -> {v['top1']:.2f}" if v.get("top1") is not None else "–"
        what = "met" if v["met"] else "miss: " + ", ".join(
            [w for w, ok in (("speed", v["speed_met"]), ("accuracy", v["accuracy_met"])) if not ok])
        lines.append(f"| {v['runtime']} | {v['precision']} | {v['speedup_xxs']:.2f} | {v['speedup_mnv2']:.2f} | "
                     f"{v['gain_ratio']:.2f} | {top1} | {v['sqnr_db']:.1f} | {what} |")
    return "\n".join(lines)


def ort_forms(checkpoint: str, calib: str, runs: int, threads: int) -> Dict[str, float]:
    """One interleaved run of the XXS fp32 file, its default int8 file and the ORT_FORMS variants: each int8
    file's speed-up over the fp32 one."""
    runners = {p: build_runner(MODEL, "onnxruntime", img_size=224, threads=threads, checkpoint=checkpoint,
                               precision=p, calib=calib, calib_images=64) for p in ("fp32", "int8")}
    net = runners["fp32"].model
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    images = q.calibration_images(calib, 64, 224, 1.0)
    with tempfile.TemporaryDirectory() as tmp:
        for name, opts in ORT_FORMS.items():
            print(f"building {MODEL} int8 [{name}]", file=sys.stderr)
            path = Path(tmp) / f"{len(runners)}.onnx"
            save_onnx_int8(net, x, path, images, **opts)
            sess = onnx_session(path, threads)
            feed = {sess.get_inputs()[0].name: x.numpy()}
            runners[name] = (lambda s=sess, f=feed: s.run(None, f))
        med = {k: statistics.median(t) for k, t in zip(runners, time_runners(list(runners.values()), runs, 5))}
    return {k: med["fp32"] / v for k, v in med.items() if k != "fp32"}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="out/demo/digits_run/best.pth", help="the digits XXS (make demo)")
    p.add_argument("--data", default="out/demo/digits", help="the digits data (make demo): train/ and val/")
    p.add_argument("--runtimes", nargs="+", default=["all"], help="runtimes (default: every one installed)")
    p.add_argument("--precisions", nargs="+", default=["int8", "fp16", "bf16"],
                   help="reduced precisions to judge (each against fp32, which is always measured)")
    p.add_argument("--runs", type=int, default=30, help="interleaved timing rounds per runtime")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--forms", action="store_true", help="also time ONNX Runtime variants of the int8 XXS")
    p.add_argument("--json", default=None, help="also write the matrix and the verdicts to this file")
    args = p.parse_args()
    for path in (args.checkpoint, Path(args.data) / "train", Path(args.data) / "val"):
        if not Path(path).exists():
            raise SystemExit(f"{path}: missing; run `make demo` first (it trains the digits XXS)")
    torch.set_num_threads(args.threads)
    calib = str(Path(args.data) / "train")
    doc = run_matrix((MODEL, BASELINE), args.runtimes, ["fp32", *args.precisions], checkpoint=args.checkpoint,
                     data=str(Path(args.data) / "val"), calib=calib, calib_images=64, runs=args.runs,
                     threads=args.threads, img_size=224)
    verdicts = standing(doc)
    print(format_matrix(doc), "", format_standing(verdicts), sep="\n")
    out = {"meta": doc["meta"], "min_ratio": MIN_RATIO, "max_top1_drop": MAX_DROP, "verdicts": verdicts,
           "matrix": doc}
    if args.forms:
        out["ort_int8_forms_speedup"] = forms = ort_forms(args.checkpoint, calib, args.runs, args.threads)
        print("\nONNX Runtime int8 forms of the XXS (speed-up over its fp32 file, one interleaved run):")
        for k, v in forms.items():
            print(f"  {k:<32} {v:.2f}x")
    if args.json:
        write_text_atomic(args.json, json.dumps(out, indent=2) + "\n")
    missed = [f"{v['runtime']} {v['precision']}" for v in verdicts if not v["met"]]
    if not verdicts:
        print("no reduced-precision cell could be judged on this machine", file=sys.stderr)
        return 1
    print(f"\n{len(verdicts) - len(missed)} of {len(verdicts)} met" + (f"; missed: {', '.join(missed)}" if missed
                                                                     else ""))
    return 1 if missed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as e:
        raise SystemExit(f"quant_targets: {e}")
