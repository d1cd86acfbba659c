"""Issue #3 performance targets, measured as ratios within one run (not a timed test).

    .venv/bin/python benchmarks/deploy_targets.py --runs 50 --threads 2 --json out/deploy_targets.json

Each runtime is measured in its own process. Within it, every session (EdgeViT XXS/XS/S fused and
unfused, MobileNetV2) is built and warmed up first, then the timed passes are interleaved round-robin, so
that load from other processes on a shared machine hits every model alike and the ratios stay meaningful
even when absolute times do not.

Targets (2 threads, batch 1, fp32, mean of the runs):
  executorch   fused XXS >= 1.5x faster than unfused, and <= 1.6x MobileNetV2's latency
  onnxruntime  fused XXS >= 1.15x faster than unfused, and <= 1.8x MobileNetV2's latency
  XS and S: fused faster than unfused in both runtimes.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from tqdm import tqdm

from edgevit.bench.bench import meta, time_runners
from edgevit.bench.runners import build_runner
from edgevit.utils.writes import write_json_atomic

TARGETS = {"executorch": (1.5, 1.6), "onnxruntime": (1.15, 1.8)}  # (min speed-up, max x MobileNetV2)
BASELINE = "mobilenetv2_100"


def measure(runtime: str, variants, runs: int, warmup: int, threads: int) -> dict:
    sessions = {}
    for v in variants:
        for fused in (True, False):
            r = build_runner(f"edgevit_{v}", runtime, threads=threads, fused=fused)
            sessions[r.label] = r
            print(f"[{runtime}] built {r.label} {r.info or ''}", file=sys.stderr, flush=True)
    sessions[BASELINE] = build_runner(BASELINE, runtime, threads=threads)
    with tqdm(total=runs * len(sessions), desc=f"{runtime} (interleaved)", file=sys.stderr) as bar:
        measured = time_runners(list(sessions.values()), runs, warmup, bar)  # `edgevit bench`'s timing loop
    times = dict(zip(sessions, measured))
    stats = {k: {"mean_ms": statistics.fmean(t), "std_ms": statistics.pstdev(t), "median_ms": statistics.median(t),
                 **({"partitions": sessions[k].info} if sessions[k].info else {})} for k, t in times.items()}
    return stats


def measure_in_subprocess(runtime: str, args) -> dict:
    """One runtime per process: a runtime's idle thread pool (XNNPACK's, torch's OpenMP) left over from an
    earlier runtime measurably slows the next one (ONNX Runtime after ExecuTorch: up to 1.3x, every model)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "stats.json"
        subprocess.run([sys.executable, __file__, "--runtimes", runtime, "--variants", *args.variants,
                        "--runs", str(args.runs), "--warmup", str(args.warmup), "--threads", str(args.threads),
                        "--json", str(path)], check=True, stdout=subprocess.DEVNULL)
        return json.loads(path.read_text())["stats"][runtime]


def verdict(runtime: str, variants, stats: dict) -> list:
    rows = []
    base = stats[BASELINE]
    for v in variants:
        f, u = stats[f"edgevit_{v} (fused)"], stats[f"edgevit_{v} (unfused)"]
        row = {"runtime": runtime, "variant": f"edgevit_{v}"}
        for key in ("mean_ms", "median_ms"):
            row[f"speedup_{key[:-3]}"] = u[key] / f[key]
            row[f"vs_mnv2_{key[:-3]}"] = f[key] / base[key]
        if v == "xxs" and runtime in TARGETS:
            lo, hi = TARGETS[runtime]
            row["target"] = f"speed-up >= {lo}, <= {hi}x MobileNetV2"
            row["met"] = row["speedup_mean"] >= lo and row["vs_mnv2_mean"] <= hi
        else:
            row["target"] = "fused faster than unfused"
            row["met"] = row["speedup_mean"] > 1.0
        rows.append(row)
    return rows


def missed_targets(verdicts: list) -> list:
    return [f"{r['runtime']} {r['variant']}" for r in verdicts if not r["met"]]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runtimes", nargs="+", default=["executorch", "onnxruntime"])
    p.add_argument("--variants", nargs="+", default=["xxs", "xs", "s"], choices=["xxs", "xs", "s"])
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None, help="write stats and verdicts to this file")
    p.add_argument("--check", action="store_true", help="exit 1 when any target is missed (for CI / scripts)")
    args = p.parse_args()
    torch.manual_seed(0)
    out = {"meta": meta(args.threads, args.runs), "stats": {}, "verdicts": []}
    for rt in args.runtimes:
        out["stats"][rt] = measure_in_subprocess(rt, args) if len(args.runtimes) > 1 else \
            measure(rt, args.variants, args.runs, args.warmup, args.threads)
        out["verdicts"] += verdict(rt, args.variants, out["stats"][rt])
        for k, s in out["stats"][rt].items():
            print(f"{rt:<12} {k:<26} mean {s['mean_ms']:8.2f} ± {s['std_ms']:6.2f} ms  median {s['median_ms']:8.2f}")
    print()
    for r in out["verdicts"]:
        print(f"{r['runtime']:<12} {r['variant']:<12} fused speed-up x{r['speedup_mean']:.2f} (median "
              f"x{r['speedup_median']:.2f}); fused / MobileNetV2 {r['vs_mnv2_mean']:.2f} (median "
              f"{r['vs_mnv2_median']:.2f}); target: {r['target']} -> {'MET' if r['met'] else 'MISSED'}")
    if args.json:
        write_json_atomic(args.json, out)
    missed = missed_targets(out["verdicts"])
    if missed:
        print(f"missed: {', '.join(missed)}", file=sys.stderr)
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
