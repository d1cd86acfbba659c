"""Nothing lost in training, with the faults made for real: a run directory replaced or resumed, signals to the
whole process group (loader workers included, and under torchrun), a rank failing, a changed recipe on resume,
exact mid-epoch resume with loader workers. Every data-loss test compares checksums of every file there was."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from edgevit.cli.main import main as cli
from edgevit.train import build
from edgevit.train.loop import train
from edgevit.train.state import RunDirectory, load_training_state

HERE = Path(__file__).parent


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def one_error(capsys, *names) -> str:
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if "error:" in ln]
    assert len(err) == 1, err
    for n in names:
        assert n in err[0], (n, err[0])
    return err[0]


def args(tiny, data, out, *more):
    return ["train", "--data", str(data), "--output", str(out), "--model-kwargs", json.dumps(tiny.MODEL),
            "--img-size", "32", "--batch-size", "4", "--workers", "0", "--epochs", "1", "--no-repeated-aug",
            "--no-model-ema", "--device", "cpu", "--no-progress", "--aa", "none", "--mixup", "0", "--cutmix", "0",
            "--reprob", "0", "--warmup-epochs", "0", "--deterministic", *more]


def _equal_states(a: Path, b: Path) -> None:
    sa, sb = load_training_state(a), load_training_state(b)
    for x, y in ((sa["model"], sb["model"]), *((sa["optimizer"]["state"][k], sb["optimizer"]["state"][k])
                                                for k in sa["optimizer"]["state"])):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def _wait_for(mark: Path, proc, timeout: float = 240) -> None:
    t0 = time.time()
    while not mark.exists():
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} before the mark: {proc.stderr.read().decode()[-2000:]}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError("no mark")
        time.sleep(0.05)


# ---------------------------------------------------------------- 1. the run directory
def test_overwrite_keeps_the_old_run_until_the_new_one_has_a_checkpoint(tiny, tmp_path, capsys):
    data = tiny.make_dataset(tmp_path / "d", n_train=4, n_val=2)
    run = tmp_path / "run"
    assert cli(args(tiny, data, run)) == 0
    capsys.readouterr()
    before = snapshot(run)
    # an input inside the directory being replaced: refused, nothing touched
    assert cli(args(tiny, data, run, "--overwrite", "--pretrained", str(run / "best.pth"))) == 2
    one_error(capsys, "--pretrained", "inside the run directory")
    assert snapshot(run) == before
    # the new run diverges at once (NaN before any checkpoint): the old run is put back
    assert cli(args(tiny, data, run, "--overwrite", "--lr", "1e30", "--warmup-lr", "1e30")) == 3
    capsys.readouterr()
    assert snapshot(run) == before and not (run / ".replaced").exists()
    # a bad image found only by the evaluation after the epoch: the same
    bad = data / "val" / "red" / "zz.png"
    bad.write_bytes(b"not a png")
    assert cli(args(tiny, data, run, "--overwrite")) == 2
    one_error(capsys, "zz.png")
    assert snapshot(run) == before
    bad.unlink()
    # a new run that checkpoints replaces the old one; nothing of it is left aside
    assert cli(args(tiny, data, run, "--overwrite", "--seed", "1")) == 0
    assert snapshot(run) != before and not (run / ".replaced").exists()
    assert oct((run / "model.safetensors").stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def test_a_replacement_killed_outright_is_undone_by_the_next_command(tiny, tmp_path, capsys):
    data = tiny.make_dataset(tmp_path / "d", n_train=4, n_val=2)
    run = tmp_path / "run"
    assert cli(args(tiny, data, run)) == 0
    before = snapshot(run)
    mark = tmp_path / "mark"
    proc = subprocess.Popen([sys.executable, str(HERE / "preempt_runner.py"),
                             *args(tiny, data, run, "--overwrite", "--epochs", "3")],
                            env={**os.environ, "EDGEVIT_TEST_MARK": str(mark), "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for(mark, proc)
    proc.kill()  # SIGKILL mid-epoch 1: the new run has no checkpoint yet, the old one is aside
    proc.wait()
    assert (run / ".replaced").is_dir() and not (run / "last.pth").exists()
    capsys.readouterr()
    with pytest.warns(UserWarning, match="put back the run"):  # the next command puts the old run back ...
        assert cli(args(tiny, data, run)) == 2  # ... and refuses, as the directory holds one
    assert "already holds" in capsys.readouterr().err
    assert snapshot(run) == before and not (run / ".replaced").exists()


def test_resume_never_starts_a_fresh_run_over_run_files(tiny, tmp_path, capsys):
    data = tiny.make_dataset(tmp_path / "d", n_train=4, n_val=2)
    run = tmp_path / "run"
    assert cli(args(tiny, data, run)) == 0
    (run / "last.pth").unlink()  # a directory holding best.pth (and the rest) but no last.pth
    capsys.readouterr()
    before = snapshot(run)
    assert cli(args(tiny, data, run)) == 2  # the refusal does not advise --resume
    assert "--resume" not in one_error(capsys, "no last.pth")
    assert cli(args(tiny, data, run, "--resume", "auto")) == 2  # and --resume auto does not start afresh
    one_error(capsys, "--resume", "no last.pth", "best.pth")
    assert snapshot(run) == before


def test_a_leftover_aside_with_a_new_checkpoint_is_dropped(tmp_path):
    run = tmp_path / "run"
    (run / ".replaced").mkdir(parents=True)
    (run / ".replaced" / "best.pth").write_bytes(b"old")
    (run / "last.pth").write_bytes(b"new")  # the new run had checkpointed before the kill
    RunDirectory(run, "auto", False, True)
    assert not (run / ".replaced").exists() and (run / "last.pth").read_bytes() == b"new"


# a replacement stopped in its first epoch, a leftover beside a run's weights, a second command beside a live one
@pytest.fixture
def trained(tiny, tmp_path):
    """(data, a finished one-epoch run directory, the checksums of its files)."""
    data = tiny.make_dataset(tmp_path / "d", n_train=8, n_val=2)
    run = tmp_path / "run"
    assert cli(args(tiny, data, run)) == 0
    return data, run, snapshot(run)


def _start(tiny, data, run, mark, *more, at: int = 10):
    """`train ...` in a child whose transform is slowed and marks its `at`-th training image (24 images, 6 steps an
    epoch: the 10th is mid-epoch 1)."""
    return subprocess.Popen([sys.executable, str(HERE / "preempt_runner.py"), *args(tiny, data, run, *more)],
                            env={**os.environ, "EDGEVIT_TEST_MARK": str(mark), "EDGEVIT_TEST_MARK_AT": str(at),
                                 "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_in_the_first_epoch_of_a_replacement_keeps_the_old_run(tiny, trained, tmp_path, signum):
    data, run, before = trained
    proc = _start(tiny, data, run, tmp_path / "mark", "--overwrite", "--epochs", "3")
    _wait_for(tmp_path / "mark", proc)
    assert (run / ".replaced").is_dir()
    proc.send_signal(signum)  # the stop-save of a few steps is not a completed epoch: it replaces nothing
    _, err = proc.communicate(timeout=240)
    err = err.decode()
    assert proc.returncode == 128 + signum, err[-2000:]
    assert "run it was to replace is kept" in err and "Traceback" not in err
    assert snapshot(run) == before and not (run / ".replaced").exists()
    assert load_training_state(run / "last.pth")["epoch"] == 1  # the old run's, at its end


def test_a_signal_after_the_first_completed_epoch_keeps_the_new_run(tiny, trained, tmp_path):
    data, run, before = trained
    mark = tmp_path / "mark"
    # the 30th training image is read in epoch 2, after epoch 1's checkpoint
    proc = _start(tiny, data, run, mark, "--overwrite", "--epochs", "3", "--seed", "7", at=30)
    _wait_for(mark, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 128 + signal.SIGTERM, err.decode()[-2000:]
    state = load_training_state(run / "last.pth")
    assert (state["epoch"], state["config"]["seed"]) == (1, 7) and state["step_in_epoch"] > 0  # the stop-save
    assert not (run / ".replaced").exists()
    assert snapshot(run) != before


def test_resume_with_a_leftover_beside_a_runs_weights_changes_nothing(tiny, trained, capsys):
    data, run, _ = trained
    (run / "last.pth").unlink()  # best.pth, model.safetensors, metrics, config: no last.pth
    (run / ".replaced").mkdir()
    (run / ".replaced" / "metrics.jsonl").write_text("{}\n")  # a leftover (a user's copy, a crash's)
    before = snapshot(run)
    assert cli(args(tiny, data, run, "--resume", "auto")) == 2
    one_error(capsys, ".replaced", "nothing was changed")
    assert snapshot(run) == before
    assert cli(args(tiny, data, run, "--overwrite")) == 2  # nor does a replacement start over it
    one_error(capsys, ".replaced")
    assert snapshot(run) == before


def test_recovery_never_runs_beside_a_live_writer(tiny, trained, tmp_path, capsys):
    data, run, before = trained
    mark = tmp_path / "mark"
    proc = _start(tiny, data, run, mark, "--overwrite", "--epochs", "3")
    _wait_for(mark, proc)
    aside = snapshot(run / ".replaced")
    try:  # a second command on the directory being replaced: refused by the lock, the old run stays aside
        assert cli(args(tiny, data, run, "--resume", "auto")) == 2
        one_error(capsys, "another edgevit command")
        assert snapshot(run / ".replaced") == aside and not (run / "best.pth").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=240)
    assert snapshot(run) == before  # the writer, stopped in its first epoch, put the old run back


def test_a_long_run_directory_name_trains(tiny, tmp_path, capsys):
    data = tiny.make_dataset(tmp_path / "d", n_train=4, n_val=2)
    run = tmp_path / ("r" * 250)  # a legal name: its lock and temporaries beside it must fit too
    assert cli(args(tiny, data, run)) == 0
    assert (run / "model.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing hidden left beside it
    assert cli(args(tiny, data, tmp_path / ("r" * 260))) == 2
    one_error(capsys, "--output", "over the")


# ---------------------------------------------------------------- 2. resume keeps the run's recipe
def test_resume_refuses_a_changed_recipe_and_records_what_it_used(tiny, tmp_path, capsys):
    data = tiny.make_dataset(tmp_path / "d", n_train=4, n_val=2)
    run = tmp_path / "run"
    assert cli(args(tiny, data, run, "--epochs", "2", "--stop-after-epochs", "1", "--lr", "1e-3")) == 0
    capsys.readouterr()
    before = snapshot(run)
    assert cli(args(tiny, data, run, "--epochs", "2", "--resume", "auto", "--lr", "1e30")) == 2
    one_error(capsys, "--resume", "lr 1e+30", "0.001")
    other = tiny.make_dataset(tmp_path / "other", classes=("blue", "red"), n_train=4, n_val=2)
    assert cli(args(tiny, other, run, "--epochs", "2", "--resume", "auto")) == 2
    one_error(capsys, "blue, green, red", "blue, red")
    assert snapshot(run) == before
    # leaving the recipe out continues the run as it was, and config.yaml records what was used
    assert cli(["train", "--data", str(data), "--output", str(run), "--resume", "auto", "--no-progress",
                "--workers", "0"]) == 0
    import yaml

    recorded = yaml.safe_load((run / "config.yaml").read_text())
    assert recorded["lr"] == 1e-3 and recorded["img_size"] == 32 and recorded["epochs"] == 2
    state = load_training_state(run / "last.pth")
    assert state["epoch"] == 2 and state["optimizer"]["param_groups"][0]["initial_lr"] == 1e-3


# ---------------------------------------------------------------- exact resume with loader workers
@pytest.mark.parametrize("workers", [1, 2])
def test_mid_epoch_resume_of_a_folder_is_exact_with_loader_workers(tiny, tmp_path, monkeypatch, workers):
    data = tiny.make_dataset(tmp_path / "d")
    cfg = dict(epochs=2, workers=workers, model_ema=False)  # the full recipe: RandAugment, mixup, erasing...
    straight = train(tiny.cfg(data, tmp_path / "straight", **cfg))
    assert straight["stopped"] is None
    real, main_pid = build.train_transform, os.getpid()

    def transform_that_sends_sigterm(c):
        t, calls = real(c), {"n": 0}

        def fn(img):
            calls["n"] += 1
            if calls["n"] == 9:  # in a loader worker, during epoch 1
                os.kill(main_pid, signal.SIGTERM)
            return t(img)
        return fn

    monkeypatch.setattr(build, "train_transform", transform_that_sends_sigterm)
    out = tmp_path / "resumed"
    assert train(tiny.cfg(data, out, **cfg))["stopped"] == "signal"
    state = load_training_state(out / "last.pth")
    assert state["epoch"] == 0 and 0 < state["step_in_epoch"] < 6
    monkeypatch.setattr(build, "train_transform", real)
    assert train(tiny.cfg(data, out, resume="auto", **cfg))["stopped"] is None
    _equal_states(tmp_path / "straight" / "last.pth", out / "last.pth")


# ---------------------------------------------------------------- 3. pre-emption as schedulers do it
def test_sigterm_to_the_process_group_saves_mid_epoch_and_resumes_exactly(tiny, tmp_path, capsys):
    data = tiny.make_dataset(tmp_path / "d")
    common = ["--workers", "2", "--epochs", "2"]
    assert cli(args(tiny, data, tmp_path / "straight", *common)) == 0
    run, mark = tmp_path / "run", tmp_path / "mark"
    proc = subprocess.Popen([sys.executable, str(HERE / "preempt_runner.py"), *args(tiny, data, run, *common)],
                            env={**os.environ, "EDGEVIT_TEST_MARK": str(mark), "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    _wait_for(mark, proc)
    os.killpg(proc.pid, signal.SIGTERM)  # every process of the job: the trainer and its two loader workers
    _, err = proc.communicate(timeout=240)
    err = err.decode()
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "killed by signal" not in err and "Traceback" not in err
    state = load_training_state(run / "last.pth")
    assert state["epoch"] == 0 and 0 < state["step_in_epoch"] < 6
    capsys.readouterr()
    assert cli(args(tiny, data, run, *common, "--resume", "auto")) == 0
    assert f"step {state['step_in_epoch']}" in capsys.readouterr().err
    _equal_states(tmp_path / "straight" / "last.pth", run / "last.pth")


def _torchrun(script_args, env_extra=None, **popen):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE / "preempt_runner.py"), *script_args]
    return subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def test_torchrun_group_sigterm_stops_every_rank_at_one_step_and_saves_once(tiny, tmp_path):
    data = tiny.make_dataset(tmp_path / "d", n_train=8, n_val=2)
    run, mark = tmp_path / "run", tmp_path / "mark"
    proc = _torchrun(args(tiny, data, run, "--workers", "1", "--epochs", "2", "--threads", "1"),
                     {"EDGEVIT_TEST_MARK": str(mark)}, start_new_session=True)
    _wait_for(mark, proc)
    os.killpg(proc.pid, signal.SIGTERM)  # torchrun's agent, both ranks and their loader workers
    _, err = proc.communicate(timeout=240)
    err = err.decode()
    assert "killed by signal" not in err, err[-3000:]
    assert err.count("stopped by signal at epoch 1, step") == 1, err[-3000:]  # rank 0 speaks, once
    state = load_training_state(run / "last.pth")
    assert state["epoch"] == 0 and state["step_in_epoch"] > 0 and len(state["rng"]) == 2
    assert not (run / "metrics.jsonl").exists()  # no epoch ended


def test_a_rank_that_fails_with_a_user_error_leaves_one_line_on_the_others(tiny, tmp_path):
    from torch.utils.data import DistributedSampler
    from torchvision.datasets import ImageFolder

    data = tiny.make_dataset(tmp_path / "d", n_train=4, n_val=2)
    folder = ImageFolder(str(data / "train"))
    first = {r: list(DistributedSampler(folder, 2, r, shuffle=True, seed=0, drop_last=True))[:4] for r in (0, 1)}
    broken = next(i for i in first[1] if i not in first[0])  # an image only rank 1 reads in its first step
    Path(folder.samples[broken][0]).write_bytes(b"broken")
    proc = _torchrun(args(tiny, data, tmp_path / "run", "--threads", "1"),
                     {"EDGEVIT_TEST_MARK": str(tmp_path / "mark")})
    _, err = proc.communicate(timeout=240)
    err = err.decode()
    assert "cannot read" in err and "another process of this torchrun job stopped" in err, err[-3000:]
    assert "Connection closed by peer" not in err and "gloo" not in err.lower(), err[-3000:]


# ---------------------------------------------------------------- streams that skip
def _break_image(shard: Path, nth: int) -> str:
    """Replace the image of the `nth` sample of a shard with bytes no decoder reads; returns its key."""
    import io
    import tarfile

    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]
    keys = sorted({m.name.split(".")[0] for m, _ in members})
    key = keys[nth]
    with tarfile.open(shard, "w") as tar:
        for m, data in members:
            if m.name == f"{key}.png":
                data = b"not an image"
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    return key


def test_a_stream_that_skips_samples_stops_after_saving_the_epoch(tiny, tmp_path, capsys):
    shards = tiny.make_shards(tmp_path / "shards", shards=4)
    _break_image(sorted(shards.glob("tiny-train-*.tar"))[0], 1)  # not the first sample: only the reader meets it
    run = tmp_path / "run"
    common = [*args(tiny, shards, run)[1:], "--dataset", "wds/tiny", "--epochs", "2"]
    assert cli(["train", *common]) == 2
    one_error(capsys, "epoch 1", "skipped", "max_skipped 0")
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 1 and records[0]["skipped_samples"] >= 1
    assert load_training_state(run / "last.pth")["epoch"] == 1  # the epoch is saved: mend the data, or allow
    assert cli(["train", *common, "--resume", "auto", "--max-skipped", "10"]) == 0
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2 and records[1]["skipped_samples"] >= 1
    # a validation sample the reader skips: the epoch is saved first, then the run stops (no top-1 over fewer)
    shards2 = tiny.make_shards(tmp_path / "shards2", shards=4)
    _break_image(sorted(shards2.glob("tiny-validation-*.tar"))[0], 1)
    run2 = tmp_path / "run2"
    assert cli(["train", *args(tiny, shards2, run2)[1:], "--dataset", "wds/tiny"]) == 2
    one_error(capsys, "evaluated 11 of the 12", "holds the epoch")
    assert load_training_state(run2 / "last.pth")["epoch"] == 1


def test_sighup_saves_like_sigterm(tiny, tmp_path):
    data = tiny.make_dataset(tmp_path / "d")
    run, mark = tmp_path / "run", tmp_path / "mark"
    proc = subprocess.Popen([sys.executable, str(HERE / "preempt_runner.py"), *args(tiny, data, run, "--epochs", "2")],
                            env={**os.environ, "EDGEVIT_TEST_MARK": str(mark), "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for(mark, proc)
    proc.send_signal(signal.SIGHUP)  # the terminal it ran in was closed
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 128 + signal.SIGHUP, err.decode()[-2000:]
    assert load_training_state(run / "last.pth")["step_in_epoch"] > 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".lock")) == []


def test_what_the_messages_advise_exists(tiny, tmp_path, capsys):
    data = tiny.make_dataset(tmp_path / "d", n_train=4, n_val=2)
    run = tmp_path / "run"
    # a minimum learning rate above the peak: refused before training
    assert cli(args(tiny, data, run, "--lr", "1e-3", "--min-lr", "1")) == 2
    one_error(capsys, "--min-lr", "above the peak learning rate")
    assert cli(args(tiny, data, run, "--epochs", "2", "--stop-after-epochs", "1")) == 0
    capsys.readouterr()
    # renamed class folder: the message says which names differ
    os.rename(data / "train" / "red", data / "train" / "rouge")
    os.rename(data / "val" / "red", data / "val" / "rouge")
    assert cli(args(tiny, data, run, "--epochs", "2", "--resume", "auto")) == 2
    one_error(capsys, "only the run has red", "only the data has rouge")
    # a run killed before its first checkpoint: no weights to reuse, and the message does not invent any
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.yaml").write_text("model: edgevit_xxs\n")
    with pytest.raises(Exception, match="no weights to reuse") as e:
        RunDirectory(bare, "auto", False, True)
    assert "best.pth" not in str(e.value)
