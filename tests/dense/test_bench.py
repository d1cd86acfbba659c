"""The dense bench (`segment bench`, `detect bench`): rows, ratios, post-processing timed apart."""
import json

import pytest

from edgevit.cli.main import main

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _json(capsys):
    return json.loads(capsys.readouterr().out)


def test_dense_bench_rows_and_ratios(capsys):
    """The dense bench exports each model to the runtime and times them in one run: fused and release body,
    torchvision's model beside, the ratios the targets are stated in, post-processing apart for raw files."""
    assert main(["segment", "bench", "--runtime", "onnxruntime", "--models", "lraspp", "--img-size", "64",
                 "--runs", "3", "--warmup", "0", "--no-progress", "--json"]) == 0
    doc = _json(capsys)
    labels = [r["label"] for r in doc["results"]]
    assert labels == ["lraspp-XXS (fused body)", "lraspp-XXS (release body)",
                      "lraspp_mobilenet_v3_large (torchvision)", "deeplabv3_mobilenet_v3_large (torchvision)"]
    assert all(r["median_ms"] > 0 and r["ci_lo_ms"] <= r["median_ms"] <= r["ci_hi_ms"] for r in doc["results"])
    assert all(r["gmacs"] > 0 and r["params_m"] > 1 for r in doc["results"])
    assert doc["meta"]["task"] == "segment" and "cpu_flags" in doc["meta"]
    from edgevit.bench.dense import format_dense_table, ratios

    assert [w for w, _ in ratios(doc)] == [
        "lraspp-XXS (fused body): speed-up over the release body",
        "lraspp-XXS (fused body) / lraspp_mobilenet_v3_large (torchvision): latency ratio",
        "lraspp-XXS (release body) / lraspp_mobilenet_v3_large (torchvision): latency ratio"]
    assert "latency ratio" in format_dense_table(doc)
    # (a raw-output detector file, post-processing timed apart: TorchScript's, the quickest of those to write)
    assert main(["detect", "bench", "--runtime", "torchscript", "--models", "ssdlite", "--edgevit-form", "fused",
                 "--no-baselines", "--img-size", "64", "--runs", "2", "--warmup", "0", "--no-progress",
                 "--json"]) == 0
    row, = _json(capsys)["results"]
    assert row["post_ms"] > 0 and row["post"].startswith("numpy")
