import pytest
import timm
import torch
import torch.nn as nn

import edgevit  # noqa: F401  (registers the EdgeViTs)

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
def exported(tmp_path_factory):
    """exported(fmt) -> (path, export report): the tiny model fused for the format's runtime and written once for
    the whole run by the one checked writer (at 64 x 64, checked on the seeded input), shared by every test and
    every test process (a lock per file: the first to ask writes it, the others wait and read it). Tests read the
    file; none changes it."""
    import json
    import os

    from filelock import FileLock

    from edgevit.deploy import fuse, runtimes
    from edgevit.deploy.export import export_model
    from edgevit.utils.writes import to_plain

    root = tmp_path_factory.getbasetemp()
    root = (root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root) / "exported"
    root.mkdir(exist_ok=True)

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


DIGITS_TINY = {"embed_dims": [16, 16, 16, 16], "depths": [1, 1, 1, 1], "head_dim": 16}


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """(data root, best.pth): a tiny EdgeViT trained three epochs on the bundled handwritten digits at 32 px (real
    scans, 10 classes), trained once for the whole run and shared by every test process (a lock: the first to ask
    trains it, the others wait and read it)."""
    import contextlib
    import io
    import json
    import os
    import shutil

    from filelock import FileLock

    from edgevit.cli.main import main

    root = tmp_path_factory.getbasetemp()
    root = (root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root) / "digits_run"
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
