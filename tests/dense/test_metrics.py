import json

import pytest
import torch

from edgevit.dense.coco import load_coco
from edgevit.dense.metrics import coco_evaluate, confusion_matrix, segmentation_scores

# pycocotools 2.x vs numpy 2 (`copy=` keyword) warns on every mask decode; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _perfect(coco):
    res = []
    for a in coco.dataset["annotations"]:
        rle = coco.annToRLE(a)
        res.append({"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]),
                    "score": 1.0, "segmentation": {"size": rle["size"], "counts": rle["counts"]}})
    return res


def test_perfect_predictions_give_ap_1(shapes_root):
    coco = load_coco(shapes_root / "annotations" / "instances_training.json")
    scores = coco_evaluate(coco, _perfect(coco), ("bbox", "segm"))
    for t in ("bbox", "segm"):
        assert scores[t]["AP"] == pytest.approx(1.0)
        assert scores[t]["AP50"] == pytest.approx(1.0) and scores[t]["AP75"] == pytest.approx(1.0)


def test_hand_checked_ap(tmp_path):
    """One 100x100 image, one ground-truth box (medium size). The exact box alone: AP 1. With a
    higher-scored false positive in front: precision 1/2 at every recall level, so AP = 0.5."""
    gt = {"images": [{"id": 7, "file_name": "x.png", "width": 100, "height": 100}],
          "categories": [{"id": 3, "name": "square"}],
          "annotations": [{"id": 1, "image_id": 7, "category_id": 3, "bbox": [10, 10, 40, 40], "area": 1600,
                           "iscrowd": 0}]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    coco = load_coco(tmp_path / "gt.json")
    tp = {"image_id": 7, "category_id": 3, "bbox": [10, 10, 40, 40], "score": 0.9}
    fp = {"image_id": 7, "category_id": 3, "bbox": [60, 60, 30, 30], "score": 0.95}
    near = {"image_id": 7, "category_id": 3, "bbox": [10, 10, 40, 30], "score": 0.9}  # IoU 0.75
    s = coco_evaluate(coco, [tp])["bbox"]
    assert [s[k] for k in ("AP", "AP50", "AP75", "APm", "APs", "APl")] == pytest.approx([1, 1, 1, 1, -1, -1])
    assert coco_evaluate(coco, [fp, tp])["bbox"]["AP"] == pytest.approx(0.5)
    s = coco_evaluate(coco, [near])["bbox"]  # a hit at IoU 0.50..0.75 (6 of 10 thresholds)
    assert [s["AP50"], s["AP75"], s["AP"]] == pytest.approx([1.0, 1.0, 0.6])
    assert coco_evaluate(coco, [])["bbox"]["AP"] == 0.0


def test_miou_on_known_confusion():
    label = torch.tensor([0, 0, 1, 1, 1, 255, 3])
    pred = torch.tensor([0, 1, 1, 1, 0, 2, 3])
    conf = confusion_matrix(pred, label, num_classes=4)
    assert conf.tolist() == [[1, 1, 0, 0], [1, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]]
    s = segmentation_scores(conf, ["a", "b", "c", "d"])
    # IoU a = 1/3, b = 2/4, c absent from both (left out), d = 1
    assert s["mIoU"] == pytest.approx((1 / 3 + 2 / 4 + 1) / 3)
    assert s["aAcc"] == pytest.approx(4 / 6)
    assert s["mAcc"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert s["per_class_iou"]["c"] is None and s["per_class_iou"]["b"] == pytest.approx(0.5)
