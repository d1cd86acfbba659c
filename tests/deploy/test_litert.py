"""LiteRT (.tflite through litert-torch, run in ai-edge-litert's interpreter): every Table-4 option the form
supports at a non-square size; export, eval, bench and profile end to end; the bad inputs of the format.
(Parity of the three variants with the authors' outputs: test_litert_reference.py, a file of its own so that
the test processes share the slow conversions.)"""
import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from edgevit.cli.main import main
from edgevit.deploy import export as ex
from edgevit.deploy import fuse, runtimes

# every value of every Table-4 option (tests/deploy/test_fuse.py::TABLE4) not already in the variants above
# (local_agg conv, sampler corner, local_prop deconv, kernel 5, qkv bias), in three one-block-per-stage models
TABLE4_GROUPS = [dict(local_agg="lsa", sampler="max", local_prop="bilinear", local_kernel=7, qkv_bias=False),
                 dict(local_agg="none", sampler="center", local_prop="none"),
                 dict(sampler="avg", local_kernel=3)]


class _Side(nn.Module):
    """Several models on one input, logits side by side: one file (and one conversion's fixed cost) for all."""

    def __init__(self, models):
        super().__init__()
        self.models = nn.ModuleList(models)

    def forward(self, x):
        return torch.cat([m(x) for m in self.models], dim=1)


def test_litert_every_table4_option_non_square(make_tiny, tmp_path):
    release = [make_tiny(depths=(1, 1, 1, 1), **option) for option in TABLE4_GROUPS]
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    out = tmp_path / "m.tflite"
    report = ex.export_model(_Side([fuse(m, "litert") for m in release]), "tflite", out, img_size=(64, 96),
                             check_x=x)
    with torch.no_grad():
        ref = _Side(release)(x)
    got = torch.from_numpy(ex.load_exported(out)(x.numpy()))
    assert got.shape == ref.shape == (1, 7 * len(TABLE4_GROUPS))
    for i, option in enumerate(TABLE4_GROUPS):  # the file against each release-layout model
        assert (got - ref)[:, 7 * i:7 * (i + 1)].abs().max().item() <= 1e-4, option
    assert report["img_size"] == [64, 96] and runtimes.get("litert").input_size(out) == (64, 96)


def test_cli_export_bench_and_eval_tflite(make_tiny, tmp_path, capsys, monkeypatch):
    """export --format tflite --no-fuse (the release graph, said so; atomic; --json op counts), eval --exported
    .tflite, bench --runtime litert (the fused form)."""
    from PIL import Image

    from edgevit.train.evaluate import evaluate_exported

    ck = tmp_path / "tiny.pth"  # a checkpoint that carries its model options and classes, as a training run's
    kwargs = {"embed_dims": [12, 24, 36, 48], "depths": [1, 1, 2, 1], "head_dim": 12}
    torch.save({"model": make_tiny(num_classes=3).state_dict(), "classes": ["c0", "c1", "c2"],
                "config": {"model": "edgevit_xxs", "model_kwargs": kwargs, "num_classes": 3, "img_size": 64,
                           "crop_pct": 1.0, "eval_interpolation": "bicubic"}}, ck)
    out = tmp_path / "tiny.tflite"
    # (NCHW, the graph op_profile converts below; the default LiteRT file, NHWC: tests/deploy/test_app_files.py)
    args = ["export", "--checkpoint", str(ck), "--format", "tflite", "--no-fuse", "--input-layout", "nchw", "-o",
            str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "--no-fuse: the release-layout graph of edgevit_xxs" in printed and "unfused" in printed
    import re
    ops, transposes = map(int, re.search(r"; (\d+) LiteRT ops, (\d+) of them TRANSPOSE", printed).groups())
    assert float(re.search(r"max \|diff\| ([0-9.e+-]+)", printed).group(1)) <= 1e-3
    assert ops > 100 and 0 < transposes < ops
    rep_ops = ops
    before = out.read_bytes()
    assert main(args) == 2 and "exists" in capsys.readouterr().err and out.read_bytes() == before
    # eval --exported on an ImageFolder: the same top-1 as the PyTorch model on the same transform
    for c in range(3):
        d = tmp_path / "val" / f"c{c}"
        d.mkdir(parents=True)
        for i in range(3):
            Image.fromarray((torch.rand(64, 64, 3) * 255).byte().numpy()).save(d / f"{i}.png")
    result = evaluate_exported(tmp_path / "val", out, checkpoint=ck, workers=0, progress=False)
    assert result["format"] == "tflite" and result["num_images"] == 9 and result["img_size"] == [64, 64]
    from edgevit.train.evaluate import evaluate_checkpoint  # the file's metrics are the checkpoint's
    ref = evaluate_checkpoint(tmp_path / "val", ck, workers=0, progress=False)
    assert result["top1"] == ref["top1"] and abs(result["loss"] - ref["loss"]) < 1e-4
    assert main(["eval", "--data", str(tmp_path / "val"), "--exported", str(out), "--checkpoint", str(ck),
                 "--workers", "0", "--no-progress", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == result["top1"]
    # bench --runtime litert end to end (the file edgevit export writes, timed in its interpreter)
    assert main(["bench", "--models", "edgevit_xxs", "--runtime", "litert", "--edgevit-form", "fused",
                 "--img-size", "32", "--runs", "2", "--warmup", "1", "--json", str(tmp_path / "b.json")]) == 0
    rows = json.loads((tmp_path / "b.json").read_text())["results"]
    assert [r["runtime"] for r in rows] == ["litert"] and rows[0]["median_ms"] > 0
    # op_profile --runtime litert on the file exported above (its converter call replaced by a copy of that file:
    # conversion is tested above; this checks the profile's inventory and timing of a real .tflite)
    import shutil

    from edgevit.bench import profile as bp
    from edgevit.deploy.runtimes import litert

    def copy_instead_of_converting(net, x, path):
        shutil.copy(out, path)
        return litert.tflite_report(path)

    monkeypatch.setattr(litert, "save_tflite", copy_instead_of_converting)
    prof = bp.profile("edgevit_xxs", fused=False, runtime="litert", runs=2, img_size=64, checkpoint=str(ck))
    e = prof["export"]
    assert prof["median_ms"] > 0 and e["ops"] == sum(e["op_counts"].values()) == rep_ops
    assert e["xnnpack_partitions"] >= 1 and e["ops_outside_xnnpack"] == sum(e["outside_xnnpack"].values())


class _FFT(nn.Module):
    """A part LiteRT cannot lower (a 2-D FFT)."""

    def forward(self, x):
        return torch.fft.rfft2(x).abs().mean((2, 3))


def test_litert_bad_input(monkeypatch, tmp_path, capsys):
    # an op the converter cannot lower: one line naming the op and the module it is in; nothing written
    model = nn.Sequential(nn.Conv2d(3, 4, 3), _FFT()).eval()
    out = tmp_path / "fft.tflite"
    with pytest.raises(runtimes.ConversionError) as e:
        ex.export_model(model, "tflite", out, img_size=32)
    msg = str(e.value)
    assert "_fft_r2c" in msg and "module 1 (_FFT)" in msg and "\n" not in msg
    assert not list(tmp_path.iterdir())
    capsys.readouterr()  # (the converter's own import-time log lines, written while it was called above)
    # the packages missing: one line naming them
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda n, *a: None if n in ("ai_edge_litert", "litert_torch") else real(n, *a))
    assert main(["export", "--model", "edgevit_xxs", "--format", "tflite", "-o", str(tmp_path / "x.tflite")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ai_edge_litert" in err[0] and "pip install ai-edge-litert" in err[0]
    assert main(["bench", "--models", "edgevit_xxs", "--runtime", "litert", "--runs", "1"]) == 2
    assert "ai-edge-litert" in capsys.readouterr().err


def test_full_integer_int8_file_runs_on_float_and_prints_nothing(tiny_checkpoint, exported, tmp_path, capfd):
    """export --format tflite --quantize int8: ai-edge-quantizer's static int8 file (int8 input and output
    tensors), run by the loader on float32 like every file; the quantizer's progress bars and notices stay out."""
    from edgevit.deploy import load_exported
    from edgevit.deploy.runtimes import litert

    out = tmp_path / "q.tflite"
    tiny = ["--checkpoint", str(tiny_checkpoint), "--format", "tflite", "--img-size", "64"]
    assert main(["export", *tiny, "--quantize", "int8", "--calib", "random", "-o", str(out), "--json"]) == 0
    captured = capfd.readouterr()
    rep = json.loads(captured.out)
    assert captured.err == "" and rep["precision"] == "int8" and rep["sqnr_db"] > 10
    interp = litert.litert_interpreter(out, 1)
    assert interp.get_input_details()[0]["dtype"] == np.int8  # a full-integer file
    y = load_exported(out)(np.zeros((1, 3, 64, 64), np.float32))
    assert y.dtype == np.float32 and y.shape == (1, 7)
    dtypes = {t["index"]: t["dtype"] for t in interp.get_tensor_details()}
    convs = [op for op in interp._get_ops_details() if op["op_name"] in litert.CONV_OPS]
    assert convs and all(dtypes[op["inputs"][1]] == np.int8 for op in convs)  # int8 weights
    assert rep["bytes"] < exported("tflite")[1]["bytes"]
    # (so an int8 file keeps NCHW, where LiteRT's float files are NHWC by default; asked for, refused by the
    # command's own flag)
    assert main(["export", *tiny, "--quantize", "int8", "--calib", "random", "--input-layout", "nhwc", "-o",
                 str(tmp_path / "n.tflite")]) == 2
    assert "error: --quantize int8 files take the integer input" in capfd.readouterr().err


def test_int8_conv_form_is_an_export_precision_of_its_own(tiny_checkpoint, tmp_path, capfd):
    """export --quantize int8-conv: the convolutions and fully connected layers int8, LayerNorm/GELU/softmax float,
    float input and output (not full-integer); the file checked like every int8 one; other formats refuse it."""
    from edgevit.deploy.runtimes import litert

    out = tmp_path / "c.tflite"
    assert main(["export", "--checkpoint", str(tiny_checkpoint), "--format", "tflite", "--img-size", "64",
                 "--quantize", "int8-conv", "--calib", "random", "-o", str(out), "--json"]) == 0
    captured = capfd.readouterr()
    rep = json.loads(captured.out)
    assert captured.err == "" and rep["precision"] == "int8-conv" and rep["sqnr_db"] > 10
    assert "CONV_2D" in rep["litert_quantization"]
    interp = litert.litert_interpreter(out, 1)
    assert interp.get_input_details()[0]["dtype"] == np.float32
    dtypes = {t["index"]: t["dtype"] for t in interp.get_tensor_details()}
    ops = interp._get_ops_details()
    convs = [op for op in ops if op["op_name"] in litert.CONV_OPS]
    assert convs and all(dtypes[op["inputs"][1]] == np.int8 for op in convs)  # their weights
    floats = [op for op in ops if op["op_name"] in ("GELU", "SOFTMAX")]
    assert floats and all(dtypes[op["inputs"][0]] == np.float32 for op in floats)
    assert main(["export", "--model", "edgevit_xxs", "--format", "onnx", "--quantize", "int8-conv", "--calib",
                 "random", "-o", str(tmp_path / "c.onnx")]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert err == ["edgevit export: error: --quantize int8-conv is available for --format tflite, not onnx"]
    assert not (tmp_path / "c.onnx").exists()


def test_int8_of_chosen_ops_leaves_the_rest_float(tmp_path):
    """`ops`: only those LiteRT ops quantized (here the convolutions), the GELU between them float behind
    DEQUANTIZE/QUANTIZE; the file still agrees with PyTorch."""
    from edgevit.deploy.quantize import agreement
    from edgevit.deploy.runtimes import litert

    net = nn.Sequential(nn.Conv2d(3, 16, 1), nn.GELU(), nn.Conv2d(16, 8, 1)).eval()
    x, images = torch.randn(1, 3, 16, 16), torch.randn(8, 3, 16, 16)
    kinds = {}
    for name, ops in (("all", None), ("convs", ["CONV_2D"])):
        path = tmp_path / f"{name}.tflite"
        rep = litert.save_tflite_int8(net, x, path, images, ops=ops)
        interp = litert.litert_interpreter(path, 1)
        tensors = {t["index"]: t["dtype"] for t in interp.get_tensor_details()}
        gelu = [op for op in interp._get_ops_details() if op["op_name"] == "GELU"]
        kinds[name] = (tensors[gelu[0]["inputs"][0]], rep["op_counts"].get("DEQUANTIZE", 0))
        run = litert.load(path, 1)
        with torch.no_grad():
            ref = net(images)
        got = torch.cat([torch.from_numpy(run(images[i:i + 1].numpy())[0]) for i in range(8)])
        assert agreement(ref.flatten(1), got.flatten(1))["sqnr_db"] > 20
    assert kinds["all"] == (np.int8, 0)  # full integer: the GELU on int8
    assert kinds["convs"][0] == np.float32 and kinds["convs"][1] >= 1
