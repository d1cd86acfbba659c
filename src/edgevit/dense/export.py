"""Export a trained detector / segmenter: its graph for the runtime (`dense.graphs`) through the package's one
checked writer (`edgevit.deploy.export.export_model`), with the comparison a dense model's outputs need and the
sidecar that says how to read the file (`dense.files`)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from ..deploy import runtimes
from ..deploy.export import Compare, classify_measures, export_model, seeded_input
from ..deploy.runtimes.base import Rule
from ..errors import UserError
from . import registry
from .files import SIDECAR_VERSION, DenseFile, fit_into, score_cut
from .graphs import check_exportable, deploy_graph, graph_for
from .postprocess import match_detections

# an argmax file's class map may differ from PyTorch's where two logits tie within float error
ARGMAX_AGREEMENT = 0.999


def _reading(model: nn.Module, size: Tuple[int, int], outputs: Dict[str, object], meta: dict) -> dict:
    """What a sidecar says to feed the file and read it (what `DenseFile` runs by): architecture, classes,
    input size, resize rule, mean/std, outputs."""
    mean, std = _normalization(model)
    return {"arch": model.arch, "num_classes": int(meta.get("num_classes", model.num_classes)),
            "input_size": list(size), "resize": "stretch" if model.arch == "ssdlite" else "fit", "mean": mean,
            "std": std, **outputs}


def _normalization(model: nn.Module) -> Tuple[List[float], List[float]]:
    if hasattr(model, "transform"):  # torchvision detectors normalise inside; the file does not
        return list(model.transform.image_mean), list(model.transform.image_std)
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD  # the segmentation data's (dense.ade)

    return list(IMAGENET_DEFAULT_MEAN), list(IMAGENET_DEFAULT_STD)


def dense_measures(outputs: Sequence[str], score_thresh: float) -> Compare:
    """How a dense file's outputs are compared with PyTorch's (`export_model`'s `compare`), by what the file
    returns: logits as a classifier's (per-pixel top-1, SQNR, max |diff|: the precision's rule); a class map by
    its pixel agreement; a raw detector head by each output's max |diff|; detections box by box
    (`match_detections`), with Mask R-CNN's masks."""
    kind = outputs[0]

    def compare(reference, got, rule: Rule, trained: bool = False) -> Tuple[Dict[str, object], List[str]]:
        for want, have in zip(reference, got):  # (a converter that drops an output: ncnn's pnnx drops a constant)
            if len(have) != len(want):
                return {}, [f"the file has {len(have)} outputs where the graph has {len(want)} "
                            f"({', '.join(outputs[:len(want)])}): the runtime's converter dropped "
                            f"{', '.join(outputs[len(have):len(want)]) or 'some'}"]
        if kind == "probabilities":  # the app-ready segmenter's [1, H, W, C]: judged as logits are, in NCHW
            reference = [[r[0].permute(0, 3, 1, 2)] for r in reference]
            got = [[np.moveaxis(np.asarray(g[0]), -1, 1)] for g in got]
        if kind in ("logits", "probabilities"):
            measures, missed = classify_measures(reference, got, rule, trained)
            measures["pixel_agreement"] = measures.get("top1_agreement", 0.0) / 100
            return measures, missed
        if kind == "classes":
            agree = float(np.mean([(h[0] == w[0].numpy()).mean() for w, h in zip(reference, got)]))
            floor = ARGMAX_AGREEMENT if rule.max_abs_diff is not None else (
                (rule.min_top1_agreement or 0.0) / 100 if trained else 0.0)
            return {"pixel_agreement": agree}, ([] if agree >= floor else [
                f"class map agrees with PyTorch on {100 * agree:.2f}% of pixels (< {100 * floor:.1f}%)"])
        (want,), (have,) = reference, got  # detectors: fp32, checked on the seeded input
        want = [w.detach().numpy() for w in want]
        if kind == "boxes":
            keys = ("boxes", "scores", "labels")
            m = match_detections(dict(zip(keys, want)), dict(zip(keys, have)), score_thresh=score_thresh)
            out = {"detections_checked": m["matched"], "detections_tied": m["excused"],
                   "max_box_diff": m["max_box_diff"], "max_score_diff": m["max_score_diff"]}
            missed = [f"detections: {m['unmatched']} of {m['detections']} differ from PyTorch's"] if m["unmatched"] \
                else []
            if len(want) > 3:  # Mask R-CNN: the matched detections' mask probabilities
                diffs = [float(np.abs(have[3][j] - want[3][i]).mean()) for i, j in m["pairs"]]
                out["max_mask_mean_diff"] = max(diffs, default=0.0)
                if out["max_mask_mean_diff"] > rule.max_abs_diff:
                    missed.append(f"output 'masks': mean |diff| {out['max_mask_mean_diff']:.3g} > "
                                  f"{rule.max_abs_diff:g} against PyTorch's on a matched detection")
            return out, missed
        diffs = {name: float(np.abs(h.astype(np.float32) - w).max()) if w.size else 0.0
                 for name, h, w in zip(outputs, have, want)}
        missed = [f"output {name!r}: max |diff| {d:.3g} > {rule.max_abs_diff:g}" for name, d in diffs.items()
                  if not d <= rule.max_abs_diff]
        return {"max_abs_diff": max(diffs.values())}, missed
    return compare


def segmentation_calibration(root: os.PathLike | str, split: str, meta: dict, size: Tuple[int, int], count: int,
                             seed: int = 0) -> torch.Tensor:
    """`count` images (a seeded sample) of an ADE20K-layout split as the segmenter's eval sees them (resized to
    the checkpoint's scale, normalised), then fitted into the file's input as `DenseFile.segment` feeds them."""
    from .ade import ADESegmentation

    try:
        ds = ADESegmentation(root, split, num_classes=int(meta["num_classes"]),
                             reduce_zero_label=bool(meta["reduce_zero_label"]), train=False, scale=meta["scale"])
    except UserError as e:
        raise UserError(f"calibration split {split!r} of {root}: {e}", option="calib") from e
    picks = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:count].tolist()
    return torch.cat([fit_into(ds[i][0][None].float(), size)[0] for i in picks])


def export_dense(model: nn.Module, fmt: str, output: os.PathLike | str, size: Tuple[int, int], *,
                 argmax: bool = False, max_detections: Optional[int] = None, fused: bool = True,
                 threads: int = 2, meta: Optional[dict] = None, precision: str = "fp32",
                 calibration: Optional[torch.Tensor] = None, check_images: Optional[torch.Tensor] = None,
                 trained: bool = True, layout: str = "NCHW") -> Dict[str, object]:
    """Export a detector / segmenter (`load_dense_checkpoint`) at `size` (H, W; multiples of 32) to `output` in
    `fmt` as a `precision` file, with its EdgeViT body fused for that runtime, through the one checked writer:
    run in its runtime and compared with PyTorch (on the seeded input; a reduced precision on `check_images`,
    default the first 8 calibration images or 8 random inputs); then the sidecar. Both files are renamed into
    place only after the check passes.

    `calibration` (N, 3, H, W normalised images at `size`): the images a calibrated precision (int8) is
    calibrated on. `trained`: the weights are trained (the rule's agreement floor applies). `layout` "NHWC": a
    segmenter's app-ready form (`graphs.SegmenterApp`: NHWC [0, 1] in, the normalisation in the graph, class
    probabilities [1, H, W, C] out), with the format's own segmenter metadata where it has one (MediaPipe's)."""
    arch = model.arch
    check_exportable(arch, fmt, argmax, precision, layout)
    if size[0] % 32 or size[1] % 32 or min(size) < 32:
        raise UserError(f"{size[0]} {size[1]}: expected sides of at least 32 and multiples of 32",
                        option="img_size")
    rt = runtimes.by_format(fmt)
    writer = rt.writer(precision)
    if writer.calibrated and calibration is None:
        raise UserError(f"{precision} files are calibrated: no calibration images given", option="calib")
    model, graph, outputs = deploy_graph(model, fmt, size, argmax, max_detections, fused,
                                         _normalization(model) if layout == "NHWC" else None)
    meta = dict(meta if meta is not None else getattr(model, "meta", {}))
    side = {"edgevit_dense_file": SIDECAR_VERSION, "task": registry.get(arch).task,
            **_reading(model, size, outputs, meta), "variant": meta.get("variant"),
            "class_names": list(meta.get("class_names", [])), "format": fmt, "precision": precision, "fused": fused,
            "model_meta": meta}
    if precision == "fp32":
        check, checked_on = seeded_input(size), "the seeded input"
    elif check_images is not None:
        check, checked_on = check_images, f"{len(check_images)} images"
    elif calibration is not None:
        check, checked_on = calibration[:8], f"{len(calibration[:8])} calibration images"
    else:
        from ..deploy.export import random_calibration

        check, checked_on = random_calibration(8, size, seed=1), "8 random inputs"
    if writer.calibrated:
        side["calibration"] = f"{len(calibration)} images"
    app_metadata = None
    if layout == "NHWC" and rt.write_segmenter_metadata is not None:  # (what MediaPipe's ImageSegmenter reads)
        names = side["class_names"] or [str(i) for i in range(side["num_classes"])]

        def app_metadata(path):
            rt.write_segmenter_metadata(path, names)
        side["app_metadata"] = f"{rt.name}: the segmenter metadata its app clients read (class names, normalisation)"
    report = export_model(graph, rt, output, size, threads, check, precision, calibration, f"{len(calibration)} "
                          "images" if calibration is not None else "images", checked_on, trained=trained,
                          compare=dense_measures(outputs["outputs"], score_cut(outputs)),
                          traced=registry.get(arch).outputs == "detections", sidecar=side,
                          app_metadata=app_metadata)
    report.update(arch=arch, fused=fused, outputs=outputs["outputs"])
    return report


def eager_file(model: nn.Module, size: Tuple[int, int], fmt: str = "pte", argmax: bool = False,
               max_detections: Optional[int] = None, meta: Optional[dict] = None) -> DenseFile:
    """The graph a file of `fmt` would hold, run in PyTorch through the same pre/post-processing (what a file's
    metrics are compared with)."""
    graph, outputs = graph_for(model.eval(), fmt, size, argmax, max_detections)
    side = _reading(model, size, outputs, meta or {})

    def run(*inputs):
        with torch.no_grad():
            out = graph(*(torch.from_numpy(a) for a in inputs))
        return [o.numpy() for o in ([out] if torch.is_tensor(out) else out)]
    return DenseFile(Path("<pytorch>"), side, run)
