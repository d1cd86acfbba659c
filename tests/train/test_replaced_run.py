"""`--overwrite` and `--resume` with the faults made for real: a signal before the new run's first completed epoch,
a `.replaced/` leftover beside a run's weights, a second command started on a directory being replaced. Every
test compares the checksums of every file that was there before and after."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgevit.cli.main import main as cli
from edgevit.train.state import load_training_state

HERE = Path(__file__).parent


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def args(tiny, data, out, *more):
    return ["train", "--data", str(data), "--output", str(out), "--model-kwargs", json.dumps(tiny.MODEL),
            "--img-size", "32", "--batch-size", "4", "--workers", "0", "--epochs", "1", "--no-repeated-aug",
            "--no-model-ema", "--device", "cpu", "--no-progress", "--aa", "none", "--mixup", "0", "--cutmix", "0",
            "--reprob", "0", "--warmup-epochs", "0", "--deterministic", *more]


def one_error(capsys, *names) -> str:
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if "error:" in ln]
    assert len(err) == 1, err
    for n in names:
        assert n in err[0], (n, err[0])
    return err[0]


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


def _wait_for(mark: Path, proc, timeout: float = 240) -> None:
    t0 = time.time()
    while not mark.exists():
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} before the mark: {proc.stderr.read().decode()[-2000:]}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError("no mark")
        time.sleep(0.05)


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
