import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from edgevit.dense.ade import ADESegmentation, read_class_names
from edgevit.dense.coco import CocoDetection, resolve_split
from edgevit.dense.shapes import CATEGORIES, SEG_CLASSES

# pycocotools 2.x vs numpy 2 (`copy=` keyword) warns on every mask decode; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _coco_copy(shapes_root, tmp_path, edit):
    """A copy of the training split whose json `edit(data)` changes."""
    data = json.loads((shapes_root / "annotations" / "instances_training.json").read_text())
    edit(data)
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps(data))
    return ann, shapes_root / "images" / "training"


def test_shapes_layout_and_annotations(shapes_root):
    ann, img_dir = resolve_split(shapes_root, "training")
    ds = CocoDetection(ann, img_dir, masks=True)
    assert len(ds) == 4 and ds.class_names == [c["name"] for c in CATEGORIES]
    assert read_class_names(shapes_root) == SEG_CLASSES
    segs = [a["segmentation"] for a in ds.coco.dataset["annotations"]]
    assert any(isinstance(s, list) for s in segs) or any(isinstance(s, dict) for s in segs)
    for i in range(len(ds)):
        img, t = ds[i]
        assert img.shape == (3, 64, 64) and 0 <= img.min() and img.max() <= 1
        assert t["boxes"].shape == (len(t["labels"]), 4) and t["masks"].shape == (len(t["labels"]), 64, 64)
        for box, mask in zip(t["boxes"], t["masks"]):  # each box is its mask's extent
            ys, xs = torch.nonzero(mask, as_tuple=True)
            assert abs(xs.min().item() - box[0].item()) <= 1.5 and abs(xs.max().item() + 1 - box[2].item()) <= 1.5
    # the semantic labels agree with the instance masks (label = category + 1 in the PNG)
    seg = ADESegmentation(shapes_root, "training", num_classes=4)
    _, lab = seg.load(0)
    _, t = ds[0]
    for m, c in zip(t["masks"], t["labels"]):
        assert (lab[m.bool()] == c + 1).float().mean() > 0.9


def test_training_flip_is_consistent_and_reproducible(shapes_root):
    ann, img_dir = resolve_split(shapes_root, "training")
    ds = CocoDetection(ann, img_dir, train=True, masks=True, seed=3)
    a, b = ds[1], ds[1]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])
    flipped = [ds[i] for e in range(6) for i in [1] if not setattr(ds, "epoch", e)]
    plain = CocoDetection(ann, img_dir, masks=True)[1]
    seen_flip = False
    for img, t in flipped:
        if not torch.equal(img, plain[0]):
            seen_flip = True
            assert torch.equal(img, plain[0].flip(-1)) and torch.equal(t["masks"], plain[1]["masks"].flip(-1))
            assert torch.allclose(t["boxes"][:, 0], 64 - plain[1]["boxes"][:, 2])
    assert seen_flip


def test_bad_boxes_are_skipped_and_counted(shapes_root, tmp_path, capsys):
    def edit(d):
        a = d["annotations"]
        a[0]["bbox"] = [10, 10, 0, 5]         # degenerate (zero width)
        a[1]["bbox"] = [500, 500, 10, 10]     # outside the 64x64 image
        a[2]["bbox"] = [-5, -5, 20, 20]       # partly outside: clipped, kept
    ann, img_dir = _coco_copy(shapes_root, tmp_path, edit)
    ds = CocoDetection(ann, img_dir)
    assert ds.skipped == {"crowd": 0, "degenerate": 1, "outside_image": 1}
    assert "skipped 2 annotation(s)" in capsys.readouterr().err
    kept = [b for anns in ds.annotations.values() for _, b in anns]
    assert [0.0, 0.0, 15.0, 15.0] in kept
    n = sum(len(v) for v in ds.annotations.values())
    assert n == len(ds.coco.dataset["annotations"]) - 2


@pytest.mark.parametrize("edit,error,match", [
    (lambda d: d["annotations"][0].update(category_id=77), ValueError, "unknown category_id 77"),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), ValueError, r"bbox \[1, 2, 3\]"),
    (lambda d: d["images"][0].update(file_name="nope.png"), FileNotFoundError, "nope.png"),
    (lambda d: d["images"][0].update(width=99), ValueError, "says 99x64"),
])
def test_bad_coco_input_is_a_clear_error(shapes_root, tmp_path, edit, error, match):
    ann, img_dir = _coco_copy(shapes_root, tmp_path, edit)
    with pytest.raises(error, match=match):
        ds = CocoDetection(ann, img_dir)
        for i in range(len(ds)):
            ds[i]


def test_missing_coco_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="instances_val2017.json"):
        resolve_split(tmp_path, "val2017")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        CocoDetection(bad, tmp_path)


@pytest.fixture
def ade_copy(shapes_root, tmp_path):
    root = tmp_path / "ade"
    shutil.copytree(shapes_root / "images", root / "images")
    shutil.copytree(shapes_root / "annotations", root / "annotations")
    return root


def test_ade_reduce_zero_label_and_crops(ade_copy):
    lab_path = ade_copy / "annotations" / "training" / "shapes_000000.png"
    arr = np.array(Image.open(lab_path))
    arr[0, :5] = 0  # "other" -> ignored
    Image.fromarray(arr).save(lab_path)
    ds = ADESegmentation(ade_copy, "training", num_classes=4)
    _, lab = ds.load(0)
    assert (lab[0, :5] == 255).all() and lab[lab != 255].max() <= 3 and (lab == 0).any()
    tr = ADESegmentation(ade_copy, "training", num_classes=4, train=True, crop_size=96, scale=(64, 64))
    img, lab = tr[0]
    assert img.shape == (3, 96, 96) and lab.shape == (96, 96)
    assert set(lab.unique().tolist()) <= {0, 1, 2, 3, 255}


def test_ade_bad_labels(ade_copy):
    lab_path = ade_copy / "annotations" / "training" / "shapes_000001.png"
    arr = np.array(Image.open(lab_path))
    arr[3, 3] = 9  # class 8 after reduce-zero-label: out of range for 4 classes
    Image.fromarray(arr).save(lab_path)
    with pytest.raises(ValueError, match=r"shapes_000001.png has class values \[9\]"):
        ADESegmentation(ade_copy, "training", num_classes=4).load(1)
    Image.fromarray(arr[:32]).save(lab_path)
    with pytest.raises(ValueError, match=r"shapes_000001.png is 64x32 but image"):
        ADESegmentation(ade_copy, "training", num_classes=4).load(1)
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(lab_path)
    with pytest.raises(ValueError, match="single-channel"):
        ADESegmentation(ade_copy, "training", num_classes=4).load(1)
    lab_path.unlink()
    with pytest.raises(FileNotFoundError, match="shapes_000001.png"):
        ADESegmentation(ade_copy, "training", num_classes=4)
    with pytest.raises(FileNotFoundError, match="images/nosplit"):
        ADESegmentation(ade_copy, "nosplit")
