"""Every training performance option that a CPU can run, executed: bf16 autocast, channels_last,
gradient accumulation, gradient checkpointing, EMA and torch.compile (inductor on CPU) — each must lower the
loss and leave a checkpoint that resumes to the same weights as a straight run. (fp16 + GradScaler and NCCL
need CUDA: benchmarks/gpu_check.sh.)"""
import pytest
import torch

from edgevit.train.loop import train
from edgevit.train.state import load_training_state

# Each path with a clean recipe (no augmentation noise) so that "the loss goes down" is a fair check.
PATHS = {
    "bf16 autocast": dict(amp="bfloat16"),
    "channels_last": dict(channels_last=True),
    "grad accumulation": dict(accum_steps=2, batch_size=2),
    "grad checkpointing": dict(grad_checkpointing=True),
    "EMA": dict(model_ema=True, model_ema_decay=0.5),
    "all of them": dict(amp="bfloat16", channels_last=True, accum_steps=2, batch_size=2, grad_checkpointing=True,
                        model_ema=True, model_ema_decay=0.5),
}
CLEAN = dict(aa="none", mixup=0, cutmix=0, reprob=0, drop_path=0.0, smoothing=0.0, model_ema=False, epochs=3,
             lr=3e-3, warmup_epochs=0, sched="cosine")


def _weights(path):
    return load_training_state(path)["model"]


@pytest.mark.parametrize("name", list(PATHS))
def test_fast_path_trains_and_resumes(name, tiny, tiny_data, tmp_path):
    over = {**CLEAN, **PATHS[name]}
    straight = train(tiny.cfg(tiny_data, tmp_path / "straight", **over))
    import json

    log = [json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert log[-1]["train_loss"] < log[0]["train_loss"], log
    assert straight["stopped"] is None
    # stop after one epoch, resume: the same weights as the straight run (deterministic CPU kernels)
    train(tiny.cfg(tiny_data, tmp_path / "resumed", stop_after_epochs=1, **over))
    train(tiny.cfg(tiny_data, tmp_path / "resumed", resume="auto", **over))
    a, b = _weights(tmp_path / "straight" / "last.pth"), _weights(tmp_path / "resumed" / "last.pth")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    if over.get("model_ema"):
        assert load_training_state(tmp_path / "resumed" / "last.pth")["model_ema"] is not None


def test_compile_trains_on_cpu(tiny, tiny_data, tmp_path):
    """torch.compile (inductor, C++ codegen on CPU) runs the training step; the loss goes down. (Compiling
    is ~2 min of g++ on 2 cores, so this one does not also resume: resuming touches no compiled code.)"""
    import json

    train(tiny.cfg(tiny_data, tmp_path / "run", compile=True, **{**CLEAN, "epochs": 2}))
    log = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert log[-1]["train_loss"] < log[0]["train_loss"], log


def test_compile_without_a_compiler_is_one_line(tiny, tiny_data, tmp_path, monkeypatch, capsys):
    import shutil

    from edgevit.cli.main import main as cli

    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)  # no g++ anywhere on PATH
    argv = ["train", "--data", str(tiny_data), "--output", str(tmp_path / "run"), "--model-kwargs",
            '{"embed_dims": [16, 16, 16, 16], "depths": [1, 1, 1, 1], "head_dim": 16}', "--img-size", "32",
            "--batch-size", "4", "--epochs", "1", "--workers", "0", "--device", "cpu", "--compile", "--no-progress"]
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--compile" in err[0] and "C++ compiler" in err[0], err


def test_float16_on_cpu_is_refused_naming_the_flag(tiny, tiny_data, tmp_path):
    with pytest.raises(ValueError, match="float16") as e:
        train(tiny.cfg(tiny_data, tmp_path / "run", amp="float16", device="cpu", **CLEAN))
    assert "bfloat16" in str(e.value)  # says what to use instead
