"""What the phone's instruction set does to each file the package ships: every runtime (with an aarch64 wheel) x
precision, written by `edgevit export` and run by `edgevit check --arch aarch64` (the emulated lane, `make
arm-lane`), under the package's settings and under the runtime's own defaults, against PyTorch fp32 and against
the same file on x86. Accuracy only: emulated times say nothing about a phone.

    .venv/bin/python benchmarks/aarch64_accuracy.py --checkpoint REF.safetensors --img-size 128 --images 2
    .venv/bin/python benchmarks/aarch64_accuracy.py --checkpoint run/best.pth --data digits/val --calib digits/train

Prints one row per file: SQNR (dB) against PyTorch on x86, on aarch64 with the package's settings, on aarch64 with
the runtime's defaults, and the top-1 agreement of the last, then the x86 CPU (model and flags) and the emulated
CPU's features; `--json` writes every number with them.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
from pathlib import Path

from tqdm import tqdm

from edgevit.bench.bench import cpu_flags, cpu_name
from edgevit.cli.main import main
from edgevit.deploy import runtimes

# every runtime the lane runs, with the precisions it writes
FILES = [(rt.format, p) for rt in (runtimes.get(n) for n in runtimes.names())
         if rt.worker is not None for p in rt.precisions]


def _run(argv):
    """(exit code, stdout, the last line of stderr) of an edgevit command."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), (err.getvalue().strip().splitlines() or [""])[-1]


def main_(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--model", default=None, help="for a checkpoint that does not name it (the authors')")
    ap.add_argument("--img-size", default=None, help="export size (default: the checkpoint's)")
    ap.add_argument("--data", default=None, help="labelled images for the check (else random images)")
    ap.add_argument("--calib", default=None, help="calibration images for int8 files (else int8 is skipped)")
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--cpu", default="max")
    ap.add_argument("--only", nargs="*", default=None, help="FORMAT:PRECISION pairs to run (default: all)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    rows = []
    todo = [(f, p) for f, p in FILES if args.only is None or f"{f}:{p}" in args.only]
    with tempfile.TemporaryDirectory(prefix="edgevit-aarch64-acc-") as tmp:
        for fmt, precision in tqdm(todo, desc="files"):
            rt = runtimes.by_format(fmt)
            out = Path(tmp) / f"{fmt}_{precision}{rt.suffix}"
            calibrated = rt.writer(precision).calibrated
            if calibrated and not args.calib:
                rows.append({"format": fmt, "precision": precision, "skipped": "no --calib images"})
                continue
            export = ["export", "--checkpoint", args.checkpoint, "--format", fmt, "-o", str(out), "--json"]
            export += ["--img-size", args.img_size] if args.img_size else []
            export += ["--model", args.model] if args.model else []
            export += ["--quantize", precision] if precision != "fp32" else []
            export += ["--calib", args.calib, "--calib-images", "64"] if calibrated else []
            rc, text, why = _run(export)
            if rc != 0:
                rows.append({"format": fmt, "precision": precision, "skipped": why})
                continue
            check = ["check", str(out), "--arch", "aarch64", "--cpu", args.cpu, "--checkpoint", args.checkpoint,
                     "--images", str(args.images), "--json"] + (["--data", args.data] if args.data else [])
            rc, text, why = _run(check)
            if rc != 0:
                rows.append({"format": fmt, "precision": precision, "skipped": why})
                continue
            rows.append({"format": fmt, "precision": precision, **json.loads(text)})
    print(f"{'file':<18} {'x86':>8} {'arm pkg':>8} {'arm dflt':>8} {'top-1 agr':>9}  (SQNR vs PyTorch, dB)")
    for r in rows:
        name = f"{r['format']} {r['precision']}"
        if "skipped" in r:
            print(f"{name:<18} skipped: {r['skipped']}")
            continue
        pkg, dflt = r["aarch64"]["package"]["vs_pytorch"], r["aarch64"]["runtime"]["vs_pytorch"]
        print(f"{name:<18} {r['x86_vs_pytorch']['sqnr_db']:8.1f} {pkg['sqnr_db']:8.1f} {dflt['sqnr_db']:8.1f} "
              f"{dflt['top1_agreement']:8.0f}%")
    # the x86 side's CPU (its numbers depend on it) and what the emulated one offered
    host = {"cpu": cpu_name(), "cpu_flags": cpu_flags(), "aarch64_cpu": args.cpu,
            "aarch64_features": next((r["cpu_features"] for r in rows if "cpu_features" in r), [])}
    print(f"x86: {host['cpu']} ({' '.join(host['cpu_flags'])}); aarch64: qemu -cpu {args.cpu} "
          f"({', '.join(host['aarch64_features'])})")
    if args.json:
        Path(args.json).write_text(json.dumps({**host, "files": rows}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main_())
