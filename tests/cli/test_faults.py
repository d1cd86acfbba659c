"""Nothing lost, second pass, made for real: a full (small) file system, a second writer of the same output,
whole-directory replacements, damaged and 16-bit shards, weights that carry their preprocessing, reports that
keep sizes and data sets apart, and values beyond what a machine can do."""
import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgevit.cli.main import main as cli


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- a full disk
@contextlib.contextmanager
def small_filesystem(where: Path, size: str):
    """A real file system of `size` mounted at `where` (tmpfs; root on Linux), else None."""
    where.mkdir()
    ok = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                                              capture_output=True).returncode == 0
    try:
        yield where if ok else None
    finally:
        if ok:
            subprocess.run(["umount", str(where)], capture_output=True)


@pytest.fixture
def full_disk(tmp_path):
    """A directory on a real 3 MB file system (the injected-ENOSPC unit tests in tests/utils cover machines
    where none can be mounted)."""
    with small_filesystem(tmp_path / "small", "3m") as fs:
        if fs is None:
            pytest.skip("no small file system can be mounted here")
        yield fs


def test_a_full_disk_is_one_line_and_what_existed_is_intact(full_disk, tmp_path, capsys, refused):
    kept = full_disk / "m.onnx"
    kept.write_bytes(b"an earlier export" * 100)
    before = snapshot(full_disk)
    # onnx export (15 MB) over an existing file, with --overwrite: refused for room, the old file intact
    msg = refused(["export", "--format", "onnx", "--img-size", "64", "-o", str(kept), "--overwrite"],
                  str(kept), "no space left", "intact")
    assert "Traceback" not in msg and snapshot(full_disk) == before
    # TorchScript (whose zip writer aborts the process on a full disk): refused before writing
    refused(["export", "--format", "torchscript", "--img-size", "64", "-o", str(full_disk / "m.pt")],
            "m.pt", "no space left")
    # a data set that does not fit: nothing half-written left, no lock file either
    refused(["data", "digits", "--out", str(full_disk / "digits"), "--size", "256"], "no space left")
    assert snapshot(full_disk) == before and sorted(p.name for p in full_disk.iterdir()) == ["m.onnx"]
    # a disk with no room at all: still one line naming the output
    filler = full_disk / "filler"
    with open(filler, "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
    msg = refused(["data", "digits", "--out", str(full_disk / "d2")], "no space left")
    assert str(full_disk / "d2") in msg
    filler.unlink()
    assert sorted(p.name for p in full_disk.iterdir()) == ["m.onnx"]


def test_a_training_run_on_a_full_disk_says_so(tmp_path, capsys, refused):
    digits = tmp_path / "digits"
    assert cli(["data", "digits", "--out", str(digits), "--size", "32"]) == 0
    with small_filesystem(tmp_path / "small", "200k") as fs:
        if fs is None:
            pytest.skip("no small file system can be mounted here (the injected ENOSPC test covers the writer)")
        capsys.readouterr()
        refused(["train", "--data", str(digits), "--output", str(fs / "run"), "--img-size", "32",
                         "--epochs", "1", "--batch-size", "64", "--workers", "0", "--no-progress", "--aa", "none",
                         "--mixup", "0", "--cutmix", "0", "--no-repeated-aug", "--device", "cpu"],
                "no space left", str(fs / "run"))


# ---------------------------------------------------------------- one writer per output
@pytest.fixture
def other_writer(tmp_path):
    """A second process holding the lock on an output, as a concurrent edgevit command would."""
    procs = []

    def hold(path: Path) -> int:
        code = ("import sys; from edgevit.utils.locks import lock_output; lock_output(sys.argv[1], 'out'); "
                "print('ready', flush=True); sys.stdin.read()")
        p = subprocess.Popen([sys.executable, "-c", code, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
        assert p.stdout.readline().strip() == "ready"
        procs.append(p)
        return p.pid
    yield hold
    for p in procs:
        p.stdin.close()
        p.wait(timeout=30)


def test_a_second_writer_of_the_same_output_is_refused_by_name(other_writer, tmp_path, capsys, refused):
    out = tmp_path / "digits"
    pid = other_writer(out)
    refused(["data", "digits", "--out", str(out)], "--out", "another edgevit command", f"pid {pid}")
    assert not out.exists()
    onnx = tmp_path / "m.onnx"
    pid = other_writer(onnx)
    refused(["export", "--format", "onnx", "-o", str(onnx)], "-o", f"pid {pid}")
    run = tmp_path / "run"
    pid = other_writer(run)
    refused(["train", "--data", str(tmp_path / "data"), "--output", str(run)], "--output", f"pid {pid}")
    # once the other command has ended, the output is free (and no lock file is left behind by this one)
    assert cli(["data", "digits", "--out", str(tmp_path / "free"), "--size", "8"]) == 0
    assert not (tmp_path / ".free.lock").exists()


# ---------------------------------------------------------------- whole-directory replacements
def _bench_file(path: Path, img_size=224, models=("edgevit_xxs", "mobilenetv2_100")) -> Path:
    path.write_text(json.dumps({"meta": {}, "results": [
        {"model": m, "runtime": "onnxruntime", "mean_ms": 10.0 + i, "img_size": img_size}
        for i, m in enumerate(models)]}))
    return path


def test_overwrite_never_deletes_its_inputs_or_foreign_files(tmp_path, capsys, monkeypatch, refused):
    out = tmp_path / "report"
    bench = tmp_path / "bench.json"
    _bench_file(bench)
    assert cli(["report", "--bench", str(bench), "--out", str(out)]) == 0
    capsys.readouterr()
    inside = _bench_file(out / "bench2.json")
    before = snapshot(tmp_path)
    refused(["report", "--bench", str(inside), "--out", str(out), "--overwrite"], "--bench", "would delete")
    assert snapshot(tmp_path) == before
    # a directory edgevit did not write (or the current one): refused, nothing deleted
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    before = snapshot(tmp_path)
    refused(["report", "--bench", str(bench), "--out", str(mine), "--overwrite"], "thesis.tex",
            "not written by edgevit")
    monkeypatch.chdir(out)
    for command in (["report", "--bench", str(bench)], ["data", "digits"]):
        refused([*command, "--out", ".", "--overwrite"], "current directory")
    refused(["detect", "shapes", ".", "--overwrite"], "current directory")
    assert snapshot(tmp_path) == before and not [p for p in tmp_path.iterdir() if p.name.endswith(".old")]
    # a file the user added to a directory edgevit wrote: refused too (the marker lists what edgevit wrote)
    monkeypatch.chdir(tmp_path)
    inside.unlink()
    (out / "my_analysis.md").write_text("mine")
    before = snapshot(tmp_path)
    refused(["report", "--bench", str(bench), "--out", str(out), "--overwrite"], "my_analysis.md",
            "not written by edgevit")
    assert snapshot(tmp_path) == before
    (out / "my_analysis.md").unlink()
    # its own earlier output is replaced, with the mode a plain mkdir gives
    assert cli(["report", "--bench", str(bench), "--out", str(out), "--overwrite"]) == 0
    umask = os.umask(0)
    os.umask(umask)
    assert (out.stat().st_mode & 0o777) == 0o777 & ~umask


# ---------------------------------------------------------------- streams
def _shard(path: Path, samples) -> None:
    with tarfile.open(path, "w") as tar:
        for key, ext, data in samples:
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _png_bytes(img: Image.Image) -> bytes:
    b = io.BytesIO()
    img.save(b, format="PNG")
    return b.getvalue()


def _wds(root: Path, images, labels, lengths_declared=None, num_classes=2):
    root.mkdir(parents=True)
    samples = [(f"s{i:03d}", ext, data) for i, (img, lab) in enumerate(zip(images, labels))
               for ext, data in (("png", img if isinstance(img, bytes) else _png_bytes(img)),
                                 ("cls", str(lab).encode()))]
    _shard(root / "t-validation-000000.tar", samples)
    n = len(images) if lengths_declared is None else lengths_declared
    (root / "_info.json").write_text(json.dumps({"name": "t", "num_classes": num_classes, "splits": {
        "validation": {"name": "validation", "num_samples": n, "filenames": ["t-validation-000000.tar"],
                       "shard_lengths": [n]}}}))
    return root


def test_16bit_images_in_shards_decode_as_in_a_folder(tmp_path):
    from edgevit.train.datasets import build_eval_data
    from edgevit.utils.images import eval_transform

    rng = np.random.default_rng(0)
    wide = Image.fromarray(rng.integers(0, 65535, (32, 32), dtype=np.uint16))  # I;16
    folder = tmp_path / "f" / "a"
    folder.mkdir(parents=True)
    (tmp_path / "f" / "b").mkdir()
    wide.save(folder / "x.png")
    Image.new("RGB", (32, 32)).save(tmp_path / "f" / "b" / "y.png")
    shards = _wds(tmp_path / "s", [wide], [0])
    t = eval_transform(32, 1.0)
    from_folder = build_eval_data(tmp_path / "f", None, None, t)[0][0][0]
    from_shards = next(iter(build_eval_data(shards, "wds/t", None, t)[0]))[0]
    assert torch.equal(from_folder, from_shards)
    assert from_shards.std() > 0.3  # not clipped to white


def _tiny_checkpoint(path: Path, num_classes: int = 2) -> Path:
    import timm

    from edgevit.models.checkpoint import save_checkpoint

    kw = {"embed_dims": [16, 16, 16, 16], "depths": [1, 1, 1, 1], "head_dim": 16}
    model = timm.create_model("edgevit_xxs", num_classes=num_classes, **kw)
    cfg = {"model": "edgevit_xxs", "model_kwargs": kw, "img_size": 32, "crop_pct": 1.0, "num_classes": num_classes}
    return save_checkpoint(model, path, cfg, [str(i) for i in range(num_classes)])


def test_damaged_shards_are_named_and_eval_never_reports_over_fewer_samples(tmp_path, capsys, refused):
    ck = str(_tiny_checkpoint(tmp_path / "m.safetensors"))
    ok = [Image.new("RGB", (32, 32), (i * 40, 0, 0)) for i in range(4)]
    # a declared count above what the shards hold: refused before any work, naming the shard
    short = _wds(tmp_path / "short", ok, [0, 1, 0, 1], lengths_declared=6)
    refused(["eval", "--data", str(short), "--dataset", "wds/t", "--checkpoint", ck],
            "t-validation-000000.tar", "holds 4",
            "declares 6")
    # a label out of range in a later sample: named with its shard and key before any work
    bad_label = _wds(tmp_path / "label", ok, [0, 1, 0, 7])
    refused(["eval", "--data", str(bad_label), "--dataset", "wds/t", "--checkpoint", ck],
            "t-validation-000000.tar", "s003",
            "label 7")
    # a text label, a sample without its label, a truncated shard: each named before any work
    text = _wds(tmp_path / "text", ok, [0, 1, "abc", 1])
    refused(["eval", "--data", str(text), "--dataset", "wds/t", "--checkpoint", ck], "s002",
            "not a class index")
    nolabel = _wds(tmp_path / "nolabel", ok, [0, 1, 0, 1])
    tar = nolabel / "t-validation-000000.tar"
    _shard(tar, [(f"s{i:03d}", ext, data) for i, img in enumerate(ok)
                 for ext, data in (("png", _png_bytes(img)), ("cls", b"0")) if not (i == 2 and ext == "cls")])
    refused(["eval", "--data", str(nolabel), "--dataset", "wds/t", "--checkpoint", ck], "s002",
            "no 'cls' entry")
    truncated = _wds(tmp_path / "truncated", ok, [0, 1, 0, 1])
    tar = truncated / "t-validation-000000.tar"
    tar.write_bytes(tar.read_bytes()[:3000])
    refused(["eval", "--data", str(truncated), "--dataset", "wds/t", "--checkpoint", ck],
            "t-validation-000000.tar")
    # an undecodable image later in a shard: webdataset skips it; eval fails instead of a top-1 over 3 of 4
    broken = _wds(tmp_path / "broken", [*ok[:3], b"not an image"], [0, 1, 0, 1])
    refused(["eval", "--data", str(broken), "--dataset", "wds/t", "--workers", "0", "--checkpoint", ck,
                     "--no-progress"],
            "evaluated 3 of the 4")


# ---------------------------------------------------------------- weights carry their preprocessing
def test_a_runs_safetensors_carries_its_size_crop_and_classes(tmp_path, capsys):
    digits = tmp_path / "digits"
    assert cli(["data", "digits", "--out", str(digits), "--size", "32"]) == 0
    run = tmp_path / "run"
    assert cli(["train", "--data", str(digits), "--output", str(run), "--img-size", "32", "--epochs", "1",
                "--batch-size", "64", "--workers", "0", "--no-progress", "--aa", "none", "--mixup", "0",
                "--cutmix", "0", "--no-repeated-aug", "--no-model-ema", "--crop-pct", "1.0", "--device", "cpu",
                "--model-kwargs", json.dumps({"embed_dims": [16, 16, 16, 16], "depths": [1, 1, 1, 1],
                                              "head_dim": 16})]) == 0
    capsys.readouterr()
    results = {}
    for ck in ("last.pth", "model.safetensors"):
        assert cli(["eval", "--data", str(digits / "val"), "--checkpoint", str(run / ck), "--workers", "0",
                    "--no-progress", "--json"]) == 0
        results[ck] = json.loads(capsys.readouterr().out)
    a, b = results["last.pth"], results["model.safetensors"]
    assert (b["img_size"], b["crop_pct"]) == (32, 1.0) and b["top1"] == a["top1"] and b["loss"] == a["loss"]
    image = next((digits / "val" / "3").iterdir())
    assert cli(["predict", str(image), "--checkpoint", str(run / "model.safetensors"), "--json"]) == 0
    p = json.loads(capsys.readouterr().out)
    assert p["img_size"] == 32 and p["top"][0]["label"] in [str(i) for i in range(10)]
    out = tmp_path / "m.onnx"
    assert cli(["export", "--format", "onnx", "--checkpoint", str(run / "model.safetensors"), "-o", str(out),
                "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["img_size"] == [32, 32]
    with pytest.warns(UserWarning, match="trained at 32x32"):
        assert cli(["export", "--format", "onnx", "--checkpoint", str(run / "model.safetensors"), "--img-size",
                    "64", "-o", str(tmp_path / "m64.onnx")]) == 0
    # the routes a timm user takes: timm's own data config and transform give the run's size, crop and top-1
    import timm

    repo = str(Path(__file__).resolve().parents[2])
    tiny = {"embed_dims": [16, 16, 16, 16], "depths": [1, 1, 1, 1], "head_dim": 16}
    routes = {
        "hub": lambda ck: torch.hub.load(repo, "edgevit_xxs", source="local", checkpoint=str(ck)),
        "timm": lambda ck: timm.create_model("edgevit_xxs", pretrained=True, **tiny,
                                             pretrained_cfg_overlay=dict(file=str(ck))).eval(),
    }
    for route, build in routes.items():
        for ck in ("model.safetensors", "best.pth"):
            model = build(run / ck)
            data_cfg = timm.data.resolve_data_config({}, model=model)
            assert (data_cfg["input_size"], data_cfg["crop_pct"]) == ((3, 32, 32), 1.0), (route, ck, data_cfg)
            assert model.pretrained_cfg["label_names"] == [str(i) for i in range(10)]
            assert _timm_top1(model, digits / "val", timm.data.create_transform(**data_cfg)) == \
                pytest.approx(a["top1"]), (route, ck)


def _timm_top1(model, root: Path, transform) -> float:
    """Top-1 (%) over an ImageFolder split as a timm user computes it: timm's transform, the model's argmax."""
    from torchvision.datasets import ImageFolder

    ds = ImageFolder(str(root), transform=transform)
    loader = torch.utils.data.DataLoader(ds, batch_size=128)
    with torch.no_grad():
        right = sum((model(x).argmax(1) == y).sum().item() for x, y in loader)
    return 100.0 * right / len(ds)


# ---------------------------------------------------------------- reports compare like with like
def test_reports_keep_input_sizes_and_data_sets_apart(tmp_path, capsys, refused):
    b224, b64 = _bench_file(tmp_path / "b224.json"), _bench_file(tmp_path / "b64.json", img_size=64)
    refused(["report", "--bench", str(b64), "--vs-paper", "--out", str(tmp_path / "r0")],
            "edgevit_xxs at 64x64 px (the paper: 224)")
    acc = tmp_path / "acc.json"
    acc.write_text(json.dumps([{"model": "edgevit_xxs", "top1": 99.0, "num_classes": 10, "img_size": 64,
                                "data": "digits/val"}]))
    out = tmp_path / "r"
    assert cli(["report", "--bench", str(b224), "--bench", str(b64), "--accuracy", str(acc), "--out", str(out),
                "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    groups = summary["pareto"]["accuracy_latency"]
    assert len(groups) == 4  # each input size with ImageNet top-1s (MobileNet-v2), and with digits' (XXS)
    for members in groups.values():
        assert len({n.split(" @")[0] for n in members}) == len(members)  # one entry per model in a set
    names = {r["name"] for r in summary["rows"]}
    assert {"edgevit_xxs @224x224px", "edgevit_xxs @64x64px"} <= names
    md = (out / "report.md").read_text()
    assert "top-1 on digits/val (10 classes, 64x64 px)" in md and "top-1 on ImageNet-1K" in md


# ---------------------------------------------------------------- bounds
@pytest.mark.parametrize("argv, names", [
    (["eval", "--data", "D", "--checkpoint", "C", "--crop-pct", "1e-9"], ["--crop-pct", "[0.25, 1]"]),
    (["train", "--data", "D", "--output", "O", "--epochs", "5", "--cooldown-epochs", "5"], ["--cooldown-epochs"]),
    (["eval", "--data", "D", "--exported", "x.onnx", "--threads", "100000"], ["--threads", "thread count"]),
    (["bench", "--models", "edgevit_xxs", "--threads", "100000"], ["--threads"]),
    (["train", "--data", "D", "--output", "O", "--threads", "100000"], ["--threads"]),
    (["info", "--img-size", "4096"], ["--img-size", "2048"]),
    (["data", "digits", "--out", "O", "--val-fraction", "0.001"], ["--val-fraction", "at least one per class"]),
    (["data", "digits", "--out", "O", "--val-fraction", "0.999"], ["--val-fraction", "1 for train/"]),
    (["train", "--data", "D", "--output", "O", "--model-kwargs", '{"head_dim": 0}'], ["--model-kwargs", "head_dim=0"]),
    (["train", "--data", "D", "--output", "O", "--model-kwargs", '{"depths": [1, 1, 1, -1]}'], ["depths"]),
])
def test_values_beyond_the_machine_are_refused(argv, names, capsys, refused):
    refused(argv, *names)


def test_eval_of_a_root_holding_only_val(tmp_path):
    from edgevit.train.datasets import eval_split

    (tmp_path / "val" / "a").mkdir(parents=True)
    assert eval_split(tmp_path) == tmp_path / "val"
    (tmp_path / "cats").mkdir()
    assert eval_split(tmp_path) == tmp_path  # a class folder named val among real classes stays a class


def test_energy_help_shows_only_defaults_that_say_something(capsys):
    assert cli(["energy", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in out and "(default: True)" not in out and "(default: False)" not in out
    assert "(default 50)" in out and "(default: 5)" in out


def test_int8_agreement_is_measured_on_images_calibration_did_not_use(tmp_path):
    from edgevit.deploy.quantize import calibration_files

    for i in range(30):
        Image.new("RGB", (8, 8), (i, i, i)).save(tmp_path / f"{i:02d}.png")
    cal, check = calibration_files(tmp_path, 16, check=8)
    assert len(cal) == 16 and len(check) == 8 and not set(cal) & set(check)
    cal, check = calibration_files(tmp_path, 256, check=64)  # too few for both: a fifth held out
    assert len(check) == 6 and len(cal) == 24 and not set(cal) & set(check)


def test_report_refuses_impossible_latencies(tmp_path, capsys, refused):
    for bad in (float("nan"), -5.0):
        b = tmp_path / "b.json"
        b.write_text(json.dumps({"meta": {}, "results": [{"model": "edgevit_xxs", "runtime": "onnxruntime",
                                                          "mean_ms": 10.0, "median_ms": bad}]}))
        refused(["report", "--bench", str(b), "--out", str(tmp_path / "r")], "median_ms", "not a latency")


def test_sigterm_outside_training_leaves_nothing_half_written(tmp_path):
    import signal
    import time

    out = tmp_path / "digits"
    proc = subprocess.Popen([sys.executable, "-m", "edgevit.cli.main", "data", "digits", "--out", str(out),
                             "--size", "256"], stderr=subprocess.PIPE, text=True, start_new_session=True)
    t0 = time.time()
    while not any(p.name.endswith(".tmp") for p in tmp_path.iterdir()):  # writing has begun
        assert proc.poll() is None and time.time() - t0 < 120, proc.stderr.read() if proc.poll() is not None else ""
        time.sleep(0.05)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no temporary, no lock, no half data set


def test_eval_names_a_checkpoint_given_as_an_exported_file_and_a_root_without_val(tmp_path, capsys, refused):
    ck = _tiny_checkpoint(tmp_path / "m.pth")
    (tmp_path / "d" / "train" / "a").mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(tmp_path / "d" / "train" / "a" / "x.png")
    torch.save({"model": {"w": torch.ones(1)}}, tmp_path / "best.pth")
    refused(["eval", "--data", str(tmp_path / "d" / "train"), "--exported", str(tmp_path / "best.pth")],
            "--exported", "a PyTorch checkpoint")
    refused(["eval", "--data", str(tmp_path / "d"), "--checkpoint", str(ck)], "--data", "no val/")


def test_an_accuracy_of_another_configuration_is_not_attached(tmp_path):
    from edgevit.bench.report import build_rows

    bench = {"meta": {}, "results": [{"model": "edgevit_xxs", "runtime": "onnxruntime", "mean_ms": 10.0,
                                      "img_size": 224, "params_m": 4.07}]}
    tiny = {"model": "edgevit_xxs", "top1": 56.9, "num_classes": 1000, "img_size": 224, "params_m": 0.03}
    rows, warnings = build_rows([bench], (), [("acc.json", tiny)], None)
    assert rows[0]["top1"] is None and any("0.03 M parameters" in w for w in warnings)
    same = dict(tiny, params_m=4.07)
    rows, _ = build_rows([bench], (), [("acc.json", same)], None)
    assert rows[0]["top1"] == 56.9


def test_a_calibration_cut_short_is_said(tmp_path):
    import timm

    from edgevit.deploy.quantize import calibration_and_check

    for i in range(20):
        Image.new("RGB", (32, 32), (i, i, i)).save(tmp_path / f"{i:02d}.png")
    model = timm.create_model("edgevit_xxs", num_classes=2, embed_dims=[16, 16, 16, 16], depths=[1, 1, 1, 1],
                              head_dim=16)
    with pytest.warns(UserWarning) as w:
        images, check, checked_on = calibration_and_check(model, str(tmp_path), 1000, 64, 32)
    said = " ".join(str(x.message) for x in w)
    assert "16 images for calibration of the 1000 asked" in said and "only 4 images" in said
    assert len(images) == 16 and len(check) == 4 and "did not use" in checked_on


def test_a_pretrained_checkpoint_of_other_model_options_says_which(tmp_path, capsys):
    from edgevit.train.build import load_pretrained

    kw = {"embed_dims": [16, 16, 16, 16], "depths": [1, 1, 1, 1], "head_dim": 16}
    ck = tmp_path / "best.pth"
    import timm

    src = timm.create_model("edgevit_xxs", num_classes=3, **kw)
    torch.save({"model": src.state_dict(), "config": {"model": "edgevit_xxs", "model_kwargs": kw}}, ck)
    with pytest.raises(Exception, match='model_kwargs {"embed_dims": \\[16, 16, 16, 16\\]') as e:
        load_pretrained(timm.create_model("edgevit_xxs", num_classes=5), str(ck), "edgevit_xxs", {})
    msg = str(e.value)
    assert msg.index("give the same") < msg.index("shape conflicts")  # the hint first, then the keys
