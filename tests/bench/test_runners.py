"""`build_runner`: one warm session per runtime, all computing the model's outputs."""
import importlib.util

import pytest

from edgevit.bench.runners import build_runner
from edgevit.deploy import runtimes

TINY = dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), head_dim=16, num_classes=5)


@pytest.mark.parametrize("runtime", runtimes.names())
def test_every_runtime_matches_eager(runtime, tiny_checkpoint, shared_writer):
    """Each runtime's warm session computes the model's outputs; the file is the one `export` writes (here the
    run's shared file of the same weights: a different file would fail the writer's check)."""
    kw = dict(checkpoint=str(tiny_checkpoint), img_size=64)
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
