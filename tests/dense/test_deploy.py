"""Dense models on the device: the post-processing against torchvision's, segmenters exported to each runtime
(fp32, int8) with the file's mIoU equal to the model's, and bad input refused with nothing written. (Detectors:
test_deploy_detect.py; the dense bench: test_bench.py.)"""
import json
import shutil

import numpy as np
import pytest
import torch

from edgevit.cli.main import main
from edgevit.dense.export import eager_file
from edgevit.dense.models import create_detector
from edgevit.dense.postprocess import match_detections
from edgevit.deploy.metadata import sidecar_path

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _json(capsys):
    return json.loads(capsys.readouterr().out)


def _spread_scores(model):
    """An untrained head scores every anchor at its prior (RetinaNet: 0.01): ties everywhere. Random class
    weights give distinct scores, so detections can be compared one by one."""
    torch.manual_seed(0)
    head = model.head.classification_head
    for m in head.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.normal_(m.weight, std=0.05)
            if m.bias is not None:
                torch.nn.init.normal_(m.bias, std=1.0)
    return model


@pytest.mark.parametrize("arch,size,image,min_max,forms", [
    ("retinanet", 64, (64, 64), (64, 64), ("pte", "onnx")),
    ("ssdlite", 320, (320, 320), (320, 320), ("pte", "onnx")),
    # a landscape image fitted into the canvas at half size (96x128 -> 48x64, padded to 64x64), as torchvision's
    # transform does with min/max size 48/64; and an SSD image stretched (torchvision's fixed size)
    ("retinanet", 64, (96, 128), (48, 64), ("pte",)),
    ("ssdlite", 320, (200, 300), (320, 320), ("pte", "onnx")),
])
def test_postprocess_matches_torchvision(arch, size, image, min_max, forms):
    """The numpy reference (raw-output files) and the in-graph torch version (ONNX files), behind the file's
    resize rule, give torchvision's own detections on the original image: same boxes, scores and labels."""
    model = _spread_scores(create_detector(arch, 3, fpn_channels=32, min_size=min_max[0], max_size=min_max[1]))
    model = model.eval()
    img = torch.rand(3, *image, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model([img])[0]
    assert len(want["scores"]) > 20
    want = {k: v.numpy() for k, v in want.items()}
    want["labels"] = want["labels"] - model.label_offset
    for fmt in forms:  # raw head + numpy `postprocess`; `GraphPostprocess` in the graph
        got = {k: v.numpy() for k, v in eager_file(model, (size, size), fmt).detect(img).items()}
        np.testing.assert_allclose(got["scores"], want["scores"], rtol=1e-5, atol=1e-6)  # (same order)
        # one to one, as sets: detections of equal score (symmetric anchors on the 1x1 / 2x2 levels) may come
        # in either order
        m = match_detections(got, want, score_tol=1e-6, box_tol=1e-3)
        assert m["matched"] == len(want["scores"]) == len(got["scores"]), (fmt, m)


def test_numpy_nms_keeps_what_torchvision_keeps():
    from torchvision.ops import nms as tv_nms

    from edgevit.dense.postprocess import nms

    g = torch.Generator().manual_seed(0)
    xy = torch.rand(300, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + 5 + torch.rand(300, 2, generator=g) * 30], 1)
    scores = torch.rand(300, generator=g)
    for thresh in (0.3, 0.5, 0.7):
        assert nms(boxes.numpy(), scores.numpy(), thresh).tolist() == tv_nms(boxes, scores, thresh).tolist()


def _segment_eval(source, shapes_root, capsys):
    assert main(["segment", "eval", *source, "--data", str(shapes_root), "--device", "cpu", "--no-progress",
                 "--json"]) == 0
    return _json(capsys)


@pytest.mark.parametrize("arch,fmt,extra", [("semfpn", "onnx", []), ("lraspp", "onnx", ["--argmax"])])
# (a .pte segmenter: the int8 test below; ExecuTorch's lowering is the slow part of a test)
def test_segment_export_eval_predict(arch, fmt, extra, trained, shapes_root, tmp_path, capsys):
    capsys.readouterr()
    out = tmp_path / f"seg.{fmt}"
    assert main(["segment", "export", "--checkpoint", str(trained[arch]), "--format", fmt, "--img-size", "64",
                 "-o", str(out), *extra, "--json"]) == 0
    rep = _json(capsys)
    assert rep["outputs"] == (["classes"] if extra else ["logits"]) and rep["fused"]
    assert rep.get("pixel_agreement", 1.0) >= 0.999 and rep.get("max_abs_diff", 0.0) <= 1e-3
    side = json.loads(sidecar_path(out).read_text())
    assert side["arch"] == arch and side["input_size"] == [64, 64] and side["num_classes"] == 4
    want = _segment_eval(["--checkpoint", str(trained[arch])], shapes_root, capsys)
    got = _segment_eval(["--exported", str(out)], shapes_root, capsys)
    assert want["mIoU"] > 0.05  # a model that has learnt something, so equal scores mean equal predictions
    assert got["mIoU"] == pytest.approx(want["mIoU"], abs=0.005)
    assert got["exported"] == str(out) and got["arch"] == arch
    image = shapes_root / "images" / "validation" / "shapes_000000.png"
    assert main(["segment", "predict", str(image), "--exported", str(out), "--out", str(tmp_path / "p.png"),
                 "--json"]) == 0
    assert abs(sum(_json(capsys)["class_fractions"].values()) - 1.0) < 1e-3


def test_dense_export_bad_input(trained, tmp_path, capsys):
    def refused(argv, *needles):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert all(n in err for n in needles), err
        return err

    det, seg = str(trained["retinanet"]), str(trained["semfpn"])
    out = tmp_path / "x.onnx"
    refused(["detect", "export", "--checkpoint", seg, "--format", "onnx", "-o", str(out)], "semfpn", "segment")
    refused(["segment", "export", "--checkpoint", det, "--format", "onnx", "-o", str(out)], "retinanet", "detect")
    refused(["segment", "export", "--checkpoint", seg, "--format", "onnx", "--img-size", "100", "-o", str(out)],
            "a multiple of 32")
    refused(["detect", "export", "--checkpoint", str(trained["maskrcnn"]), "--format", "tflite", "-o",
             str(tmp_path / "m.tflite")], "Mask R-CNN", "tflite")
    refused(["segment", "export", "--checkpoint", seg, "--format", "onnx", "-o", str(tmp_path / "x.pte")],
            ".onnx")
    assert not any(tmp_path.iterdir())
    out.write_bytes(b"mine")
    refused(["segment", "export", "--checkpoint", seg, "--format", "onnx", "-o", str(out)], str(out), "exists")
    assert out.read_bytes() == b"mine" and not sidecar_path(out).exists()
    out.unlink()

    # --exported: a segmenter's file to detect, a file without its sidecar, a sidecar of another export
    assert main(["segment", "export", "--checkpoint", seg, "--format", "onnx", "--img-size", "64", "-o",
                 str(out), "--json"]) == 0
    data = str(trained["semfpn"].parents[2])  # (unused by the refusals, which come first)
    refused(["detect", "eval", "--exported", str(out), "--data", data], "semfpn", "detect")
    alone = tmp_path / "alone.onnx"
    shutil.copy(out, alone)
    refused(["segment", "eval", "--exported", str(alone), "--data", data], "alone.onnx.json")
    side = json.loads(sidecar_path(out).read_text())
    sidecar_path(alone).write_text(json.dumps({**side, "input_size": [96, 96]}))
    refused(["segment", "eval", "--exported", str(alone), "--data", data], "64x64", "96x96")
    refused(["segment", "eval", "--exported", str(alone), "--checkpoint", seg, "--data", data], "not allowed")
    assert np.array_equal(np.frombuffer(alone.read_bytes(), np.uint8), np.frombuffer(out.read_bytes(), np.uint8))


# (LR-ASPP within 2 points: the int8 files move a few border pixels of the class these 12-iteration models barely
# find, whose IoU on the 2 val images is ~0.03. MNN's quantizer (EMA ranges, the one method that runs in MNN 3.6)
# measured 1.7 points; ExecuTorch's 0.75 with stage 1's 1x1 convolutions float, 1.03 with them int8, its SQNR
# 40.5 and 39.5 dB with 100% pixel agreement on the check images either way)
@pytest.mark.parametrize("arch,fmt,points", [("semfpn", "onnx", 1), ("lraspp", "pte", 2), ("lraspp", "mnn", 2)])
def test_segment_int8_export_keeps_miou(arch, fmt, points, trained, shapes_root, tmp_path, capsys):
    """Post-training int8 of the segmenters, calibrated on the training images: the file's mIoU in its
    runtime within a point (two for MNN) of the fp32 model's."""
    capsys.readouterr()
    out = tmp_path / f"seg8.{fmt}"
    assert main(["segment", "export", "--checkpoint", str(trained[arch]), "--format", fmt, "--img-size", "64",
                 "--quantize", "int8", "--calib", str(shapes_root), "--calib-images", "4", "-o", str(out),
                 "--json"]) == 0
    rep = _json(capsys)
    assert rep["precision"] == "int8" and rep["sqnr_db"] > 15 and rep["pixel_agreement"] > 0.9
    assert json.loads(sidecar_path(out).read_text())["precision"] == "int8"
    from edgevit.dense.engine import load_dense_checkpoint
    from edgevit.models.complexity import count_params

    fp32_bytes = 4e6 * count_params(load_dense_checkpoint(trained[arch], "segment"))
    assert rep["bytes"] < 0.4 * fp32_bytes  # int8 weights
    want = _segment_eval(["--checkpoint", str(trained[arch])], shapes_root, capsys)
    got = _segment_eval(["--exported", str(out)], shapes_root, capsys)
    assert got["mIoU"] == pytest.approx(want["mIoU"], abs=points / 100)
    image = shapes_root / "images" / "validation" / "shapes_000000.png"
    assert main(["segment", "predict", str(image), "--exported", str(out), "--out", str(tmp_path / "p.png"),
                 "--json"]) == 0
    assert abs(sum(_json(capsys)["class_fractions"].values()) - 1.0) < 1e-3


def test_int8_refused_where_it_does_not_apply(trained, shapes_root, tmp_path, capsys):
    from edgevit.dense.graphs import ExportError, check_exportable
    from edgevit.errors import UserError

    with pytest.raises(ExportError, match="int8 export is for the segmenters"):
        check_exportable("retinanet", "onnx", precision="int8")
    with pytest.raises(UserError, match=r"ncnn writes no int8 files \(its precisions: fp32, fp16\)"):
        check_exportable("lraspp", "ncnn", precision="int8")
    out = tmp_path / "never.onnx"
    for extra, flag in ((["--quantize", "int8"], "--calib"), (["--calib-images", "8"], "--calib-images")):
        assert main(["segment", "export", "--checkpoint", str(trained["lraspp"]), "--format", "onnx", *extra,
                     "-o", str(out)]) == 2
        assert flag in capsys.readouterr().err
    assert not out.exists()


def test_a_sidecar_with_values_a_file_cannot_be_read_by_is_named(tmp_path):
    """An edited or broken FILE.json is refused when read, naming what is wrong: another class count than its
    names, an empty output list, a one-value mean, std 0 (detections silently 0 otherwise), no decoding."""
    from edgevit.dense.files import read_sidecar
    from edgevit.errors import UserError

    f = tmp_path / "d.onnx"
    f.write_bytes(b"model")
    good = {"edgevit_dense_file": 1, "task": "detect", "arch": "retinanet", "input_size": [64, 64],
            "resize": "fit", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "num_classes": 3,
            "class_names": ["a", "b", "c"], "outputs": ["cls_logits", "bbox_regression", "anchors"],
            "decoding": {"kind": "retinanet"}}
    sidecar_path(f).write_text(json.dumps(good))
    assert read_sidecar(f)["arch"] == "retinanet"
    for edit, needle in (({"num_classes": 4}, "4 but 3 class names"), ({"outputs": []}, "outputs"),
                         ({"mean": [0.5]}, "mean"), ({"std": [0.2, 0.0, 0.2]}, "positive"),
                         ({"decoding": None}, "decoding"), ({"input_size": [60, 64]}, "multiples of 32")):
        sidecar_path(f).write_text(json.dumps({**good, **edit}))
        with pytest.raises(UserError, match=needle):
            read_sidecar(f)


@pytest.mark.parametrize("arch", ["lraspp", "semfpn"])
def test_mediapipe_image_segmenter_runs_the_app_ready_tflite_file(arch, trained, shapes_root, tmp_path, capsys):
    """segment export --input-layout nhwc to tflite: the app-ready file (NHWC [0, 1] in, the normalisation in the
    graph, class probabilities out, TFLite metadata with the class names) runs as it is in MediaPipe's
    ImageSegmenter (the C++ task graph of Android, iOS and the web): its category mask is the class map
    `segment predict --exported` computes, its confidence masks the file's probabilities; eval --exported keeps
    the checkpoint's mIoU."""
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision
    from PIL import Image

    from edgevit.dense.files import load_dense_file

    capsys.readouterr()
    out = tmp_path / f"{arch}_app.tflite"
    assert main(["segment", "export", "--checkpoint", str(trained[arch]), "--format", "tflite", "--img-size", "64",
                 "--input-layout", "nhwc", "-o", str(out), "--json"]) == 0
    rep = _json(capsys)
    assert rep["outputs"] == ["probabilities"] and rep["max_abs_diff"] <= 1e-3 and rep["pixel_agreement"] == 1.0
    side = json.loads(sidecar_path(out).read_text())
    assert side["layout"] == "NHWC" and side["normalization"] == "in the graph"
    dense = load_dense_file(out, "segment")
    options = vision.ImageSegmenterOptions(base_options=BaseOptions(model_asset_path=str(out)),
                                           output_category_mask=True, output_confidence_masks=True)
    mean, std = (torch.tensor(side[k]).view(3, 1, 1) for k in ("mean", "std"))
    pixels, agree = 0, 0
    with vision.ImageSegmenter.create_from_options(options) as segmenter:
        assert segmenter.labels == side["class_names"]  # read from the file's metadata
        for image in sorted((shapes_root / "images" / "validation").glob("*.png")):
            rgb = np.asarray(Image.open(image).convert("RGB"))  # (the file's input size: no resize either side)
            result = segmenter.segment(mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb))
            category = result.category_mask.numpy_view().squeeze(-1)
            confidence = np.stack([c.numpy_view().squeeze(-1) for c in result.confidence_masks], -1)
            x = (torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255 - mean) / std
            want = dense.segment(x, rgb.shape[:2]).numpy()  # what segment predict/eval --exported compute
            probs = dense.run(rgb[None].astype(np.float32) / 255)[0][0]
            assert np.abs(confidence - probs).max() < 1e-5
            pixels, agree = pixels + want.size, agree + int((category == want).sum())
            predicted = tmp_path / f"p_{image.name}"
            assert main(["segment", "predict", str(image), "--exported", str(out), "--out", str(predicted),
                         "--json"]) == 0
            fractions = _json(capsys)["class_fractions"]
            counts = np.bincount(category.ravel(), minlength=side["num_classes"]) / category.size
            names = side["class_names"]
            assert all(abs(fractions.get(names[c], 0.0) - counts[c]) <= 5e-5 for c in range(len(names)))  # (4 places)
    # a segmenter file resized on the way out (predict at twice the size): the probabilities' argmax, resized as
    # their logarithms, is the logits' (the checkpoint's eval resizes logits)
    from edgevit.dense.engine import load_dense_checkpoint, segment_logits

    model = load_dense_checkpoint(trained[arch], "segment")
    x = (torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255 - mean) / std
    with torch.no_grad():
        ref = segment_logits(model, x, (128, 128)).argmax(0)
    assert (dense.segment(x, (128, 128)) == ref).float().mean() >= 0.999
    assert agree / pixels >= 0.999, agree / pixels
    want = _segment_eval(["--checkpoint", str(trained[arch])], shapes_root, capsys)
    got = _segment_eval(["--exported", str(out)], shapes_root, capsys)
    assert got["mIoU"] == pytest.approx(want["mIoU"], abs=0.005)
    # what the app-ready form is not for: one line each, nothing written
    for fmt, extra, needle in (("tflite", ["--argmax"], "not a class map"), ("ptl", [], "ptl files take NCHW"),
                               ("tflite", ["--quantize", "int8", "--calib", str(shapes_root)],
                                "--input-layout the app-ready form is a float file: int8 segmenters keep NCHW")):
        assert main(["segment", "export", "--checkpoint", str(trained[arch]), "--format", fmt, "--img-size", "64",
                     "--input-layout", "nhwc", "-o", str(tmp_path / f"no.{fmt}"), *extra]) == 2
        assert needle in capsys.readouterr().err
    assert not list(tmp_path.glob("no.*"))
