"""OpenVINO, MNN and ncnn through every command: export (fp32 checked to 1e-3, the 16-bit files checked like int8
ones), the two-file formats written and refused as one, eval --exported, bench, the Python loader, a dense model;
what each runtime cannot do is one line naming it; neither MNN's logging scripts nor OpenVINO's telemetry-sending
converter run."""
import importlib.util
import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from edgevit.cli.main import main
from edgevit.deploy import load_exported, runtimes
from edgevit.errors import UserError

EDGE = ("openvino", "mnn", "ncnn")
KWARGS = {"embed_dims": [12, 24, 36, 48], "depths": [1, 1, 2, 1], "head_dim": 12}


@pytest.fixture
def checkpoint(make_tiny, tmp_path):
    """A checkpoint that carries its model options and classes, as a training run's, and a 3-class val folder."""
    ck = tmp_path / "tiny.pth"
    torch.save({"model": make_tiny(num_classes=3).state_dict(), "classes": ["c0", "c1", "c2"],
                "config": {"model": "edgevit_xxs", "model_kwargs": KWARGS, "num_classes": 3, "img_size": 64,
                           "crop_pct": 1.0, "eval_interpolation": "bicubic"}}, ck)
    g = torch.Generator().manual_seed(0)
    for c in range(3):
        d = tmp_path / "val" / f"c{c}"
        d.mkdir(parents=True)
        for i in range(4):
            Image.fromarray((torch.rand(64, 64, 3, generator=g) * 255).byte().numpy()).save(d / f"{i}.png")
    return ck


def _json(capsys):
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("runtime", EDGE)
def test_export_eval_bench_and_load(runtime, checkpoint, tmp_path, capsys):
    from edgevit.train.evaluate import evaluate_checkpoint

    rt = runtimes.get(runtime)
    out = tmp_path / f"tiny{rt.suffix}"
    args = ["export", "--checkpoint", str(checkpoint), "--format", rt.format, "-o", str(out)]
    assert main(args + ["--json"]) == 0
    rep = _json(capsys)
    assert rep["runtime"] == runtime and rep["precision"] == "fp32" and rep["max_abs_diff"] <= 1e-3
    assert rep["bytes"] == rt.size(out) > 10_000 and all(f.is_file() for f in rt.files(out))
    sidecar = [f"{out.name}.json"] if rt.write_metadata is None else []  # (the metadata, where the format has no place)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("tiny") and p != checkpoint) == \
        sorted([f.name for f in rt.files(out)] + sidecar)  # the file and its companions, no temporaries
    # written as one: an existing file, or only its companion, is refused and kept
    before = [f.read_bytes() for f in rt.files(out)]
    assert main(args) == 2 and "exists" in capsys.readouterr().err
    assert [f.read_bytes() for f in rt.files(out)] == before
    if len(rt.files(out)) > 1:
        lone = tmp_path / f"lone{rt.suffix}"
        rt.files(lone)[1].write_bytes(b"someone's weights")
        assert main(["export", "--checkpoint", str(checkpoint), "--format", rt.format, "-o", str(lone)]) == 2
        assert "exists" in capsys.readouterr().err and rt.files(lone)[1].read_bytes() == b"someone's weights"
        assert not lone.exists()
    # the Python loader: input size from the file, numpy in and out, the PyTorch model's logits
    m = load_exported(out)
    assert m.runtime is rt and m.input_size == (64, 64)
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    from edgevit.models.checkpoint import model_from_checkpoint

    model, _ = model_from_checkpoint("edgevit_xxs", str(checkpoint))
    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(x)).numpy()
    assert np.abs(m(x) - ref).max() <= 1e-3
    # eval --exported: the checkpoint's own metrics
    assert main(["eval", "--data", str(tmp_path / "val"), "--exported", str(out), "--checkpoint", str(checkpoint),
                 "--workers", "0", "--no-progress", "--json"]) == 0
    got = _json(capsys)
    want = evaluate_checkpoint(tmp_path / "val", checkpoint, workers=0, progress=False)
    assert got["format"] == rt.format and got["num_images"] == 12
    assert got["top1"] == want["top1"] and abs(got["loss"] - want["loss"]) < 1e-3
    # bench --runtime: the same file, timed in its runtime, with the runtime's version in the header
    assert main(["bench", "--models", "edgevit_xxs", "mobilenetv2_100", "--runtime", runtime, "--edgevit-form",
                 "fused", "--img-size", "32", "--runs", "2", "--warmup", "1", "--json", str(tmp_path / "b.json"),
                 "--no-progress"]) == 0
    doc = json.loads((tmp_path / "b.json").read_text())
    assert [r["runtime"] for r in doc["results"]] == [runtime] * 2 and all(r["median_ms"] > 0 for r in doc["results"])
    assert {"openvino": "openvino", "mnn": "MNN", "ncnn": "ncnn"}[runtime] in doc["meta"]["runtime_versions"]
    # MNN's log-uploading module was never imported, and the environment `make` builds has no OpenVINO telemetry
    # sender for openvino.convert_model or NNCF to call (requirements-edge.txt)
    assert "MNN.tools.utils.log" not in sys.modules and importlib.util.find_spec("openvino_telemetry") is None


@pytest.mark.parametrize("runtime,precision", [("openvino", "bf16"), ("mnn", "fp16"), ("ncnn", "fp16"),
                                               ("executorch", "fp16"), ("litert", "fp16")])
def test_float16_files_are_checked_and_say_their_precision(runtime, precision, checkpoint, exported, tmp_path,
                                                           capsys):
    rt = runtimes.get(runtime)
    if runtime == "openvino":
        from edgevit.deploy.runtimes.openvino import check_cpu_bf16
        try:
            check_cpu_bf16()
        except UserError:
            pytest.skip("this CPU has no bf16 instructions (the export refuses it: tested below)")
    out = tmp_path / f"h{rt.suffix}"
    common = ["--checkpoint", str(checkpoint), "--format", rt.format, "--img-size", "64", "--json"]
    assert main(["export", *common, "--quantize", precision, "-o", str(out)]) == 0
    rep = _json(capsys)
    assert rep["precision"] == precision and rep["checked_on"] == "8 random inputs" and rep["check_images"] == 8
    assert rep["sqnr_db"] > 30 and rep["top1_agreement"] >= 75 and rep["bytes"] == rt.size(out)
    fp32 = exported(rt.format)[1]  # (the tiny model's fp32 file: the same graph, 7 classes for 3)
    if runtime == "openvino":  # the file says bf16; the plugin then runs most layers in it
        assert rep["layer_precisions"].get("bf16", 0) > rep["openvino_layers"] // 2
        assert "bf16" not in fp32["layer_precisions"]
    elif runtime in ("mnn", "ncnn"):  # fp16 weights: about half the bytes; the loader reads the precision back
        assert rep["bytes"] < 0.6 * fp32["bytes"]
        from edgevit.deploy.runtimes import mnn, ncnn
        said = mnn.file_info(out)["precision"] if runtime == "mnn" else ncnn.weights_precision(out)
        assert said == "fp16"
    elif runtime == "executorch":  # GELU in its sigmoid form: the whole fp16 graph in one XNNPACK partition
        assert rep["delegate_partitions"] == 1 and not any("gelu" in op for op in rep["non_delegated"])
    elif runtime == "litert":  # fp16 weights, each behind a DEQUANTIZE op XNNPACK takes (none more left outside)
        weights = sum(t.numel() for t in torch.load(checkpoint)["model"].values() if t.is_floating_point())
        # (2 of each weight's 4 bytes saved, less what the two files' metadata differ by: the fp32 file's model
        # is the 7-class tiny one)
        assert fp32["bytes"] - rep["bytes"] > 1.4 * weights and "DEQUANTIZE" not in fp32["op_counts"]
        assert rep["op_counts"]["DEQUANTIZE"] >= rep["op_counts"]["CONV_2D"]
        assert rep["outside_xnnpack"] == fp32["outside_xnnpack"]
    m = load_exported(out)  # runs on float32 like every file (LiteRT's takes NHWC by default: its metadata says so)
    assert m(m.metadata.file_input(np.zeros((1, 3, 64, 64), np.float32))).shape == (1, 3)
    assert main(["export", *common, "--quantize", "bf16" if precision == "fp16" else "fp16",
                 "-o", str(tmp_path / f"x{rt.suffix}")]) == 2
    assert "is available for --format" in capsys.readouterr().err


def test_mnn_int8_file_says_so_and_a_quantizer_failure_is_one_line(checkpoint, tmp_path, capsys):
    """MNN's own quantizer, in a child process: the file keeps its input size and says int8; a quantizer that
    dies (here on a file that is no model) is one ConversionError, not a crash of the caller."""
    import dataclasses

    from edgevit.deploy.export import export_model
    from edgevit.deploy.runtimes import mnn
    from edgevit.deploy.runtimes.base import Rule
    from edgevit.models.checkpoint import create_model

    out, ref = tmp_path / "q.mnn", tmp_path / "f.mnn"
    # MNN's quantizer on this tiny random-weight model gives erratic files (logits SQNR 2.6-13 dB by seed and
    # calibration count, below the int8 rule's 10 dB, so `export` would refuse some of them); what is tested here is
    # the file MNN writes, so the record's rule is waived
    rt = runtimes.get("mnn")
    waived = dataclasses.replace(rt, writers={**rt.writers, "int8": dataclasses.replace(rt.writers["int8"],
                                                                                        rule=Rule())})
    model = create_model(None, str(checkpoint))
    rep = export_model(model, waived, out, precision="int8", images=torch.rand(8, 3, 64, 64) * 4 - 2)
    assert rep["precision"] == "int8" and rep["calibration_images"] == 8
    assert mnn.file_info(out) == {"precision": "int8", "input": (3, 64, 64)}
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "mnn", "--json", "-o", str(ref)]) == 0
    assert rep["bytes"] < 0.6 * _json(capsys)["bytes"]  # int8 weights
    junk = tmp_path / "junk.mnn"
    junk.write_bytes(b"\0" * 4096)
    with pytest.raises(runtimes.ConversionError, match=r"^MNN's quantizer failed \((exit status|killed)"):
        mnn._quantize(junk, tmp_path / "j8.mnn", torch.randn(2, 3, 64, 64), tmp_path)
    assert not (tmp_path / "j8.mnn").exists()


def test_mnn_converter_works_in_a_folder_of_its_own(make_tiny, tmp_path, monkeypatch):
    """MNN's converter writes the weights to `.__convert_external_data.bin` in its working directory and reads
    them back, then deletes it, so two conversions in one directory swap weights (two test workers did: max |diff|
    0.9 on the fp32 check). Here the caller's directory holds that name as a link to /dev/full: a converter
    working there deletes the link (and for the full-width XXS wrote a file off by 1.09); one working in a folder
    of its own leaves it, and its file agrees with PyTorch."""
    from edgevit.deploy import fuse
    from edgevit.deploy.export import export_model

    monkeypatch.chdir(tmp_path)
    trap = tmp_path / ".__convert_external_data.bin"
    trap.symlink_to("/dev/full")
    rep = export_model(fuse(make_tiny(), "mnn"), "mnn", tmp_path / "m.mnn", img_size=64)
    assert rep["max_abs_diff"] < 1e-3 and trap.is_symlink()


def test_bf16_is_refused_on_a_cpu_without_it(monkeypatch, make_tiny, tmp_path):
    from edgevit.deploy.export import export_model
    from edgevit.deploy.quantize import random_calibration
    from edgevit.deploy.runtimes import openvino

    class NoBF16:
        def get_property(self, device, name):
            return ["FP32", "INT8"]

    monkeypatch.setattr(openvino, "_core", lambda: NoBF16())
    with pytest.raises(UserError, match="this CPU has no bf16 instructions"):
        export_model(make_tiny(), "openvino", tmp_path / "b.xml", precision="bf16", check_x=random_calibration(2, 64))
    assert list(tmp_path.iterdir()) == []


def test_release_graph_in_ncnn_is_one_line_naming_the_ops_and_modules(tmp_path, capsys):
    """The release graph's strided delegate slicing has no ncnn layer: the error names the op pnnx left and the
    PyTorch modules it came from (found by shape among the ONNX nodes, as pnnx renames and merges them)."""
    out = tmp_path / "r.ncnn.param"
    assert main(["export", "--model", "edgevit_xxs", "--format", "ncnn", "--img-size", "64", "--no-fuse",
                 "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ncnn has no layer for Tensor.slice (x5), which pnnx left" in err
    assert err.endswith("(from stages.0.blocks.0.global_attn.attn (GlobalSparseAttn), stages.1.blocks.0.global_attn"
                        ".attn (GlobalSparseAttn), stages.2.blocks.0.global_attn.attn (GlobalSparseAttn) and 2 more)")
    assert list(tmp_path.iterdir()) == []
    # (the bench skips that cell with the same line and times the rest: test_profile_scripts.py's runtime forms)


@pytest.mark.parametrize("runtime", ["openvino", "ncnn"])
def test_a_file_without_its_weights_is_named(runtime, exported, tmp_path):
    import shutil

    rt = runtimes.get(runtime)
    shared, _ = exported(rt.format)
    out = tmp_path / f"m{rt.suffix}"
    for f in rt.files(shared):  # (a copy of the shared file: this test breaks it)
        shutil.copy(f, tmp_path / f.name)
    weights = rt.files(out)[1]
    data = weights.read_bytes()
    weights.unlink()
    with pytest.raises(UserError, match=rf"m{rt.suffix}: its companion file m(\.ncnn)?\.bin is not beside it"):
        load_exported(out)
    weights.mkdir()
    with pytest.raises(UserError, match=r"\.bin is a directory; expected the file the export wrote beside it"):
        load_exported(out)
    weights.rmdir()
    weights.write_bytes(data[: len(data) // 2])  # truncated
    if runtime == "openvino":  # the .xml says how far its constants reach
        with pytest.raises(UserError, match=rf"holds {len(data) // 2} bytes, but the \.xml reads up to byte "
                                            rf"{len(data)}: truncated"):
            load_exported(out)


@pytest.mark.parametrize("runtime", EDGE)
def test_a_segmenter_and_a_detector_export_to_each(runtime, tmp_path):
    """The dense models go through the same records: logits and raw detection heads checked in the runtime."""
    from edgevit.dense.export import export_dense
    from edgevit.dense.files import load_dense_file
    from edgevit.dense.models import create_detector, create_segmenter

    rt = runtimes.get(runtime)
    torch.manual_seed(0)
    seg = create_segmenter(4, "edgevit_xxs", drop_path_rate=0.0).eval()
    rep = export_dense(seg, rt.format, tmp_path / f"s{rt.suffix}", (64, 96), meta={})
    assert rep["max_abs_diff"] <= 1e-3 and rep["bytes"] == rt.size(tmp_path / f"s{rt.suffix}")
    classes = load_dense_file(tmp_path / f"s{rt.suffix}", "segment").segment(torch.rand(3, 64, 96), (64, 96))
    assert tuple(classes.shape) == (64, 96)
    det = create_detector("retinanet", 3, "edgevit_xxs", min_size=64, max_size=64, drop_path_rate=0.0).eval()
    if runtime == "ncnn":  # refused before any work, saying why
        from edgevit.dense.graphs import ExportError
        with pytest.raises(ExportError, match="ncnn.s converter drops"):
            export_dense(det, rt.format, tmp_path / f"d{rt.suffix}", (64, 64), meta={})
        return
    rep = export_dense(det, rt.format, tmp_path / f"d{rt.suffix}", (64, 64), meta={})
    assert rep["outputs"] == ["cls_logits", "bbox_regression", "anchors"] and rep["max_abs_diff"] <= 1e-3
    found = load_dense_file(tmp_path / f"d{rt.suffix}", "detect").detect(torch.rand(3, 64, 64), score_thresh=0.0)
    assert found["boxes"].shape[1] == 4 and len(found["scores"]) == len(found["labels"]) > 0


def test_executorch_files_loaded_with_other_thread_counts_run_side_by_side(exported):
    """XNNPACK's threadpool is one per process, and resetting it freed the pool under every method loaded before
    (`load_exported(..., threads=1)` then crashed or hung in `execute`: its metadata read reset the pool to 2): a
    1-thread file, then a 2-thread one and a metadata read, then both in turns give the first outputs."""
    from edgevit.deploy.runtimes import executorch as et

    path, _ = exported("pte")
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    one = load_exported(path, threads=1)
    want = np.asarray(one(x))
    two = et.load(path, 2)
    assert et.input_size(path) == (64, 64) and et._POOL["threads"] == 2
    for _ in range(10):
        np.testing.assert_allclose(np.asarray(one(x)), want, rtol=0, atol=1e-6)
        np.testing.assert_allclose(two(x)[0], want.reshape(two(x)[0].shape), rtol=0, atol=1e-6)
