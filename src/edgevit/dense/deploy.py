"""Detectors and segmenters as deployable files: the graph each exports, the export with its runtime check, and
an exported file run the way the checkpoint's eval runs the model.

A dense file takes one normalised image (float32 NCHW, the mean/std of its sidecar) at the fixed size it was
exported at; the app resizes (keeping the aspect ratio and padding bottom/right, or, for SSDLite, stretching as
torchvision's SSD does) and normalises. What a file is, and how to read its outputs, is in `FILE.json` beside it
(`sidecar_path`): task, architecture, classes, input size and resize rule, mean/std, outputs, and for raw
detector outputs the decoding `postprocess` applies. Files:

* segmenters: logits at the input size, or (`argmax`) the class map in the graph (uint8 up to 256 classes);
* RetinaNet / SSDLite to ONNX: decoding, top-k and class-wise NMS in the graph (`GraphPostprocess`; ONNX
  `NonMaxSuppression`): boxes [N, 4], scores [N], 0-based labels [N], N <= max_detections;
* Mask R-CNN to ONNX only: boxes, scores, labels and masks [N, 1, H, W] (probabilities at the input size), by
  torch's TorchScript-based ONNX exporter (torch.export cannot trace torchvision's RPN/RoIHeads);
* RetinaNet / SSDLite to runtimes without a general NMS (ExecuTorch, LiteRT): the head's class logits and box
  deltas for every anchor, and the anchors; `postprocess` turns them into the same detections.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..deploy import fuse, runtimes
from ..deploy.export import TOLERANCE, seeded_input
from ..errors import UserError
from ..utils.io import atomic_path
from .models import DETECT_ARCHS, SEGMENT_ARCHS
from .postprocess import Decoding, GraphPostprocess, decoding_of, match_detections, postprocess

SIDECAR_VERSION = 1
# an argmax file's class map may differ from PyTorch's where two logits tie within float error
ARGMAX_AGREEMENT = 0.999


class ExportError(UserError):
    """A dense model cannot go to the format asked for; the message says why."""


def sidecar_path(path: os.PathLike | str) -> Path:
    return Path(str(path) + ".json")


def task_of(arch: str) -> str:
    return "segment" if arch in SEGMENT_ARCHS else "detect"


# ---- the graphs --------------------------------------------------------------------------------------------
class SegmenterGraph(nn.Module):
    """A segmenter's logits at the input size, or its class map (`argmax`, uint8 for <= 256 classes)."""

    def __init__(self, model: nn.Module, argmax: bool = False):
        super().__init__()
        self.model, self.argmax = model, argmax
        self.dtype = torch.uint8 if model.num_classes <= 256 else torch.int32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        return logits.argmax(dim=1).to(self.dtype) if self.argmax else logits


def _anchors(model: nn.Module, x: torch.Tensor) -> Tuple[torch.Tensor, List[int]]:
    """The detector's anchors at `x`'s size ([A, 4], x1 y1 x2 y2 in input pixels) and the anchors per level,
    from the model's own anchor generator."""
    from torchvision.models.detection.image_list import ImageList

    with torch.no_grad():
        feats = list(model.backbone(x).values())
        anchors = model.anchor_generator(ImageList(x, [tuple(x.shape[-2:])]), feats)[0]
    per_loc = model.anchor_generator.num_anchors_per_location()
    return anchors, [f.shape[-2] * f.shape[-1] * a for f, a in zip(feats, per_loc)]


class DetectorHead(nn.Module):
    """A RetinaNet / SSD up to its head: class logits [1, A, C] and box deltas [1, A, 4] for every anchor, and
    (`with_anchors`) the anchors [A, 4] as a third output."""

    def __init__(self, model: nn.Module, x: torch.Tensor, with_anchors: bool = True):
        super().__init__()
        self.backbone, self.head = model.backbone, model.head
        anchors, self.level_sizes = _anchors(model, x)
        self.register_buffer("anchors", anchors, persistent=False)
        self.with_anchors = with_anchors

    def forward(self, x: torch.Tensor):
        out = self.head(list(self.backbone(x).values()))
        if self.with_anchors:
            return out["cls_logits"], out["bbox_regression"], self.anchors
        return out["cls_logits"], out["bbox_regression"]


class DetectorGraph(nn.Module):
    """A RetinaNet / SSD with its decoding and class-wise NMS: boxes [N, 4], scores [N], 0-based labels [N]."""

    def __init__(self, model: nn.Module, x: torch.Tensor, max_detections: int):
        super().__init__()
        self.raw = DetectorHead(model, x, with_anchors=False)
        self.decoding = decoding_of(model, x.shape[-2:], self.raw.level_sizes, max_detections)
        num_logits = model.num_classes + model.label_offset  # SSD's background is a logit, RetinaNet has none
        self.post = GraphPostprocess(self.decoding, self.raw.anchors, num_logits)

    def forward(self, x: torch.Tensor):
        return self.post(*self.raw(x))


# ---- export ------------------------------------------------------------------------------------------------
class RCNNGraph(nn.Module):
    """torchvision's `GeneralizedRCNN.forward` (Mask / Faster R-CNN) for one normalised image at the file's
    size, without the transform's normalise/resize (the app does them): boxes, scores, 0-based labels and, for
    Mask R-CNN, masks [N, 1, H, W]."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        from torchvision.models.detection.image_list import ImageList

        size = [(int(x.shape[-2]), int(x.shape[-1]))]
        feats = self.model.backbone(x)
        proposals, _ = self.model.rpn(ImageList(x, size), feats)
        det, _ = self.model.roi_heads(feats, proposals, size)
        det = self.model.transform.postprocess(det, size, size)[0]
        out = (det["boxes"], det["scores"], det["labels"] - self.model.label_offset)
        return (*out, det["masks"]) if "masks" in det else out


TWO_STAGE = ("maskrcnn", "fasterrcnn")  # (fasterrcnn: torchvision's, a benchmark baseline)


def save_onnx_traced(model: nn.Module, x: torch.Tensor, path: Path) -> Dict[str, object]:
    """Mask R-CNN to ONNX through torch's TorchScript-based exporter, the path torchvision tests its detectors
    on: torch.export (the dynamo exporter) stops at torchvision's `batched_nms` (a branch on the number of boxes,
    unknown when tracing) inside the RPN and RoIHeads."""
    import warnings

    from ..deploy.runtimes.onnxruntime import strip_onnx

    # the exporter's warnings (constant folding, traced size arithmetic) are about torchvision's code, not the
    # user's; the file is checked in ONNX Runtime next
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (x,), str(path), dynamo=False, opset_version=17)
    model.eval()  # (the exporter leaves the module in the mode it traced; restated)
    strip_onnx(path)
    return {"exporter": "torchscript"}


def check_exportable(arch: str, fmt: str, argmax: bool = False) -> None:
    """Refuse what an architecture cannot go to, before any work (one line saying why)."""
    if arch in TWO_STAGE and fmt != "onnx":
        name = "Mask R-CNN" if arch == "maskrcnn" else "Faster R-CNN"
        why = ("torch.export cannot trace torchvision's RPN and RoIHeads (NMS and RoIAlign over a data-dependent "
               "number of boxes) and that runtime has no NMS" if fmt in ("pte", "tflite") else
               "only the ONNX path is built and checked for the two-stage detectors")
        raise ExportError(f"{name} does not export to {fmt}: {why}; export it to onnx, or a retinanet/ssdlite "
                          "model for ExecuTorch and LiteRT", option="format")
    if argmax and arch not in SEGMENT_ARCHS:
        raise ExportError(f"the class map (argmax) is a segmenter's output, not {arch}'s")
    if fmt == "ncnn" and arch not in SEGMENT_ARCHS:
        raise ExportError(f"{arch} does not export to ncnn: its raw-output file returns the anchors as a constant "
                          "output, which pnnx drops from the graph; export it to onnx, openvino or mnn",
                          option="format")


def graph_for(model: nn.Module, fmt: str, size: Tuple[int, int], argmax: bool = False,
              max_detections: Optional[int] = None) -> Tuple[nn.Module, Dict[str, object]]:
    """The graph `model` exports as for `fmt`, and what its sidecar says about the outputs."""
    x = seeded_input(size)
    if model.arch in SEGMENT_ARCHS:
        graph = SegmenterGraph(model, argmax).eval()
        return graph, {"outputs": ["classes" if argmax else "logits"],
                       "dtype": str(graph.dtype).replace("torch.", "") if argmax else "float32"}
    if model.arch in TWO_STAGE:
        if max_detections:
            model.roi_heads.detections_per_img = max_detections
        masks = ["masks"] if model.arch == "maskrcnn" else []
        heads = model.roi_heads
        return RCNNGraph(model).eval(), {"outputs": ["boxes", "scores", "labels", *masks],
                                         "score_thresh": float(heads.score_thresh),
                                         "nms_thresh": float(heads.nms_thresh),
                                         "max_detections": int(heads.detections_per_img)}
    if fmt == "onnx":
        graph = DetectorGraph(model, x, max_detections or model.detections_per_img).eval()
        return graph, {"outputs": ["boxes", "scores", "labels"], "decoding": graph.decoding.to_dict()}
    head = DetectorHead(model, x).eval()
    dec = decoding_of(model, size, head.level_sizes, max_detections)
    return head, {"outputs": ["cls_logits", "bbox_regression", "anchors"], "decoding": dec.to_dict()}


def _reading(model: nn.Module, size: Tuple[int, int], outputs: Dict[str, object], meta: dict) -> dict:
    """What a sidecar says to feed the file and read it (what `DenseFile` runs by): architecture, classes,
    input size, resize rule, mean/std, outputs."""
    mean, std = _normalization(model)
    return {"arch": model.arch, "num_classes": int(meta.get("num_classes", model.num_classes)),
            "input_size": list(size), "resize": "stretch" if model.arch == "ssdlite" else "fit", "mean": mean,
            "std": std, **outputs}


def score_cut(outputs: Dict[str, object]) -> float:
    """The score threshold a file's detections pass (its decoding's, or the R-CNN graph's; 0 for segmenters)."""
    return float(outputs["decoding"]["score_thresh"] if "decoding" in outputs else outputs.get("score_thresh", 0.0))


def _normalization(model: nn.Module) -> Tuple[List[float], List[float]]:
    if hasattr(model, "transform"):  # torchvision detectors normalise inside; the file does not
        return list(model.transform.image_mean), list(model.transform.image_std)
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD  # the segmentation data's (dense.ade)

    return list(IMAGENET_DEFAULT_MEAN), list(IMAGENET_DEFAULT_STD)


def _compare(kind: str, got: List[np.ndarray], want: Sequence[torch.Tensor], score_thresh: float
             ) -> Dict[str, object]:
    """The runtime's outputs against PyTorch's; raises naming the output that disagrees (or is missing)."""
    want = [w.detach().numpy() for w in want]
    if len(got) != len(want):  # (a converter that drops an output: ncnn's pnnx drops a constant one)
        names = {"cls_logits": ["cls_logits", "bbox_regression", "anchors"], "boxes": ["boxes", "scores", "labels",
                                                                                      "masks"]}.get(kind, [kind])
        raise UserError(f"the file has {len(got)} outputs where the graph has {len(want)} "
                        f"({', '.join(names[:len(want)])}): the runtime's converter dropped "
                        f"{', '.join(names[len(got):len(want)]) or 'some'}")
    if kind == "classes":
        agree = float((got[0] == want[0]).mean())
        if agree < ARGMAX_AGREEMENT:
            raise UserError(f"class map agrees with PyTorch on {100 * agree:.2f}% of pixels (< "
                            f"{100 * ARGMAX_AGREEMENT:.1f}%)")
        return {"pixel_agreement": agree}
    if kind == "boxes":
        keys = ("boxes", "scores", "labels")
        m = match_detections(dict(zip(keys, want)), dict(zip(keys, got)), score_thresh=score_thresh)
        if m["unmatched"]:
            raise UserError(f"detections: {m['unmatched']} of {m['detections']} differ from PyTorch's")
        out = {"detections_checked": m["matched"], "detections_tied": m["excused"],
               "max_box_diff": m["max_box_diff"], "max_score_diff": m["max_score_diff"]}
        if len(want) > 3:  # Mask R-CNN: the matched detections' mask probabilities
            diffs = [float(np.abs(got[3][j] - want[3][i]).mean()) for i, j in m["pairs"]]
            out["max_mask_mean_diff"] = max(diffs, default=0.0)
            if out["max_mask_mean_diff"] > TOLERANCE:
                raise UserError(f"output 'masks': mean |diff| {out['max_mask_mean_diff']:.3g} > {TOLERANCE} "
                                "against PyTorch's on a matched detection")
        return out
    diffs = {}
    names = ["cls_logits", "bbox_regression", "anchors"] if kind == "cls_logits" else ["logits"]
    for name, g, w in zip(names, got, want):
        diff = float(np.abs(g.astype(np.float32) - w).max()) if w.size else 0.0
        if not diff <= TOLERANCE:
            raise UserError(f"output {name!r}: max |diff| {diff:.3g} > {TOLERANCE} against PyTorch")
        diffs[name] = diff
    return {"max_abs_diff": max(diffs.values())}


def check_quantizable(arch: str, fmt: str) -> None:
    """int8 is for the segmenters, in the runtimes with an int8 flow (one line otherwise, before any work)."""
    if arch not in SEGMENT_ARCHS:
        raise ExportError(f"int8 export is for the segmenters ({', '.join(SEGMENT_ARCHS)}), not {arch}")
    if "int8" not in runtimes.by_format(fmt).writers:
        raise ExportError(f"{fmt}: int8 export is for {' or '.join(runtimes.int8_formats())}", option="format")


def _int8_check(graph: nn.Module, run, images: torch.Tensor) -> Dict[str, float]:
    """The int8 file against its fp32 graph on `images`: logits SQNR (dB) and class-map agreement."""
    from ..deploy.export import run_batch

    with torch.no_grad():
        want = torch.cat([graph(images[i:i + 1]) for i in range(len(images))])
    got = run_batch(lambda x: torch.from_numpy(np.ascontiguousarray(run(x.numpy())[0])), images)
    if want.dtype.is_floating_point:
        from ..deploy.quantize import agreement

        a = agreement(want, got)  # (its top-1 over dim 1 is the per-pixel class here)
        return {"sqnr_db": a["sqnr_db"], "pixel_agreement": a["top1_agreement"] / 100}
    return {"pixel_agreement": (got.long() == want.long()).float().mean().item()}


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


def fit_into(x: torch.Tensor, size: Sequence[int]) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """A [1, C, h, w] (normalised) image resized to fit `size` (H, W) keeping its aspect ratio, zero-padded
    bottom/right to it (what torchvision's batching pads with after normalising); and the resized (h', w').
    The resized size is floor(side * scale), as torchvision's resize with recompute_scale_factor."""
    h, w = x.shape[-2:]
    th, tw = size
    s = min(th / h, tw / w)
    nh, nw = min(th, max(1, math.floor(h * s))), min(tw, max(1, math.floor(w * s)))
    x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)
    return F.pad(x, (0, tw - nw, 0, th - nh)), (nh, nw)


def deploy_graph(model: nn.Module, fmt: str, size: Tuple[int, int], argmax: bool = False,
                 max_detections: Optional[int] = None, fused: bool = True):
    """(the model with its EdgeViT body fused for `fmt`'s runtime, or as released; the graph a file of `fmt`
    holds; what its sidecar says about the outputs)."""
    model = fuse(model.eval(), runtimes.by_format(fmt).name) if fused else model.eval()
    return (model, *graph_for(model, fmt, size, argmax, max_detections))


def save_graph(arch: str, fmt: str, graph: nn.Module, x: torch.Tensor, path: Path) -> Dict[str, object]:
    """Write a dense graph traced at `x` to `path` in `fmt` (the runtime record's writer; R-CNNs by the
    TorchScript-based ONNX exporter)."""
    check_exportable(arch, fmt)
    if arch in TWO_STAGE:
        return save_onnx_traced(graph, x, path)
    return runtimes.by_format(fmt).write("fp32", graph, x, path)


def export_dense(model: nn.Module, fmt: str, output: os.PathLike | str, size: Tuple[int, int], *,
                 argmax: bool = False, max_detections: Optional[int] = None, fused: bool = True,
                 threads: int = 2, meta: Optional[dict] = None, calibration: Optional[torch.Tensor] = None,
                 check_images: Optional[torch.Tensor] = None) -> Dict[str, object]:
    """Export a trained detector / segmenter (`load_dense_checkpoint`) at `size` (H, W; multiples of 32) to
    `output` in `fmt`, with its EdgeViT body fused for that runtime; run the file in its runtime on a seeded
    input and compare with PyTorch; then write the sidecar. Both files are renamed into place only after the
    check passes.

    `calibration` (N, 3, H, W normalised images at `size`): a static int8 file of a segmenter by the runtime's
    int8 flow (the classifiers' one), checked on `check_images` (logits SQNR and class-map agreement with the
    fp32 model; its accuracy is `eval --exported`'s)."""
    arch = model.arch
    check_exportable(arch, fmt, argmax)
    if calibration is not None:
        check_quantizable(arch, fmt)
    if size[0] % 32 or size[1] % 32 or min(size) < 32:
        raise UserError(f"{size[0]} {size[1]}: expected sides of at least 32 and multiples of 32",
                        option="img_size")
    rt = runtimes.by_format(fmt)
    rt.require(writing=True)
    torch.set_num_threads(threads)
    model, graph, outputs = deploy_graph(model, fmt, size, argmax, max_detections, fused)
    x = seeded_input(size)
    with torch.no_grad():
        want = graph(x)
    want = [want] if torch.is_tensor(want) else list(want)
    meta = dict(meta if meta is not None else getattr(model, "meta", {}))
    side = {"edgevit_dense_file": SIDECAR_VERSION, "task": task_of(arch), **_reading(model, size, outputs, meta),
            "variant": meta.get("variant"), "class_names": list(meta.get("class_names", [])), "format": fmt,
            "precision": "fp32", "fused": fused, "model_meta": meta}
    report: Dict[str, object] = {"format": fmt, "runtime": rt.name, "arch": arch, "output": str(output),
                                 "img_size": list(size), "precision": "fp32", "fused": fused,
                                 "outputs": outputs["outputs"]}
    if calibration is not None:
        side["precision"] = report["precision"] = "int8"
        side["int8"] = report["int8_calibration"] = f"{len(calibration)} images"
    # the sidecar is committed last: the model file is renamed into place first (inner context)
    with atomic_path(sidecar_path(output)) as tmp_side, atomic_path(output, rt.companions) as tmp:
        if calibration is not None:
            report.update(rt.write("int8", graph, x, tmp, calibration))
            check = calibration[:8] if check_images is None else check_images
            report.update(_int8_check(graph, rt.load(tmp, threads), check))
            report["checked_on"] = f"{len(check)} {'calibration ' if check_images is None else ''}images"
        else:
            report.update(save_graph(arch, fmt, graph, x, tmp))
            got = rt.load(tmp, threads)(x.numpy())
            try:
                report.update(_compare(outputs["outputs"][0], got, want, score_cut(outputs)))
            except UserError as e:
                raise UserError(f"{fmt} export of {output}: {e} (nothing written)") from None
        report["bytes"] = rt.size(tmp)
        tmp_side.write_text(json.dumps(side, indent=2) + "\n")
    report["sidecar"] = str(sidecar_path(output))
    return report


# ---- an exported dense file, run like the model ----------------------------------------------------------
@dataclasses.dataclass
class DenseFile:
    """An exported detector / segmenter (or, for comparison, its graph in PyTorch) with its sidecar: `segment`
    and `detect` take the images the data sets give and answer as the model's eval does."""

    path: Path
    meta: dict
    run: Callable[..., List[np.ndarray]]

    @property
    def arch(self) -> str:
        return self.meta["arch"]

    @property
    def size(self) -> Tuple[int, int]:
        return tuple(self.meta["input_size"])

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    def _normalize(self, img: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.meta["mean"]).view(3, 1, 1)
        std = torch.tensor(self.meta["std"]).view(3, 1, 1)
        return (img - mean) / std

    def segment(self, img: torch.Tensor, out_size: Sequence[int]) -> torch.Tensor:
        """Class map [H, W] at `out_size` of a normalised image (the segmentation data set's): fitted into the
        file's input (aspect ratio kept, zero-padded bottom/right: the sidecar's "fit"), run, the image's part
        of the logits (or of the class map, nearest) resized to `out_size`."""
        x, (nh, nw) = fit_into(img[None].float(), self.size)
        out = torch.from_numpy(np.ascontiguousarray(self.run(x.numpy())[0]))[..., :nh, :nw]
        if self.meta["outputs"][0] == "classes":
            return F.interpolate(out[:, None].float(), size=tuple(out_size), mode="nearest")[0, 0].long()
        return F.interpolate(out.float(), size=tuple(out_size), mode="bilinear", align_corners=False)[0].argmax(0)

    @property
    def score_thresh(self) -> float:
        """The score cut the file applies (raw-output files: the decoding's, which `detect` can lower)."""
        return score_cut(self.meta)

    def detect(self, img: torch.Tensor, score_thresh: Optional[float] = None) -> Dict[str, torch.Tensor]:
        """Detections (boxes in `img`'s pixels, scores, 0-based labels[, masks]) of a [3, H, W] image in [0, 1].
        `score_thresh` lowers the decoding's cut for raw-output files (files with NMS inside keep theirs)."""
        h, w = img.shape[-2:]
        th, tw = self.size
        if self.meta["resize"] == "stretch":  # torchvision's SSD: every image to the fixed size
            nh, nw = th, tw
            x = F.interpolate(self._normalize(img)[None], size=(th, tw), mode="bilinear", align_corners=False)
        else:  # RetinaNet, Mask R-CNN: fitted (aspect kept), padded bottom/right, as torchvision batches
            x, (nh, nw) = fit_into(self._normalize(img)[None], self.size)
        sy, sx = nh / h, nw / w  # the real resize ratio per axis (torchvision's resize_boxes)
        outs = self.run(x.numpy())
        if self.meta["outputs"][0] == "cls_logits":
            dec = Decoding.from_dict(self.meta["decoding"])
            # boxes clipped to the image's part of the canvas, as torchvision clips to the resized image
            dec = dataclasses.replace(dec, image_size=(nh, nw), score_thresh=min(
                dec.score_thresh, dec.score_thresh if score_thresh is None else score_thresh))
            det = postprocess(*outs[:3], dec)
        else:
            det = dict(zip(self.meta["outputs"], outs))
        boxes = torch.from_numpy(np.asarray(det["boxes"], dtype=np.float32)).reshape(-1, 4).clone()
        boxes[:, 0::2] = (boxes[:, 0::2] / sx).clamp(0, w)
        boxes[:, 1::2] = (boxes[:, 1::2] / sy).clamp(0, h)
        out = {"boxes": boxes, "scores": torch.from_numpy(np.asarray(det["scores"], dtype=np.float32)),
               "labels": torch.from_numpy(np.asarray(det["labels"]).astype(np.int64))}
        if "masks" in det:  # probabilities at the file's input: the image's part, back at the image's size
            masks = torch.from_numpy(np.asarray(det["masks"], dtype=np.float32))[..., :nh, :nw]
            out["masks"] = F.interpolate(masks, size=(h, w), mode="bilinear", align_corners=False) if len(masks) \
                else masks.new_zeros(0, 1, h, w)
        return out


SIDECAR_KEYS = ("task", "arch", "input_size", "resize", "mean", "std", "outputs", "num_classes")


def read_sidecar(path: os.PathLike | str) -> dict:
    """The sidecar of an exported dense file, checked (the file first, then its FILE.json and its keys)."""
    from ..utils.io import require_file

    require_file(path, "exported file")
    side = sidecar_path(path)
    if not side.is_file():
        raise UserError(f"{path}: no {side.name} beside it (the sidecar `edgevit detect|segment export` writes: "
                        "what the file is and how to read its outputs)", option="exported")
    try:
        meta = json.loads(side.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{side}: not a JSON sidecar of an exported dense model ({e})", option="exported") from e
    if not isinstance(meta, dict) or meta.get("edgevit_dense_file") != SIDECAR_VERSION:
        raise UserError(f"{side}: not the sidecar of an exported dense model (version {SIDECAR_VERSION})",
                        option="exported")
    missing = [k for k in SIDECAR_KEYS if k not in meta]
    if missing:
        raise UserError(f"{side}: lacks {', '.join(missing)} (re-export the model)", option="exported")
    return meta


def load_dense_file(path: os.PathLike | str, task: str, threads: int = 2) -> DenseFile:
    """An exported dense file and its sidecar, checked: the task asked for, the input size the file takes."""
    from ..deploy import load_exported

    meta = read_sidecar(path)
    if meta["task"] != task:
        raise UserError(f"{path}: a {meta['arch']} file; `edgevit {task}` takes "
                        f"{', '.join(DETECT_ARCHS if task == 'detect' else SEGMENT_ARCHS)}", option="exported")
    exported = load_exported(path, threads)
    if exported.input_size is not None and list(exported.input_size) != list(meta["input_size"]):
        raise UserError(f"{path}: the file takes {exported.input_size[0]}x{exported.input_size[1]}, its sidecar "
                        f"says {meta['input_size'][0]}x{meta['input_size'][1]}: they come from different exports",
                        option="exported")
    return DenseFile(Path(path), meta, exported.run)


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
