"""Two sets of exported files, file by file: do they compute the same, and at the same speed? The check a
refactoring of the export path owes (export every file with the commit before and after, then compare).

    .venv/bin/python benchmarks/exported_ab.py BEFORE_DIR AFTER_DIR [--runs 30] [--threads 2] [--json F]

For every file name present in both folders (any runtime's suffix): both files loaded in their runtime, run on
the same seeded input at the file's own input size; max |after - before| of the outputs, and both latencies
timed in the same interleaved rounds (edgevit.bench.bench.time_runners: every round runs every file once, in a
new random order), median with its 95% interval, and the ratio after / before.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from edgevit.bench.bench import cpu_name, median_ci, time_runners
from edgevit.deploy import load_exported, runtimes
from edgevit.errors import UserError
from edgevit.utils.writes import write_text_atomic


def pairs(before: Path, after: Path):
    """(name, before file, after file) for each exported file name both folders hold."""
    for f in sorted(before.iterdir()):
        try:
            runtimes.for_file(f)
        except UserError:
            continue
        if (after / f.name).is_file():
            yield f.name, f, after / f.name


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("before", type=Path)
    p.add_argument("after", type=Path)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None, help="write the rows here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows, runners = [], []
    for name, fb, fa in tqdm(list(pairs(args.before, args.after)), desc="loading", file=sys.stderr):
        mb, ma = load_exported(fb, args.threads), load_exported(fa, args.threads)
        h, w = ma.input_size or (ma.metadata.input_size if ma.metadata else None) or mb.input_size or (224, 224)
        if ma.metadata is not None:  # (an app-ready file takes what its metadata says: NHWC, [0, 1], bytes)
            x = ma.metadata.file_input(np.random.default_rng(0).random((1, 3, h, w), np.float32))
        else:
            x = np.random.default_rng(0).standard_normal((1, 3, h, w)).astype(np.float32)
        outs_a, outs_b = ma.run(x), mb.run(x)  # (every output: a detector's boxes, scores, labels, masks)
        if [np.shape(o) for o in outs_a] != [np.shape(o) for o in outs_b]:
            raise SystemExit(f"{name}: outputs of shapes {[np.shape(o) for o in outs_b]} before, "
                             f"{[np.shape(o) for o in outs_a]} after")
        diff = max((float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max()) if np.size(a) else 0.0)
                   for a, b in zip(outs_a, outs_b))
        rows.append({"file": name, "runtime": ma.runtime.name, "before_bytes": fb.stat().st_size,
                     "after_bytes": fa.stat().st_size, "max_abs_diff": diff})
        runners += [lambda m=mb, x=x: m.run(x), lambda m=ma, x=x: m.run(x)]
    with tqdm(total=args.runs * len(runners), desc="timing", file=sys.stderr) as bar:
        times = time_runners(runners, args.runs, args.warmup, progress=bar)
    for i, row in enumerate(rows):
        (b_lo, b_hi), (a_lo, a_hi) = median_ci(times[2 * i]), median_ci(times[2 * i + 1])
        row.update(before_ms=float(np.median(times[2 * i])), before_ci_ms=[b_lo, b_hi],
                   after_ms=float(np.median(times[2 * i + 1])), after_ci_ms=[a_lo, a_hi])
        row["after_over_before"] = row["after_ms"] / row["before_ms"]
    print(f"CPU: {cpu_name()}; {args.threads} threads, {args.runs} interleaved rounds")
    print("| file | runtime | bytes before → after | max abs diff | before ms (95% CI) | after ms (95% CI) | "
          "after / before |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['file']} | {r['runtime']} | {r['before_bytes']:,} → {r['after_bytes']:,} | "
              f"{r['max_abs_diff']:.2e} | {r['before_ms']:.2f} ({r['before_ci_ms'][0]:.2f}–{r['before_ci_ms'][1]:.2f}) "
              f"| {r['after_ms']:.2f} ({r['after_ci_ms'][0]:.2f}–{r['after_ci_ms'][1]:.2f}) | "
              f"{r['after_over_before']:.3f} |")
    if args.json:
        write_text_atomic(args.json, json.dumps({"cpu": cpu_name(), "threads": args.threads, "runs": args.runs,
                                                 "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
