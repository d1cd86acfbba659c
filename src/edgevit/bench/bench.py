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
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..deploy import runtimes
from ..deploy.export import FileRejected
from ..errors import UserError
from ..paper import peers_of
from .runners import build_runner, file_measures, form_label

EDGEVITS = ("edgevit_xxs", "edgevit_xs", "edgevit_s")
# The paper's baselines (Table 1; MobileViT at 256 as the paper) and what users pick today.
PAPER_BASELINES = ("mobilenetv2_100", "mobilenetv3_large_075", "efficientnet_b0", "mobilevit_xxs",
                   "mobilevit_xs", "mobilevit_s", "pvt_v2_b0", "pvt_v2_b1", "deit_tiny_patch16_224")
# Today's mobile models at each EdgeViT size, with their published top-1 (`edgevit/data/peers.json`, cited per row).
PEERS = {variant: tuple(peers_of(variant)) for variant in EDGEVITS}
DEFAULT_MODELS = EDGEVITS + PAPER_BASELINES + tuple(dict.fromkeys(m for ms in PEERS.values() for m in ms))
# names that stand for a group of models wherever models are named (`expand_models`)
GROUPS = {"edgevits": EDGEVITS, "paper-baselines": PAPER_BASELINES,
          "peers": tuple(dict.fromkeys(m for ms in PEERS.values() for m in ms)),
          **{f"peers-{v.split('_')[1]}": ms for v, ms in PEERS.items()}}
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
    precision: str = "fp32"

    @property
    def label(self) -> str:
        label = form_label(f"{self.model}{'[' + self.tag + ']' if self.tag else ''}", self.fused)
        return label if self.precision == "fp32" else f"{label} {self.precision}"


def expand_models(models: Sequence[str]) -> List[str]:
    """Model names with the group names (`GROUPS`: edgevits, paper-baselines, peers, peers-xxs|xs|s) replaced by
    their models, each model once, in order."""
    return list(dict.fromkeys(m for name in models for m in GROUPS.get(name, (name,))))


def check_models(models: Sequence[str]) -> None:
    """Every name a model timm can build (EdgeViTs registered), else one `UserError` naming it: before any work,
    on every bench path (the plain bench and the matrix)."""
    import timm

    from .. import models as _m  # noqa: F401  registers the EdgeViTs
    if not models:
        raise UserError("no model given", option="models")
    for name in models:
        if not timm.is_model(name):
            raise UserError(f"{name!r} is not a known model; choices: {', '.join(DEFAULT_MODELS)}, the groups "
                            f"{', '.join(GROUPS)} (or any name from timm.list_models())", option="models")


def plan(models: Sequence[str], form: str = "both", ablations: bool = False,
         precisions: Sequence[str] = ("fp32",)) -> List[Entry]:
    """The rows to measure, in order; EdgeViTs once per requested form, every model once per precision."""
    if form not in FORMS:
        raise UserError(f"{form!r} is not one of {', '.join(FORMS)}", option="edgevit_form")
    forms = {"fused": [True], "unfused": [False], "both": [True, False]}[form]
    entries: List[Entry] = []
    models = expand_models(models)
    check_models(models)
    for name in models:
        if name in EDGEVITS:
            entries += [Entry(name, f) for f in forms]
        else:
            entries.append(Entry(name))
    if ablations:
        for tag, kw in ABLATIONS.items():
            entries += [Entry("edgevit_xxs", f, dict(kw), tag) for f in forms]
    known = runtimes.all_precisions()
    for p in precisions:
        if p not in known:
            raise UserError(f"{p!r} is not one of {', '.join(known)}", option="precision")
    return [Entry(e.model, e.fused, e.kwargs, e.tag, p) for e in entries for p in precisions]


def time_runners(runners: Sequence[Callable[[], object]], runs: int, warmup: int = 10, progress=None,
                 seed: int = 0, clock: Callable[[], float] = time.perf_counter) -> List[List[float]]:
    """Milliseconds of `runs` forward passes of each runner, timed round by round: every round runs every
    model once, in a new random order, after `warmup` untimed passes of each.

    Why rounds: load on the machine (another process, thermal throttling on a phone) then lands on every
    model alike instead of on whichever model happens to be timed while it lasts, so rankings survive it;
    the median over rounds ignores the rounds it hit hardest. One runner is just `runs` passes in a row."""
    rng = random.Random(seed)
    for r in runners:
        for _ in range(warmup):
            r()
    times: List[List[float]] = [[] for _ in runners]
    order = list(range(len(runners)))
    for _ in range(runs):
        rng.shuffle(order)
        for i in order:
            t0 = clock()
            runners[i]()
            times[i].append((clock() - t0) * 1e3)
            if progress is not None:
                progress.update(1)
    return times


def time_runner(runner: Callable[[], object], runs: int, warmup: int = 10, progress=None) -> List[float]:
    """Milliseconds of `runs` forward passes after `warmup` untimed ones (one runner: `time_runners`)."""
    return time_runners([runner], runs, warmup, progress)[0]


def median_ci(times: Sequence[float], level: float = 0.95) -> Tuple[float, float]:
    """A distribution-free confidence interval for the median: the order statistics whose ranks bracket
    n/2 with binomial(n, 1/2) probability `level` (no assumption on the shape of the timing noise)."""
    from scipy.stats import binom

    xs = sorted(times)
    n = len(xs)
    j = int(binom.ppf((1 - level) / 2, n, 0.5)) - 1  # 0-based rank of x_(k), k = the binomial quantile
    j = max(0, min(j, (n - 1) // 2))  # tiny n: the whole range
    return xs[j], xs[n - 1 - j]


def ranking_ties(results: Sequence[dict]) -> List[Tuple[str, str]]:
    """Pairs of results (labels) whose median CIs overlap: their order is not known from this run."""
    out = []
    for a_i, a in enumerate(results):
        for b in results[a_i + 1:]:
            if a["ci_lo_ms"] <= b["ci_hi_ms"] and b["ci_lo_ms"] <= a["ci_hi_ms"]:
                out.append((a["label"], b["label"]))
    return out


def runtime_versions() -> Dict[str, str]:
    """The installed version of every package a runtime record names (to run or to write its files)."""
    from importlib import metadata

    from ..deploy.runtimes import RUNTIMES

    out = {}
    for pkg in dict.fromkeys(p.pip or p.module for r in RUNTIMES.values() for p in (*r.packages, *r.export_packages)):
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


# The instruction-set features that change int8 / bf16 / fp16 speed, as /proc/cpuinfo names them: x86 (VNNI: int8
# dot products; BF16 and AMX: bf16 matrix units) and ARM (asimddp: int8 dot product, i8mm: int8 matrix multiply,
# asimdhp/fphp: fp16 arithmetic; avx512_fp16, amx_fp16: x86 fp16 arithmetic). Machines here differ (some only AVX2), so
# every figure carries them.
ISA_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16",
             "amx_int8", "amx_fp16",
             "asimd", "asimddp", "i8mm", "asimdhp", "fphp", "bf16", "sve", "sve2")


def cpu_flags(cpuinfo: Optional[str] = None) -> List[str]:
    """The ISA_FLAGS this CPU has (read from /proc/cpuinfo, or the given text of one), in ISA_FLAGS' order."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return []
    have = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # (x86, ARM)
            have.update(value.split())
    return [f for f in ISA_FLAGS if f in have]


def meta(threads: int, runs: int) -> dict:
    import os

    import timm
    return {"created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.node()} ({platform.system()} {platform.machine()}, {os.cpu_count()} CPUs)",
            "cpu": cpu_name(), "cpu_flags": cpu_flags(), "torch": torch.__version__, "timm": timm.__version__,
            "runtime_versions": runtime_versions(), "threads": threads, "runs": runs, "batch": 1,
            "dtype": "fp32"}


def run_bench(entries: Sequence[Entry], runtime: str = "eager", threads: int = 2, runs: int = 50,
              warmup: int = 10, img_size: Optional[int] = None, show_progress: bool = True,
              on_error: str = "raise", seed: int = 0, calib: Optional[str] = None,
              calib_images: int = 64) -> dict:
    """Measure every entry in `runtime`, round by round (`time_runners`); returns {"meta": ..., "results": [...]}
    with each model's median and its 95% confidence interval, and `meta.ties`: the pairs whose order this
    run cannot tell (overlapping intervals).

    on_error="skip" reports a model that fails to export/run on stderr and goes on with the rest.
    int8 entries are quantized by the same flow as `edgevit export --quantize int8`, calibrated on `calib`
    (a folder of images, or "random": labelled so in meta)."""
    from tqdm import tqdm

    from ..models.complexity import count_gmacs, count_params
    runtimes.get(runtime)  # (an unknown runtime: refused before any model is built)
    if runs < 1:
        raise UserError(f"{runs} must be >= 1", option="runs")
    failures: Dict[str, str] = {}
    built = []  # (entry, runner, its file's measures)
    bar = tqdm(total=len(entries), desc=f"bench {runtime}: build", unit="model", file=sys.stderr,
               disable=not show_progress)
    for e in entries:
        bar.set_postfix_str(e.label)
        try:
            runner = build_runner(e.model, runtime, img_size=img_size, threads=threads,
                                  fused=bool(e.fused) if e.fused is not None else True, precision=e.precision,
                                  calib=calib, calib_images=calib_images, **e.kwargs)
            runner()  # one pass: a model that cannot run fails here, not in the middle of the rounds
            built.append((e, runner, file_measures(runner)))
        except (*_RUN_ERRORS, FileRejected) as err:  # (a file below its precision's rule: ❌, never timed)
            _skip_or_raise(on_error, e, runtime, err, failures)
        bar.update(1)
    bar.close()
    bar = tqdm(total=len(built) * runs, desc=f"bench {runtime}: rounds", unit="run", file=sys.stderr,
               disable=not show_progress)
    times = time_runners([r for _, r, _ in built], runs, warmup, bar, seed=seed)
    bar.close()
    results = []
    for (e, runner, measures), ts in zip(built, times):
        net = runner.model
        lo, hi = median_ci(ts)
        results.append({
            "model": e.model, "label": e.label, "fused": e.fused, "runtime": runtime, "precision": e.precision,
            "img_size": runner.img_size, "params_m": round(count_params(net), 4),
            "gmacs": round(count_gmacs(net, runner.img_size), 4),
            "mean_ms": statistics.fmean(ts), "std_ms": statistics.pstdev(ts) if len(ts) > 1 else 0.0,
            "median_ms": statistics.median(ts), "ci_lo_ms": lo, "ci_hi_ms": hi, "runs": runs, "status": "ok",
            **measures})
    del built
    doc = {"meta": {**meta(threads, runs), "timing": "interleaved rounds, random order per round; "
                    "median with a 95% distribution-free confidence interval"}, "results": results}
    doc["meta"]["ties"] = [list(t) for t in ranking_ties(results)]
    if any(runtimes.calibrated(e.precision) for e in entries):
        doc["meta"]["int8_calibration"] = (f"{calib_images} images of {calib}" if calib != "random" else
                                           "random inputs (timing only)")
    if failures:
        doc["meta"]["failed"], doc["meta"]["failed_why"] = list(failures), failures
    return doc


# (a converter that cannot lower a model: that model's cell, not the run)
_RUN_ERRORS = (RuntimeError, NotImplementedError, AssertionError, TypeError, runtimes.ConversionError)


def _skip_or_raise(on_error: str, e: Entry, runtime: str, err: BaseException, failures: Dict[str, str]) -> None:
    if on_error != "skip":
        raise err
    failures[e.label] = f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"
    print(f"edgevit bench: {e.label} failed in {runtime}: {failures[e.label]}", file=sys.stderr)


def file_cells(r: dict, sep: str = " | ") -> str:
    """A result's file columns (`FILE_KEYS`) as table cells: size, load, first inference, peak memory and its rise
    over the imports, the runtime's planned memory, delegate partitions (ops outside them)."""
    def num(v, fmt, width):
        return format("–" if v is None else format(v, fmt), f">{width}")
    deleg = "–" if r.get("delegate_partitions") is None else str(r["delegate_partitions"]) + (
        f" ({r['ops_outside']})" if r.get("ops_outside") is not None else "")
    return sep.join([num(r["bytes"] / 1e6, ".2f", 7), num(r.get("load_ms"), ".0f", 7),
                     num(r.get("first_inference_ms"), ".1f", 7), num(r.get("peak_rss_mb"), ".0f", 7),
                     num(r.get("load_rss_mb"), ".1f", 8), num(r.get("runtime_memory_mb"), ".2f", 7),
                     format(deleg, ">6")])


# what a device lab reports beside the latency of a file (`runners.file_measures`; none for eager)
FILE_KEYS = ("bytes", "load_ms", "first_inference_ms", "peak_rss_mb", "load_rss_mb", "runtime_memory_mb",
             "delegate_partitions", "ops_outside")
ROW_KEYS = ("model", "label", "fused", "runtime", "precision", "img_size", "params_m", "gmacs", "paper_params_m",
            "paper_gflops", "mean_ms", "std_ms", "median_ms", "ci_lo_ms", "ci_hi_ms", "runs", "status", *FILE_KEYS)


def to_csv(doc: dict, keys: Sequence[str] = ROW_KEYS) -> str:
    """The result rows of a bench document as CSV, one column per key."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(keys), extrasaction="ignore")
    w.writeheader()
    for row in doc["results"]:
        w.writerow(row)
    return buf.getvalue()


def add_paper_columns(doc: dict, paper: Optional[dict] = None) -> dict:
    """Beside each baseline and EdgeViT the paper's Table 2 lists: its printed params (M) and FLOPs (G), so a
    reader sees the same model is compared (MobileViTs at 256 px as the paper; ablation rows get none)."""
    from ..paper import by_timm_name

    table2 = by_timm_name("table2", paper)
    for r in doc["results"]:
        p = table2.get(r["model"]) if "[" not in r["label"] else None
        r["paper_params_m"], r["paper_gflops"] = (p["params_m"], p["gflops"]) if p else (None, None)
        r["paper_img_size"] = p["input_size"] if p else None
    return doc


# Table 4's orderings: (the faster row's ablation tag, the slower one's; None = EdgeViT-XXS itself).
ORDERINGS = [(None, "local_agg=lsa"), (None, "local_agg=none"), (None, "sampler=avg"), (None, "sampler=max"),
             (None, "local_prop=bilinear"), (None, "local_prop=none")]


def ablation_check(doc: dict, paper: Optional[dict] = None) -> List[dict]:
    """For each form measured: the paper's Table 4 latency and top-1 beside each ablation row, and whether
    each of the paper's orderings (LA(Ours) faster than LSA and than w/o LA; the default sampler faster than
    avg and max; LP(Ours) faster than bilinear and than w/o LP) holds here, and whether the intervals
    make it certain."""
    from ..paper import rows

    table4 = rows("table4", paper)
    by_tag = {r["ablation"]: r for r in table4 if r["ablation"]}
    default_of = {r["part"]: r for r in table4 if not r["ablation"]}  # each part's own "ours" row
    out = []
    for fused in sorted({r.get("fused") for r in doc["results"]}, key=str):
        mine = {None if "[" not in r["label"] else r["label"].split("[", 1)[1].split("]", 1)[0]: r
                for r in doc["results"] if r["model"] == "edgevit_xxs" and r.get("fused") == fused}
        for fast, slow in ORDERINGS:
            if fast not in mine or slow not in mine:
                continue
            a, b = mine[fast], mine[slow]
            pb = by_tag[slow]
            pa = by_tag[fast] if fast else default_of[pb["part"]]
            out.append({"form": "fused" if fused else "unfused", "faster": pa["variant"], "slower": pb["variant"],
                        "paper_ms": [pa["latency_ms"], pb["latency_ms"]],
                        "paper_ratio": pb["latency_ms"] / pa["latency_ms"],
                        "paper_top1": [pa["top1"], pb["top1"]],
                        "here_ms": [a["median_ms"], b["median_ms"]], "here_ratio": b["median_ms"] / a["median_ms"],
                        "holds": a["median_ms"] < b["median_ms"],
                        "certain": a["ci_hi_ms"] < b["ci_lo_ms"] or b["ci_hi_ms"] < a["ci_lo_ms"]})
    return out


def format_ablations(checks: Sequence[dict]) -> str:
    if not checks:
        return ""
    head = f"{'form':<8} {'paper: faster < slower':<62} {'paper ms':>13} {'x':>5} {'here ms':>15} {'x':>5}  holds here?"
    lines = ["Table 4 orderings (paper: Galaxy S21, TorchScript lite; here: this runtime and machine)", head,
             "-" * len(head)]
    for c in checks:
        verdict = ("yes" if c["holds"] else "NO") + ("" if c["certain"] else " (intervals overlap: not certain)")
        lines.append(f"{c['form']:<8} {c['faster'][:29]:<29} < {c['slower'][:30]:<30} "
                     f"{c['paper_ms'][0]:>5.1f} / {c['paper_ms'][1]:<5.1f} {c['paper_ratio']:>5.2f} "
                     f"{c['here_ms'][0]:>6.2f} / {c['here_ms'][1]:<6.2f} {c['here_ratio']:>5.2f}  {verdict}")
    return "\n".join(lines)


def format_table(doc: dict) -> str:
    rows = doc["results"]
    head = f"{'model':<44} {'runtime':<12} {'size':>4} {'params M':>8} {'GMACs':>6} {'paper M/G':>10} " \
           f"{'median ms':>9} {'95% CI':>15} {'mean ± std':>14}"
    files = any(r.get("load_ms") is not None for r in rows)
    if files:
        head += (f" {'file MB':>7} {'load ms':>7} {'1st ms':>7} {'RSS MB':>7} {'+load MB':>8} {'plan MB':>7} "
                 f"{'deleg.':>6}")
    lines = [head, "-" * len(head)]
    tied = {label for pair in doc["meta"].get("ties", []) for label in pair}
    for r in rows:
        pp = (f"{r['paper_params_m']:.1f}/{r['paper_gflops']:.2f}" if r.get("paper_params_m") is not None else "")
        lines.append(f"{r['label'] + (' ~' if r['label'] in tied else ''):<44} {r['runtime']:<12} {r['img_size']:>4} "
                     f"{r['params_m']:>8.2f} {r['gmacs']:>6.3f} {pp:>10} {r['median_ms']:>9.2f} "
                     f"{'[' + format(r['ci_lo_ms'], '.2f') + ', ' + format(r['ci_hi_ms'], '.2f') + ']':>15} "
                     f"{r['mean_ms']:>7.2f} ± {r['std_ms']:<5.2f}" + (f" {file_cells(r, ' ')}" if files else ""))
    m = doc["meta"]
    precision = "/".join(sorted({r.get("precision", "fp32") for r in rows})) or "fp32"
    calib = f" (int8 calibrated on {m['int8_calibration']})" if m.get("int8_calibration") else ""
    flags = f" ({' '.join(m['cpu_flags'])})" if m.get("cpu_flags") else ""
    lines.append(f"batch 1, {precision}{calib}, {m['threads']} threads, {m['runs']} interleaved rounds; "
                 f"{m['cpu']}{flags}; "
                 f"torch {m['torch']}, "
                 + ", ".join(f"{k} {v}" for k, v in m["runtime_versions"].items() if k != "torch"))
    for label, why in (m.get("failed_why") or {}).items():
        lines.append(f"❌ {label}: {why}")
    if files:
        lines.append("load ms / 1st ms / RSS MB: a fresh process (numpy and the runtime only) loading the file and "
                     "running it once; +load MB: its peak resident memory over the one after the imports; plan MB: "
                     "the runtime's planned memory, where it says; deleg.: the delegate's partitions (ops left outside "
                     "them)")
    if tied:
        lines.append(f"~ : its 95% interval overlaps another model's ({len(m['ties'])} pair(s)): this run does not "
                     "rank them; measure again with more runs on a quieter machine. paper M/G: Table 2's params/FLOPs.")
    return "\n".join(lines)
