"""A dense architecture is one registry entry: a new head is a builder plus one `register` line, and training,
export in every precision the runtime writes, eval of the exported file and the dense bench take it from there."""
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from edgevit.cli.main import main
from edgevit.dense import registry


class FCNHead(nn.Module):
    """A new head (an FCN-style 1x1 classifier on the stride-8 stage, upsampled to the input)."""

    def __init__(self, body: nn.Module, num_classes: int):
        super().__init__()
        self.body, self.num_classes = body, num_classes
        self.classifier = nn.Conv2d(body.feature_info[1]["num_chs"], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (f,) = self.body.forward_intermediates(x, indices=[1], intermediates_only=True)
        return F.interpolate(self.classifier(f), size=x.shape[-2:], mode="bilinear", align_corners=False)


def build_fcn(body: nn.Module, num_classes: int) -> nn.Module:
    return FCNHead(body, num_classes)


@pytest.fixture(autouse=True, scope="module")
def _fcn_registered():
    registry.register(registry.DenseArch("fcn_test", "segment", "FCN head (a test's)", f"{__name__}:build_fcn"))
    yield  # (the one line above; then out of the registry, so other tests' lists of architectures stay theirs)
    registry._REGISTRY.pop("fcn_test")


def test_a_head_registered_in_one_line_trains_exports_and_evaluates(trained, shapes_root, tmp_path, capsys):
    assert "fcn_test" in registry.names("segment") and "fcn_test" not in registry.names("detect")
    ck = trained["fcn_test"]  # `segment train --arch fcn_test` (the CLI's choices come from the registry)
    capsys.readouterr()
    from edgevit.deploy import runtimes

    half = runtimes.get("mnn")  # (a 16-bit file: MNN's converter is the quickest of the runtimes that write one)
    assert "fp16" in half.writers
    evals = {}
    for fmt, precision, extra in (("onnx", "fp32", []), (half.format, "fp16", ["--quantize", "fp16"]),
                                  ("onnx", "int8", ["--quantize", "int8", "--calib", str(shapes_root),
                                                    "--calib-images", "4"])):
        out = tmp_path / f"{precision}{runtimes.by_format(fmt).suffix}"
        assert main(["segment", "export", "--checkpoint", str(ck), "--format", fmt, "--img-size", "64", *extra,
                     "-o", str(out), "--json"]) == 0
        rep = json.loads(capsys.readouterr().out)
        assert rep["arch"] == "fcn_test" and rep["precision"] == precision and out.is_file()
        assert json.loads(open(f"{out}.json").read())["arch"] == "fcn_test"
        assert main(["segment", "eval", "--exported", str(out), "--data", str(shapes_root), "--json"]) == 0
        evals[precision] = json.loads(capsys.readouterr().out)
    assert main(["segment", "eval", "--checkpoint", str(ck), "--data", str(shapes_root), "--json"]) == 0
    want = json.loads(capsys.readouterr().out)
    assert evals["fp32"]["mIoU"] == pytest.approx(want["mIoU"], abs=0.005)
    assert main(["segment", "bench", "--models", "fcn_test", "--runtime", "onnxruntime", "--edgevit-form", "fused",
                 "--no-baselines", "--runs", "2", "--warmup", "1", "--img-size", "64", "--no-progress",
                 "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in doc["results"]] == ["fcn_test"] and doc["results"][0]["median_ms"] > 0


def test_what_a_runtime_does_with_a_dense_model_comes_from_its_record():
    from edgevit.dense.graphs import ExportError, check_exportable
    from edgevit.deploy import runtimes

    for rt in runtimes.RUNTIMES.values():
        if rt.format is None:
            continue
        for arch in registry.entries():
            try:
                check_exportable(arch.name, rt.format)
            except ExportError as e:
                why = str(e)
                assert (arch.outputs == "detections" and rt.write_traced is None) or (
                    arch.outputs == "raw" and not (rt.constant_outputs or rt.detections_in_graph)), why
            else:
                assert arch.outputs != "detections" or rt.write_traced is not None
