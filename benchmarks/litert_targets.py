"""EdgeViT under LiteRT (ai-edge-litert's interpreter, its default XNNPACK CPU delegate): the fused LiteRT form
against the release graph converted as it is, and against MobileNetV2 — ratios taken in one interleaved run,
the targets of the LiteRT work (docs/deploy.md, "LiteRT").

    .venv/bin/python benchmarks/litert_targets.py [--models edgevit_xxs ...] [--runs 40] [--forms] [--json F]

Each model is converted by the same code as `edgevit export --format tflite` (litert-torch), at 224 x 224,
batch 1, fp32, 2 threads, and timed in shuffled rounds (`edgevit.bench.bench.time_runners`). `--forms` adds
the fused XXS in every alternative exact form of each part (edgevit.models.fused: LayerNorm, LocalProp,
sampler, patch embedding, q/k/v) to the same rounds, one part changed at a time from the LiteRT form, with
each file's op counts (how many TRANSPOSE ops LiteRT runs).
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
from edgevit.deploy import forms_for, fuse
from edgevit.deploy.export import export_model, load_exported
from edgevit.deploy.runtimes import first_output
from edgevit.models.checkpoint import create_model
from edgevit.models.fused import FORM_CHOICES
from edgevit.utils.writes import write_text_atomic


def form_runners(threads: int, tmp: Path) -> dict:
    """The fused XXS with one part in each other form than the LiteRT backend's: name -> (run, op report)."""
    base = forms_for("litert")
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    out = {}
    for part, impls in FORM_CHOICES.items():
        for impl in impls:
            if impl == getattr(base, part):
                continue
            net = fuse(create_model("edgevit_xxs"), base.replace(**{part: impl}))
            print(f"converting edgevit_xxs (fused, {part}={impl})", file=sys.stderr)
            path = tmp / f"{part}_{impl}.tflite"
            report = export_model(net, "tflite", path, img_size=224, threads=threads)  # (the checked writer)
            run = first_output(load_exported(path, threads).run)
            out[f"edgevit_xxs (fused, {part}={impl})"] = ((lambda r=run: r(x)), report)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["edgevit_xxs"], help="EdgeViT variants (default edgevit_xxs)")
    p.add_argument("--runs", type=int, default=40)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--forms", action="store_true", help="also every alternative form of the fused XXS")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)

    runners, reports = {}, {}
    for model in args.models:
        for fused in (False, True):
            label = f"{model} ({'fused' if fused else 'release'})"
            print(f"converting {label}", file=sys.stderr)
            r = build_runner(model, "litert", img_size=224, threads=args.threads, fused=fused)
            runners[label], reports[label] = r, r.info
    print("converting mobilenetv2_100", file=sys.stderr)
    r = build_runner("mobilenetv2_100", "litert", img_size=224, threads=args.threads)
    runners["mobilenetv2_100"], reports["mobilenetv2_100"] = r, r.info
    tmp = tempfile.TemporaryDirectory()
    if args.forms:
        for label, (run, report) in form_runners(args.threads, Path(tmp.name)).items():
            runners[label], reports[label] = run, report
    times = time_runners(list(runners.values()), args.runs, 5)
    med = {k: statistics.median(t) for k, t in zip(runners, times)}
    mnv2 = med["mobilenetv2_100"]
    result = {"runs": args.runs, "threads": args.threads, "img_size": 224, "median_ms": med,
              "ops": {k: {"ops": v.get("ops"), "transposes": v.get("transposes")} for k, v in reports.items()},
              "fused_speedup": {m: med[f"{m} (release)"] / med[f"{m} (fused)"] for m in args.models},
              "over_mnv2": {k: v / mnv2 for k, v in med.items()}}
    if args.forms:
        result["forms_vs_litert_form"] = {k: med["edgevit_xxs (fused)"] / v for k, v in med.items() if "=" in k}
    print(f"{'model':44s} {'median ms':>10s} {'/ MNv2':>7s} {'ops':>6s} {'TRANSPOSE':>9s}")
    for k, v in med.items():
        o = result["ops"][k]
        print(f"{k:44s} {v:10.2f} {v / mnv2:7.2f} {o['ops'] or 0:6d} {o['transposes'] or 0:9d}")
    for m, s in result["fused_speedup"].items():
        print(f"{m}: fused {s:.2f}x faster than the release graph converted as it is (target >= 1.5)")
    if "edgevit_xxs (fused)" in med:
        print(f"edgevit_xxs (fused) / mobilenetv2_100 = {med['edgevit_xxs (fused)'] / mnv2:.2f} (target <= 2.0)")
    if args.json:
        write_text_atomic(args.json, json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
