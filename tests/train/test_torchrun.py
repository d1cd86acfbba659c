"""A real 2-process torchrun (DDP over gloo, CPU) on tiny data: trains, checkpoints, evaluates."""
import json
import os
import subprocess
import sys

import yaml

from edgevit.cli.main import main as cli
from edgevit.train.state import load_training_state


def test_torchrun_two_processes_gloo(tiny, tmp_path, capsys):
    data = tiny.make_dataset(tmp_path / "d", n_train=8, n_val=4)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "edgevit.cli.main", "train", "--data", str(data), "--output", str(out),
           "--model-kwargs", json.dumps(tiny.MODEL), "--img-size", "32", "--batch-size", "4", "--epochs", "1",
           "--workers", "0", "--threads", "1", "--device", "cpu", "--no-progress", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert (cfg["world_size"], cfg["global_batch"]) == (2, 8)
    assert cfg["lr"] == 1e-3 * 8 / 1024  # linear scaling with the global batch
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 1 and records[0]["epoch"] == 1
    assert records[0]["val_images"] == 12  # the 2 processes evaluated every val image exactly once
    state = load_training_state(out / "last.pth")
    assert state["epoch"] == 1 and len(state["rng"]) == 2  # one RNG state per process
    assert (out / "best.pth").is_file() and (out / "model.safetensors").is_file()
    # the checkpoint evaluates (single process) to the accuracy recorded during distributed training
    assert cli(["eval", "--data", str(data / "val"), "--checkpoint", str(out / "best.pth"), "--workers", "0",
                "--device", "cpu", "--no-progress", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["num_images"] == 12
    assert abs(result["top1"] - records[0]["val_top1"]) < 1e-9


def _torchrun(args, timeout=300):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "edgevit.cli.main", "train", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_torchrun_qat_and_every_cpu_fast_path(tiny, tmp_path, capsys):
    """Under 2-process torchrun: a QAT fine-tune of a float run (DDP over the prepared graph), and a run with
    every fast path a CPU has (bf16 autocast, channels_last, accumulation, grad checkpointing, EMA); each
    evaluates, single process, to the top-1 it recorded."""
    from edgevit.train.loop import train

    data = tiny.make_dataset(tmp_path / "d", n_train=8, n_val=4)
    base = ["--data", str(data), "--model-kwargs", json.dumps(tiny.MODEL), "--img-size", "32", "--batch-size", "4",
            "--workers", "0", "--threads", "1", "--device", "cpu", "--no-progress", "--aa", "none", "--mixup", "0",
            "--cutmix", "0", "--reprob", "0", "--warmup-epochs", "0"]
    train(tiny.cfg(data, tmp_path / "float", epochs=1))
    runs = {"qat": ["--qat", "--pretrained", str(tmp_path / "float" / "best.pth"), "--epochs", "1", "--lr", "1e-4"],
            "fast": ["--amp", "bfloat16", "--channels-last", "--accum-steps", "2", "--batch-size", "2",
                     "--grad-checkpointing", "--model-ema", "--model-ema-decay", "0.5", "--epochs", "1"]}
    for name, extra in runs.items():
        out = tmp_path / name
        _torchrun([*base, *extra, "--output", str(out)])
        record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
        assert record["val_images"] == 12
        assert cli(["eval", "--data", str(data / "val"), "--checkpoint", str(out / "best.pth"), "--workers", "0",
                    "--device", "cpu", "--no-progress", "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert abs(result["top1"] - record["val_top1"]) < 1e-9, name


def test_torchrun_each_process_reads_its_own_shards(tmp_path):
    """2 processes x 2 loader workers over 4 shards of 25 samples (7, 6, 6, 6), batch 4: each worker reads its
    own shard and yields ceil(25 / 4) = 7 samples rounded up to whole batches = 8; so each process yields 16,
    the two processes' samples are disjoint, every sample is read in every epoch, and the only repeats are
    that padding (32 - 25 = 7)."""
    from PIL import Image

    from edgevit.train.shards import write_wds_shards

    root = tmp_path / "ids"
    samples = [(f"{i:03d}", Image.new("RGB", (8, 8), (i, 0, 0)), i % 2) for i in range(25)]
    write_wds_shards(root, "ids", {"train": samples, "validation": samples[:2]}, {"train": 4, "validation": 1},
                     ["even", "odd"])
    out = tmp_path / "seen.json"
    script = os.path.join(os.path.dirname(__file__), "stream_reader.py")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           script, str(root), str(out), "2", "4"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(out.read_text())
    orders = []
    for epoch in ("0", "1"):
        a, b = seen[epoch]
        assert len(a) == len(b) == 16  # the same number of steps on both processes (DDP needs it)
        assert not set(a) & set(b)  # each process its own shards
        assert set(a) | set(b) == set(range(25))  # every sample, every epoch
        assert len(a) + len(b) - 25 == 7  # the only repeats: padding to whole batches per worker
        orders.append(a + b)
    assert orders[0] != orders[1]  # shards and samples reshuffled each epoch


def test_torchrun_trains_from_shards(tiny, tmp_path, capsys):
    """`edgevit train --dataset wds/NAME` under 2-process torchrun: each process its own training shards and its
    own validation shards (every validation image once), and the checkpoint evaluates single-process to the
    top-1 recorded."""
    shards = tiny.make_shards(tmp_path / "shards", shards=4, val_shards=2)
    out = tmp_path / "run"
    _torchrun(["--data", str(shards), "--dataset", "wds/tiny", "--output", str(out), "--model-kwargs",
               json.dumps(tiny.MODEL), "--img-size", "32", "--batch-size", "4", "--epochs", "2", "--workers", "0",
               "--threads", "1", "--device", "cpu", "--no-progress", "--aa", "none", "--mixup", "0", "--cutmix", "0",
               "--reprob", "0", "--warmup-epochs", "0", "--lr", "3e-3"])
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_images"] for r in records] == [12, 12]
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    assert cli(["eval", "--data", str(shards), "--dataset", "wds/tiny", "--checkpoint", str(out / "last.pth"),
                "--workers", "0", "--device", "cpu", "--no-progress", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["num_images"] == 12 and abs(result["top1"] - records[-1]["val_top1"]) < 1e-9
