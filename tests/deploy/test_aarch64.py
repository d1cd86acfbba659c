"""The phone's instruction set: each runtime with an aarch64 wheel runs a trained file in the emulated aarch64 lane
(`edgevit check --arch aarch64`), with the package's settings and with the runtime's own defaults, against the same
file on x86 and PyTorch. Skipped where the lane is not built, except under `make test` (CI), where it must run."""
import json
import os
import signal
import sys

import numpy as np
import pytest

from edgevit.cli.main import main
from edgevit.deploy.aarch64 import LANE_ENV, LaneError, lane_command, run_on_aarch64
from edgevit.deploy.export import load_exported

# (format, precision, file suffix): one file per runtime (TorchScript's and the lite interpreter's share their
# runtime, torch: the lite file), the fp16 file ncnn computes in fp16 on ARM, MNN's int8 file, whose i8mm kernels
# need the head padded (`mnn.HeadInEights`), and ExecuTorch's int8 file on XNNPACK's ARM int8 kernels
FILES = [("tflite", "fp32", ".tflite"), ("ncnn", "fp32", ".ncnn.param"), ("ncnn", "fp16", ".ncnn.param"),
         ("mnn", "fp32", ".mnn"), ("mnn", "int8", ".mnn"), ("onnx", "fp32", ".onnx"), ("openvino", "fp32", ".xml"),
         ("pte", "int8", ".pte"), ("ptl", "fp32", ".ptl")]


@pytest.fixture(scope="module")
def lane():
    try:
        lane_command()
    except LaneError as e:
        if os.environ.get("EDGEVIT_REQUIRE_AARCH64_LANE"):
            pytest.fail(f"make test builds the lane, so it must run here: {e}")
        pytest.skip(str(e))


def _json(capsys, argv):
    capsys.readouterr()
    assert main(argv) == 0, argv
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def other_checkpoint(tmp_path_factory):
    """A checkpoint of a 3-class EdgeViT-XXS (the authors' format: a bare state dict)."""
    import timm
    import torch

    path = tmp_path_factory.mktemp("other") / "three.pth"
    torch.save(timm.create_model("edgevit_xxs", num_classes=3).state_dict(), path)
    return path


@pytest.mark.parametrize("fmt,precision,suffix", FILES, ids=[f"{f}-{p}" for f, p, _ in FILES])
def test_shipped_file_on_aarch64_keeps_its_precision_under_the_phone_defaults(fmt, precision, suffix, lane,
                                                                              digits_run, other_checkpoint, tmp_path,
                                                                              capsys):
    data, ck = digits_run
    out = tmp_path / f"m{suffix}"
    extra = ["--quantize", precision] if precision != "fp32" else []
    extra += ["--calib", str(data / "train"), "--calib-images", "32"] if precision == "int8" else []
    written = _json(capsys, ["export", "--checkpoint", str(ck), "--format", fmt, *extra, "-o", str(out), "--json"])
    if fmt == "ncnn":  # what a phone must keep in fp32 is in the file: every layer (fp32), the convolutions (fp16)
        masks = written["ncnn_feature_masks"]  # (mask value -> layers; the Input layer carries none)
        kinds = written["op_counts"]
        convs = sum(kinds.get(k, 0) for k in ("Convolution", "ConvolutionDepthWise", "DeconvolutionDepthWise",
                                               "InnerProduct"))
        assert masks == ({"7": written["ncnn_layers"] - 1} if precision == "fp32" else {"1": convs}) and convs
    # the worker is the package's loader: on x86 it gives load_exported's outputs bit for bit
    m = load_exported(out, threads=1)
    x = [m.metadata.file_input(np.random.default_rng(i).random((1, 3, 32, 32), np.float32)) for i in range(2)]
    native, said = run_on_aarch64(out, x, python=[sys.executable])
    for a, got in zip(x, native):
        assert np.array_equal(np.asarray(m(a)), got[0]), fmt
    assert said["machine"] == "x86_64"

    if fmt == "onnx":  # weights of another model: one line naming them, nothing run on aarch64
        assert main(["check", str(out), "--arch", "aarch64", "--checkpoint", str(other_checkpoint)]) == 2
        assert "answers 10 classes and the model given 3" in capsys.readouterr().err
    rep = _json(capsys, ["check", str(out), "--arch", "aarch64", "--checkpoint", str(ck), "--data", str(data / "val"),
                         "--images", "3", "--json"])
    assert rep["images"] == 3 and {"asimdhp", "asimddp", "i8mm"} <= set(rep["cpu_features"])  # (qemu -cpu max)
    package, runtime = rep["aarch64"]["package"], rep["aarch64"]["runtime"]
    assert package["top1"] == rep["x86_top1"] and package["vs_pytorch"]["top1_agreement"] == 100
    if precision == "fp32":  # the fp32 file computes in fp32 on aarch64 as on x86
        assert package["vs_x86"]["max_abs_diff"] <= 1e-4 and package["vs_pytorch"]["max_abs_diff"] <= 1e-3
    elif precision == "fp16":
        assert package["vs_pytorch"]["sqnr_db"] >= 50
    else:  # int8: ARM's int8 kernels round their own way, close to x86's (the 10-class head's tail included)
        assert package["vs_x86"]["sqnr_db"] >= 30 and runtime["vs_x86"]["sqnr_db"] >= 30
    if fmt == "openvino":  # the CPU plugin's ARM default is f16: the package (and an app) must ask for f32
        assert "float16" in runtime["options"]["inference_precision"]
        assert runtime["vs_pytorch"]["sqnr_db"] < package["vs_pytorch"]["sqnr_db"] - 20
    elif fmt == "ncnn":  # ncnn's defaults (fp16 on): the file's own per-layer masks keep what was checked
        assert not runtime.get("same_as_package") and runtime["options"]["use_fp16_arithmetic"]
        if precision == "fp32":
            assert runtime["vs_pytorch"]["max_abs_diff"] <= 1e-3
        else:
            assert runtime["vs_pytorch"]["sqnr_db"] >= 50 and runtime["vs_pytorch"]["top1_agreement"] == 100
    elif precision == "fp32":  # LiteRT, MNN, ONNX Runtime: their defaults keep fp32
        assert runtime["vs_pytorch"]["max_abs_diff"] <= 1e-3


def test_what_the_lane_cannot_run_is_one_line(lane, exported, tmp_path, monkeypatch, capsys):
    import dataclasses

    from edgevit.deploy import runtimes

    onnx, _ = exported("onnx")
    # a runtime the worker cannot load (every runtime's can today): named, nothing run
    unrunnable = dataclasses.replace(runtimes.for_file(onnx), worker=None)
    monkeypatch.setattr(runtimes, "for_file", lambda path: unrunnable)
    with pytest.raises(LaneError, match="onnxruntime files cannot run in the aarch64 lane"):
        run_on_aarch64(onnx, [np.zeros((1, 3, 64, 64), np.float32)])
    monkeypatch.undo()
    # an emulated runtime that crashes: its signal, named
    kill = f"import os, signal; os.kill(os.getpid(), signal.{signal.SIGSEGV.name})"
    with pytest.raises(LaneError, match="died on SIGSEGV"):
        run_on_aarch64(onnx, [np.zeros((1, 3, 64, 64), np.float32)], python=[sys.executable, "-c", kill])
    # a lane that is not built: the one command that builds it
    monkeypatch.setenv(LANE_ENV, str(tmp_path / "no-lane"))
    assert main(["check", str(onnx), "--arch", "aarch64"]) == 2
    err = capsys.readouterr().err
    assert "the aarch64 lane is not built" in err and "make arm-lane" in err and len(err.strip().splitlines()) == 1
