"""The runtime records: each runtime is one definition that export, bench, eval --exported and the Python loader
read; a runtime added with one registration works everywhere without another edit."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgevit.cli.main import main
from edgevit.deploy import Forms, fuse, load_exported, runtimes
from edgevit.deploy.runtimes.base import INT8_RULE, Runtime, Writer, fp32
from edgevit.deploy.runtimes.torchscript import load_torchscript, save_torchscript
from edgevit.errors import UserError


def test_every_record_is_complete():
    assert runtimes.names()[0] == "eager" and set(runtimes.formats()) == {"pte", "onnx", "tflite", "ptl", "torchscript",
                                                                           "openvino", "mnn", "ncnn"}
    suffixes = [s for r in runtimes.RUNTIMES.values() for s in r.suffixes]
    assert len(suffixes) == len(set(suffixes))  # a file's suffix names one runtime
    for r in runtimes.RUNTIMES.values():
        assert isinstance(r.forms, Forms) and r.title
        if r.format is None:
            assert r.name == "eager" and not r.writers and r.load is None
            continue
        assert r.load and r.suffixes and all(s.startswith(".") for s in r.suffixes)
        assert runtimes.by_format(r.format) is r and runtimes.for_file(f"m{r.suffix}") is r
        assert r.precisions[0] == "fp32" and r.writers["fp32"].rule.max_abs_diff == 1e-3
        for p, w in r.writers.items():  # every precision: a writer, one line saying how, a rule that can refuse
            assert callable(w.write) and w.how and w.rule.describe()
            assert w.calibrated == p.startswith("int8") == runtimes.calibrated(p)
            assert (w.rule.min_sqnr_db is not None) == (p != "fp32")
    # the fp32 rule: 1e-3 absolute, or 2e-6 of the largest |output| past 500 (MobileOne at init: logits near 4e7,
    # its ONNX file 32 away = 8e-7 of them), so that a correct file of an untrained model is not refused
    rule = runtimes.get("onnxruntime").writers["fp32"].rule
    assert rule.failures({"max_abs_diff": 9e-4, "max_abs_output": 20.0}) == []
    assert rule.failures({"max_abs_diff": 2e-3, "max_abs_output": 20.0}) == ["max |diff| 0.002 > 0.001"]
    assert rule.failures({"max_abs_diff": 32.0, "max_abs_output": 4.1e7}) == []
    assert rule.failures({"max_abs_diff": 200.0, "max_abs_output": 4.1e7}) == [
        "max |diff| 200 > 82 (2e-06 of its largest |output|, 4.1e+07)"]
    every = [p for r in runtimes.RUNTIMES.values() for p in r.precisions]
    assert set(runtimes.all_precisions()) == set(every) and runtimes.all_precisions()[0] == "fp32"
    assert all(runtimes.calibrated(p) for p in runtimes.reduced_precisions()[:1])  # (calibrated ones first)
    # multi-file formats: the companions are named from the main file
    assert runtimes.for_file("m.ncnn.param").name == "ncnn" and runtimes.for_file("M.XML").name == "openvino"
    assert runtimes.get("ncnn").files(Path("d/m.ncnn.param")) == (Path("d/m.ncnn.param"), Path("d/m.ncnn.bin"))
    assert runtimes.get("openvino").files(Path("m.xml")) == (Path("m.xml"), Path("m.bin"))
    with pytest.raises(UserError, match="runtime 'coreml' is not one of eager"):
        runtimes.get("coreml")
    with pytest.raises(UserError, match="format 'mlmodel' is not one of pte"):
        runtimes.by_format("mlmodel")
    with pytest.raises(UserError, match="format None is not one of"):  # (eager has no format: not a match)
        runtimes.by_format(None)
    with pytest.raises(UserError, match=r"m\.mlmodel: unknown exported-file extension; expected one of \.pte"):
        runtimes.for_file("m.mlmodel")


def test_load_exported_runs_a_file_on_numpy(tmp_path, make_tiny):
    """The public loader: any exported file, by its suffix, as a function of numpy arrays."""
    from edgevit.deploy import export_model

    model = make_tiny()
    out = tmp_path / "tiny.onnx"
    export_model(fuse(model, "onnxruntime"), "onnx", out, img_size=(64, 96))
    m = load_exported(out)
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 96)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    y = m(x)
    assert m.format == "onnx" and m.runtime.name == "onnxruntime" and m.input_size == (64, 96)
    assert isinstance(y, np.ndarray) and y.shape == (1, 7) and np.abs(y - ref).max() <= 1e-4
    with pytest.raises(UserError, match=r"tiny.onnx: input float32 of shape \[1, 3, 32, 32\]; the file takes .* "
                                        r"at 64x96"):
        m(np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(UserError, match="tiny.onnx: input float32 of shape \\[3, 64, 96\\]"):
        m(np.zeros((3, 64, 96), np.float32))
    with pytest.raises(UserError, match="no input given"):
        m()
    with pytest.raises(UserError, match="no such file"):
        load_exported(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(UserError, match="bad.onnx: onnxruntime cannot load it"):
        load_exported(bad)


@pytest.fixture
def added_runtime(monkeypatch):
    """A runtime added as a new module would add it: one record, one registration (removed after the test)."""
    record = Runtime(name="ts2", title="TorchScript under another name", format="ts2", suffixes=(".ts2",),
                     forms=Forms(qkv="merged", prop="shuffle"), writers={"fp32": fp32(save_torchscript)},
                     load=load_torchscript)
    monkeypatch.setitem(runtimes.RUNTIMES, record.name, record)
    return record


def test_a_registered_runtime_works_everywhere(added_runtime, tmp_path, capsys, make_tiny):
    out = tmp_path / "xxs.ts2"
    assert main(["export", "--model", "edgevit_xxs", "--format", "ts2", "--img-size", "64", "-o", str(out),
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["runtime"] == "ts2" and report["max_abs_diff"] <= 1e-3 and out.stat().st_size == report["bytes"]
    m = load_exported(out)
    assert m.runtime is added_runtime and m(np.zeros((1, 3, 64, 64), np.float32)).shape == (1, 1000)
    assert fuse(make_tiny(), "ts2").deploy_forms == added_runtime.forms  # its fused form comes from its record
    assert main(["bench", "--models", "edgevit_xxs", "--runtime", "ts2", "--edgevit-form", "fused", "--img-size",
                 "32", "--runs", "2", "--warmup", "1", "--json", str(tmp_path / "b.json")]) == 0
    rows = json.loads((tmp_path / "b.json").read_text())["results"]
    assert [r["runtime"] for r in rows] == ["ts2"] and rows[0]["median_ms"] > 0
    # what it cannot do is refused from its record: no int8 flow
    assert main(["export", "--model", "edgevit_xxs", "--format", "ts2", "--quantize", "int8", "--calib", "random",
                 "-o", str(tmp_path / "q.ts2")]) == 2
    err = capsys.readouterr().err
    assert "--quantize int8 is available for --format pte or onnx or tflite or openvino or mnn, not ts2" in err


def test_sigmoid_gelu_is_the_tanh_gelu_and_float16_graph_swaps_every_exact_gelu(make_tiny):
    """The fp16 GELU form XNNPACK runs: GELU's tanh approximation to fp32 rounding, within 4.8e-4 of the exact
    GELU; `Float16Graph(gelu="sigmoid")` puts it in place of every exact nn.GELU, in fp16, and leaves the model
    it was given alone."""
    from edgevit.deploy.runtimes.base import Float16Graph, SigmoidGelu

    x = torch.linspace(-12, 12, 100001)
    got = SigmoidGelu()(x)
    assert torch.allclose(got, torch.nn.functional.gelu(x, approximate="tanh"), atol=2e-6)
    assert 4e-4 < (got - torch.nn.functional.gelu(x)).abs().max() < 4.8e-4
    model = make_tiny().eval()
    gelus = sum(isinstance(m, torch.nn.GELU) for m in model.modules())
    half = Float16Graph(model, gelu="sigmoid")
    swapped = [m for m in half.modules() if isinstance(m, SigmoidGelu)]
    assert gelus > 0 and len(swapped) == gelus and not any(isinstance(m, torch.nn.GELU) for m in half.modules())
    assert all(m.scale.dtype == torch.float16 for m in swapped)
    assert sum(isinstance(m, torch.nn.GELU) for m in model.modules()) == gelus
    img = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref, out = model(img), half(img)
    assert out.dtype == torch.float32 and 10 * torch.log10(ref.pow(2).sum() / (ref - out).pow(2).sum()) > 30
    with pytest.raises(ValueError, match="gelu='tanh'"):
        Float16Graph(model, gelu="tanh")


def _save_onnx_weight_only_int8(model, x, path):
    """ONNX Runtime's dynamic quantization: int8 weights, activations quantized at run time (no calibration)."""
    import tempfile

    from onnxruntime.quantization import QuantType, quantize_dynamic

    from edgevit.deploy.runtimes.onnxruntime import save_onnx

    with tempfile.TemporaryDirectory() as tmp:
        save_onnx(model, x, Path(tmp) / "f.onnx")
        quantize_dynamic(str(Path(tmp) / "f.onnx"), str(path), weight_type=QuantType.QInt8)
    return {}


@pytest.fixture
def added_precision(monkeypatch):
    """A precision added to a runtime as a runtime module would add it: one entry in its record's writers."""
    import dataclasses

    rt = runtimes.get("onnxruntime")
    record = dataclasses.replace(rt, writers={**rt.writers, "int8-weights": Writer(
        _save_onnx_weight_only_int8, "int8 weights, activations quantized at run time (no calibration)",
        rule=INT8_RULE)})
    monkeypatch.setitem(runtimes.RUNTIMES, rt.name, record)
    return record


def test_a_precision_added_to_a_record_works_everywhere(added_precision, tmp_path, capsys):
    """export, eval --exported, bench and the matrix take it with no other edit; it needs no --calib."""
    import timm
    from PIL import Image

    ck, val = tmp_path / "tiny.pth", tmp_path / "val"
    kwargs = {"embed_dims": [12, 24, 36, 48], "depths": [1, 1, 2, 1], "head_dim": 12}
    torch.manual_seed(0)
    torch.save({"model": timm.create_model("edgevit_xxs", num_classes=2, **kwargs).state_dict(),
                "classes": ["a", "b"], "config": {"model": "edgevit_xxs", "model_kwargs": kwargs, "num_classes": 2,
                                                  "img_size": 32, "crop_pct": 1.0}}, ck)
    g = torch.Generator().manual_seed(0)
    for c in ("a", "b"):
        (val / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray((torch.rand(32, 32, 3, generator=g) * 255).byte().numpy()).save(val / c / f"{i}.png")
    out = tmp_path / "w.onnx"
    assert main(["export", "--checkpoint", str(ck), "--format", "onnx", "--quantize", "int8-weights", "-o", str(out),
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["precision"] == "int8-weights" and report["sqnr_db"] >= 10 and "no calibration" in report["how"]
    import onnx

    assert any(n.op_type in ("ConvInteger", "MatMulInteger", "DynamicQuantizeLinear")
               for n in onnx.load(str(out)).graph.node)  # really int8
    assert main(["eval", "--data", str(val), "--exported", str(out), "--checkpoint", str(ck), "--workers", "0",
                 "--no-progress", "--json"]) == 0
    assert 0 <= json.loads(capsys.readouterr().out)["top1"] <= 100
    assert main(["bench", "--runtime", "onnxruntime", "--precision", "int8-weights", "--models", "edgevit_xxs",
                 "--edgevit-form", "fused", "--img-size", "32", "--runs", "2", "--warmup", "1", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["results"]
    assert [r["precision"] for r in rows] == ["int8-weights"] and rows[0]["median_ms"] > 0
    from edgevit.bench.matrix import run_matrix

    doc = run_matrix(("edgevit_xxs",), ("onnxruntime",), ("fp32", "int8-weights"), checkpoint=str(ck), runs=2,
                     warmup=1, show_progress=False)
    assert [(r["precision"], r["status"]) for r in doc["results"]] == [("fp32", "ok"), ("int8-weights", "ok")]
    assert doc["results"][1]["speedup_vs_fp32"] > 0 and doc["results"][1]["rule"] == INT8_RULE.describe()
