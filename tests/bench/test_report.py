"""`edgevit report`: joins bench / energy / accuracy files, writes markdown + PNG/SVG, warns on unknown models."""
import json
from pathlib import Path

import pytest

from edgevit.bench.plots import place_labels, text_extent
from edgevit.bench.report import build_rows, make_report, mark_pareto
from edgevit.cli.main import main
from edgevit.paper import load_paper

META = {"created": "2026-11-23T22:00:00Z", "machine": "ci-vm", "cpu": "x86_64", "torch": "2.14.1",
        "timm": "1.0.31", "runtime_versions": {}, "threads": 2, "runs": 20, "batch": 1, "dtype": "fp32",
        "cpu_flags": ["avx2", "fma", "avx512_vnni"]}


def _res(model, runtime, ms, label=None, fused=None):
    size = 256 if model.startswith(("mobilevit", "fastvit")) else 224  # each model at its own size, as bench runs it
    return {"model": model, "label": label or model, "fused": fused, "runtime": runtime, "img_size": size,
            "params_m": 1.0, "gmacs": 0.5, "mean_ms": ms, "std_ms": 0.1 * ms, "median_ms": ms, "runs": 20}


@pytest.fixture
def files(tmp_path):
    bench = {"meta": META, "results": [
        _res("edgevit_xxs", "eager", 20.0, "edgevit_xxs (fused)", True),
        _res("edgevit_xs", "eager", 33.0, "edgevit_xs (fused)", True),
        _res("edgevit_s", "eager", 52.0, "edgevit_s (fused)", True),
        _res("mobilenetv2_100", "eager", 12.0),
        _res("mobilevit_xs", "eager", 30.0),       # 74.8 @ 30 ms: dominated by efficientnet_b0 below
        _res("efficientnet_b0", "eager", 21.0),
        _res("resnet18", "eager", 25.0),           # no accuracy known: listed, not plotted
    ]}
    energy = [{"format": "edgevit-energy/1", "method": "trace", "n": 50, "model": "edgevit_xxs",
               "label": "edgevit_xxs (fused)", "runtime": "eager", "energy_mj_mean": 80.0, "energy_mj_std": 1.0,
               "power_w_mean": 3.5, "power_w_std": 0.1, "idle_power_w": 1.5, "warnings": []},
              {"format": "edgevit-energy/1", "method": "trace", "n": 50, "model": "mobilevit_xs",
               "runtime": "eager", "energy_mj_mean": 95.0, "energy_mj_std": 2.0, "power_w_mean": 3.0,
               "power_w_std": 0.1, "idle_power_w": 1.5, "warnings": []}]
    acc = [{"model": "edgevit_xxs", "top1": 74.1, "top5": 92.0, "num_classes": 1000, "img_size": 224,
            "data": "imagenet/val"}, {"model": "foonet_9000", "top1": 50.0}]
    paths = {}
    for name, obj in (("bench", bench), ("energy", energy), ("acc", acc)):
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(obj))
    return paths


def test_rows_accuracy_precedence_and_pareto(files):
    bench = json.loads(files["bench"].read_text())
    acc = [(str(files["acc"]), a) for a in json.loads(files["acc"].read_text())]
    rows, warnings = build_rows([bench], json.loads(files["energy"].read_text()), acc, load_paper())
    by = {r["name"]: r for r in rows}
    assert by["edgevit_xxs (fused)"]["top1"] == 74.1 and by["edgevit_xxs (fused)"]["top1_source"].startswith("eval")
    assert by["edgevit_s (fused)"]["top1"] == 81.0 and by["edgevit_s (fused)"]["top1_source"] == "paper"
    assert by["edgevit_xxs (fused)"]["efficiency"] == pytest.approx(74.1 / 80.0)
    assert by["resnet18"]["top1"] is None
    assert "foonet_9000" in by  # accuracy-only row, not dropped
    assert any("foonet_9000" in w and "acc.json" in w for w in warnings)
    assert any("resnet18" in w for w in warnings)
    sets = mark_pareto(rows)
    (group,) = sets["accuracy_latency"]  # one runtime, one input size, ImageNet-1K accuracies only
    assert group.startswith("eager fp32, default input sizes, top-1 on ImageNet-1K")
    assert sets["accuracy_latency"][group] == ["mobilenetv2_100", "edgevit_xxs (fused)", "efficientnet_b0",
                                                 "edgevit_xs (fused)", "edgevit_s (fused)"]
    assert sets["accuracy_energy"][next(iter(sets["accuracy_energy"]))] == ["edgevit_xxs (fused)", "mobilevit_xs"]
    assert by["mobilevit_xs"]["pareto_latency"] is False and by["resnet18"]["pareto_latency"] is None


def test_report_writes_markdown_png_svg(files, tmp_path):
    out = tmp_path / "report"
    s = make_report(out, bench=[files["bench"]], energy=[files["energy"]], accuracy=[files["acc"]])
    names = sorted(Path(p).name for p in s["plots"])
    assert names == ["pareto_energy_trace.png", "pareto_energy_trace.svg",
                     "pareto_latency_eager.png", "pareto_latency_eager.svg"]
    for p in s["plots"]:
        data = Path(p).read_bytes()
        assert len(data) > 5000
        assert data[:8] == b"\x89PNG\r\n\x1a\n" if p.endswith(".png") else b"<svg" in data
    md = (out / "report.md").read_text()
    assert "| **edgevit_xxs (fused)** | eager fp32 | 224x224px | 74.1 (eval (acc.json)) | ImageNet-1K" in md
    assert "![pareto_latency_eager](pareto_latency_eager.png)" in md
    assert "arXiv:2205.03436" in md and "foonet_9000" in md and "ci-vm" in md
    assert "cpu: x86_64; ISA: avx2 fma avx512_vnni" in md  # (int8 / bf16 figures depend on them)
    summary = json.loads((out / "report.json").read_text())
    assert list(summary["pareto"]["accuracy_energy"].values())[0] == ["edgevit_xxs (fused)", "mobilevit_xs"]


def test_labels_do_not_overlap():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    xs = [10, 10.3, 10.6, 11, 11.2, 20, 20.2, 30]
    ys = [74, 74.1, 74.0, 74.2, 73.9, 77, 77.1, 81]
    labels = [f"model_{i}_long_name" for i in range(len(xs))]
    fig, ax = plt.subplots(figsize=(7, 4.8), dpi=100)
    ax.scatter(xs, ys)
    ax.set_xlim(5, 40)
    ax.set_ylim(72, 83)
    texts = place_labels(ax, xs, ys, labels, bold=[i < 2 for i in range(len(xs))])
    r = fig.canvas.get_renderer()
    boxes = [text_extent(t, r) for t in texts]
    assert len(boxes) == len(xs)
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            assert not boxes[i].overlaps(boxes[j]), (labels[i], labels[j])
    plt.close(fig)


def test_report_cli_and_bad_input(files, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["report", "--bench", str(files["bench"]), "--out", str(out), "--no-paper", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["pareto"]["accuracy_latency"] == {}  # no accuracies at all without the paper data
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"results": [{"model": "x"}]}))
    before = (out / "report.md").read_text()
    assert main(["report", "--bench", str(bad), "--out", str(out)]) == 2
    assert "already holds" in capsys.readouterr().err  # an existing report is refused before anything
    assert main(["report", "--bench", str(bad), "--out", str(out), "--overwrite"]) == 2
    assert "lacks runtime, median_ms" in capsys.readouterr().err
    assert main(["report", "--accuracy", str(tmp_path / "nope.json"), "--out", str(out), "--overwrite"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert (out / "report.md").read_text() == before  # nothing already written is lost


def test_the_fronts_of_a_matrix_in_words_per_runtime_and_precision(tmp_path):
    """A matrix file (medians only, a precision per row) of EdgeViTs and today's peers: one front per runtime x
    precision, each peer with its published top-1 (cited, † where distilled), and in words which EdgeViT is on the
    front and which peer dominates one that is not."""
    from edgevit.bench.report import front_words, load_report_data
    from edgevit.paper import published_top1

    def cell(model, precision, ms, label=None):
        return {"runtime": "onnxruntime", "precision": precision, "model": model, "label": label or model,
                "img_size": 224, "median_ms": ms, "ci_lo_ms": ms * 0.99, "ci_hi_ms": ms * 1.01, "status": "ok",
                "peak_rss_mb": 90.0, "load_ms": 40.0, "bytes": 1e7}
    doc = {"meta": META, "results": [
        cell("edgevit_xxs", "fp32", 10.0, "edgevit_xxs (fused)"), cell("starnet_s2", "fp32", 8.0),
        cell("edgevit_xs", "fp32", 20.0, "edgevit_xs (fused)"), cell("repvit_m1_0", "fp32", 25.0),
        cell("edgevit_xxs", "int8", 5.0, "edgevit_xxs (fused)"), cell("starnet_s2", "int8", 6.0)], "skipped": []}
    (tmp_path / "m.json").write_text(json.dumps(doc))
    data = load_report_data(bench=[str(tmp_path / "m.json")])
    by = {(r["name"], r["precision"]): r for r in data.rows}
    assert by[("starnet_s2", "fp32")]["top1"] == 74.8 and by[("starnet_s2", "fp32")]["top1_source"] == "published"
    assert by[("repvit_m1_0", "fp32")]["distilled"] and not by[("starnet_s2", "fp32")]["distilled"]
    assert "arXiv:2403.19967" in published_top1()["starnet_s2"]["source"]
    words = front_words(data.rows)
    xxs, xs = published_top1()["edgevit_xxs"]["top1"], published_top1()["edgevit_xs"]["top1"]
    assert words == [
        f"- onnxruntime fp32, default input sizes, top-1 on ImageNet-1K (1000 classes): **edgevit_xxs (fused)** "
        f"(10.00 ms, {xxs:.1f}%) is dominated by starnet_s2 (8.00 ms, 74.8%); **edgevit_xs (fused)** is on the "
        f"front (20.00 ms, {xs:.1f}%).",
        f"- onnxruntime int8, default input sizes, top-1 on ImageNet-1K (1000 classes): **edgevit_xxs (fused)** is "
        f"on the front (5.00 ms, {xxs:.1f}%)."]
    summary = make_report(tmp_path / "report", bench=[str(tmp_path / "m.json")])
    md = Path(summary["report"]).read_text()
    assert words[0] in md and "repvit_m1_0 †" in md and "| onnxruntime int8 |" in md
