"""`build_runner`: one warm session per runtime, all computing the model's outputs."""
import importlib.util

import pytest
import torch

from edgevit.bench.runners import build_runner
from edgevit.deploy import runtimes

TINY = dict(embed_dims=(12, 24, 36, 48), depths=(1, 1, 2, 1), head_dim=12, num_classes=7)  # (conftest's tiny model)


@pytest.fixture
def shared_writer(exported, monkeypatch):
    """shared_writer(runtime): the runtime's fp32 writer hands over the run's shared file of the tiny model
    (`exported`) instead of converting it again; the rest of `build_runner` (the checked writer, the loader) runs
    as it is."""
    import dataclasses
    import shutil

    def use(runtime: str):
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


@pytest.mark.parametrize("runtime", runtimes.names())
def test_every_runtime_matches_eager(runtime, make_tiny, shared_writer, tmp_path):
    """Each runtime's warm session computes the model's outputs; the file is the one `export` writes (here the
    run's shared file of the same weights: a different file would fail the writer's check)."""
    ck = tmp_path / "tiny.pth"
    torch.save(make_tiny().state_dict(), ck)
    kw = dict(TINY, checkpoint=str(ck), img_size=64)
    ref = build_runner("edgevit_xxs", "eager", fused=False, **kw)
    shared_writer(runtime)
    r = build_runner("edgevit_xxs", runtime, threads=2, fused=True, **kw)
    assert (r.name, r.runtime, r.img_size, r.label) == ("edgevit_xxs", runtime, 64, "edgevit_xxs (fused)")
    r()  # the timed call returns nothing useful; output() is the parity hook
    out, expected = r.output(), ref.output()
    assert out.shape == expected.shape == (1, 7)
    assert (out - expected).abs().max().item() <= 1e-4
    if runtime != "eager":
        assert r.info["max_abs_diff"] <= 1e-4 and r.path.is_file()


def test_baseline_default_size_and_label():
    r = build_runner("mobilevit_xxs", "eager", num_classes=3)
    assert r.img_size == 256 and r.label == "mobilevit_xxs" and r.fused is None
    assert r.output().shape == (1, 3)


def test_bad_input(monkeypatch):
    with pytest.raises(ValueError, match="eager, executorch, onnxruntime, litert, ptl, torchscript"):
        build_runner("edgevit_xxs", "tflite")
    with pytest.raises(ValueError, match="edgevit_xxs"):
        build_runner("edgevit_xxxxl")
    with pytest.raises(ValueError, match="multiples of 32"):
        build_runner("edgevit_xxs", img_size=100, **TINY)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "executorch" else real(n, *a))
    with pytest.raises(ImportError, match="'executorch'"):
        build_runner("edgevit_xxs", "executorch", **TINY)
