"""A train step + eval + predict for each architecture through the CLI; exact resume; bad input."""
import json
import os
import signal

import pytest
import torch
from PIL import Image

from edgevit.cli.main import main
from edgevit.dense.ade import ADESegmentation
from edgevit.dense.engine import evaluate_segmenter, fit, poly_schedule, segmentation_loss
from edgevit.dense.models import create_segmenter
from edgevit.errors import UserError
from edgevit.train.guard import NonFiniteLossError
from edgevit.train.state import load_training_state, set_determinism

# pycocotools 2.x vs numpy 2 (`copy=` keyword) warns on every mask decode; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

TINY = ["--batch-size", "2", "--workers", "0", "--fpn-channels", "32", "--device", "cpu", "--json"]


def _json(capsys):
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("arch", ["retinanet", "maskrcnn", "ssdlite"])
def test_detect_train_eval_predict(arch, shapes_root, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["detect", "train", "--arch", arch, "--data", str(shapes_root), "--train-split", "training",
                 "--val-split", "validation", "--output", str(run), "--epochs", "1", "--max-iters", "1",
                 "--min-size", "64", "--max-size", "64", *TINY]) == 0
    out = _json(capsys)
    assert out["iteration"] == 1 and not out["stopped"]
    keys = {"bbox_AP", "bbox_AP50", "bbox_AP75", "bbox_APs", "bbox_APm", "bbox_APl"}
    assert keys <= set(out["last_eval"]) and (arch == "maskrcnn") == ("segm_AP" in out["last_eval"])
    assert all(-1.0 <= out["last_eval"][k] <= 1.0 for k in keys)
    assert {"last.pth", "best.pth", "config.yaml", "metrics.jsonl"} <= {p.name for p in run.iterdir()}
    state = load_training_state(run / "last.pth")
    assert state["iteration"] == 1 and state["meta"]["class_names"] == ["circle", "square", "triangle"]

    assert main(["detect", "eval", "--checkpoint", str(run / "last.pth"), "--data", str(shapes_root),
                 "--split", "validation", "--device", "cpu", "--json"]) == 0
    ev = _json(capsys)
    assert ev["bbox_AP"] == pytest.approx(out["last_eval"]["bbox_AP"]) and ev["num_images"] == 2

    image = shapes_root / "images" / "validation" / "shapes_000000.png"
    png = tmp_path / "det.png"
    assert main(["detect", "predict", str(image), "--checkpoint", str(run / "last.pth"), "--out", str(png),
                 "--score-thresh", "0.0", "--device", "cpu", "--json"]) == 0
    pred = _json(capsys)
    assert pred["output"] == str(png) and Image.open(png).size == (64, 64)
    assert len(pred["detections"]) > 0 and all(d["name"] in ("circle", "square", "triangle")
                                               for d in pred["detections"])
    assert ("mask_area" in pred["detections"][0]) == (arch == "maskrcnn")
    strip = tmp_path / "strip.png"  # a 400x6 panorama: resized to 64 px wide it would be 1 px high
    Image.new("RGB", (400, 6), (200, 40, 40)).save(strip)
    assert main(["detect", "predict", str(strip), "--checkpoint", str(run / "last.pth"), "--out",
                 str(tmp_path / "strip_det.png"), "--score-thresh", "0.0", "--device", "cpu", "--json"]) == 0
    boxes = [d["box_xyxy"] for d in _json(capsys)["detections"]]
    assert all(0 <= b[0] <= b[2] <= 400 and 0 <= b[1] <= b[3] <= 6 for b in boxes)
    assert Image.open(tmp_path / "strip_det.png").size == (400, 6)


@pytest.mark.parametrize("arch", ["semfpn", "lraspp"])
def test_segment_train_eval_predict(arch, shapes_root, tmp_path, capsys):
    run = tmp_path / "run"
    cfg = tmp_path / "dense_test.yaml"
    cfg.write_text("iters: 1\ncrop_size: 64\nscale: [64, 64]\neval_every: 1\nlr: 0.5\n")
    assert main(["segment", "train", "--arch", arch, "--config", str(cfg), "--data", str(shapes_root), "--output",
                 str(run), "--lr", "0.001", *TINY]) == 0
    out = _json(capsys)
    saved = (run / "config.yaml").read_text()
    assert "iters: 1\n" in saved and "crop_size: 64\n" in saved and "lr: 0.001\n" in saved  # command line wins
    assert out["iteration"] == 1 and 0.0 <= out["last_eval"]["mIoU"] <= 1.0
    assert set(out["last_eval"]["per_class_iou"]) == {"background", "circle", "square", "triangle"}
    assert main(["segment", "eval", "--checkpoint", str(run / "best.pth"), "--data", str(shapes_root),
                 "--device", "cpu", "--json"]) == 0
    assert _json(capsys)["mIoU"] == pytest.approx(out["last_eval"]["mIoU"])
    png = tmp_path / "seg.png"
    image = shapes_root / "images" / "validation" / "shapes_000001.png"
    assert main(["segment", "predict", str(image), "--checkpoint", str(run / "last.pth"), "--out", str(png),
                 "--device", "cpu", "--json"]) == 0
    pred = _json(capsys)
    assert Image.open(png).size == (64, 64) and sum(pred["class_fractions"].values()) == pytest.approx(1, abs=1e-3)
    strip = tmp_path / "strip.png"
    Image.new("RGB", (6, 400), (40, 200, 40)).save(strip)
    assert main(["segment", "predict", str(strip), "--checkpoint", str(run / "last.pth"), "--out",
                 str(tmp_path / "strip_seg.png"), "--device", "cpu", "--json"]) == 0
    assert _json(capsys)["size"] == [400, 6]
    # a detection checkpoint is refused by `segment` and vice versa, with a clear message
    assert main(["detect", "eval", "--checkpoint", str(run / "last.pth"), "--data", str(shapes_root)]) == 2
    assert f"{arch} checkpoint" in capsys.readouterr().err


def _segment_fit(root, run, total, resume=None, stop_at=None, loss_scale=1.0, batch_size=2):
    set_determinism(0, deterministic=True)
    try:
        model = create_segmenter(4, fpn_channels=32, drop_path_rate=0.1)
        train = ADESegmentation(root, "training", num_classes=4, train=True, crop_size=64, scale=(64, 64))
        val = ADESegmentation(root, "validation", num_classes=4, scale=(64, 64))
        calls = {"n": 0}

        def loss_fn(m, batch, device):
            calls["n"] += 1
            if calls["n"] == stop_at:  # a real SIGTERM, as a scheduler would send
                os.kill(os.getpid(), signal.SIGTERM)
            loss, parts = segmentation_loss(m, batch, device)
            return loss * loss_scale, parts

        result = fit(model, train, None, loss_fn, lambda m, d: evaluate_segmenter(m, val, d, progress=False),
                     run_dir=run, total_iters=total, batch_size=batch_size, lr=1e-3, weight_decay=1e-4,
                     schedule=poly_schedule(total), eval_every=0, save_every=100, metric_key="mIoU",
                     meta={"arch": "semfpn", "variant": "edgevit_xxs"}, cfg={"test": True}, resume=resume)
        return model, result
    finally:
        torch.use_deterministic_algorithms(False)


def test_sigterm_then_resume_equals_straight_run(shapes_root, tmp_path):
    straight, r = _segment_fit(shapes_root, tmp_path / "a", total=5)
    assert r["iteration"] == 5
    _, r1 = _segment_fit(shapes_root, tmp_path / "b", total=5, stop_at=3)  # 2 epochs of 2 iterations + 1
    assert r1["stopped"] and r1["iteration"] == 3
    assert load_training_state(tmp_path / "b" / "last.pth")["iteration"] == 3
    resumed, r2 = _segment_fit(shapes_root, tmp_path / "b", total=5, resume="auto")
    assert r2["iteration"] == 5 and not r2["stopped"]
    a, b = straight.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # another batch per process would change what an iteration and an epoch are: refused, the run kept
    before = (tmp_path / "b" / "last.pth").read_bytes()
    with pytest.raises(UserError, match="trains 2 images per process; resume it with the same"):
        _segment_fit(shapes_root, tmp_path / "b", total=6, resume="auto", batch_size=1)
    assert (tmp_path / "b" / "last.pth").read_bytes() == before


def test_non_finite_loss_stops_and_keeps_checkpoint(shapes_root, tmp_path):
    with pytest.raises(NonFiniteLossError, match="step 0"):
        _segment_fit(shapes_root, tmp_path, total=2, loss_scale=float("nan"))


def test_shapes_command(tmp_path, capsys):
    assert main(["segment", "shapes", str(tmp_path / "s"), "--num-train", "2", "--num-val", "1", "--size", "64",
                 "--colours", "random", "--json"]) == 0
    out = _json(capsys)
    assert out["training_images"] == 2 and out["validation_images"] == 1 and out["training_instances"] >= 2
    assert len(list((tmp_path / "s" / "annotations" / "training").glob("*.png"))) == 2
    assert main(["detect", "shapes", str(tmp_path / "t"), "--size", "100"]) == 2
    assert "multiple of 32" in capsys.readouterr().err


def test_cli_bad_input(shapes_root, tmp_path, capsys):
    bad_cfg = tmp_path / "bad.yaml"
    bad_cfg.write_text("epochz: 3\n")
    assert main(["detect", "train", "--config", str(bad_cfg), "--data", str(shapes_root), "--output", "x"]) == 2
    assert "unknown option(s) ['epochz']" in capsys.readouterr().err
    assert main(["detect", "train", "--data", str(tmp_path / "nothing"), "--output", str(tmp_path / "r")]) == 2
    assert "nothing: no such directory" in capsys.readouterr().err
    assert main(["detect", "predict", str(tmp_path / "missing.jpg"), "--checkpoint", "x.pth"]) == 2
    assert "missing.jpg: no such file" in capsys.readouterr().err
    assert main(["segment", "train", "--data", str(shapes_root), "--output", str(tmp_path / "r"),
                 "--num-classes", "150"]) == 2
    assert "--num-classes 150, but" in capsys.readouterr().err
    assert main(["segment", "eval", "--checkpoint", str(tmp_path / "none.pth"), "--data", str(shapes_root)]) == 2
    assert "none.pth: no such file" in capsys.readouterr().err


def test_schedules_are_mmdet_and_mmseg_ones():
    """torch's LinearLR + MultiStepLR and PolynomialLR reproduce mmdet's 1x (linear warm-up from 0.001, x0.1 at
    the milestones) and mmseg's poly decay, iteration by iteration."""
    from edgevit.dense.engine import step_schedule

    p = torch.nn.Parameter(torch.zeros(1))

    def lrs(make, n):
        opt = torch.optim.SGD([p], lr=1.0)
        sched, out = make(opt), []
        for _ in range(n):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    mmdet = [(0.001 + 0.999 * i / 5 if i < 5 else 1.0) * 0.1 ** sum(i >= m for m in (8, 11)) for i in range(14)]
    assert lrs(step_schedule(5, [8, 11]), 14) == pytest.approx(mmdet, abs=1e-12)
    assert lrs(poly_schedule(10, 0.9), 12) == pytest.approx([(1 - min(i, 10) / 10) ** 0.9 for i in range(12)],
                                                            abs=1e-12)


def test_ssdlite_refuses_one_image_per_process(shapes_root, tmp_path, capsys):
    assert main(["detect", "train", "--arch", "ssdlite", "--data", str(shapes_root), "--output",
                 str(tmp_path / "run"), "--batch-size", "1", "--device", "cpu"]) == 2
    assert "--batch-size 1" in capsys.readouterr().err and not (tmp_path / "run").exists()
