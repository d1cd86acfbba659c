"""Latency benchmark with the paper's protocol: batch 1, fp32, CPU, warm-up, then N timed forward passes.

`run_bench` returns the results document that `edgevit bench --json` writes and the report issue reads:
{"meta": {...}, "results": [{"model", "label", "fused", "runtime", "img_size", "params_m", "gmacs",
"mean_ms", "std_ms", "median_ms", "runs"}, ...]}
"""
from __future__ import annotations

import csv
import datetime as _dt
import io
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch

from .runners import Runner, build_runner, check_runtime, form_label

EDGEVITS = ("edgevit_xxs", "edgevit_xs", "edgevit_s")
# The paper's baselines (Table 1; MobileViT at 256 as the paper) and what users pick today.
PAPER_BASELINES = ("mobilenetv2_100", "mobilenetv3_large_075", "efficientnet_b0", "mobilevit_xxs",
                   "mobilevit_xs", "mobilevit_s", "pvt_v2_b0", "pvt_v2_b1", "deit_tiny_patch16_224")
CURRENT_BASELINES = ("mobilenetv4_conv_small", "fastvit_t8", "efficientformerv2_s0", "repvit_m0_9")
DEFAULT_MODELS = EDGEVITS + PAPER_BASELINES + CURRENT_BASELINES
# Table 4 of the paper, each one change from the release XXS, scaled so that each stays within 10% of
# XXS's 0.557 GMACs and the comparison is at equal compute: the one that removes work is widened, the two
# that add it (LSA's 7x7 windows, PVT's full-resolution queries) are narrowed (fvcore: 0.52-0.56 GMACs).
ABLATIONS: Dict[str, dict] = {
    "local_agg=lsa": dict(local_agg="lsa", embed_dims=(32, 64, 128, 288), head_dim=32),
    "local_agg=none": dict(local_agg="none", embed_dims=(48, 96, 192, 336), head_dim=48),
    "sampler=center": dict(sampler="center"),
    "sampler=avg": dict(sampler="avg"),
    "sampler=max": dict(sampler="max"),
    "local_prop=bilinear": dict(local_prop="bilinear"),
    "local_prop=none": dict(local_prop="none", embed_dims=(32, 64, 128, 288), head_dim=32),
}
FORMS = ("fused", "unfused", "both")


@dataclass
class Entry:
    """One row to measure: a model name, whether fused (EdgeViT only), its label and extra model kwargs."""
    model: str
    fused: Optional[bool] = None
    kwargs: dict = field(default_factory=dict)
    tag: str = ""

    @property
    def label(self) -> str:
        return form_label(f"{self.model}{'[' + self.tag + ']' if self.tag else ''}", self.fused)


def plan(models: Sequence[str], form: str = "both", ablations: bool = False) -> List[Entry]:
    """The rows to measure, in order; EdgeViTs once per requested form."""
    import timm
    from .. import models as _m  # noqa: F401  registers the EdgeViTs
    if form not in FORMS:
        raise ValueError(f"--edgevit-form {form!r} is not one of {', '.join(FORMS)}")
    forms = {"fused": [True], "unfused": [False], "both": [True, False]}[form]
    entries: List[Entry] = []
    for name in models:
        if not timm.is_model(name):
            raise ValueError(f"--models: {name!r} is not a known model; choices: {', '.join(DEFAULT_MODELS)} "
                             "(or any name from timm.list_models())")
        if name in EDGEVITS:
            entries += [Entry(name, f) for f in forms]
        else:
            entries.append(Entry(name))
    if ablations:
        for tag, kw in ABLATIONS.items():
            entries += [Entry("edgevit_xxs", f, dict(kw), tag) for f in forms]
    return entries


def time_runner(runner: Runner, runs: int, warmup: int = 10, progress=None) -> List[float]:
    """Milliseconds of `runs` forward passes after `warmup` untimed ones."""
    for _ in range(warmup):
        runner()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        runner()
        times.append((time.perf_counter() - t0) * 1e3)
        if progress is not None:
            progress.update(1)
    return times


def runtime_versions() -> Dict[str, str]:
    from importlib import metadata
    out = {}
    for pkg in ("torch", "onnxruntime", "onnx", "executorch"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def meta(threads: int, runs: int) -> dict:
    import os

    import timm
    return {"created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.node()} ({platform.system()} {platform.machine()}, {os.cpu_count()} CPUs)",
            "cpu": cpu_name(), "torch": torch.__version__, "timm": timm.__version__,
            "runtime_versions": runtime_versions(), "threads": threads, "runs": runs, "batch": 1,
            "dtype": "fp32"}


def run_bench(entries: Sequence[Entry], runtime: str = "eager", threads: int = 2, runs: int = 50,
              warmup: int = 10, img_size: Optional[int] = None, show_progress: bool = True,
              on_error: str = "raise") -> dict:
    """Measure every entry in `runtime`; returns {"meta": ..., "results": [...]}.

    on_error="skip" reports a model that fails to export/run on stderr and goes on with the rest."""
    from tqdm import tqdm

    from ..models.complexity import count_gmacs, count_params
    check_runtime(runtime)
    if runs < 1:
        raise ValueError(f"--runs {runs} must be >= 1")
    results, failures = [], []
    bar = tqdm(total=len(entries) * runs, desc=f"bench {runtime}", unit="run", file=sys.stderr,
               disable=not show_progress)
    for e in entries:
        bar.set_postfix_str(e.label)
        try:
            runner = build_runner(e.model, runtime, img_size=img_size, threads=threads,
                                  fused=bool(e.fused) if e.fused is not None else True, **e.kwargs)
            times = time_runner(runner, runs, warmup, bar)
        except (RuntimeError, NotImplementedError, AssertionError, TypeError) as err:
            if on_error != "skip":
                raise
            failures.append(e.label)
            print(f"edgevit bench: {e.label} failed in {runtime}: {type(err).__name__}: {str(err)[:300]}",
                  file=sys.stderr)
            bar.update(runs)
            continue
        net = runner.model
        results.append({
            "model": e.model, "label": e.label, "fused": e.fused, "runtime": runtime,
            "img_size": runner.img_size, "params_m": round(count_params(net, runner.img_size), 4),
            "gmacs": round(count_gmacs(net, runner.img_size), 4),
            "mean_ms": statistics.fmean(times), "std_ms": statistics.pstdev(times) if len(times) > 1 else 0.0,
            "median_ms": statistics.median(times), "runs": runs})
        del runner
    bar.close()
    doc = {"meta": meta(threads, runs), "results": results}
    if failures:
        doc["meta"]["failed"] = failures
    return doc


ROW_KEYS = ("model", "label", "fused", "runtime", "img_size", "params_m", "gmacs", "mean_ms", "std_ms",
            "median_ms", "runs")


def to_csv(doc: dict) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=ROW_KEYS, extrasaction="ignore")
    w.writeheader()
    for row in doc["results"]:
        w.writerow(row)
    return buf.getvalue()


def format_table(doc: dict) -> str:
    rows = doc["results"]
    head = f"{'model':<44} {'runtime':<12} {'size':>4} {'params M':>8} {'GMACs':>6} {'mean ms':>9} " \
           f"{'± std':>7} {'median':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['label']:<44} {r['runtime']:<12} {r['img_size']:>4} {r['params_m']:>8.2f} "
                     f"{r['gmacs']:>6.3f} {r['mean_ms']:>9.2f} {r['std_ms']:>7.2f} {r['median_ms']:>8.2f}")
    m = doc["meta"]
    lines.append(f"batch 1, fp32, {m['threads']} threads, {m['runs']} runs; {m['cpu']}; torch {m['torch']}, "
                 + ", ".join(f"{k} {v}" for k, v in m["runtime_versions"].items() if k != "torch"))
    return "\n".join(lines)


