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
  file's; the same runtime x precision file exported at the checkpoint's own 64 px, since the digits XXS
  classifies only there (the 224 file's SQNR against PyTorch fp32 on val images is reported beside).
A cell this machine cannot make (a package missing, bf16 on a CPU without it) is listed and not judged; a cell
that fails to build is a miss. Exit status 1 on any miss, 2 on bad input. The CPU and the ISA flags int8/bf16
speed depends on go into the header and the JSON: the same rule on a CPU without VNNI judges what that CPU gives
MobileNetV2.
`--forms` adds, per runtime in FORMS (ONNX Runtime, LiteRT, ExecuTorch), an interleaved run of int8 variants of the XXS
(activation type, reduce_range, which ops are quantized, short-reduction convs left float, GELU as a table), each as its
speed-up over the XXS fp32 file in that run, with its agreement with PyTorch fp32.
"""
from __future__ import annotations

import argparse
import dataclasses
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
from edgevit.deploy import runtimes
from edgevit.deploy.export import export_model, load_exported
from edgevit.deploy.runtimes import calibrated, reduced_precisions
from edgevit.deploy.runtimes.base import int8
from edgevit.deploy.runtimes.executorch import quantize_pt2e, save_pte_int8
from edgevit.deploy.runtimes.onnxruntime import save_onnx_int8
from edgevit.errors import UserError
from edgevit.utils.writes import write_text_atomic

MODEL = "edgevit_xxs"
MIN_RATIO = 0.9  # XXS's speed-up / MobileNetV2's speed-up, each over its own fp32 file
MAX_DROP = 0.5  # top-1 points the reduced-precision file may lose against the fp32 file
# int8 variants of the XXS tried against each runtime's default flow, as writers (model, x, path, images)
FORMS = {
    "onnxruntime": {
        "s8 activations": lambda m, x, p, im: save_onnx_int8(m, x, p, im, activation_type="QInt8"),
        "no reduce_range": lambda m, x, p, im: save_onnx_int8(m, x, p, im, reduce_range=False),
        "GEMMs only (Conv/MatMul/Gemm)": lambda m, x, p, im: save_onnx_int8(m, x, p, im,
                                                                            op_types=["Conv", "MatMul", "Gemm"]),
        # (the reduction lengths where int8 GEMMs lose to fp32 without VNNI: docs/deploy.md, "int8")
        "convs with K < 144 float": lambda m, x, p, im: save_onnx_int8(m, x, p, im, float_below_k=144),
        "convs with K < 64 float": lambda m, x, p, im: save_onnx_int8(m, x, p, im, float_below_k=64),
        # (the same file to the bit: onnxruntime.gelu_tables)
        "GELU as a 256-entry table": lambda m, x, p, im: save_onnx_int8(m, x, p, im, gelu_table=True)},
    # (LiteRT's int8 convolutions-only form is a precision of its own, int8-conv: the matrix judges it)
    # (its default leaves the convs with K < 32, the depthwise ones, float: executorch.PTQ_FLOAT_BELOW_K)
    "executorch": {
        "every conv int8": lambda m, x, p, im: save_pte_int8(quantize_pt2e(m, x, im), x, p),
        "convs with K < 64 float": lambda m, x, p, im: save_pte_int8(quantize_pt2e(m, x, im, 64), x, p),
        "convs with K < 144 float": lambda m, x, p, im: save_pte_int8(quantize_pt2e(m, x, im, 144), x, p)},
}


def file_top1(doc: dict, checkpoint: str, val: str, calib: str, threads: int) -> None:
    """Each XXS row of the matrix gets `top1`: the top-1 on `val` of the same runtime x precision file exported
    at the size the checkpoint was trained at (the matrix times at 224; the digits XXS only classifies at its
    own 64 px), run in its runtime."""
    from tqdm import tqdm

    from edgevit.models.checkpoint import read_state_dict
    from edgevit.train.evaluate import evaluate_exported

    size = int(read_state_dict(checkpoint)["config"]["img_size"])
    rows = [r for r in doc["results"] if r["model"] == MODEL]
    for r in tqdm(rows, desc=f"top-1 of each XXS file at {size} px", unit="file", file=sys.stderr):
        runner = build_runner(MODEL, r["runtime"], img_size=size, threads=threads, checkpoint=checkpoint,
                              precision=r["precision"], calib=calib, calib_images=64)
        r["top1"] = evaluate_exported(val, runner.path, checkpoint=checkpoint, workers=0, threads=threads,
                                      progress=False)["top1"]
        r["top1_img_size"] = size


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
        x, x32 = rows[(rt, p, MODEL)], rows[(rt, "fp32", MODEL)]
        # an int8 form is judged against the CNN's best int8 file in that runtime, not only its own form of it
        peers = [q for (r_, q, m) in rows if r_ == rt and m == BASELINE and calibrated(q)] if calibrated(p) else [p]
        best = max(peers, key=lambda q: rows[(rt, q, BASELINE)]["speedup_vs_fp32"])
        b = rows[(rt, best, BASELINE)]
        v = {"runtime": rt, "precision": p, "speedup_xxs": x["speedup_vs_fp32"], "speedup_mnv2": b["speedup_vs_fp32"],
             "mnv2_precision": best, "sqnr_db": x["sqnr_db"],
             "top1_agreement": x["top1_agreement"], "top1_fp32": x32.get("top1"), "top1": x.get("top1"),
             "top1_img_size": x.get("top1_img_size")}
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
    sizes = sorted({v["top1_img_size"] for v in verdicts if v.get("top1_img_size")})
    lines = [f"Target: XXS speed-up >= {min_ratio} x MobileNetV2's (each over its own fp32 file, one run), XXS "
             f"top-1 within {max_drop} points of its fp32 file"
             + (f" (top-1 of the files exported at {', '.join(map(str, sizes))} px)." if sizes else "."), "",
             "| runtime | precision | XXS speed-up | MNv2 speed-up (int8: its best file) | ratio "
             "| XXS top-1 fp32 -> file | SQNR dB | |", "|---|---|---|---|---|---|---|---|"]
    for v in verdicts:
        if "speedup_xxs" not in v:
            lines.append(f"| {v['runtime']} | {v['precision']} | – | – | – | – | – | miss: {v['why']} |")
            continue
        mnv2 = f"{v['speedup_mnv2']:.2f}" + (f" ({v['mnv2_precision']})" if v["mnv2_precision"] != v["precision"]
                                             else "")
        top1 = f"{v['top1_fp32']:.2f} -> {v['top1']:.2f}" if v.get("top1") is not None else "–"
        what = "met" if v["met"] else "miss: " + ", ".join(
            [w for w, ok in (("speed", v["speed_met"]), ("accuracy", v["accuracy_met"])) if not ok])
        lines.append(f"| {v['runtime']} | {v['precision']} | {v['speedup_xxs']:.2f} | {mnv2} | "
                     f"{v['gain_ratio']:.2f} | {top1} | {v['sqnr_db']:.1f} | {what} |")
    return "\n".join(lines)


def int8_forms(runtime: str, checkpoint: str, calib: str, val: str, runs: int, threads: int) -> Dict[str, dict]:
    """One interleaved run of the XXS fp32 file, its default int8 file and the FORMS variants in `runtime`, with
    MobileNetV2's fp32 and int8 files: each XXS int8 file's speed-up over the XXS fp32 one, that over MobileNetV2's
    int8 speed-up in the same rounds (`gain_ratio`, the target's), and its agreement with PyTorch fp32 on 32 val
    images."""
    rt = runtimes.get(runtime)
    runners = {p: build_runner(MODEL, runtime, img_size=224, threads=threads, checkpoint=checkpoint, precision=p,
                               calib=calib, calib_images=64) for p in ("fp32", "int8")}
    for p in ("fp32", "int8"):
        runners[f"{BASELINE} {p}"] = build_runner(BASELINE, runtime, img_size=224, threads=threads, precision=p,
                                                  calib=calib, calib_images=64)
    net = runners["fp32"].model
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    images = q.model_calibration(net, calib, 64, 224)
    check = q.model_calibration(net, val, 32, 224)
    with torch.no_grad():
        ref = net(check)
    files = {"int8": runners["int8"].run_file}
    # each form a calibrated precision of a variant of the runtime's record: written by the package's checked writer
    variant = dataclasses.replace(rt, writers={**rt.writers, **{name: int8(write, name) for name, write in
                                                                FORMS.get(runtime, {}).items()}})
    with tempfile.TemporaryDirectory() as tmp:
        for name in FORMS.get(runtime, {}):
            print(f"building {MODEL} int8 [{name}] ({runtime})", file=sys.stderr)
            path = Path(tmp) / f"{len(files)}{rt.suffix}"
            export_model(net, variant, path, img_size=224, threads=threads, precision=name, images=images,
                         check_x=check, checked_on=f"32 images of {val}", trained=True)
            files[name] = load_exported(path, threads).run
            runners[name] = (lambda run=files[name]: run(x.numpy()))
        med = {k: statistics.median(t) for k, t in zip(runners, time_runners(list(runners.values()), runs, 5))}
        cnn = med[f"{BASELINE} fp32"] / med[f"{BASELINE} int8"]
        out = {}
        for k, run in files.items():
            got = torch.cat([torch.from_numpy(run(check[i:i + 1].numpy())[0]).float() for i in range(len(check))])
            out[k] = {"speedup_vs_fp32": med["fp32"] / med[k], "speedup_mnv2": cnn,
                      "gain_ratio": med["fp32"] / med[k] / cnn, **q.agreement(ref, got)}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="out/demo/digits_run/best.pth", help="the digits XXS (make demo)")
    p.add_argument("--data", default="out/demo/digits", help="the digits data (make demo): train/ and val/")
    p.add_argument("--runtimes", nargs="+", default=["all"], help="runtimes (default: every one installed)")
    p.add_argument("--precisions", nargs="+", default=list(reduced_precisions()), choices=reduced_precisions(),
                   help="reduced precisions to judge (each against fp32, which is always measured; default all)")
    p.add_argument("--runs", type=positive, default=30, help="interleaved timing rounds per runtime")
    p.add_argument("--threads", type=positive, default=2)
    p.add_argument("--forms", action="store_true", help="also time int8 variants of the XXS (runtimes in FORMS)")
    p.add_argument("--json", default=None, help="also write the matrix and the verdicts to this file")
    args = p.parse_args()
    for path in (args.checkpoint, Path(args.data) / "train", Path(args.data) / "val"):
        if not Path(path).exists():
            p.error(f"{path}: missing; run `make demo` first (it trains the digits XXS)")
    if args.json and not Path(args.json).resolve().parent.is_dir():  # (before the half hour of work it would lose)
        p.error(f"--json {args.json}: its folder does not exist")
    torch.set_num_threads(args.threads)
    calib = str(Path(args.data) / "train")
    val = str(Path(args.data) / "val")
    doc = run_matrix((MODEL, BASELINE), args.runtimes, ["fp32", *args.precisions], checkpoint=args.checkpoint,
                     data=val, calib=calib, calib_images=64, runs=args.runs, threads=args.threads, img_size=224,
                     top1=False)
    file_top1(doc, args.checkpoint, val, calib, args.threads)
    verdicts = standing(doc)
    print(format_matrix(doc), "", format_standing(verdicts), sep="\n")
    out = {"meta": doc["meta"], "min_ratio": MIN_RATIO, "max_top1_drop": MAX_DROP, "verdicts": verdicts,
           "matrix": doc}
    if args.forms:
        out["int8_forms"] = {}
        for rt in [r for r in FORMS if "all" in args.runtimes or r in args.runtimes]:
            forms = out["int8_forms"][rt] = int8_forms(rt, args.checkpoint, calib, val,
                                                       args.runs, args.threads)
            print(f"\n{rt}: int8 forms of the XXS (speed-up over its fp32 file and over MobileNetV2's int8 gain "
                  f"({next(iter(forms.values()))['speedup_mnv2']:.2f}x) in one interleaved run; agreement with "
                  "PyTorch fp32 on 32 val images):")
            for k, v in forms.items():
                print(f"  {k:<32} {v['speedup_vs_fp32']:.2f}x  ratio {v['gain_ratio']:.2f}  SQNR {v['sqnr_db']:.1f} "
                      f"dB, top-1 agreement {v['top1_agreement']:.1f}%")
    if args.json:
        write_text_atomic(args.json, json.dumps(out, indent=2) + "\n")
    missed = [f"{v['runtime']} {v['precision']}" for v in verdicts if not v["met"]]
    if not verdicts:
        print("no reduced-precision cell could be judged on this machine", file=sys.stderr)
        return 1
    print(f"\n{len(verdicts) - len(missed)} of {len(verdicts)} met" + (f"; missed: {', '.join(missed)}" if missed
                                                                     else ""))
    return 1 if missed else 0


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as e:  # (exit 2: a miss of the targets is exit 1)
        print(f"quant_targets: {e}", file=sys.stderr)
        sys.exit(2)
