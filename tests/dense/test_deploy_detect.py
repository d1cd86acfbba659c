"""Detectors on the device: export to each runtime with the file's COCO metrics equal to the model's, and an
exported detector with nothing to detect."""
import json

import pytest
import torch

from edgevit.cli.main import main

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _json(capsys):
    return json.loads(capsys.readouterr().out)


def _detect_eval(source, shapes_root, capsys):
    assert main(["detect", "eval", *source, "--data", str(shapes_root), "--split", "validation", "--device", "cpu",
                 "--no-progress", "--json"]) == 0
    return _json(capsys)


@pytest.mark.parametrize("arch,fmt", [("retinanet", "onnx"), ("retinanet", "tflite"), ("retinanet", "pte"),
                                      ("maskrcnn", "onnx")])
def test_detect_export_eval_predict(arch, fmt, trained, det_root, tmp_path, capsys):
    shapes_root = det_root
    capsys.readouterr()
    out = tmp_path / f"det.{fmt}"
    assert main(["detect", "export", "--checkpoint", str(trained[arch]), "--format", fmt, "-o", str(out),
                 "--json"]) == 0
    rep = _json(capsys)
    nms_in_graph = fmt == "onnx"
    assert rep["outputs"][:3] == (["boxes", "scores", "labels"] if nms_in_graph else
                                  ["cls_logits", "bbox_regression", "anchors"])
    assert rep["img_size"] == ([320, 320] if arch == "ssdlite" else [64, 64])
    want = _detect_eval(["--checkpoint", str(trained[arch])], shapes_root, capsys)
    got = _detect_eval(["--exported", str(out)], shapes_root, capsys)
    assert want["num_detections"] > 0
    for key in ("bbox_AP", "bbox_AP50") + (("segm_AP",) if arch == "maskrcnn" else ()):
        assert got[key] == pytest.approx(want[key], abs=0.005), key
    assert abs(got["num_detections"] - want["num_detections"]) <= 0.02 * want["num_detections"]
    image = shapes_root / "images" / "validation" / "shapes_000000.png"
    assert main(["detect", "predict", str(image), "--exported", str(out), "--out", str(tmp_path / "p.png"),
                 "--score-thresh", "0.0", "--json"]) == 0
    boxes = [d["box_xyxy"] for d in _json(capsys)["detections"]]
    assert boxes and all(0 <= b[0] <= b[2] <= 64 and 0 <= b[1] <= b[3] <= 64 for b in boxes)


def test_maskrcnn_onnx_with_no_detections(trained, tmp_path):
    """A known failure of exported detectors: nothing above the threshold. The file gives empty outputs."""
    from edgevit.dense.engine import load_dense_checkpoint
    from edgevit.dense.export import export_dense
    from edgevit.dense.files import load_dense_file

    model = load_dense_checkpoint(trained["maskrcnn"], "detect")
    model.roi_heads.score_thresh = 1.01  # no score reaches it
    out = tmp_path / "none.onnx"
    rep = export_dense(model, "onnx", out, (64, 64), meta=model.meta)
    assert rep["detections_checked"] == 0
    det = load_dense_file(out, "detect").detect(torch.rand(3, 64, 64))
    assert det["boxes"].shape == (0, 4) and det["masks"].shape == (0, 1, 64, 64)
