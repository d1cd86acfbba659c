"""Latency of the dense models in a runtime, as `bench` measures the classifiers: every model exported to the
runtime's file (the graph `edgevit detect|segment export` writes), warmed up, then timed in interleaved rounds
(`time_runners`), median with a 95% interval; params and GMACs beside. EdgeViT models run with the fused body
and the release body; torchvision's mobile models (random weights) go through the same flow. A detector whose
file ends at its head has its post-processing (`dense.postprocess`, numpy) timed separately; the ONNX files
carry theirs in the graph.
"""
from __future__ import annotations

import dataclasses
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from ..dense import registry
from ..deploy import runtimes
from ..deploy.export import seeded_input
from ..errors import UserError
from .bench import median_ci, meta, ranking_ties, time_runners, to_csv

CLASSES = {"segment": registry.ADE_CLASSES, "detect": registry.COCO_CLASSES}


@dataclasses.dataclass
class DenseEntry:
    name: str  # an EdgeViT arch ("lraspp") or a torchvision model name
    variant: Optional[str] = None  # the EdgeViT, None for torchvision's
    fused: Optional[bool] = None
    precision: str = "fp32"

    @property
    def label(self) -> str:
        if self.variant is None:
            label = f"{self.name} (torchvision)"
        else:
            label = f"{self.name}-{self.variant.split('_')[-1].upper()} ({'fused' if self.fused else 'release'} body)"
        return label if self.precision == "fp32" else f"{label} {self.precision}"


def dense_plan(task: str, variants: Sequence[str] = ("edgevit_xxs",), form: str = "both",
               archs: Optional[Sequence[str]] = None, baselines: bool = True,
               precisions: Sequence[str] = ("fp32",), runtime: Optional[str] = None) -> List[DenseEntry]:
    """The rows, in order: each EdgeViT head per variant and body form, then the baselines they are compared with
    (`dense.registry`; one that the runtime cannot export, such as a two-stage detector outside ONNX, is left
    out); every row once per precision (reduced precisions: the segmenters, in the runtime's writers)."""
    from ..dense.graphs import ExportError, check_exportable

    if task not in registry.TASKS:
        raise UserError(f"{task!r}: expected one of {', '.join(registry.TASKS)}", option="task")
    forms = {"fused": [True], "unfused": [False], "both": [True, False]}.get(form)
    if forms is None:
        raise UserError(f"{form!r} is not one of fused, unfused, both", option="edgevit_form")
    default = [a.name for a in registry.entries(task) if a.edgevit and a.bench]
    archs = [registry.get(a, task).name for a in (archs or default)]
    rt = runtimes.get(runtime) if runtime else None
    for p in precisions:
        if p != "fp32" and not all(registry.get(a).quantizable for a in archs):
            raise UserError(f"{p!r}: reduced precisions are for the segmenters; the {task} bench runs fp32",
                            option="precision")
        if rt is not None:
            rt.writer(p)
    entries = [DenseEntry(a, v, f) for a in archs for v in variants for f in forms]
    if baselines:
        names = dict.fromkeys([*(b for a in archs for b in registry.get(a).baselines),
                               *(a.name for a in registry.entries(task) if not a.edgevit)])
        for b in names:
            try:
                if rt is not None and rt.format:
                    check_exportable(b, rt.format)
            except ExportError:
                continue
            entries.append(DenseEntry(b))
    return [dataclasses.replace(e, precision=p) for e in entries for p in precisions]


def build_dense(entry: DenseEntry, task: str) -> nn.Module:
    """The model of an entry, untrained (random weights), with the attributes the dense export reads."""
    from ..dense.models import create_dense

    return create_dense(entry.name, CLASSES[task], entry.variant or "edgevit_xxs", drop_path_rate=0.0)


@dataclasses.dataclass
class _Built:
    entry: DenseEntry
    size: int
    run: Callable[[], List[np.ndarray]]
    params_m: float
    gmacs: Optional[float]
    post: Optional[Callable[[], object]]
    tmp: tempfile.TemporaryDirectory


CALIBRATION = 16  # random images a calibrated file of the bench is calibrated on (timing only: its accuracy is
# `segment export --quantize` + `eval --exported`'s)


def _build(entry: DenseEntry, task: str, runtime: str, size: int, threads: int, argmax: bool = False) -> _Built:
    """The entry's file, made by the dense export (the one checked writer) into a temporary folder and read back
    with the public loader (`load_exported`); a file below its precision's rule raises, never timed."""
    from ..dense.export import export_dense
    from ..dense.graphs import DetectorHead, deploy_graph
    from ..dense.postprocess import Decoding, postprocess
    from ..deploy import load_exported
    from ..deploy.export import random_calibration
    from ..models.complexity import count_gmacs, count_params

    rt = runtimes.get(runtime)
    if rt.format is None:
        raise UserError(f"{runtime} runs no file; the dense bench times exported files", option="runtime")
    model = build_dense(entry, task)
    tmp = tempfile.TemporaryDirectory(prefix=f"edgevit-dense-{rt.format}-")
    path = Path(tmp.name) / f"model{rt.suffix}"
    calibration = random_calibration(CALIBRATION, size) if rt.writer(entry.precision).calibrated else None
    report = export_dense(model, rt.format, path, (size, size), argmax=argmax, fused=bool(entry.fused),
                          threads=threads, meta={}, precision=entry.precision, calibration=calibration,
                          trained=False)
    run_file, a = load_exported(path, threads).run, seeded_input(size).numpy()
    last: List[List[np.ndarray]] = [run_file(a)]  # first call: loads/plans, allocates

    def run():
        last[0] = run_file(a)
        return last[0]
    post = None
    outputs = report["outputs"]
    if outputs[0] == "cls_logits":
        from ..dense.files import read_sidecar

        dec = Decoding.from_dict(read_sidecar(path)["decoding"])
        post = lambda: postprocess(*last[0][:3], dec)  # noqa: E731
    model, graph, side = deploy_graph(model, rt.format, (size, size), argmax, fused=bool(entry.fused))
    try:
        counted = graph if "decoding" not in side else DetectorHead(model, seeded_input(size), with_anchors=False)
        gmacs = round(count_gmacs(counted.eval(), size), 3)
    except Exception:  # fvcore has no count for some of torchvision's ops (NMS, RoIAlign): left blank
        gmacs = None
    return _Built(entry, size, run, round(count_params(model), 3), gmacs, post, tmp)


def run_dense_bench(task: str, entries: Sequence[DenseEntry], runtime: str, threads: int = 2, runs: int = 30,
                    warmup: int = 5, img_size: Optional[int] = None, show_progress: bool = True,
                    on_error: str = "skip", argmax: bool = False) -> dict:
    """Measure `entries` (from `dense_plan`) in `runtime`; one document like `run_bench`'s. `argmax`: the
    segmenters end with the class map (the file `segment export --argmax` writes) instead of logits."""
    from tqdm import tqdm

    torch.set_num_threads(threads)
    built: List[_Built] = []
    failures: List[str] = []
    bar = tqdm(entries, desc=f"bench {task} {runtime}: build", unit="model", file=sys.stderr,
               disable=not show_progress)
    for e in bar:
        bar.set_postfix_str(e.label)
        try:
            built.append(_build(e, task, runtime, int(img_size or registry.get(e.name).size), threads, argmax))
        except (UserError, RuntimeError, NotImplementedError, AssertionError, TypeError) as err:
            if on_error != "skip":
                raise
            first = " ".join(str(err).split())[:200]
            failures.append(f"{e.label}: {first}")
            print(f"edgevit {task} bench: {e.label} skipped in {runtime}: {first}", file=sys.stderr)
    bar = tqdm(total=len(built) * runs, desc=f"bench {task} {runtime}: rounds", unit="run", file=sys.stderr,
               disable=not show_progress)
    times = time_runners([b.run for b in built], runs, warmup, bar)
    bar.close()
    results = []
    for b, ts in zip(built, times):
        lo, hi = median_ci(ts)
        row = {"model": b.entry.name, "label": b.entry.label, "variant": b.entry.variant, "fused": b.entry.fused,
               "runtime": runtime, "precision": b.entry.precision, "img_size": b.size, "params_m": b.params_m,
               "gmacs": b.gmacs,
               "median_ms": statistics.median(ts), "ci_lo_ms": lo, "ci_hi_ms": hi, "runs": runs,
               "post_ms": None, "post": "in the graph" if b.post is None and task == "detect" else None}
        if b.post is not None:
            post_times = time_runners([b.post], runs, warmup)[0]
            row["post_ms"], row["post"] = statistics.median(post_times), "numpy (dense.postprocess)"
        results.append(row)
        b.tmp.cleanup()
    doc = {"meta": {**meta(threads, runs), "task": task,
                    "output": "class map" if argmax and task == "segment" else "logits/raw head/detections",
                    "weights": "random (latency does not depend on them; "
                    "post-processing time does, through the number of boxes over the threshold)",
                    "timing": "interleaved rounds, random order per round; median with a 95% distribution-free "
                              "confidence interval"},
           "results": results}
    doc["meta"]["ties"] = [list(t) for t in ranking_ties(results)]
    if any(runtimes.get(runtime).writer(e.precision).calibrated for e in entries):
        doc["meta"]["int8_calibration"] = f"{CALIBRATION} random inputs (timing only)"
    if failures:
        doc["meta"]["failed"] = failures
    return doc


ROW_KEYS = ("label", "runtime", "precision", "img_size", "params_m", "gmacs", "median_ms", "ci_lo_ms", "ci_hi_ms",
            "post_ms")


def ratios(doc: dict) -> List[Tuple[str, float]]:
    """The comparisons the targets are stated in, one run's medians: the fused body's speed-up over the release
    body inside each EdgeViT model, and each EdgeViT mobile head's latency over torchvision's same head on
    MobileNetV3."""
    by = {r["label"]: r for r in doc["results"]}
    out = []
    for r in doc["results"]:
        fp32 = r["label"][:-len(f" {r['precision']}")]
        if r["precision"] != "fp32" and fp32 in by:
            out.append((f"{r['label']}: speed-up over its fp32", by[fp32]["median_ms"] / r["median_ms"]))
        if r["fused"]:
            rel = r["label"].replace("(fused body)", "(release body)")  # (same precision)
            if rel in by:
                out.append((f"{r['label']}: speed-up over the release body", by[rel]["median_ms"] / r["median_ms"]))
        for base in registry.get(r["model"]).baselines:
            pair = DenseEntry(base, precision=r["precision"]).label
            if r["variant"] and pair in by:
                out.append((f"{r['label']} / {pair}: latency ratio", r["median_ms"] / by[pair]["median_ms"]))
    return out


def _num(v: Optional[float], fmt: str = ".2f") -> str:
    return "–" if v is None else format(v, fmt)


def format_dense_table(doc: dict) -> str:
    rows = ["| model | runtime | input | params (M) | GMACs | median ms [95% CI] | post-processing ms |",
            "|---|---|---|---|---|---|---|"]
    for r in doc["results"]:
        post = _num(r["post_ms"]) if r["post_ms"] is not None else (r["post"] or "–")
        rows.append(f"| {r['label']} | {r['runtime']} | {r['img_size']} | {r['params_m']:.2f} | {_num(r['gmacs'])} | "
                    f"{r['median_ms']:.1f} [{r['ci_lo_ms']:.1f}, {r['ci_hi_ms']:.1f}] | {post} |")
    lines = ["\n".join(rows), ""]
    lines += [f"{what}: {value:.2f}x" for what, value in ratios(doc)]
    m = doc["meta"]
    lines.append(f"{m['cpu']} [{' '.join(m['cpu_flags'])}], {m['threads']} threads, batch 1, {m['runs']} "
                 "interleaved rounds; weights random" + (f"; int8 calibrated on {m['int8_calibration']}"
                                                          if "int8_calibration" in m else ""))
    lines += [f"not measured: {f}" for f in m.get("failed", [])]
    return "\n".join(lines)


def to_dense_csv(doc: dict) -> str:
    return to_csv(doc, ROW_KEYS)
