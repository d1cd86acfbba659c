"""Dense training under a real 2-process torchrun (DDP over gloo, CPU): a SIGTERM to one rank, and a
non-finite loss on one rank, each stop every rank at the same step, cleanly, with the checkpoint intact and
the run resumable. The fault is injected into rank 1 only, by a sitecustomize on the workers' PYTHONPATH
(test code: the library has no hook for it)."""
import os
import subprocess
import sys

import pytest

from edgevit.train.state import load_training_state

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SITECUSTOMIZE = '''
import os, signal
fault = os.environ.get("EDGEVIT_TEST_FAULT")
if fault and os.environ.get("RANK") is not None:
    import edgevit.dense.engine as engine
    original, calls = engine.segmentation_loss, {"n": 0}

    def segmentation_loss(model, batch, device):
        loss, parts = original(model, batch, device)
        calls["n"] += 1
        if os.environ["RANK"] == "1" and calls["n"] == 2:  # rank 1 only, at its second step
            if fault == "sigterm":
                os.kill(os.getpid(), signal.SIGTERM)  # as a cluster scheduler pre-empting one node would
            else:
                loss = loss * float("nan")
        return loss, parts

    engine.segmentation_loss = segmentation_loss
'''


def _segment(shapes_root, run, tmp_path, fault=None, resume=False):
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "edgevit.cli.main", "segment", "train", "--data", str(shapes_root), "--output", str(run),
           "--iters", "4", "--crop-size", "64", "--scale", "64,64", "--batch-size", "1", "--fpn-channels", "32",
           "--workers", "0", "--eval-every", "0", "--save-every", "1", "--device", "cpu", "--no-progress"]
    if resume:
        cmd += ["--resume", "auto"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(hook), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    if fault:
        env["EDGEVIT_TEST_FAULT"] = fault
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def test_sigterm_to_one_rank_stops_all_at_the_same_step(shapes_root, tmp_path):
    run = tmp_path / "run"
    p = _segment(shapes_root, run, tmp_path, fault="sigterm")
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("stopped (resume with --resume auto) at iteration 2") == 1  # rank 0 reports
    assert load_training_state(run / "last.pth")["iteration"] == 2
    p = _segment(shapes_root, run, tmp_path, resume=True)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "finished at iteration 4" in p.stdout and load_training_state(run / "last.pth")["iteration"] == 4


def test_non_finite_loss_on_one_rank_stops_every_rank(shapes_root, tmp_path):
    run = tmp_path / "run"
    p = _segment(shapes_root, run, tmp_path, fault="nan")
    assert p.returncode != 0
    # both ranks leave with the same one-line error (none waits forever in a collective), exit code 3
    assert p.stderr.count("edgevit segment: error: loss is nan at epoch 0, step 1") == 2, p.stderr[-3000:]
    assert "holds the last checkpoint saved before it" in p.stderr
    assert load_training_state(run / "last.pth")["iteration"] == 1  # step 1's checkpoint, intact
    p = _segment(shapes_root, run, tmp_path, resume=True)
    assert p.returncode == 0, p.stderr[-3000:]
    assert load_training_state(run / "last.pth")["iteration"] == 4
