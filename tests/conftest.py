import os
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
import timm  # noqa: E402
import torch.nn as nn  # noqa: E402

import edgevit  # noqa: E402  (and registers the EdgeViTs)

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("EDGEVIT_REFERENCE", REPO.parent / "shared" / "reference"))


# Under pytest-xdist (`make test`: 2 processes) each process computes with one thread, so the two share the
# cores instead of oversubscribing them.
THREADS = 1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, os.cpu_count() or 1)


CACHE_ENV = "EDGEVIT_TEST_CACHE"


@pytest.fixture(scope="session")
def shared_root(tmp_path_factory):
    """shared_root(name) -> a folder every test process of the run shares, for what is made once and read by many
    tests (exported files, trained checkpoints; each entry behind a lock of its own): under `EDGEVIT_TEST_CACHE`
    where it is set (`make test` makes a fresh one for its two pytest runs, so the second reads what the first
    made, and removes it after), else in the run's temporary folder."""
    if os.environ.get(CACHE_ENV):
        base = Path(os.environ[CACHE_ENV])
    else:
        base = tmp_path_factory.getbasetemp()
        base = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base

    def folder(name: str) -> Path:
        (base / name).mkdir(parents=True, exist_ok=True)
        return base / name
    return folder


def pytest_terminal_summary(terminalreporter):
    """The CPU and its int8/bf16/fp16 features, at the end of every run (`make test`'s -q prints no header):
    runtimes pick their kernels by them, so a failure's log says which machine it was."""
    from edgevit.bench.bench import cpu_flags, cpu_name

    terminalreporter.write_line(f"cpu: {cpu_name()} ({' '.join(cpu_flags()) or 'none of the listed features'})")


@pytest.fixture(autouse=True)
def _no_openvino_here(request):
    """With EDGEVIT_NO_OPENVINO set (make test's first run), a test that loads OpenVINO fails by name: its files
    belong in the Makefile's OPENVINO_TESTS (the second run), away from the training tests (why: the Makefile)."""
    yield
    if os.environ.get("EDGEVIT_NO_OPENVINO") and "openvino" in sys.modules:
        pytest.fail(f"{request.node.nodeid} loaded openvino: list its file in the Makefile's OPENVINO_TESTS")


@pytest.fixture(autouse=True)
def _seed_and_threads():
    """Each test starts seeded, with the suite's threads, and leaves the process's global kernel choices as it
    found them (an in-process `train --deterministic` turns deterministic algorithms on for the whole process,
    which changes later tests' numerics in the last bits)."""
    torch.manual_seed(0)
    torch.set_num_threads(THREADS)
    deterministic = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(deterministic)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not (REFERENCE / "edgevit_xxs_s0.official.safetensors").is_file():
        pytest.fail(f"parity reference not found at {REFERENCE} (set EDGEVIT_REFERENCE)")
    return REFERENCE


@pytest.fixture
def reference_case(reference_dir):
    """reference_case(variant) -> (release model with the authors' weights, the authors' input/outputs)."""
    def load(variant: str):
        from safetensors.torch import load_file

        tag = variant.split("_")[1]
        model = timm.create_model(variant).eval()
        edgevit.load_checkpoint(model, reference_dir / f"edgevit_{tag}_s0.official.safetensors")
        return model, load_file(str(reference_dir / f"edgevit_{tag}_224x224_b2_s0.io.safetensors"))
    return load


@pytest.fixture
def refused(capsys):
    """`refused(argv, *names)`: `edgevit ARGV` exits 2 with one error line that names each of `names`; returns it."""
    from edgevit.cli.main import main

    def check(argv, *names) -> str:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        errors = [ln for ln in err if "error:" in ln]
        assert len(errors) == 1, err
        for n in names:
            assert n in errors[0], (n, errors[0])
        return errors[0]
    return check


# widths that are not multiples of 16 in 1, 2 and 3 heads (so ExecuTorch's channel padding is exercised,
# per head) and one that is (48: left as is)
TINY = dict(embed_dims=(12, 24, 36, 48), depths=(1, 1, 2, 1), head_dim=12, num_classes=7)


def randomize(model: nn.Module) -> nn.Module:
    """Random BN statistics and norm affines, so a wrong fold cannot hide behind identity defaults."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
            if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model.eval()


def tiny_model(**kw) -> nn.Module:
    """A small eval-mode EdgeViT with random norms (fast, 64x64 inputs), the same every call."""
    torch.manual_seed(0)
    return randomize(timm.create_model("edgevit_xxs", **dict(TINY, **kw)))


@pytest.fixture
def make_tiny():
    """make_tiny(**overrides) -> `tiny_model(**overrides)`."""
    return tiny_model


@pytest.fixture(scope="session")
def exported(shared_root):
    """exported(fmt) -> (path, export report): the tiny model fused for the format's runtime and written once for
    the whole run by the one checked writer (at 64 x 64, checked on the seeded input), shared by every test and
    every test process (a lock per file: the first to ask writes it, the others wait and read it). Tests read the
    file; none changes it."""
    import json

    from filelock import FileLock

    from edgevit.deploy import fuse, runtimes
    from edgevit.deploy.export import export_model
    from edgevit.utils.writes import to_plain

    root = shared_root("exported")

    def get(fmt: str):
        rt = runtimes.by_format(fmt)
        folder = root / fmt
        out, saved = folder / f"m{rt.suffix}", folder.with_suffix(".json")
        with FileLock(str(folder) + ".lock"):
            if not saved.is_file():
                folder.mkdir(exist_ok=True)
                report = export_model(fuse(tiny_model(), rt.name), fmt, out, img_size=64)
                saved.write_text(json.dumps(to_plain(report)))
        return out, json.loads(saved.read_text())
    return get


@pytest.fixture
def tiny_checkpoint(tmp_path):
    """A checkpoint of `tiny_model()` that carries its model options, as a training run's does."""
    ck = tmp_path / "tiny.pth"
    torch.save({"model": tiny_model().state_dict(), "config": {"model": "edgevit_xxs", "model_kwargs": TINY}}, ck)
    return ck


@pytest.fixture
def shared_writer(exported, monkeypatch):
    """shared_writer(runtime): the runtime's fp32 writer hands over the run's shared file of the tiny model
    (`exported`) instead of converting it again; the rest (the checked writer's measures and rule, the loader, the
    bench or profiler around them) runs as it is, so the model given must hold the tiny model's weights."""
    import dataclasses
    import shutil

    def use(runtime: str):
        from edgevit.deploy import runtimes

        rt = runtimes.get(runtime)
        if rt.format is None:
            return
        src, report = exported(rt.format)

        def copy(model, x, path):
            for a, b in zip(rt.files(src), rt.files(path)):
                shutil.copyfile(a, b)
            return {k: report[k] for k in ("delegate_partitions", "non_delegated_ops") if k in report}
        monkeypatch.setitem(rt.writers, "fp32", dataclasses.replace(rt.writers["fp32"], write=copy))
    return use


DIGITS_TINY = {"embed_dims": [16, 16, 16, 16], "depths": [1, 1, 1, 1], "head_dim": 16}


@pytest.fixture(scope="session")
def digits_run(shared_root):
    """(data root, best.pth): a tiny EdgeViT trained three epochs on the bundled handwritten digits at 32 px (real
    scans, 10 classes), trained once for the whole run and shared by every test process (a lock: the first to ask
    trains it, the others wait and read it)."""
    import contextlib
    import io
    import json
    import shutil

    from filelock import FileLock

    from edgevit.cli.main import main

    root = shared_root("digits_run")
    done = root / "done"
    with FileLock(str(root) + ".lock"):
        if not done.is_file():
            shutil.rmtree(root, ignore_errors=True)  # (a run cut off before it finished)
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                assert main(["data", "digits", "--out", str(root / "digits"), "--size", "32"]) == 0
                assert main(["train", "--data", str(root / "digits"), "--output", str(root / "run"), "--img-size",
                             "32", "--epochs", "3", "--batch-size", "64", "--workers", "0", "--no-progress", "--aa",
                             "none", "--mixup", "0", "--cutmix", "0", "--no-repeated-aug", "--no-model-ema",
                             "--device", "cpu", "--lr", "3e-3", "--warmup-epochs", "0", "--model-kwargs",
                             json.dumps(DIGITS_TINY)]) == 0
            done.touch()
    return root / "digits", root / "run" / "best.pth"
