"""Datasets as they are stored at scale: WebDataset shards (timm's `wds/NAME`) written by `edgevit data digits
--format wds`, trained on and evaluated like an ImageFolder, resumed exactly mid-epoch; timm's `tar` form; bad
input named."""
import json
import os
import signal
import tarfile
from collections import Counter

import pytest
import torch
from sklearn.datasets import load_digits

from edgevit.cli.main import main as cli
from edgevit.train import build
from edgevit.train.loop import train
from edgevit.train.state import load_training_state


def test_digits_as_webdataset_shards_hold_every_scan_once(tmp_path, capsys):
    out = tmp_path / "shards"
    assert cli(["data", "digits", "--out", str(out), "--format", "wds", "--size", "8", "--shards", "3",
                "--val-shards", "2", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["splits"] == {"train": {"shards": 3, "num_samples": 1437},
                                 "validation": {"shards": 2, "num_samples": 360}}
    info = json.loads((out / "_info.json").read_text())
    assert info["num_classes"] == 10 and info["classes"] == [str(c) for c in range(10)]
    digits = load_digits()
    seen = {}
    for split, entry in info["splits"].items():
        assert len(entry["filenames"]) == len(entry["shard_lengths"])
        assert max(entry["shard_lengths"]) - min(entry["shard_lengths"]) <= 1  # equal shards
        for name, length in zip(entry["filenames"], entry["shard_lengths"]):
            with tarfile.open(out / name) as tar:
                members = {m.name: tar.extractfile(m).read() for m in tar}
            keys = sorted({n.split(".")[0] for n in members})
            assert len(keys) == length and all(f"{k}.png" in members for k in keys)
            for k in keys:  # the label is the scan's digit
                assert int(members[f"{k}.cls"]) == digits.target[int(k)]
                seen[k] = split
    assert len(seen) == 1797  # every scan exactly once, train and validation disjoint
    assert Counter(seen.values()) == {"train": 1437, "validation": 360}
    # timm's reader reads them back: every validation sample, labels as written
    from timm.data import create_dataset

    ds = create_dataset("wds/digits", root=str(out), split="validation")
    labels = Counter(int(t) for _, t in ds)
    assert sum(labels.values()) == 360 and labels == Counter(
        {int(c): n for c, n in summary["per_class"]["val"].items()})


def test_train_and_eval_from_shards_reach_the_folder_runs_accuracy(tiny, tmp_path, capsys):
    """The same images as an ImageFolder and as shards, the same recipe: both runs learn the task."""
    folder = tiny.make_dataset(tmp_path / "folder")
    shards = tiny.make_shards(tmp_path / "shards", images=folder)
    common = dict(aa=None, mixup=0.0, cutmix=0.0, reprob=0.0, warmup_epochs=0, epochs=3, lr=3e-3, model_ema=False)
    a = train(tiny.cfg(folder, tmp_path / "run_folder", **common))
    b = train(tiny.cfg(shards, tmp_path / "run_shards", dataset="wds/tiny", **common))
    assert a["last"]["val_images"] == b["last"]["val_images"] == 12
    assert a["last"]["val_top1"] == b["last"]["val_top1"] == 100.0
    state = load_training_state(tmp_path / "run_shards" / "best.pth")
    assert state["classes"] == ["blue", "green", "red"]  # from the shards' _info.json
    # evaluating the checkpoint on the shards gives what training recorded, and so does the folder
    for data, dataset in ((shards, "wds/tiny"), (folder, "")):
        assert cli(["eval", "--data", str(data), "--dataset", dataset, "--checkpoint",
                    str(tmp_path / "run_shards" / "last.pth"), "--workers", "0", "--device", "cpu", "--no-progress",
                    "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["num_images"] == 12 and result["top1"] == 100.0
        assert abs(result["loss"] - b["last"]["val_loss"]) < 1e-5


def _weights(path):
    s = load_training_state(path)
    return s["model"], s["optimizer"]["state"]


@pytest.mark.parametrize("workers", [0, 2])
def test_mid_epoch_resume_from_shards_is_exact(tiny, tmp_path, monkeypatch, workers):
    """A stream cannot seek: the resumed run rebuilds the epoch's stream and drops the batches already trained.
    Exact = the same batches, augmentations included, as the uninterrupted run: identical final weights and
    optimizer state (deterministic CPU kernels), with loader worker processes too (their seeds come from
    (seed, epoch, rank), not from the training RNG)."""
    shards = tiny.make_shards(tmp_path / "shards", shards=4)
    cfg = dict(dataset="wds/tiny", epochs=2, workers=workers, model_ema=False)  # full recipe: RandAugment, mixup...
    straight = train(tiny.cfg(shards, tmp_path / "straight", **cfg))
    assert straight["stopped"] is None

    real = build.train_transform
    main_pid = os.getpid()

    def transform_that_sends_sigterm(c):
        t = real(c)
        calls = {"n": 0}

        def fn(img):
            calls["n"] += 1
            if calls["n"] == 10:  # in epoch 1 (from the main process or a loader worker)
                os.kill(main_pid, signal.SIGTERM)
            return t(img)
        return fn

    monkeypatch.setattr(build, "train_transform", transform_that_sends_sigterm)
    out = tmp_path / "resumed"
    stopped = train(tiny.cfg(shards, out, **cfg))
    assert stopped["stopped"] == "signal"
    state = load_training_state(out / "last.pth")
    assert state["epoch"] == 0 and 0 < state["step_in_epoch"] < 6  # stopped mid-epoch 1 (24 images, batch 4)
    monkeypatch.setattr(build, "train_transform", real)
    done = train(tiny.cfg(shards, out, resume="auto", **cfg))
    assert done["stopped"] is None
    a, b = _weights(tmp_path / "straight" / "last.pth"), _weights(out / "last.pth")
    for x, y in ((a[0], b[0]), *((a[1][k], b[1][k]) for k in a[1])):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    ra = [json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_top1"] for r in ra] == [r["val_top1"] for r in rb]
    assert ra[-1]["train_loss"] == rb[-1]["train_loss"]
    assert abs(ra[0]["train_loss"] - rb[0]["train_loss"]) < 1e-9  # the stopped epoch's loss covers all its steps


def test_timm_tar_dataset_trains_like_the_folder(tiny, tmp_path):
    """timm's `tar` form (class folders inside one tar per split), random access: the folder path's samplers."""
    folder = tiny.make_dataset(tmp_path / "folder", n_train=4, n_val=2)
    root = tmp_path / "tars"
    root.mkdir()
    for split in ("train", "validation"):
        with tarfile.open(root / f"{split}.tar", "w") as tar:
            tar.add(folder / ("train" if split == "train" else "val"), arcname=".")
    s = train(tiny.cfg(root, tmp_path / "run", dataset="tar", epochs=1, model_ema=False))
    assert s["last"]["val_images"] == 6
    assert load_training_state(tmp_path / "run" / "last.pth")["classes"] == ["blue", "green", "red"]


def test_bad_datasets_are_named(tiny, tmp_path, capsys):
    shards = tiny.make_shards(tmp_path / "shards", shards=2)
    common = ["--output", str(tmp_path / "out"), "--device", "cpu", "--workers", "0", "--model-kwargs",
              json.dumps(tiny.MODEL), "--img-size", "32", "--batch-size", "4", "--no-progress"]

    def err(args, command="train"):
        assert cli([command, *args]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) >= 1
        return lines[-1]

    # an unknown form: the forms are listed, for train and eval alike
    for command, extra in (("train", common), ("eval", ["--checkpoint", "x.pth"])):
        e = err(["--data", str(shards), "--dataset", "webdataset/tiny", *extra], command)
        assert "--dataset 'webdataset/tiny': not a dataset form timm knows" in e and "wds/NAME" in e
    # a shard whose samples carry their label under another key
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in shards.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    name = json.loads((bad / "_info.json").read_text())["splits"]["train"]["filenames"][1]
    with tarfile.open(shards / name) as src, tarfile.open(bad / name, "w") as dst:
        for m in src:
            data = src.extractfile(m)
            if m.name.endswith(".cls"):
                m.name = m.name[:-4] + ".label"
            dst.addfile(m, data)
    e = err(["--data", str(bad), "--dataset", "wds/tiny", *common])
    assert f"shard {bad / name}: sample" in e and "no 'cls' entry" in e and "label, png" in e
    # a shard listed but missing, and no _info.json
    (bad / name).unlink()
    assert f"shard {bad / name}: no such file" in err(["--data", str(bad), "--dataset", "wds/tiny", *common])
    (bad / "_info.json").unlink()
    assert "_info.json: no such file" in err(["--data", str(bad), "--dataset", "wds/tiny", *common])
    # more loader workers than shards: each worker reads whole shards
    e = err(["--data", str(shards), "--dataset", "wds/tiny", *common, "--workers", "3"])  # (the last one counts)
    assert e.startswith("edgevit train: error: --workers 3 (x 1 process(es)): the training split")
    assert "has 2 shards" in e
    # a split that is not there; repeated augmentation asked for on a stream
    assert "'nope': no such split" in err(["--data", str(shards), "--dataset", "wds/tiny", "--train-split", "nope",
                                           *common])
    assert "--repeated-aug: repeated augmentation needs random access" in err(
        ["--data", str(shards), "--dataset", "wds/tiny", "--repeated-aug", *common])
    # shard options without shards
    assert "--shards: only for --format wds" in err(["digits", "--out", str(tmp_path / "d"), "--shards", "2"], "data")
    assert not (tmp_path / "out").exists() and not (tmp_path / "d").exists()  # nothing written


def _copy_shards(src, dst, edit_info=None, relabel=None):
    """A copy of a shard set; `edit_info(info)` edits _info.json, `relabel(position in the shard, label)` rewrites
    the .cls entries."""
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    if edit_info:
        info = json.loads((dst / "_info.json").read_text())
        edit_info(info)
        (dst / "_info.json").write_text(json.dumps(info))
    if relabel:
        import io
        for f in dst.glob("*.tar"):
            with tarfile.open(src / f.name) as s_tar, tarfile.open(f, "w") as d_tar:
                for i, m in enumerate(s_tar):
                    data = s_tar.extractfile(m).read()
                    if m.name.endswith(".cls"):
                        data = str(relabel(i // 2, int(data))).encode()
                        m.size = len(data)
                    d_tar.addfile(m, io.BytesIO(data))
    return dst


def test_bad_shards_and_tars_are_named_before_or_while_training(tiny, tmp_path, capsys):
    shards = tiny.make_shards(tmp_path / "shards", shards=2)
    common = ["--output", str(tmp_path / "out"), "--device", "cpu", "--workers", "0", "--model-kwargs",
              json.dumps(tiny.MODEL), "--img-size", "32", "--batch-size", "4", "--no-progress", "--epochs", "1"]

    def err(args, command="train"):
        assert cli([command, *args]) == 2
        return capsys.readouterr().err.strip().splitlines()[-1]

    def wds(root, *extra):
        return err(["--data", str(root), "--dataset", "wds/tiny", *extra, *common])

    def bad(name, **kw):
        return _copy_shards(shards, tmp_path / name, **kw)

    assert "'torch/notadataset': not a torchvision dataset timm knows" in err(
        ["--data", str(shards), "--dataset", "torch/notadataset", *common])
    import importlib.util
    for name, package in (("hfds/x", "datasets"), ("hfids/x", "datasets"), ("tfds/x", "tensorflow_datasets")):
        if importlib.util.find_spec(package) is None:  # (not installed by this project)
            assert f"--dataset {name}: needs the '{package}' package" in err(
                ["--data", str(shards), "--dataset", name, *common])
    e = wds(bad("count", edit_info=lambda i: i["splits"]["train"].update(num_samples=48)))
    assert "num_samples 48 is not the sum of its shard_lengths (24)" in e
    e = wds(bad("types", edit_info=lambda i: i["splits"]["train"].update(shard_lengths=["a", "b"])))
    assert "shard_lengths must list one sample count" in e
    assert "split 'train' must be an object" in wds(bad("split", edit_info=lambda i: i["splits"].update(train=5)))
    assert "num_classes must be a positive integer" in wds(bad("nc", edit_info=lambda i: i.update(num_classes="x")))
    assert "is a file; expected the directory" in wds(shards / "_info.json")
    # a label outside the classes, in the first sample or later: named with its shard and key before training
    e = wds(bad("first", relabel=lambda i, y: 7))
    assert "shard " in e and "label 7 is outside the 3 classes (0..2)" in e
    e = wds(bad("later", relabel=lambda i, y: 9 if i == 2 else y))  # the third sample of every shard
    assert "tiny-train-000000.tar: sample '" in e and "label 9 is outside the 3 classes" in e
    # eval names its own option for a missing split
    import timm

    from edgevit.models import save_checkpoint

    ck = tmp_path / "tiny.safetensors"
    save_checkpoint(timm.create_model("edgevit_xxs", num_classes=3, **tiny.MODEL), ck)
    assert "--split 'test': no such split" in err(["--data", str(shards), "--dataset", "wds/tiny", "--split", "test",
                                                    "--checkpoint", str(ck), "--model-kwargs", json.dumps(tiny.MODEL)],
                                                   "eval")
    # tars: unreadable, empty, and a single tar file as the training root (validation would reuse it)
    common.append("--overwrite")  # (the run that met the bad label had started: its config.yaml is there)
    root = tmp_path / "tars"
    root.mkdir()
    (root / "train.tar").write_bytes(b"not a tar")
    assert "train.tar: not a readable tar file" in err(["--data", str(root), "--dataset", "tar", *common])
    with tarfile.open(root / "train.tar", "w"):
        pass
    assert "train.tar: holds no images" in err(["--data", str(root), "--dataset", "tar", *common])
    assert "is a file; training reads a directory" in err(["--data", str(root / "train.tar"), "--dataset", "tar",
                                                           *common])
