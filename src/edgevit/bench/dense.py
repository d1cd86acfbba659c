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

from ..dense.models import SEGMENT_ARCHS
from ..deploy import runtimes
from ..deploy.export import seeded_input
from ..errors import UserError
from .bench import median_ci, meta, ranking_ties, time_runners, to_csv

# EdgeViT dense models per task, and torchvision's mobile models run beside them
EDGEVIT_ARCHS = {"segment": SEGMENT_ARCHS, "detect": ("retinanet", "ssdlite")}
BASELINES = {"segment": ("lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large"),
             "detect": ("ssdlite320_mobilenet_v3_large", "fasterrcnn_mobilenet_v3_large_320_fpn")}
# default input (H = W) per model: the paper's ADE20K crop for segmenters, 320 for the SSDLite pair and the
# 320 Faster R-CNN, RetinaNet at 512 (its COCO size, 800 x 1333, is not a phone's)
SIZES = {"semfpn": 512, "lraspp": 512, "retinanet": 512, "ssdlite": 320, "lraspp_mobilenet_v3_large": 512,
         "deeplabv3_mobilenet_v3_large": 512, "ssdlite320_mobilenet_v3_large": 320,
         "fasterrcnn_mobilenet_v3_large_320_fpn": 320}
CLASSES = {"segment": 150, "detect": 80}  # ADE20K, COCO (torchvision's COCO detectors: 90 ids + background)


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
    """The rows, in order: each EdgeViT head per variant and body form, then torchvision's (the two-stage
    Faster R-CNN only where it exports: onnxruntime); every row once per precision (int8: segmenters only, the
    runtime's int8 flow)."""
    if task not in EDGEVIT_ARCHS:
        raise UserError(f"{task!r}: expected segment or detect", option="task")
    forms = {"fused": [True], "unfused": [False], "both": [True, False]}.get(form)
    if forms is None:
        raise UserError(f"{form!r} is not one of fused, unfused, both", option="edgevit_form")
    archs = list(archs or EDGEVIT_ARCHS[task])
    for a in archs:
        if a not in EDGEVIT_ARCHS[task]:
            raise UserError(f"{a!r}: the {task} models benchmarked are {', '.join(EDGEVIT_ARCHS[task])}",
                            option="models")
    for p in precisions:
        if p not in ("fp32", "int8") or (p == "int8" and task != "segment"):
            raise UserError(f"{p!r}: the {task} bench runs {'fp32 and int8' if task == 'segment' else 'fp32'}",
                            option="precision")
    entries = [DenseEntry(a, v, f) for a in archs for v in variants for f in forms]
    two_stage_ok = runtime in (None, "onnxruntime")  # (dense.deploy.check_exportable says why)
    entries += [DenseEntry(b) for b in BASELINES[task] if baselines and (two_stage_ok or not b.startswith("faster"))]
    return [dataclasses.replace(e, precision=p) for e in entries for p in precisions]


class _Logits(nn.Module):
    """torchvision's segmentation models answer {"out": logits}: the tensor, as ours."""

    def __init__(self, model: nn.Module, num_classes: int):
        super().__init__()
        self.model, self.num_classes, self.arch = model, num_classes, "lraspp"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


def build_dense(entry: DenseEntry, task: str) -> nn.Module:
    """The model of an entry, untrained (random weights), with the attributes `dense.deploy` reads."""
    import torchvision.models.detection as tvd
    import torchvision.models.segmentation as tvs

    from ..dense.models import create_detector, create_segmenter

    n = CLASSES[task]
    if entry.variant is not None:
        if task == "segment":
            return create_segmenter(n, entry.variant, drop_path_rate=0.0, arch=entry.name)
        return create_detector(entry.name, n, entry.variant, drop_path_rate=0.0)
    if task == "segment":
        return _Logits(getattr(tvs, entry.name)(weights=None, weights_backbone=None, num_classes=n), n)
    model = getattr(tvd, entry.name)(weights=None, weights_backbone=None, num_classes=91)
    model.arch = "ssdlite" if entry.name.startswith("ssdlite") else "fasterrcnn"
    model.num_classes, model.label_offset = 90, 1
    return model


@dataclasses.dataclass
class _Built:
    entry: DenseEntry
    size: int
    run: Callable[[], List[np.ndarray]]
    params_m: float
    gmacs: Optional[float]
    post: Optional[Callable[[], object]]
    tmp: tempfile.TemporaryDirectory


CALIBRATION = 16  # random images an int8 file of the bench is calibrated on (timing only: its accuracy is
# `segment export --quantize int8` + `eval --exported`'s)


def _build(entry: DenseEntry, task: str, runtime: str, size: int, threads: int, argmax: bool = False) -> _Built:
    from ..dense.deploy import deploy_graph, save_graph
    from ..dense.postprocess import Decoding, postprocess
    from ..models.complexity import count_gmacs, count_params

    rt = runtimes.get(runtime)
    if rt.format is None:
        raise UserError(f"{runtime} runs no file; the dense bench times exported files", option="runtime")
    model = build_dense(entry, task)
    model, graph, outputs = deploy_graph(model, rt.format, (size, size), argmax, fused=bool(entry.fused))
    x = seeded_input(size)
    tmp = tempfile.TemporaryDirectory(prefix=f"edgevit-dense-{rt.format}-")
    path = Path(tmp.name) / f"model{rt.suffix}"
    if entry.precision == "int8":
        if "int8" not in rt.writers:
            raise UserError(f"int8 runs in {' and '.join(runtimes.int8_names())}, not {runtime}", option="runtime")
        from ..deploy.quantize import random_calibration

        rt.write("int8", graph, x, path, random_calibration(CALIBRATION, size))
    else:
        save_graph(model.arch, rt.format, graph, x, path)
    run_file, a = rt.load(path, threads), x.numpy()
    last: List[List[np.ndarray]] = [run_file(a)]  # first call: loads/plans, allocates

    def run():
        last[0] = run_file(a)
        return last[0]
    post = None
    if "decoding" in outputs and outputs["outputs"][0] == "cls_logits":
        dec = Decoding.from_dict(outputs["decoding"])
        post = lambda: postprocess(*last[0][:3], dec)  # noqa: E731
    try:
        from ..dense.deploy import DetectorHead

        counted = graph if "decoding" not in outputs else DetectorHead(model, x, with_anchors=False)
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
            built.append(_build(e, task, runtime, int(img_size or SIZES[e.name]), threads, argmax))
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
    if any(e.precision == "int8" for e in entries):
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
        if r["precision"] == "int8" and r["label"][:-len(" int8")] in by:
            out.append((f"{r['label']}: speed-up over its fp32", by[r["label"][:-len(" int8")]]["median_ms"]
                        / r["median_ms"]))
        if r["fused"]:
            rel = r["label"].replace("(fused body)", "(release body)")  # (same precision)
            if rel in by:
                out.append((f"{r['label']}: speed-up over the release body", by[rel]["median_ms"] / r["median_ms"]))
        pair = {"lraspp": "lraspp_mobilenet_v3_large (torchvision)",
                "ssdlite": "ssdlite320_mobilenet_v3_large (torchvision)"}.get(r["model"])
        pair = pair if pair is None or r["precision"] == "fp32" else f"{pair} {r['precision']}"
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
