"""The graph a detector / segmenter exports as, per runtime (what the runtime's record says it can run:
`edgevit.deploy.runtimes`), and the check that an architecture can go to a runtime at all.

A dense file takes one normalised image (float32 NCHW, the mean/std of its sidecar) at the fixed size it was
exported at; the app resizes (keeping the aspect ratio and padding bottom/right, or, for SSDLite, stretching as
torchvision's SSD does) and normalises. What a file is, and how to read its outputs, is in `FILE.json` beside it
(`sidecar_path`): task, architecture, classes, input size and resize rule, mean/std, outputs, and for raw
detector outputs the decoding `postprocess` applies. Files:

* segmenters: logits at the input size, or (`argmax`) the class map in the graph (uint8 up to 256 classes), or
  (the app-ready form, `SegmenterApp`) an NHWC image in [0, 1] in and class probabilities [1, H, W, C] out;
* RetinaNet / SSDLite to ONNX: decoding, top-k and class-wise NMS in the graph (`GraphPostprocess`; ONNX
  `NonMaxSuppression`): boxes [N, 4], scores [N], 0-based labels [N], N <= max_detections;
* Mask R-CNN to ONNX only: boxes, scores, labels and masks [N, 1, H, W] (probabilities at the input size), by
  torch's TorchScript-based ONNX exporter (torch.export cannot trace torchvision's RPN/RoIHeads);
* RetinaNet / SSDLite to runtimes without a general NMS (ExecuTorch, LiteRT): the head's class logits and box
  deltas for every anchor, and the anchors; `postprocess` turns them into the same detections.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from ..deploy import fuse, runtimes
from ..deploy.app_input import AppInput
from ..deploy.export import seeded_input
from ..errors import UserError
from . import registry
from .postprocess import GraphPostprocess, decoding_of


class ExportError(UserError):
    """A dense model cannot go to the format or precision asked for; the message says why."""


class SegmenterGraph(nn.Module):
    """A segmenter's logits at the input size, or its class map (`argmax`, uint8 for <= 256 classes)."""

    def __init__(self, model: nn.Module, argmax: bool = False):
        super().__init__()
        self.model, self.argmax = model, argmax
        self.dtype = torch.uint8 if model.num_classes <= 256 else torch.int32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        return logits.argmax(dim=1).to(self.dtype) if self.argmax else logits


class SegmenterApp(AppInput):
    """A segmenter as MediaPipe's ImageSegmenter takes it (`deploy.app_input.AppInput`): an NHWC image in [0, 1]
    (what camera pipelines pass), the per-channel mean/std in the graph (MediaPipe normalises per tensor only),
    class probabilities [1, H, W, C] out (its confidence masks; the category mask is their argmax)."""

    def __init__(self, segmenter: nn.Module, mean, std):
        super().__init__(segmenter, "NHWC", "float32", mean, std)

    def answer(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.softmax(1).permute(0, 2, 3, 1)


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


def check_exportable(arch: str, fmt: str, argmax: bool = False, precision: str = "fp32", layout: str = "NCHW"
                     ) -> None:
    """Refuse what an architecture cannot go to, before any work (one line saying why): from the architecture's
    entry (`dense.registry`) and the runtime's record."""
    entry, rt = registry.get(arch), runtimes.by_format(fmt)
    if entry.outputs == "detections" and rt.write_traced is None:
        why = "torch.export cannot trace torchvision's RPN and RoIHeads (NMS and RoIAlign over a data-dependent number "
        traced = " or ".join(r.format for r in runtimes.RUNTIMES.values() if r.write_traced)
        raise ExportError(f"{entry.title.split(' (')[0]} does not export to {fmt}: {why}of boxes) and {rt.name} writes "
                          f"no traced graph; export it to {traced}, or a one-stage detector "
                          f"({', '.join(a for a in registry.names('detect') if registry.get(a).outputs == 'raw')})",
                          option="format")
    if argmax and entry.task != "segment":
        raise ExportError(f"the class map (argmax) is a segmenter's output, not {arch}'s")
    if layout not in ("NCHW", "NHWC"):
        raise ExportError(f"{layout!r}: expected NCHW or NHWC", option="layout")
    if layout == "NHWC":
        if entry.task != "segment" or argmax:
            raise ExportError("the app-ready NHWC input is for segmenters' probabilities (MediaPipe's "
                              f"ImageSegmenter), not {'a class map' if argmax else arch + ' detections'}",
                              option="layout")
        if layout not in rt.input_layouts:
            raise ExportError(f"{rt.name} files take {' or '.join(rt.input_layouts)} input", option="layout")
        if rt.writer(precision).calibrated:
            raise ExportError(f"the app-ready form is a float file: {precision} segmenters keep NCHW input",
                              option="layout")
    def keeps(r) -> bool:
        return r.detections_in_graph or r.constant_outputs
    if entry.outputs == "raw" and not keeps(rt):
        raise ExportError(f"{arch} does not export to {fmt}: its raw-output file returns the anchors as a constant "
                          f"output, which {rt.name}'s converter drops from the graph; export it to "
                          f"{', '.join(r.format for r in runtimes.RUNTIMES.values() if r.format and keeps(r))}",
                          option="format")
    if precision != "fp32":
        rt.writer(precision)  # (one line naming the runtime's precisions)
        if not entry.quantizable:
            raise ExportError(f"{precision} export is for the segmenters "
                              f"({', '.join(registry.names('segment'))}), whose logits the precision's rule judges; "
                              f"{arch}'s detections are checked box by box in fp32", option="precision")


def graph_for(model: nn.Module, fmt: str, size: Tuple[int, int], argmax: bool = False,
              max_detections: Optional[int] = None, app: Optional[Tuple[List[float], List[float]]] = None
              ) -> Tuple[nn.Module, Dict[str, object]]:
    """The graph `model` exports as for `fmt`, and what its sidecar says about the outputs; `app` (mean, std): a
    segmenter's app-ready form (`SegmenterApp`)."""
    entry, rt = registry.get(model.arch), runtimes.by_format(fmt)
    x = seeded_input(size)
    if app is not None:
        return SegmenterApp(SegmenterGraph(model).eval(), *app).eval(), {
            "outputs": ["probabilities"], "layout": "NHWC", "normalization": "in the graph"}
    if entry.task == "segment":
        graph = SegmenterGraph(model, argmax).eval()
        return graph, {"outputs": ["classes" if argmax else "logits"],
                       "dtype": str(graph.dtype).replace("torch.", "") if argmax else "float32"}
    if entry.outputs == "detections":
        if max_detections:
            model.roi_heads.detections_per_img = max_detections
        heads = model.roi_heads
        return RCNNGraph(model).eval(), {"outputs": ["boxes", "scores", "labels", *(["masks"] if entry.masks else [])],
                                         "score_thresh": float(heads.score_thresh),
                                         "nms_thresh": float(heads.nms_thresh),
                                         "max_detections": int(heads.detections_per_img)}
    if rt.detections_in_graph:
        graph = DetectorGraph(model, x, max_detections or model.detections_per_img).eval()
        return graph, {"outputs": ["boxes", "scores", "labels"], "decoding": graph.decoding.to_dict()}
    head = DetectorHead(model, x).eval()
    dec = decoding_of(model, size, head.level_sizes, max_detections)
    return head, {"outputs": ["cls_logits", "bbox_regression", "anchors"], "decoding": dec.to_dict()}


def deploy_graph(model: nn.Module, fmt: str, size: Tuple[int, int], argmax: bool = False,
                 max_detections: Optional[int] = None, fused: bool = True,
                 app: Optional[Tuple[List[float], List[float]]] = None):
    """(the model with its EdgeViT body fused for `fmt`'s runtime, or as released; the graph a file of `fmt`
    holds; what its sidecar says about the outputs)."""
    model = fuse(model.eval(), runtimes.by_format(fmt).name) if fused and registry.get(model.arch).edgevit \
        else model.eval()
    return (model, *graph_for(model, fmt, size, argmax, max_detections, app))
