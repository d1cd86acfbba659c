"""COCO AP via pycocotools; mIoU / pixel accuracy from a confusion matrix (as mmsegmentation)."""
from __future__ import annotations

import contextlib
import io
from typing import Dict, List, Sequence

import numpy as np
import torch

COCO_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def detections_to_coco(outputs: Sequence[dict], image_ids: Sequence[int], cat_ids: Sequence[int],
                       label_offset: int = 0, mask_thresh: float = 0.5) -> List[dict]:
    """torchvision detector outputs (boxes xyxy, labels, scores[, masks]) -> COCO result dicts."""
    from pycocotools import mask as mask_utils

    results = []
    for out, image_id in zip(outputs, image_ids):
        boxes = out["boxes"].detach().cpu().numpy().astype(np.float64)
        labels = out["labels"].cpu().numpy() - label_offset
        scores = out["scores"].detach().cpu().numpy()
        masks = out.get("masks")
        for i in range(len(boxes)):
            x1, y1, x2, y2 = boxes[i].tolist()
            r = {"image_id": int(image_id), "category_id": int(cat_ids[int(labels[i])]),
                 "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(scores[i])}
            if masks is not None:
                m = (masks[i, 0] >= mask_thresh).cpu().numpy().astype(np.uint8)
                rle = mask_utils.encode(np.asfortranarray(m))
                rle["counts"] = rle["counts"].decode("ascii")
                r["segmentation"] = rle
            results.append(r)
    return results


def coco_evaluate(coco_gt, results: List[dict], iou_types: Sequence[str] = ("bbox",),
                  image_ids: Sequence[int] | None = None) -> Dict[str, Dict[str, float]]:
    """{"bbox": {"AP": .., "AP50": .., ...}, "segm": {...}} on 0..1; no detections -> all zeros."""
    from pycocotools.cocoeval import COCOeval

    out = {}
    for iou_type in iou_types:
        if not results:
            out[iou_type] = {k: 0.0 for k in COCO_STATS}
            continue
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its table and timings
            coco_dt = coco_gt.loadRes([dict(r) for r in results])
            ev = COCOeval(coco_gt, coco_dt, iou_type)
            if image_ids is not None:
                ev.params.imgIds = sorted(int(i) for i in image_ids)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        # pycocotools reports -1 where a size range has no ground truth; keep that meaning explicit
        out[iou_type] = {k: float(v) for k, v in zip(COCO_STATS, ev.stats[:6])}
    return out


def confusion_matrix(pred: torch.Tensor, label: torch.Tensor, num_classes: int, ignore_index: int = 255
                     ) -> torch.Tensor:
    """[num_classes, num_classes] counts, rows = ground truth, columns = prediction; ignored pixels dropped."""
    keep = label != ignore_index
    idx = label[keep].long() * num_classes + pred[keep].long()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def segmentation_scores(conf: torch.Tensor, class_names: Sequence[str] | None = None) -> Dict[str, object]:
    """mIoU, mAcc (mean per-class accuracy) and aAcc (pixel accuracy), mmseg's definitions: classes
    absent from both ground truth and prediction (union 0) are left out of the means."""
    conf = conf.double()
    tp = conf.diag()
    gt, pred = conf.sum(1), conf.sum(0)
    union = gt + pred - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    acc = torch.where(gt > 0, tp / gt.clamp(min=1), torch.full_like(tp, float("nan")))
    names = class_names or [str(i) for i in range(len(tp))]
    return {
        "mIoU": float(np.nanmean(iou.numpy())) if (union > 0).any() else 0.0,
        "mAcc": float(np.nanmean(acc.numpy())) if (gt > 0).any() else 0.0,
        "aAcc": float(tp.sum() / conf.sum()) if conf.sum() > 0 else 0.0,
        "per_class_iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, iou.tolist())},
    }
