"""Every export format round-trips: the file, run in its own runtime, gives the PyTorch outputs."""
import pytest
import torch
import torch.nn as nn

from edgevit.cli.main import main
from edgevit.deploy import export as ex
from edgevit.deploy import fuse, runtimes


@pytest.fixture
def tiny(make_tiny):
    return make_tiny()


# (tflite: tests/deploy/test_litert.py)
@pytest.mark.parametrize("fmt", [f for f in runtimes.formats() if f != "tflite"])
def test_export_round_trip(fmt, tiny, exported):
    out, report = exported(fmt)  # (the shared file: `exported` in conftest.py)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    assert out.is_file() and runtimes.by_format(fmt).size(out) == report["bytes"] > 10_000
    assert report["max_abs_diff"] <= 1e-4
    # independent check: load the file again and compare with the *release* model
    got = torch.from_numpy(ex.load_exported(out)(x.numpy()))
    with torch.no_grad():
        ref = tiny(x)
    assert got.shape == ref.shape == (1, 7)
    assert (got - ref).abs().max().item() <= 1e-4
    if fmt == "pte":  # the fused graph lowers to XNNPACK whole
        assert report["delegate_partitions"] == 1
        assert report["non_delegated_ops"] == 0, report["non_delegated"]
    assert not list(out.parent.glob(".*.tmp"))  # no temp file (or folder) left behind
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(p.name for p in runtimes.by_format(fmt).files(out))


def test_failed_export_keeps_existing_file(tiny, tmp_path, monkeypatch):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"old")
    import dataclasses

    from edgevit.deploy.runtimes.base import Rule

    rt = runtimes.by_format("onnx")  # a rule no file meets: any difference fails the check
    strict = dataclasses.replace(rt, writers={**rt.writers, "fp32": dataclasses.replace(
        rt.writers["fp32"], rule=Rule(max_abs_diff=-1.0))})
    with pytest.raises(ex.FileRejected, match=r"onnxruntime fp32 file .* fails its rule \(max \|diff\| .* > -1\)"):
        ex.export_model(fuse(tiny), strict, out, img_size=64)
    assert out.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_cli_export_json(tmp_path, capsys):
    out = tmp_path / "xxs.pt"
    assert main(["export", "--model", "edgevit_xxs", "--format", "torchscript", "--img-size", "64",
                 "-o", str(out), "--json"]) == 0
    import json
    rep = json.loads(capsys.readouterr().out)
    assert rep["fused"] is True and rep["format"] == "torchscript" and rep["max_abs_diff"] <= 1e-3
    assert out.stat().st_size == rep["bytes"]


def test_cli_export_bad_input(tmp_path, capsys):
    out = tmp_path / "keep.onnx"
    out.write_bytes(b"old")
    assert main(["export", "--model", "edgevit_xxs", "--format", "onnx", "--img-size", "100", "-o", str(out)]) == 2
    assert "--img-size" in capsys.readouterr().err
    assert main(["export", "--model", "edgevit_xxs", "--format", "onnx", "-o", str(out)]) == 2
    assert "exists" in capsys.readouterr().err and out.read_bytes() == b"old"  # refused before any work
    assert main(["export", "--model", "edgevit_xxxl", "--format", "onnx", "-o", str(out), "--overwrite"]) == 2
    assert "edgevit_xxs" in capsys.readouterr().err  # the error lists the choices
    assert out.read_bytes() == b"old"
    assert main(["export", "--model", "edgevit_xxs", "--format", "coreml", "-o", str(out)]) == 2
    assert "pte" in capsys.readouterr().err  # the choices are listed
    assert main(["export", "--model", "edgevit_xxs", "--format", "tflite", "-o", str(out), "--overwrite"]) == 2
    assert ".tflite" in capsys.readouterr().err and out.read_bytes() == b"old"  # the name must fit the format


def test_missing_runtime_package_is_named(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "onnxruntime" else real(n, *a))
    with pytest.raises(ImportError, match="onnxruntime"):
        runtimes.get("onnxruntime").require()
    with pytest.raises(ImportError, match="pip install onnxruntime"):
        ex.export_model(nn.Identity(), "onnx", "unused.onnx")


def test_cli_export_trained_checkpoint_keeps_its_head(tmp_path, capsys):
    """A checkpoint trained on 3 classes exports as a 3-class model with the trained weights."""
    import json

    import timm

    model = timm.create_model("edgevit_xxs", num_classes=3).eval()
    torch.save({"model": model.state_dict(), "classes": ["a", "b", "c"],
                "config": {"model": "edgevit_xxs", "img_size": 64}}, tmp_path / "last.pth")
    out = tmp_path / "three.pt"
    assert main(["export", "--model", "edgevit_xxs", "--checkpoint", str(tmp_path / "last.pth"),
                 "--format", "torchscript", "--img-size", "64", "-o", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["max_abs_diff"] <= 1e-3
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(out))(x), model(x), atol=1e-4, rtol=1e-4)
