"""`edgevit bench` end to end: two small models, --runs 2, a valid results file (JSON and CSV)."""
import csv
import json

import pytest

from edgevit.bench.bench import ABLATIONS, Entry, cpu_flags, format_table, plan, time_runner
from edgevit.cli.main import main

ROW = {"model", "label", "fused", "runtime", "img_size", "params_m", "gmacs", "mean_ms", "std_ms", "median_ms",
       "ci_lo_ms", "ci_hi_ms", "runs", "paper_params_m", "paper_gflops", "paper_img_size", "precision", "status"}
META = {"created", "machine", "cpu", "torch", "timm", "runtime_versions", "threads", "runs", "batch", "dtype",
        "timing", "ties"}


def test_bench_end_to_end(tmp_path, capsys):
    runtime = "eager"  # (every runtime's session is checked in test_runners.py)
    js, cs = tmp_path / "r.json", tmp_path / "r.csv"
    assert main(["bench", "--models", "edgevit_xxs", "mobilenetv2_100", "--runtime", runtime, "--runs", "2",
                 "--warmup", "1", "--img-size", "64", "--json", str(js), "--csv", str(cs)]) == 0
    doc = json.loads(js.read_text())
    assert set(doc["meta"]) >= META
    assert doc["meta"]["runs"] == 2 and doc["meta"]["batch"] == 1 and doc["meta"]["dtype"] == "fp32"
    assert doc["meta"]["threads"] == 2
    assert doc["meta"]["cpu_flags"] == cpu_flags()  # (the ISA features int8/bf16 speed depends on)
    assert (not cpu_flags()) or " ".join(cpu_flags()) in format_table(doc)  # ... in the table's footer too
    rows = doc["results"]
    assert [r["label"] for r in rows] == ["edgevit_xxs (fused)", "edgevit_xxs (unfused)", "mobilenetv2_100"]
    assert [r["fused"] for r in rows] == [True, False, None]
    for r in rows:
        assert set(r) == ROW and r["runtime"] == runtime and r["img_size"] == 64 and r["runs"] == 2
        assert r["precision"] == "fp32"
        assert 0 < r["mean_ms"] < 60_000 and r["std_ms"] >= 0 and r["ci_lo_ms"] <= r["median_ms"] <= r["ci_hi_ms"]
    assert (rows[2]["paper_params_m"], rows[2]["paper_gflops"]) == (3.4, 0.3)  # Table 2 beside the count
    # complexity: fvcore at 64x64 = (64/224)^2 of the 224 counts, params independent of size
    assert rows[1]["params_m"] == pytest.approx(4.07, abs=0.01)
    assert rows[1]["gmacs"] == pytest.approx(0.557 * (64 / 224) ** 2, rel=0.05)
    assert rows[0]["gmacs"] < rows[1]["gmacs"]  # the fused graph is cheaper
    assert rows[2]["params_m"] == pytest.approx(3.50, abs=0.01)
    with open(cs) as f:
        csv_rows = list(csv.DictReader(f))
    assert [r["label"] for r in csv_rows] == [r["label"] for r in rows]
    assert float(csv_rows[0]["mean_ms"]) == pytest.approx(rows[0]["mean_ms"])
    assert "edgevit_xxs (unfused)" in capsys.readouterr().out  # the table


def test_bench_int8_beside_fp32_in_the_same_rounds(tmp_path, capsys):
    """--precision fp32 int8: every model twice, the int8 row the file `export --quantize int8` writes, the
    calibration named in meta (random inputs: labelled as timing only)."""
    js = tmp_path / "r.json"
    assert main(["bench", "--models", "mobilenetv2_100", "--runtime", "onnxruntime", "--precision", "fp32", "int8",
                 "--calib", "random", "--runs", "2", "--warmup", "1", "--img-size", "64", "--json", str(js)]) == 0
    doc = json.loads(js.read_text())
    rows = doc["results"]
    assert [(r["label"], r["precision"]) for r in rows] == [("mobilenetv2_100", "fp32"),
                                                            ("mobilenetv2_100 int8", "int8")]
    assert doc["meta"]["int8_calibration"] == "random inputs (timing only)"
    # a file's columns: its size, and a fresh process's load, first inference and memory
    assert all(r["bytes"] > 10_000 and r["load_ms"] > 0 and r["peak_rss_mb"] > r["load_rss_mb"] >= 0 for r in rows)
    assert rows[1]["bytes"] < rows[0]["bytes"] / 2  # (int8 weights)
    out = capsys.readouterr().out
    assert "fp32/int8 (int8 calibrated on random inputs (timing only))" in out and "+load MB" in out


def test_bench_bad_input(tmp_path, capsys):
    out = tmp_path / "keep.json"
    out.write_text("old")
    assert main(["bench", "--models", "edgevit_xxs", "--runtime", "tflite", "--json", str(out)]) == 2
    assert "executorch" in capsys.readouterr().err
    assert main(["bench", "--models", "nope_net", "--json", str(out), "--overwrite"]) == 2
    assert "mobilenetv2_100" in capsys.readouterr().err
    assert main(["bench", "--models", "edgevit_xxs", "--runs", "1", "--img-size", "100", "--json", str(out)]) == 2
    assert "--img-size" in capsys.readouterr().err
    assert out.read_text() == "old"


def test_plan_and_ablations():
    rows = plan(["edgevit_s", "deit_tiny_patch16_224"], "fused", ablations=True)
    assert rows[0] == Entry("edgevit_s", True) and rows[1] == Entry("deit_tiny_patch16_224", None)
    assert [e.tag for e in rows[2:]] == list(ABLATIONS)
    assert rows[2].label == "edgevit_xxs[local_agg=lsa] (fused)"
    with pytest.raises(ValueError, match="fused, unfused, both"):
        plan(["edgevit_s"], "half")


def test_ablations_stay_at_xxs_compute():
    """Table-4 rows compare designs at equal compute: each within 10% of the release XXS's GMACs."""
    import timm

    from edgevit.models.complexity import count_gmacs
    xxs = count_gmacs(timm.create_model("edgevit_xxs").eval(), 224)
    for tag, kw in ABLATIONS.items():
        g = count_gmacs(timm.create_model("edgevit_xxs", **kw).eval(), 224)
        assert abs(g / xxs - 1) <= 0.10, (tag, g, xxs)


def test_time_runner_counts_calls():
    calls = []
    times = time_runner(lambda: calls.append(1), runs=4, warmup=3)
    assert len(times) == 4 and len(calls) == 7 and all(t >= 0 for t in times)
    doc = {"results": [], "meta": {"threads": 2, "runs": 4, "cpu": "x", "torch": "t", "runtime_versions": {}}}
    assert "median ms" in format_table(doc)


def test_cpu_flags_from_x86_and_arm_cpuinfo():
    x86 = "processor\t: 0\nflags\t\t: fpu sse avx2 fma avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile\n"
    arm = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes asimdhp asimddp i8mm bf16\n"
    assert cpu_flags(x86) == ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16"]
    assert cpu_flags(arm) == ["asimd", "asimddp", "i8mm", "asimdhp", "bf16"]
    assert cpu_flags("model name\t: no flags line\n") == []


def test_bench_marks_a_file_below_its_rule_and_goes_on(tmp_path, capsys, monkeypatch):
    """--keep-going: a file its precision's rule refuses (here an int8 rule asking 200 dB, which no int8 file meets)
    is ❌ with the reason, never timed; the fp32 file beside it is timed."""
    import dataclasses

    from edgevit.deploy import runtimes
    from edgevit.deploy.runtimes.base import Rule

    ort = runtimes.get("onnxruntime")
    monkeypatch.setitem(ort.writers, "int8", dataclasses.replace(ort.writers["int8"], rule=Rule(min_sqnr_db=200.0)))
    assert main(["bench", "--models", "mobilenetv2_100", "--runtime", "onnxruntime", "--precision", "fp32", "int8",
                 "--calib", "random", "--runs", "2", "--warmup", "1", "--img-size", "64", "--keep-going",
                 "--json", str(tmp_path / "r.json")]) == 0
    doc = json.loads((tmp_path / "r.json").read_text())
    assert [r["label"] for r in doc["results"]] == ["mobilenetv2_100"]
    assert doc["meta"]["failed"] == ["mobilenetv2_100 int8"]
    assert "fails its rule (logits SQNR" in doc["meta"]["failed_why"]["mobilenetv2_100 int8"]
    assert "< 200 dB" in doc["meta"]["failed_why"]["mobilenetv2_100 int8"]
    assert "❌ mobilenetv2_100 int8: FileRejected" in capsys.readouterr().out
