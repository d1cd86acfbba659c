"""From a detector's raw head outputs to boxes: torchvision's RetinaNet / SSD `postprocess_detections`, twice.

An exported detector for a runtime without a general NMS (ExecuTorch, LiteRT) ends at its head: class logits
and box deltas for every anchor, plus the anchors. `postprocess` (numpy only) is what an app runs after it:
the same decoding, score threshold, top-k and class-wise NMS as torchvision, written out because an app
developer needs it in plain array code to port to Kotlin/Swift/C++, and `eval --exported` uses it, so the
reference is what the metrics measure. `GraphPostprocess` is the same algorithm in torch ops that export:
the ONNX file carries it (torchvision's `nms` becomes ONNX `NonMaxSuppression`). Tests hold both to
torchvision's own `postprocess_detections`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

# torchvision's BoxCoder default: exp() of a width/height delta is capped at 1000/16
BBOX_XFORM_CLIP = math.log(1000.0 / 16)


@dataclasses.dataclass(frozen=True)
class Decoding:
    """How raw outputs become detections. `kind` "retinanet": sigmoid scores, top-k over (anchor, class)
    per pyramid level (`level_sizes` anchors each); "ssd": softmax over classes with background 0, top-k per
    class over all anchors. Labels come out 0-based (the background removed)."""

    kind: str
    weights: Tuple[float, float, float, float]
    score_thresh: float
    nms_thresh: float
    topk: int
    max_detections: int
    image_size: Tuple[int, int]  # (H, W) the boxes are clipped to
    level_sizes: Tuple[int, ...] = ()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Decoding":
        return cls(kind=d["kind"], weights=tuple(d["weights"]), score_thresh=float(d["score_thresh"]),
                   nms_thresh=float(d["nms_thresh"]), topk=int(d["topk"]), max_detections=int(d["max_detections"]),
                   image_size=tuple(d["image_size"]), level_sizes=tuple(d.get("level_sizes", ())))


def decoding_of(model: nn.Module, image_size: Sequence[int], level_sizes: Sequence[int] = (),
                max_detections: int | None = None) -> Decoding:
    """The decoding a torchvision RetinaNet or SSD model applies (its thresholds, top-k and box coder)."""
    kind = "retinanet" if model.arch == "retinanet" else "ssd"
    topk = model.topk_candidates
    return Decoding(kind, tuple(float(w) for w in model.box_coder.weights), float(model.score_thresh),
                    float(model.nms_thresh), int(topk), int(max_detections or model.detections_per_img),
                    (int(image_size[0]), int(image_size[1])), tuple(int(n) for n in level_sizes))


# ---- numpy: the reference an app ports ---------------------------------------------------------------------
def decode_boxes(deltas: np.ndarray, anchors: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """torchvision's `BoxCoder.decode_single`: (dx, dy, dw, dh) deltas on (x1, y1, x2, y2) anchors -> boxes."""
    wx, wy, ww, wh = weights
    widths, heights = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    cx, cy = anchors[:, 0] + 0.5 * widths, anchors[:, 1] + 0.5 * heights
    dx, dy = deltas[:, 0] / wx, deltas[:, 1] / wy
    dw = np.minimum(deltas[:, 2] / ww, BBOX_XFORM_CLIP)
    dh = np.minimum(deltas[:, 3] / wh, BBOX_XFORM_CLIP)
    pcx, pcy = dx * widths + cx, dy * heights + cy
    half_w, half_h = 0.5 * np.exp(dw) * widths, 0.5 * np.exp(dh) * heights
    return np.stack([pcx - half_w, pcy - half_h, pcx + half_w, pcy + half_h], axis=1).astype(np.float32)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_thresh: float) -> np.ndarray:
    """Greedy NMS as torchvision's `nms`: indices kept, by decreasing score; a box is dropped when its IoU
    with a kept one is above `iou_thresh`."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes.T  # (zero-area boxes: IoU 0/0 = nan, never above the threshold, as torchvision)
    areas = (x2 - x1) * (y2 - y1)
    keep: List[int] = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        w = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        h = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = w * h
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = inter / (areas[i] + areas[rest] - inter)
        order = rest[~(iou > iou_thresh)]
    return np.asarray(keep, dtype=np.int64)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _top(scores: np.ndarray, thresh: float, k: int) -> np.ndarray:
    """Indices of the (at most `k`) highest scores above `thresh`, highest first."""
    idx = np.nonzero(scores > thresh)[0]
    return idx[np.argsort(-scores[idx], kind="stable")[:k]]


def postprocess(cls_logits: np.ndarray, bbox_regression: np.ndarray, anchors: np.ndarray, dec: Decoding
                ) -> Dict[str, np.ndarray]:
    """One image's detections from its raw outputs ([A, C] logits, [A, 4] deltas, [A, 4] anchors; a leading
    batch axis of 1 is dropped): boxes [N, 4] (x1, y1, x2, y2 in input pixels), scores [N], 0-based labels [N],
    N <= dec.max_detections, by decreasing score."""
    logits = np.asarray(cls_logits, dtype=np.float32).reshape(-1, cls_logits.shape[-1])
    deltas = np.asarray(bbox_regression, dtype=np.float32).reshape(-1, 4)
    boxes = decode_boxes(deltas, np.asarray(anchors, dtype=np.float32).reshape(-1, 4), dec.weights)
    h, w = dec.image_size
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
    picked_boxes, picked_scores, picked_labels = [], [], []
    if dec.kind == "retinanet":
        scores = np.exp(-np.logaddexp(0.0, -logits))  # sigmoid, without overflow for large negative logits
        classes = scores.shape[1]
        start = 0
        for n in dec.level_sizes:
            flat = scores[start:start + n].reshape(-1)
            idx = _top(flat, dec.score_thresh, dec.topk)
            picked_boxes.append(boxes[start + idx // classes])
            picked_scores.append(flat[idx])
            picked_labels.append(idx % classes)
            start += n
    else:  # ssd: class 0 is the background
        scores = _softmax(logits)
        for label in range(1, scores.shape[1]):
            idx = _top(scores[:, label], dec.score_thresh, dec.topk)
            picked_boxes.append(boxes[idx])
            picked_scores.append(scores[idx, label])
            picked_labels.append(np.full(len(idx), label - 1, dtype=np.int64))
    boxes = np.concatenate(picked_boxes).reshape(-1, 4)
    scores = np.concatenate(picked_scores).astype(np.float32)
    labels = np.concatenate(picked_labels).astype(np.int64)
    keep = [k for c in np.unique(labels) for k in np.nonzero(labels == c)[0][nms(boxes[labels == c],
                                                                                  scores[labels == c],
                                                                                  dec.nms_thresh)]]
    keep = np.asarray(keep, dtype=np.int64)
    keep = keep[np.argsort(-scores[keep], kind="stable")][:dec.max_detections]
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}


# ---- torch: the same inside an exported graph -------------------------------------------------------------
class GraphPostprocess(nn.Module):
    """`postprocess` in torch ops that `torch.export` and ONNX take (the decoding is torchvision's): fixed
    top-k sizes (torchvision's min(topk, candidates) is a data-dependent size; taking the top k of all scores
    and then the ones above the threshold picks the same set), class-wise NMS by torchvision's coordinate
    offset with a constant offset (boxes are clipped to the image, so one image side + 1 separates the
    classes)."""

    def __init__(self, dec: Decoding, anchors: torch.Tensor, num_logits: int):
        super().__init__()
        self.dec = dec
        self.register_buffer("anchors", anchors.detach().clone(), persistent=False)
        self.num_logits = num_logits

    def decode(self, deltas: torch.Tensor) -> torch.Tensor:
        """torchvision's own box decoding and clipping (BoxCoder, clip_boxes_to_image), traced into the graph."""
        from torchvision.models.detection._utils import BoxCoder
        from torchvision.ops import clip_boxes_to_image

        boxes = BoxCoder(self.dec.weights, BBOX_XFORM_CLIP).decode_single(deltas, self.anchors)
        return clip_boxes_to_image(boxes, self.dec.image_size)

    def forward(self, cls_logits: torch.Tensor, bbox_regression: torch.Tensor):
        from torchvision.ops import nms as tv_nms

        dec = self.dec
        logits, boxes = cls_logits.reshape(-1, self.num_logits), self.decode(bbox_regression.reshape(-1, 4))
        picked_boxes, picked_scores, picked_labels = [], [], []
        if dec.kind == "retinanet":
            scores = logits.sigmoid()
            start = 0
            for n in dec.level_sizes:
                flat = scores[start:start + n].reshape(-1)
                top, idx = flat.topk(min(dec.topk, flat.numel()))
                keep = top > dec.score_thresh
                top, idx = top[keep], idx[keep]
                picked_boxes.append(boxes[start + idx // self.num_logits])
                picked_scores.append(top)
                picked_labels.append(idx % self.num_logits)
                start += n
        else:
            scores = logits.softmax(dim=1)
            for label in range(1, self.num_logits):
                top, idx = scores[:, label].topk(min(dec.topk, scores.shape[0]))
                keep = top > dec.score_thresh
                picked_boxes.append(boxes[idx[keep]])
                picked_scores.append(top[keep])
                picked_labels.append(torch.full_like(idx[keep], label - 1))
        boxes, scores, labels = torch.cat(picked_boxes), torch.cat(picked_scores), torch.cat(picked_labels)
        offset = labels.to(boxes.dtype) * float(max(dec.image_size) + 1)
        keep = tv_nms(boxes + offset[:, None], scores, dec.nms_thresh)[:dec.max_detections]
        return boxes[keep], scores[keep], labels[keep]


def match_detections(a: Dict[str, np.ndarray], b: Dict[str, np.ndarray], score_tol: float = 1e-3,
                     box_tol: float = 0.05, score_thresh: float = 0.0) -> Dict[str, object]:
    """How two detection sets of one image agree (an exported file's against PyTorch's): greedy one-to-one
    matching by label, score within `score_tol` and every coordinate within `box_tol` px.

    A detection left unmatched is excused (either answer is right) when its score is within `score_tol` of the
    threshold, or when it ties (within `score_tol`) with another detection of its set that is itself unmatched:
    NMS and top-k may keep either of two tied candidates, and what they suppress follows from that choice.
    Every other unmatched detection counts in `unmatched`. `pairs`: the matched (index in a, index in b)."""
    with np.errstate(invalid="ignore"):
        used_a = np.zeros(len(a["scores"]), dtype=bool)
        used_b = np.zeros(len(b["scores"]), dtype=bool)
        pairs, box_diff, score_diff = [], 0.0, 0.0
        for i, (box, score, label) in enumerate(zip(a["boxes"], a["scores"], a["labels"])):
            cand = np.nonzero(~used_b & (b["labels"] == label) & (np.abs(b["scores"] - score) <= score_tol)
                              & (np.abs(b["boxes"] - box).max(axis=1, initial=0) <= box_tol))[0]
            if len(cand):
                j = int(cand[np.argmin(np.abs(b["scores"][cand] - score))])
                used_a[i] = used_b[j] = True
                pairs.append((i, j))
                box_diff = max(box_diff, float(np.abs(b["boxes"][j] - box).max()))
                score_diff = max(score_diff, float(abs(b["scores"][j] - score)))

    def count(d: Dict[str, np.ndarray], used: np.ndarray) -> Tuple[int, int]:
        s = d["scores"]
        close = np.abs(s[:, None] - s[None, :]) <= score_tol
        np.fill_diagonal(close, False)
        tied = (close & ~used[None, :]).any(axis=1)  # tied with another unmatched detection
        left = ~used & (s > score_thresh + score_tol)
        return int((left & ~tied).sum()), int((~used & ~(left & ~tied)).sum())

    (ua, ea), (ub, eb) = count(a, used_a), count(b, used_b)
    return {"detections": len(a["scores"]), "matched": len(pairs), "unmatched": ua + ub, "excused": ea + eb,
            "pairs": pairs, "max_box_diff": box_diff, "max_score_diff": score_diff}
