"""Knowledge distillation (DeiT's, as the authors' release): the loss against a hand computation, a teacher
identical to the student giving zero loss and gradient, the distillation head (averaged, merged by fuse, loaded
across forms), a distilled run that resumes exactly and refuses another teacher, torchrun, bad input."""
import copy
import json
import math
import os
import subprocess
import sys

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.task.distillation import DistillationTeacher

from edgevit.cli.main import main as cli
from edgevit.deploy import fuse
from edgevit.models.edgevit import checkpoint_filter_fn
from edgevit.train.distill import Distiller, distillation_loss
from edgevit.train.loop import train
from edgevit.train.state import load_training_state


def test_the_loss_is_deits_by_hand():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    tau = 2.0
    ps, pt = (s / tau).softmax(1), (t / tau).softmax(1)
    kl = sum(float(pt[i, j]) * math.log(float(pt[i, j] / ps[i, j])) for i in range(4) for j in range(5))
    assert distillation_loss(s, t, "soft", tau).item() == pytest.approx(kl * tau * tau / 20, rel=1e-5)
    hard = -sum(math.log(float(s.softmax(1)[i, t[i].argmax()])) for i in range(4)) / 4
    assert distillation_loss(s, t, "hard", tau).item() == pytest.approx(hard, rel=1e-5)


def test_a_teacher_identical_to_the_student_gives_zero_soft_loss_and_gradient(tiny):
    torch.manual_seed(0)
    student = timm.create_model("edgevit_xxs", num_classes=3, **tiny.MODEL).eval()
    teacher = DistillationTeacher(copy.deepcopy(student))
    d = Distiller(teacher, "soft", 1.0, 2.0, (32, 32), 32, torch.device("cpu"))
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    loss = d.loss(x, student(x), y, F.cross_entropy)
    loss.backward()
    assert abs(loss.item()) < 1e-7
    assert max(p.grad.abs().max().item() for p in student.parameters() if p.grad is not None) < 1e-7
    assert d.take_seconds() > 0


def test_the_distillation_head_is_averaged_merged_by_fuse_and_loads_across_forms(tiny):
    torch.manual_seed(0)
    m = timm.create_model("edgevit_xxs", num_classes=3, distill_head=True, **tiny.MODEL).eval()
    with torch.no_grad():
        m.head.fc_dist.weight.normal_()
        m.head.fc_dist.bias.normal_()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        pooled = m.forward_head(m.forward_features(x), pre_logits=True)
        averaged = (m.head.fc(pooled) + m.head.fc_dist(pooled)) / 2
        assert torch.allclose(m(x), averaged, atol=1e-6)
        for backend in ("eager", "onnxruntime", "executorch", "litert"):
            f = fuse(m, backend)
            assert f(x).shape == (2, 3) and (f(x) - averaged).abs().max() < 1e-4, backend
    m.train()
    m.set_distilled_training(True)
    assert isinstance(m(x), tuple) and len(m(x)) == 2  # training: both heads' logits
    # a distilled checkpoint into a plain model: the averaged head; a plain one into a distilled: fc_dist = fc
    plain = timm.create_model("edgevit_xxs", num_classes=3, **tiny.MODEL).eval()
    plain.load_state_dict(checkpoint_filter_fn(m.state_dict(), plain))
    m.eval()
    with torch.no_grad():
        assert (plain(x) - m(x)).abs().max() < 1e-5
        back = timm.create_model("edgevit_xxs", num_classes=3, distill_head=True, **tiny.MODEL).eval()
        back.load_state_dict(checkpoint_filter_fn(plain.state_dict(), back))
        assert torch.equal(back(x), plain(x))


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory, tiny_helpers):
    root = tmp_path_factory.mktemp("distill")
    data = tiny_helpers.make_dataset(root / "data", n_train=8, n_val=4)
    train(tiny_helpers.cfg(data, root / "teacher", epochs=1, aa="none", mixup=0, cutmix=0, reprob=0))
    return data, root / "teacher" / "best.pth"


def test_a_distilled_run_resumes_exactly_and_refuses_another_teacher(tiny, teacher_run, tmp_path, capsys):
    data, teacher = teacher_run
    kd = dict(teacher="edgevit_xxs", teacher_checkpoint=str(teacher), distillation="hard", distill_head=True,
              distillation_alpha=0.5, epochs=2)  # with the full recipe: mixup/cutmix, RandAugment, EMA
    straight = train(tiny.cfg(data, tmp_path / "straight", **kd))
    assert straight["stopped"] is None
    records = [json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert all(0 < r["teacher_share"] < 1 for r in records)
    state = load_training_state(tmp_path / "straight" / "last.pth")
    assert "head.fc_dist.weight" in state["model"] and not any("teacher" in k for k in state["model"])
    assert state["config"]["teacher_sha256"] and state["config"]["distill_head"] is True
    train(tiny.cfg(data, tmp_path / "resumed", stop_after_epochs=1, **kd))
    train(tiny.cfg(data, tmp_path / "resumed", resume="auto", **kd))
    a, b = (load_training_state(tmp_path / d / "last.pth")["model"] for d in ("straight", "resumed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # another teacher checkpoint (same name, other weights), or another teacher model: refused in one line
    other = tmp_path / "other.pth"
    sd = torch.load(teacher, weights_only=True)
    sd["model"] = {k: v + 1 if v.is_floating_point() else v for k, v in sd["model"].items()}
    torch.save(sd, other)
    base = ["train", "--data", str(data), "--output", str(tmp_path / "resumed"), "--resume", "auto",
            "--epochs", "3", "--workers", "0", "--no-progress"]
    assert cli([*base, "--teacher-checkpoint", str(other)]) == 2
    assert "not the teacher the run" in capsys.readouterr().err
    assert cli([*base, "--teacher", "resnet18"]) == 2
    assert "teacher 'resnet18' (the run has 'edgevit_xxs')" in capsys.readouterr().err
    # the teacher options left out (as --help says: the run's values): the run continues with its own teacher
    assert cli(base) == 0
    state = load_training_state(tmp_path / "resumed" / "last.pth")
    assert state["epoch"] == 3 and state["config"]["teacher_checkpoint"] == str(teacher)
    assert state["config"]["teacher_sha256"] == load_training_state(tmp_path / "straight" / "last.pth")[
        "config"]["teacher_sha256"]
    # the run's teacher checkpoint moved away: one line saying which file and what to give
    from edgevit.errors import UserError
    from edgevit.train.build import build_distiller

    moved = {**state["config"], "teacher_checkpoint": str(tmp_path / "gone.pth")}
    with pytest.raises(UserError, match="no longer there: give its new place") as e:
        build_distiller(moved, 3, torch.device("cpu"), False, {"config": moved}, tmp_path / "resumed" / "last.pth")
    assert e.value.option == "teacher_checkpoint"
    # the distilled checkpoint evaluates (its two heads averaged) to the top-1 it recorded, and exports one output
    assert cli(["eval", "--data", str(data / "val"), "--checkpoint", str(tmp_path / "straight" / "last.pth"),
                "--workers", "0", "--no-progress", "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["top1"] == pytest.approx(records[-1]["val_top1"])
    out = tmp_path / "s.onnx"
    assert cli(["export", "--format", "onnx", "--checkpoint", str(tmp_path / "straight" / "model.safetensors"),
                "-o", str(out), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    import onnx

    assert rep["max_abs_diff"] < 1e-4 and len(onnx.load(str(out)).graph.output) == 1


def test_distillation_under_torchrun(tiny, teacher_run, tmp_path):
    data, teacher = teacher_run
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "edgevit.cli.main", "train", "--data", str(data), "--output", str(out),
           "--model-kwargs", json.dumps(tiny.MODEL), "--img-size", "32", "--batch-size", "4", "--epochs", "1",
           "--workers", "0", "--threads", "1", "--device", "cpu", "--no-progress", "--teacher", "edgevit_xxs",
           "--teacher-checkpoint", str(teacher), "--distillation", "soft", "--distillation-tau", "2",
           "--distill-head"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert record["val_images"] == 12 and 0 < record["teacher_share"] < 1


def test_bad_distillation_input_is_one_line(tiny, teacher_run, tmp_path, capsys):
    data, teacher = teacher_run
    base = ["train", "--data", str(data), "--output", str(tmp_path / "o"), "--model-kwargs", json.dumps(tiny.MODEL),
            "--img-size", "32", "--batch-size", "4", "--epochs", "1", "--workers", "0", "--device", "cpu",
            "--no-progress"]
    other_classes = tmp_path / "t2"
    train(tiny.cfg(tiny.make_dataset(tmp_path / "d2", classes=("blue", "red"), n_train=4, n_val=2), other_classes,
                   epochs=1, aa="none", mixup=0, cutmix=0, reprob=0))
    cases = [
        (["--teacher", "no_such_net", "--distillation", "soft"], ["--teacher", "not a timm model"]),
        (["--teacher", "resnet18", "--teacher-checkpoint", str(teacher), "--distillation", "soft"],
         ["trained as edgevit_xxs, not resnet18"]),
        (["--teacher", "edgevit_xxs", "--teacher-checkpoint", str(other_classes / "best.pth"),
          "--distillation", "soft"], ["--teacher-checkpoint", "answers 2 classes", "has 3"]),
        (["--distillation", "soft"], ["--distillation", "needs a teacher"]),
        (["--distillation-alpha", "0.7"], ["--distillation-alpha", "needs a teacher"]),
        (["--teacher", "edgevit_xxs", "--teacher-checkpoint", str(teacher)], ["--distillation", "soft or hard"]),
        (["--teacher", "edgevit_xxs", "--teacher-checkpoint", str(teacher), "--distill-head"],
         ["--distillation", "soft or hard"]),
        (["--teacher", "edgevit_xxs", "--distillation", "soft", "--distillation-alpha", "1.5"],
         ["--distillation-alpha"]),
        (["--teacher", "edgevit_xxs", "--distillation", "soft", "--distillation-tau", "0"], ["--distillation-tau"]),
        (["--teacher", "edgevit_xxs", "--distillation", "soft", "--teacher-checkpoint", str(tmp_path / "none.pth")],
         ["--teacher-checkpoint", "no such file"]),
        (["--model", "resnet18", "--teacher", "edgevit_xxs", "--teacher-checkpoint", str(teacher),
          "--distillation", "hard", "--distill-head"], ["--distill-head", "only the EdgeViTs"]),
    ]
    for extra, names in cases:
        assert cli([*base, *extra]) == 2, extra
        err = [ln for ln in capsys.readouterr().err.splitlines() if "error:" in ln]
        assert len(err) == 1, (extra, err)
        for n in names:
            assert n in err[0], (extra, n, err[0])
        assert not (tmp_path / "o").exists(), extra  # nothing written
