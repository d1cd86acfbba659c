"""Nothing lost, nothing silent: every command that writes refuses to destroy what exists, nonsense values
are refused with one line naming the flag or file, and nothing already written changes (checksums)."""
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgevit.cli.main import main as cli


def snapshot(root: Path) -> dict:
    """{relative path: sha256} of every file below `root` (what a failing command must leave as it was)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def refused(capsys, argv, *names) -> str:
    """Run the CLI; it must exit 2 with one error line that names every string in `names`."""
    assert cli(argv) == 2, argv
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error:" in err[0], err
    for n in names:
        assert n in err[0], (n, err[0])
    return err[0]


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A run directory holding only best.pth (an 85%-val model) and a config: a run to keep."""
    d = tmp_path / "run"
    d.mkdir()
    torch.save({"model": {"w": torch.ones(3)}, "epoch": 7}, d / "best.pth")
    (d / "config.yaml").write_text("model: edgevit_xxs\n")
    return d


# ---------------------------------------------------------------- 1. never destroy what exists
@pytest.mark.parametrize("command", [
    ["train", "--data", "D"],
    ["detect", "train", "--data", "D"],
    ["segment", "train", "--data", "D"],
])
def test_train_commands_refuse_a_run_directory_without_resume(command, run_dir, tmp_path, capsys):
    before = snapshot(run_dir)
    msg = refused(capsys, [*command, "--output", str(run_dir)], str(run_dir), "no last.pth", "--overwrite")
    assert "best.pth" in msg and "--resume" not in msg  # (resuming a run without last.pth has nothing to resume)
    assert snapshot(run_dir) == before


def test_resume_and_overwrite_exclude_each_other(run_dir, capsys):
    refused(capsys, ["detect", "train", "--data", "D", "--output", str(run_dir), "--resume", "auto",
                     "--overwrite"], "--resume", "--overwrite")


@pytest.mark.parametrize("task", ["detect", "segment"])
def test_predict_never_writes_over_its_input_or_an_existing_png(task, tmp_path, capsys, monkeypatch):
    image = tmp_path / "photo.png"
    Image.new("RGB", (64, 48), (10, 20, 30)).save(image)
    before = snapshot(tmp_path)
    refused(capsys, [task, "predict", str(image), "--checkpoint", "x.pth", "--out", str(image)],
            "--out", "is the input")
    refused(capsys, [task, "predict", str(image), "--checkpoint", "x.pth", "--out", str(image), "--overwrite"],
            "--out", "is the input")
    monkeypatch.chdir(tmp_path)
    default = tmp_path / f"photo_{'det' if task == 'detect' else 'seg'}.png"
    default.write_bytes(b"an earlier result")
    before = snapshot(tmp_path)
    refused(capsys, [task, "predict", str(image), "--checkpoint", "x.pth"], "--out", default.name, "--overwrite")
    assert snapshot(tmp_path) == before


def test_shapes_refuses_an_existing_set_and_replaces_it_whole(tmp_path, capsys):
    out = tmp_path / "shapes"
    assert cli(["detect", "shapes", str(out), "--num-train", "3", "--num-val", "1", "--size", "64"]) == 0
    capsys.readouterr()
    before = snapshot(out)
    refused(capsys, ["segment", "shapes", str(out), "--num-train", "2", "--num-val", "1", "--size", "64"],
            str(out), "--overwrite")
    assert snapshot(out) == before  # (the third training image of this set would be stale in a 2-image set)
    assert cli(["detect", "shapes", str(out), "--num-train", "2", "--num-val", "1", "--size", "64",
                "--overwrite"]) == 0
    annotations = json.loads((out / "annotations" / "instances_training.json").read_text())
    listed = {im["file_name"] for im in annotations["images"]}
    assert {p.name for p in (out / "images" / "training").iterdir()} == listed == {
        "shapes_000000.png", "shapes_000001.png"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".shapes")]  # no temporary left behind


def test_data_digits_refuses_an_existing_directory_and_a_file(tmp_path, capsys):
    out = tmp_path / "digits"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    refused(capsys, ["data", "digits", "--out", str(out)], "--out", "--overwrite")
    assert (out / "mine.txt").read_text() == "keep"
    f = tmp_path / "file"
    f.write_text("x")
    refused(capsys, ["data", "digits", "--out", str(f)], "--out", "is a file")


@pytest.mark.parametrize("argv, flag", [
    (["export", "--format", "onnx", "-o", "{dir}"], "-o"),
    (["bench", "--models", "edgevit_xxs", "--runs", "1", "--json", "{dir}"], "--json"),
    (["bench", "--models", "edgevit_xxs", "--runs", "1", "--csv", "{dir}"], "--csv"),
    (["energy", "--trace", "{trace}", "-o", "{dir}"], "-o"),
])
def test_unwritable_outputs_are_refused_before_any_work(argv, flag, tmp_path, capsys):
    trace = tmp_path / "t.csv"
    trace.write_text("time,power\n0,1\n")
    as_dir = [a.format(dir=tmp_path, trace=trace) for a in argv]
    refused(capsys, as_dir, flag, "is a directory")
    in_proc = [a.format(dir="/proc/edgevit-out.bin", trace=trace) for a in argv]  # read-only for root too
    refused(capsys, in_proc, flag, "cannot write")
    existing = tmp_path / "existing.out"
    existing.write_text("earlier result")
    refused(capsys, [a.format(dir=existing, trace=trace) for a in argv], flag, "exists", "--overwrite")
    assert existing.read_text() == "earlier result"


def test_report_refuses_an_existing_directory_and_no_inputs(tmp_path, capsys):
    refused(capsys, ["report", "--out", str(tmp_path / "r")], "nothing to report")
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"meta": {}, "results": [{"model": "edgevit_xxs", "runtime": "eager",
                                                          "mean_ms": 10.0}]}))
    out = tmp_path / "r"
    out.mkdir()
    (out / "keep.md").write_text("mine")
    refused(capsys, ["report", "--bench", str(bench), "--out", str(out)], "--out", "--overwrite")
    assert (out / "keep.md").read_text() == "mine"


# ---------------------------------------------------------------- 2. never a silently wrong answer
def test_16bit_and_float_images_give_the_same_answer_as_8bit(tmp_path):
    import timm
    from sklearn.datasets import load_digits

    from edgevit.cli.predict import predict
    from edgevit.utils.images import read_image

    digit = (load_digits().images[7] * (255 / 16)).round().astype(np.uint8)
    digit = np.kron(digit, np.ones((8, 8), dtype=np.uint8))  # 64 x 64
    p8, p16, pf = tmp_path / "d8.png", tmp_path / "d16.png", tmp_path / "df.tif"
    Image.fromarray(digit, mode="L").save(p8)
    Image.fromarray(digit.astype(np.uint16) * 257).save(p16)  # 16-bit PNG, full 0..65535 range
    Image.fromarray(digit.astype(np.float32) / 255.0, mode="F").save(pf)  # float TIFF in [0, 1]
    assert Image.open(p16).mode.startswith("I") and Image.open(pf).mode == "F"
    arrays = [np.asarray(read_image(p)) for p in (p8, p16, pf)]
    assert all(np.abs(a.astype(int) - arrays[0].astype(int)).max() <= 1 for a in arrays)
    # what PIL's convert("RGB") alone gives for the 16-bit scan: clipped to white, a different image
    assert np.asarray(Image.open(p16).convert("RGB")).mean() > 1.5 * arrays[0].mean()
    torch.manual_seed(0)
    model = timm.create_model("edgevit_xxs", num_classes=10).eval()
    tops = [predict(model, read_image(p), topk=1, img_size=64, crop_pct=1.0) for p in (p8, p16, pf)]
    assert tops[0][0] == tops[1][0] == tops[2][0]
    assert tops[0][1][0] == pytest.approx(tops[1][1][0], abs=1e-3) == pytest.approx(tops[2][1][0], abs=1e-3)


def test_float_images_of_unknown_range_are_refused(tmp_path, capsys):
    p = tmp_path / "hdr.tif"
    Image.fromarray(np.full((8, 8), 900.0, dtype=np.float32), mode="F").save(p)
    refused(capsys, ["predict", str(p)], str(p), "[0, 1] or [0, 255]")


@pytest.mark.parametrize("argv, flag", [
    (["info", "--img-size", "0"], "--img-size"),
    (["info", "--img-size", "100000"], "--img-size"),
    (["predict", "x.png", "--crop-pct", "0"], "--crop-pct"),
    (["predict", "x.png", "--crop-pct", "2"], "--crop-pct"),
    (["eval", "--data", "d", "--checkpoint", "c", "--crop-pct", "nan"], "--crop-pct"),
    (["eval", "--data", "d", "--checkpoint", "c", "--img-size", "-32"], "--img-size"),
    (["bench", "--warmup", "-1"], "--warmup"),
    (["bench", "--threads", "0"], "--threads"),
    (["export", "--format", "onnx", "-o", "x.onnx", "--threads", "0"], "--threads"),
    (["detect", "predict", "x.png", "--checkpoint", "c", "--score-thresh", "2"], "--score-thresh"),
    (["train", "--data", "d", "--output", "o", "--mixup-mode", "weird"], "--mixup-mode"),
    (["train", "--data", "d", "--output", "o", "--warmup-epochs", "-1"], "--warmup-epochs"),
    (["train", "--data", "d", "--output", "o", "--smoothing", "1.5"], "--smoothing"),
    (["train", "--data", "d", "--output", "o", "--drop-path", "2"], "--drop-path"),
    (["train", "--data", "d", "--output", "o", "--threads", "0"], "--threads"),
    (["train", "--data", "d", "--output", "o", "--scale", "1.0"], "scale"),
    (["train", "--data", "d", "--output", "o", "--aa", "weird-policy"], "aa"),
    (["train", "--data", "d", "--output", "o", "--model-kwargs", '{"foo": 1}'], "--model-kwargs"),
    (["train", "--data", "d", "--output", "o", "--model-kwargs", "[1]"], "--model-kwargs"),
    (["eval", "--data", "d", "--checkpoint", "c", "--model-kwargs", "not json"], "--model-kwargs"),
    (["segment", "train", "--data", "d", "--output", "o", "--crop-size", "100"], "--crop-size"),
    (["detect", "shapes", "o", "--size", "0"], "--size"),
    (["data", "digits", "--out", "o", "--val-fraction", "1"], "--val-fraction"),
    (["energy", "--trace", "t.csv", "--threshold", "0"], "--threshold"),
])
def test_nonsense_values_are_refused_naming_the_flag(argv, flag, capsys):
    refused(capsys, argv, flag)


def test_config_file_values_are_checked_like_flags(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: ten\n")
    refused(capsys, ["train", "--config", str(cfg), "--data", "d", "--output", "o"], str(cfg), "epochs", "'ten'")
    cfg.write_text("lr: -1\n")
    refused(capsys, ["segment", "train", "--config", str(cfg), "--data", "d", "--output", "o"], str(cfg), "lr")


def test_config_file_never_overrides_an_explicit_flag_equal_to_the_default():
    import tempfile

    from edgevit.cli.config import apply_config, explicit_options
    from edgevit.cli.main import build_parser
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write("lr: 0.5\nweight_decay: 0.3\n")
    parser = build_parser()
    argv = ["segment", "train", "--config", f.name, "--lr", "0.0001"]  # 1e-4 is the parser default
    args = parser.parse_args(argv)
    args._explicit = explicit_options(parser, argv)
    args = apply_config(args, args._parser)
    assert args.lr == 0.0001 and args.weight_decay == 0.3


def test_report_accuracy_out_of_range_and_negative_power_trace(tmp_path, capsys):
    acc = tmp_path / "acc.json"
    acc.write_text(json.dumps({"model": "edgevit_xxs", "top1": 250}))
    refused(capsys, ["report", "--accuracy", str(acc), "--out", str(tmp_path / "r")], str(acc), "250")
    trace = tmp_path / "t.csv"
    rows = "\n".join(f"{i},{-1.0 if i == 40 else 1.0}" for i in range(200))
    trace.write_text("time,power\n" + rows + "\n")
    refused(capsys, ["energy", "--trace", str(trace)], str(trace), "negative", "row 42")


def test_live_flags_in_trace_mode_are_refused(tmp_path, capsys):
    refused(capsys, ["energy", "--trace", str(tmp_path / "t.csv"), "--repeats", "9", "--unfused"],
            "--repeats", "--unfused")
    refused(capsys, ["energy", "--voltage", "5"], "--voltage")


# ---------------------------------------------------------------- 3. every error names its file or flag
def test_unreadable_inputs_name_the_file(tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    msg = refused(capsys, ["train", "--data", str(tmp_path / "d"), "--output", str(tmp_path / "r"), "--resume",
                           str(text)], str(text))
    assert "weights_only" not in msg
    png = tmp_path / "img.png"
    Image.new("RGB", (4, 4)).save(png)
    refused(capsys, ["report", "--bench", str(png), "--out", str(tmp_path / "r2")], "bench results", str(png))
    refused(capsys, ["energy", "--trace", str(png)], str(png), "not a text CSV")
    labels = tmp_path / "labels.json"
    labels.write_text("{not json")
    refused(capsys, ["predict", str(png), "--labels", str(labels)], "--labels", str(labels))
    refused(capsys, ["predict", str(tmp_path)], str(tmp_path), "is a directory")
    (tmp_path / "vd" / "a").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "vd" / "a" / "x.png")
    refused(capsys, ["eval", "--data", str(tmp_path / "vd"), "--checkpoint", str(tmp_path)], str(tmp_path),
            "is a directory")
    powercap = tmp_path / "powercap" / "intel-rapl:0"
    powercap.mkdir(parents=True)
    (powercap / "name").write_text("package-0\n")
    (powercap / "energy_uj").write_text("garbage\n")
    (powercap / "max_energy_range_uj").write_text("1000\n")
    refused(capsys, ["energy", "--powercap", str(tmp_path / "powercap")], "energy_uj", "garbage")


def test_a_checkpoint_of_another_kind_is_named(tmp_path):
    from edgevit.errors import UserError
    from edgevit.train.state import load_training_state

    ck = tmp_path / "cls.pth"
    torch.save({"model": {}, "optimizer": {}, "epoch": 3}, ck)  # a classification run's last.pth
    with pytest.raises(UserError, match=r"cls.pth: not a training checkpoint of `edgevit detect train`.*'meta'"):
        load_training_state(ck, "edgevit detect train", ("model", "meta"))
    from safetensors.torch import save_file
    weights = tmp_path / "w.safetensors"
    save_file({"head.weight": torch.zeros(2, 2)}, str(weights))
    with pytest.raises(UserError, match=r"w.safetensors: not a training checkpoint of `edgevit train`"):
        load_training_state(weights, "edgevit train", ("model", "optimizer", "epoch"))


def test_nan_in_a_coco_box_is_named(tmp_path):
    from edgevit.dense.coco import load_coco
    from edgevit.errors import UserError

    ann = tmp_path / "instances_x.json"
    ann.write_text('{"images": [{"id": 1, "file_name": "a.png", "width": 8, "height": 8}], "categories": '
                   '[{"id": 1, "name": "c"}], "annotations": [{"id": 5, "image_id": 1, "category_id": 1, '
                   '"bbox": [0, 0, NaN, 2]}]}')
    with pytest.raises(UserError, match=r"instances_x.json: annotation id 5 has bbox"):
        load_coco(ann)


def test_divergence_message_says_what_is_on_disk(tmp_path):
    import argparse

    from edgevit.cli.main import _after_divergence

    args = argparse.Namespace(output=str(tmp_path), lr=1e-3, clip_grad=None)
    assert "No checkpoint had been saved yet" in _after_divergence(args)
    assert "--lr" in _after_divergence(args) and "--amp" not in _after_divergence(args)
    args.amp = "float16"
    assert "--amp bfloat16" in _after_divergence(args)
    (tmp_path / "last.pth").write_bytes(b"x")
    assert f"{tmp_path / 'last.pth'} holds the last checkpoint" in _after_divergence(args)


def test_a_bug_keeps_its_traceback(monkeypatch, capsys):
    """Only user errors become one line: a plain ValueError from a bug propagates (EDGEVIT_DEBUG not needed)."""
    import edgevit.cli.info as info

    def broken(args):
        raise ValueError("internal invariant broken")
    monkeypatch.setattr(info, "run", broken)
    with pytest.raises(ValueError, match="internal invariant"):
        cli(["info"])


def test_debug_shows_the_traceback_of_a_user_error(capsys):
    from edgevit.errors import UserError

    with pytest.raises(UserError):
        cli(["--debug", "predict", "/nonexistent.png"])


# ---------------------------------------------------------------- 4. quiet when asked
def test_no_progress_bar_escapes_when_stderr_is_not_a_terminal(tmp_path):
    out = tmp_path / "b.json"
    r = subprocess.run([sys.executable, "-m", "edgevit.cli.main", "bench", "--models", "edgevit_xxs",
                        "--edgevit-form", "fused", "--runs", "2", "--warmup", "0", "--img-size", "64",
                        "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr and "it/s" not in r.stderr and "run/s" not in r.stderr
    assert "Deprecat" not in r.stderr and "pytree" not in r.stderr
    assert json.loads(out.read_text())["results"]


@pytest.mark.parametrize("command", [["bench"], ["export"], ["detect", "train"], ["detect", "eval"],
                                     ["segment", "train"], ["segment", "eval"], ["eval"], ["energy"]])
def test_long_commands_take_no_progress(command, capsys):
    assert cli([*command, "--help"]) == 0
    assert "--no-progress" in capsys.readouterr().out


def test_every_command_has_help():
    """--help of every command and subcommand renders (a '%' in a help text once broke `train --help`)."""
    import argparse

    from edgevit.cli.main import build_parser

    def commands(p, prefix=()):
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sp in a.choices.items():
                    yield (*prefix, name)
                    yield from commands(sp, (*prefix, name))
    found = list(commands(build_parser()))
    assert ("train",) in found and ("detect", "train") in found
    for cmd in found:
        with pytest.raises(SystemExit) as e:
            build_parser().parse_args([*cmd, "--help"])
        assert e.value.code == 0, cmd


def test_native_start_up_lines_are_dropped_and_real_errors_kept(capfd):
    import os

    from edgevit.utils.quiet import filter_native_stderr

    with filter_native_stderr():
        os.write(2, b"[cpuinfo_utils.cpp:71] Reading file /sys/devices/soc0/image_version\n")
        os.write(2, b"[threadpool.cpp:66] Resetting threadpool to 2 threads.\n")
        os.write(2, b"E00:00 program.cpp:12] a real failure\n")
    err = capfd.readouterr().err
    assert "cpuinfo" not in err and "threadpool" not in err and "a real failure" in err


# ---------------------------------------------------------------- found by a second sweep
def test_an_empty_checkpoint_is_one_line(tmp_path, capsys):
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    png = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(png)
    refused(capsys, ["predict", str(png), "--checkpoint", str(empty)], str(empty))
    refused(capsys, ["segment", "eval", "--checkpoint", str(empty), "--data", str(tmp_path)], str(empty))


@pytest.mark.parametrize("command", [["train"], ["detect", "train"], ["segment", "train"]])
def test_a_run_directory_inside_the_data_is_refused(command, tmp_path, capsys):
    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    before = snapshot(data)
    refused(capsys, [*command, "--data", str(data), "--output", str(data)], "--output", "--data")
    refused(capsys, [*command, "--data", str(data), "--output", str(data / "train" / "run"), "--overwrite"],
            "--output", "inside --data")
    assert snapshot(data) == before


def test_training_ranges_given_in_the_wrong_shape_are_named(tmp_path, capsys):
    refused(capsys, ["train", "--data", "d", "--output", "o", "--opt-betas", "0.9"], "--opt-betas", "two values")
    refused(capsys, ["train", "--data", "d", "--output", "o", "--scale", "1.0", "0.08"], "--scale", "low value")
    refused(capsys, ["detect", "train", "--data", "d", "--output", str(tmp_path / "o"), "--epochs", "1",
                     "--milestones", "11", "8"], "--milestones", "increasing")


def test_a_config_file_with_a_bad_value_or_syntax_is_named(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("crop_size: big\n")  # refused even though the flag would override it
    refused(capsys, ["segment", "train", "--config", str(cfg), "--crop-size", "64", "--data", "d", "--output", "o"],
            str(cfg), "crop_size")
    cfg.write_text("lr: [1, 2\n")
    refused(capsys, ["train", "--config", str(cfg), "--data", "d", "--output", "o"], str(cfg), "line 2")


def test_a_looping_link_a_file_for_a_folder_and_an_unwritable_path_are_named(tmp_path, capsys):
    loop = tmp_path / "loop.png"
    loop.symlink_to(loop)
    refused(capsys, ["predict", str(loop)], str(loop), "symbolic link")
    png = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(png)
    refused(capsys, ["eval", "--data", str(png), "--checkpoint", "c.pth"], str(png), "is a file")
    refused(capsys, ["export", "--format", "onnx", "-o", "/proc/edgevit/x.onnx"], "/proc/edgevit/x.onnx")


def test_a_model_name_other_than_the_checkpoints_is_refused(tmp_path, capsys):
    import timm

    model = timm.create_model("edgevit_xxs", num_classes=3)
    ck = tmp_path / "best.pth"
    torch.save({"model": model.state_dict(), "config": {"model": "edgevit_xxs", "model_kwargs": {}},
                "classes": ["a", "b", "c"]}, ck)
    png = tmp_path / "x.png"
    Image.new("RGB", (64, 64)).save(png)
    refused(capsys, ["predict", str(png), "--checkpoint", str(ck), "--model", "edgevit_s"], "edgevit_xxs",
            "edgevit_s")
    (tmp_path / "val" / "a").mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(tmp_path / "val" / "a" / "x.png")
    refused(capsys, ["eval", "--data", str(tmp_path / "val"), "--checkpoint", str(ck), "--model", "edgevit_s"],
            "edgevit_xxs", "edgevit_s")


def test_a_binary_config_file_is_named(tmp_path, capsys):
    png = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(png)
    refused(capsys, ["train", "--data", str(tmp_path / "d"), "--output", str(tmp_path / "o"), "--epochs", "1",
                     "--config", str(png)], str(png), "not a text file")


def test_no_warning_precedes_an_error(tmp_path, capsys):
    """(epochs 1 < warmup 5 warns only once training begins; the run directory inside the data is refused first:
    `refused` checks the error is the only line.)"""
    refused(capsys, ["train", "--data", str(tmp_path), "--output", str(tmp_path / "inside"), "--epochs", "1"],
            "--output", "inside --data")


def test_model_options_the_model_refuses_are_named(capsys):
    refused(capsys, ["train", "--data", "d", "--output", "o", "--model-kwargs", '{"embed_dims": [16]}'],
            "--model-kwargs", "4 values")


def test_a_dense_runs_checkpoint_given_to_a_classification_command_is_named(tmp_path, capsys):
    png = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(png)
    dense = tmp_path / "det.pth"
    torch.save({"model": {}, "meta": {"arch": "retinanet"}}, dense)
    refused(capsys, ["predict", str(png), "--checkpoint", str(dense)], str(dense), "retinanet",
            "edgevit detect|segment train")


def test_an_output_name_that_does_not_fit_the_format_is_named(tmp_path, capsys):
    refused(capsys, ["export", "--format", "onnx", "-o", str(tmp_path / "x.pt")], "-o", ".onnx")
