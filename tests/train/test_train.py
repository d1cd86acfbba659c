"""`edgevit train` end to end on tiny data: exact resume, signals, non-finite loss, fine-tuning, bad input."""
import json
import os
import signal

import pytest
import torch

from edgevit.cli.main import main as cli
from edgevit.train import build
from edgevit.train.guard import NonFiniteLossError
from edgevit.train.loop import train
from edgevit.train.state import load_training_state


def _weights(path):
    s = load_training_state(path)
    return s["model"], s["model_ema"], s["optimizer"]["state"]


def _assert_same(a, b):
    for x, y in zip(a, b):
        if isinstance(x, dict):
            assert x.keys() == y.keys()
            _assert_same([x[k] for k in x], [y[k] for k in x])
        elif isinstance(x, torch.Tensor):
            assert torch.equal(x, y)
        else:
            assert x == y


def test_kill_and_resume_equals_a_straight_run(tiny, tiny_data, tmp_path):
    straight = train(tiny.cfg(tiny_data, tmp_path / "straight"))
    assert straight["epochs_completed"] == 2 and straight["stopped"] is None
    first = train(tiny.cfg(tiny_data, tmp_path / "resumed", stop_after_epochs=1))
    assert first["stopped"] == "stop_after_epochs" and first["epochs_completed"] == 1
    assert load_training_state(tmp_path / "resumed" / "last.pth")["epoch"] == 1
    second = train(tiny.cfg(tiny_data, tmp_path / "resumed", resume="auto"))
    assert second["epochs_completed"] == 1 and second["stopped"] is None
    _assert_same(_weights(tmp_path / "straight" / "last.pth"), _weights(tmp_path / "resumed" / "last.pth"))
    a = [json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in a] == [1, 2] and [r["epoch"] for r in b] == [1, 2]
    for ra, rb in zip(a, b):
        assert (ra["train_loss"], ra["val_top1"], ra["lr"]) == (rb["train_loss"], rb["val_top1"], rb["lr"])
        assert ra["images_per_s"] > 0 and 0 <= ra["data_wait_share"] < 1  # (workers=0: loading is in the step loop)
    assert (tmp_path / "straight" / "model.safetensors").is_file()
    assert (tmp_path / "straight" / "config.yaml").is_file()
    with pytest.raises(ValueError, match="already holds a run"):  # no --resume: refuses to overwrite
        train(tiny.cfg(tiny_data, tmp_path / "straight"))


def test_sigterm_finishes_the_step_saves_and_resumes(tiny, tiny_data, tmp_path, monkeypatch):
    real = build.train_transform

    def transform_that_sends_sigterm(cfg):
        t = real(cfg)
        calls = {"n": 0}

        def fn(img):
            calls["n"] += 1
            if calls["n"] == 10:  # during step 3 of epoch 1 (batch 4, 24 images -> 6 steps)
                os.kill(os.getpid(), signal.SIGTERM)
            return t(img)
        return fn

    monkeypatch.setattr(build, "train_transform", transform_that_sends_sigterm)
    out = tmp_path / "run"
    summary = train(tiny.cfg(tiny_data, out, epochs=1))
    assert summary["stopped"] == "signal" and summary["signal"] == signal.SIGTERM
    state = load_training_state(out / "last.pth")
    assert (state["epoch"], state["step_in_epoch"], state["num_updates"]) == (0, 3, 3)
    assert not (out / "metrics.jsonl").exists()
    monkeypatch.setattr(build, "train_transform", real)
    done = train(tiny.cfg(tiny_data, out, epochs=1, resume="auto"))
    assert done["stopped"] is None
    state = load_training_state(out / "last.pth")
    assert (state["epoch"], state["step_in_epoch"], state["num_updates"]) == (1, 0, 6)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny, tiny_data, tmp_path):
    # epoch 1 warms up from 1e-6; epoch 2 runs at lr 1e30 and blows the weights up to inf/nan
    cfg = tiny.cfg(tiny_data, tmp_path / "run", lr=1e30, warmup_lr=1e-6, model_ema=False)
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step \d+"):
        train(cfg)
    state = load_training_state(tmp_path / "run" / "last.pth")
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1


def test_fine_tune_from_pretrained_and_head_mismatch_errors(tiny, tmp_path, capsys):
    two = tiny.make_dataset(tmp_path / "two", classes=("blue", "red"), n_train=4, n_val=2)
    three = tiny.make_dataset(tmp_path / "three", n_train=4, n_val=2)
    common = ["--model-kwargs", json.dumps(tiny.MODEL), "--img-size", "32", "--batch-size", "4", "--workers", "0",
              "--epochs", "1", "--no-repeated-aug", "--no-model-ema", "--device", "cpu", "--no-progress"]
    assert cli(["train", "--data", str(two), "--output", str(tmp_path / "a"), *common]) == 0
    ckpt = tmp_path / "a" / "last.pth"
    # a 2-class checkpoint into a 3-class run without --pretrained: clear error, exit 2
    assert cli(["train", "--data", str(three), "--output", str(tmp_path / "b"), "--resume", str(ckpt), *common]) == 2
    err = capsys.readouterr().err
    assert "trained on the classes blue, red" in err and "pretrained=" in err and err.count("error:") == 1
    # with --pretrained: everything but the head is loaded
    assert cli(["train", "--data", str(three), "--output", str(tmp_path / "c"), "--pretrained", str(ckpt),
                "--num-classes", "3", "--lr", "0", "--warmup-lr", "0", "--min-lr", "0", *common]) == 0
    src, dst = load_training_state(ckpt)["model"], load_training_state(tmp_path / "c" / "last.pth")["model"]
    assert dst["head.fc.weight"].shape == (3, 16)
    body = [k for k in src if not k.startswith("head.") and "running" not in k and "num_batches" not in k]
    assert body and all(torch.equal(src[k], dst[k]) for k in body)  # lr 0: the loaded weights, unchanged


def test_bad_data_gives_one_clear_error(tiny, tmp_path, capsys):
    common = ["--output", str(tmp_path / "out"), "--device", "cpu", "--workers", "0"]
    assert cli(["train", "--data", str(tmp_path / "missing"), *common]) == 2
    assert "missing: no such directory" in capsys.readouterr().err
    (tmp_path / "empty" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "val").mkdir(parents=True)
    assert cli(["train", "--data", str(tmp_path / "empty"), *common]) == 2
    assert "no class folders" in capsys.readouterr().err
    mismatch = tiny.make_dataset(tmp_path / "mm", classes=("blue", "red"), n_train=2, n_val=2)
    tiny.write_images(mismatch / "train" / "green", 2, 1)
    assert cli(["train", "--data", str(mismatch), *common]) == 2
    assert "only in train: ['green']" in capsys.readouterr().err


def test_unreadable_image_is_named(tiny, tmp_path, capsys):
    data = tiny.make_dataset(tmp_path / "d", classes=("blue", "red"), n_train=4, n_val=2)
    bad = data / "train" / "red" / "zz_truncated.png"
    bad.write_bytes((data / "train" / "red" / "000.png").read_bytes()[:60])
    args = ["train", "--data", str(data), "--output", str(tmp_path / "o"), "--model-kwargs", json.dumps(tiny.MODEL),
            "--img-size", "32", "--batch-size", "2", "--epochs", "1", "--no-repeated-aug", "--device", "cpu",
            "--no-progress"]
    assert cli(args + ["--workers", "1"]) == 2  # raised inside a DataLoader worker process
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the "training ..." banner
    assert err.startswith("edgevit train: error: cannot read image") and str(bad) in err
