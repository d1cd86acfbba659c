"""The shared training machinery: RNG state, atomic checkpoints, signals, non-finite loss, metrics, config."""
import json
import os
import random
import signal

import numpy as np
import pytest
import torch
import yaml

from edgevit.train.guard import GracefulStop, NonFiniteLossError, check_finite
from edgevit.train.logging import MetricsLogger
from edgevit.train.recipe import resolve_config, scaled_lr
from edgevit.train.state import (
    CheckpointManager,
    capture_rng_state,
    load_training_state,
    restore_rng_state,
    save_config,
    save_training_state,
)


def _draw():
    return random.random(), float(np.random.rand()), torch.rand(3).tolist(), float(np.random.randn())


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    np.random.randn()  # leaves a cached gaussian in numpy's state
    state = capture_rng_state()
    expected = _draw()
    save_training_state(tmp_path / "s.pth", {"rng": state})
    restore_rng_state(load_training_state(tmp_path / "s.pth")["rng"])  # weights_only=True inside
    assert _draw() == expected


def test_atomic_save_keeps_the_old_file_when_saving_fails(tmp_path):
    path = tmp_path / "last.pth"
    save_training_state(path, {"epoch": 1, "w": torch.ones(2)})
    with pytest.raises(Exception):
        save_training_state(path, {"epoch": 2, "bad": lambda: 0})  # torch.save cannot pickle a lambda
    assert load_training_state(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]  # no temp file left behind


def test_load_training_state_names_a_corrupt_file(tmp_path):
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="broken.pth"):
        load_training_state(bad)


def test_checkpoint_manager_keeps_last_and_best(tmp_path):
    m = CheckpointManager(tmp_path, is_main=True)
    assert m.resume_path("auto") is None and m.resume_path(None) is None
    m.save({"epoch": 1}, metric=50.0)
    m.save({"epoch": 2}, metric=40.0)
    m.save({"epoch": 3}, metric=60.0)
    m.save({"epoch": 4}, metric=55.0)
    assert load_training_state(tmp_path / "last.pth")["epoch"] == 4
    best = load_training_state(tmp_path / "best.pth")
    assert best["epoch"] == 3 and best["best_metric"] == 60.0
    assert m.resume_path("auto") == tmp_path / "last.pth"
    resumed = CheckpointManager(tmp_path, is_main=True)
    resumed.restore(load_training_state(tmp_path / "last.pth"))
    resumed.save({"epoch": 5}, metric=58.0)  # below the best of the first run: best.pth unchanged
    assert load_training_state(tmp_path / "best.pth")["epoch"] == 3
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        m.resume_path(str(tmp_path / "nope.pth"))
    lower = CheckpointManager(tmp_path / "loss", is_main=True)
    lower.save({"epoch": 1}, metric=2.0, higher_is_better=False)
    lower.save({"epoch": 2}, metric=1.0, higher_is_better=False)
    assert load_training_state(tmp_path / "loss" / "best.pth")["epoch"] == 2
    quiet = CheckpointManager(tmp_path / "rank1", is_main=False)
    quiet.save({"epoch": 1}, metric=1.0)
    assert not (tmp_path / "rank1").exists()


def test_graceful_stop_catches_sigterm_and_restores_the_handler():
    before = signal.getsignal(signal.SIGTERM)
    with GracefulStop() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before


def test_check_finite():
    check_finite(torch.tensor(1.5), step=0, epoch=0)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(NonFiniteLossError, match="epoch 3, step 7"):
            check_finite(torch.tensor(bad), step=7, epoch=3)


def test_metrics_logger_appends_json_lines(tmp_path):
    log = MetricsLogger(tmp_path, is_main=True, tensorboard=True)
    log.log({"epoch": 1, "val_top1": 10.0})
    log.log({"epoch": 2, "val_top1": torch.tensor(20.0)})
    log.close()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == [{"epoch": 1, "val_top1": 10.0}, {"epoch": 2, "val_top1": 20.0}]
    assert any((tmp_path / "tensorboard").iterdir())


def test_config_precedence_defaults_yaml_flags(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text(yaml.safe_dump({"epochs": 7, "batch_size": 32, "mixup": 0.0}))
    cfg = resolve_config({"config": str(y), "data": "d", "output": "o", "batch_size": 16})
    assert (cfg["epochs"], cfg["batch_size"], cfg["mixup"], cfg["weight_decay"]) == (7, 16, 0.0, 0.05)
    assert cfg["drop_path"] == 0.1 and cfg["aa"] == "rand-m9-mstd0.5-inc1"
    # the paper's linear scaling: 1e-3 per 1024 images
    assert scaled_lr(cfg, world_size=8) == pytest.approx(1e-3 * 16 * 8 / 1024)
    assert scaled_lr({**cfg, "batch_size": 128, "accum_steps": 4}, world_size=2) == pytest.approx(1e-3)
    save_config(tmp_path / "run", cfg)
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["batch_size"] == 16
    y.write_text("epocs: 3\n")
    with pytest.raises(ValueError, match="epocs"):
        resolve_config({"config": str(y), "data": "d", "output": "o"})
    with pytest.raises(ValueError, match="data is required"):
        resolve_config({"output": "o"})


def test_randaugment_posterize_at_magnitude_10_does_not_crash():
    """Our training transform survives timm's 0-bit posterize (Pillow >= 11 rejects it); timm's own table is
    left as it was for every other user of timm."""
    from PIL import Image
    from timm.data import auto_augment as aa
    from timm.data.auto_augment import AugmentOp, RandAugment

    from edgevit.train.data import _fix_posterize, train_transform
    from edgevit.train.recipe import RECIPE

    assert aa.NAME_TO_OP["PosterizeIncreasing"] is aa.posterize  # importing edgevit changed nothing in timm
    img = Image.new("RGB", (8, 8), (200, 120, 40))
    op = AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=10)  # 4 - 4 = 0 bits to keep
    fixed = _fix_posterize(type("T", (), {"transforms": [type("R", (), {"ops": [op]})()]})())
    assert fixed.transforms[0].ops[0](img).getextrema() == ((0, 0), (0, 0), (0, 0))
    assert AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=5)(img).getpixel((0, 0)) == (192, 64, 0)  # 2 bits
    cfg = {k: v for k, (v, _, _) in RECIPE.items()}
    cfg.update(img_size=32, aa="rand-m9-mstd0.5-inc1")
    t = train_transform(cfg)
    ra = [x for x in t.transforms if isinstance(x, RandAugment)][0]
    assert not [o for o in ra.ops if o.aug_fn is aa.posterize] and any("Posterize" in o.name for o in ra.ops)
