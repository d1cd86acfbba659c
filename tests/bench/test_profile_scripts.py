"""benchmarks/op_profile.py and xnnpack_gemm_tile.py: the runtime profilers' traces are read and summed."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # (as `python benchmarks/NAME.py` would: a dataclass looks its module up)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("runtime,gemm_kind", [("onnxruntime", "Conv"),
                                              ("executorch", "Fully Connected (NC, F32) GEMM"),
                                              ("openvino", "Convolution (brgconv_avx512_1x1_f32)")])
def test_op_profile_reads_runtime_trace(runtime, gemm_kind, tiny_checkpoint, shared_writer):
    shared_writer(runtime)  # (the file the checked writer makes of these weights: the run's shared one)
    prof = _load("op_profile").profile("edgevit_xxs", fused=True, runtime=runtime, runs=2, img_size=64,
                                       checkpoint=str(tiny_checkpoint))
    kinds = {k["kind"]: k for k in prof["by_kind"]}
    if runtime == "openvino":  # the plugin names its kernel by the CPU's ISA: any 1x1 convolution kernel
        gemm_kind = next((k for k in kinds if k.startswith("Convolution (") and "1x1" in k), gemm_kind)
    assert gemm_kind in kinds and kinds[gemm_kind]["ms"] > 0
    assert abs(sum(k["share"] for k in prof["by_kind"]) - 1) < 1e-9
    assert prof["ops"] == len(prof["per_op"]) > 20
    assert prof["total_ms"] == pytest.approx(sum(o["median_ms"] for o in prof["per_op"]))
    with pytest.raises(ValueError, match="not one of"):
        _load("op_profile").profile("edgevit_xxs", runtime="tflite")


def test_op_profile_of_an_int8_file_shows_its_quantized_kernels():
    prof = _load("op_profile").profile("edgevit_xxs", runtime="onnxruntime", runs=2, img_size=64,
                                       precision="int8", calib="random")
    kinds = {k["kind"] for k in prof["by_kind"]}
    assert prof["precision"] == "int8"
    assert "QLinearConv" in kinds and "Conv" not in kinds  # every conv runs as an int8 kernel
    assert {"QuantizeLinear", "DequantizeLinear"} & kinds  # ... with float islands between them


def test_op_profile_of_a_16_bit_file_and_a_precision_the_runtime_lacks():
    from edgevit.errors import UserError

    # (MobileNetV2: the cheapest fp16 program to lower; the EdgeViT's fp16 file has its own test in test_edge_runtimes)
    prof = _load("op_profile").profile("mobilenetv2_100", runtime="executorch", runs=2, img_size=64,
                                       precision="fp16")
    kinds = {k["kind"] for k in prof["by_kind"]}
    assert prof["precision"] == "fp16"
    assert "Fully Connected (NC, F16) GEMM" in kinds and not any("F32" in k for k in kinds), kinds
    with pytest.raises(UserError, match="fp16 runs in .*not onnxruntime"):
        _load("op_profile").profile("edgevit_xxs", runtime="onnxruntime", precision="fp16")


def test_gemm_tile_one_row_per_conv(tmp_path, monkeypatch):
    out = tmp_path / "tile.json"
    monkeypatch.setattr(sys, "argv", ["x", "--hw", "56", "--cin", "16", "--cout", "16", "32", "--runs", "2",
                                      "--json", str(out)])
    assert _load("xnnpack_gemm_tile").main() == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["cin"], r["cout"]) for r in rows] == [(16, 16), (16, 32)]
    assert all(r["median_ms"] > 0 and r["gmacs_per_s"] > 0 for r in rows)


def test_deploy_targets_verdicts_and_check_exit():
    """benchmarks/deploy_targets.py: the verdict on known timings, and `--check` turns a miss into exit 1."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "deploy_targets.py"
    spec = importlib.util.spec_from_file_location("deploy_targets", path)
    dt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dt)
    s = lambda ms: {"mean_ms": ms, "median_ms": ms}  # noqa: E731
    met = dt.verdict("executorch", ["xxs"], {"edgevit_xxs (fused)": s(8.0), "edgevit_xxs (unfused)": s(16.0),
                                             dt.BASELINE: s(5.0)})
    assert met[0]["met"] and met[0]["speedup_mean"] == 2.0 and dt.missed_targets(met) == []
    missed = dt.verdict("executorch", ["xxs"], {"edgevit_xxs (fused)": s(10.0), "edgevit_xxs (unfused)": s(17.5),
                                                dt.BASELINE: s(5.0)})  # 1.75x faster but 2.0x MobileNetV2
    assert not missed[0]["met"] and dt.missed_targets(missed) == ["executorch edgevit_xxs"]


def test_quant_targets_judges_each_reduced_precision_cell():
    """benchmarks/quant_targets.py on a known matrix: the speed rule (XXS's gain >= 0.9 x MobileNetV2's, each
    over its own fp32 file), the accuracy rule (top-1 within 0.5 points of the fp32 file), a cell that failed to
    build is a miss, a cell the machine cannot make is not judged; a miss exits 1."""
    qt = _load("quant_targets")
    x, b = qt.MODEL, qt.BASELINE
    rows = []
    for rt, p, ms_x, ms_b, top1 in [("a", "fp32", 10, 5, 99.0), ("a", "int8", 8, 4.4, 98.6),  # 1.25 / 1.14: met
                                    ("a", "fp16", 9.9, 2.5, 99.0),  # 1.01 vs 2.0: speed miss
                                    # an int8 form: judged against the CNN's best int8 file (int8, 1.14), not
                                    # its own slower int8-conv (1.09): 1.43 / 1.14 = 1.26
                                    ("a", "int8-conv", 7, 4.6, 98.8),
                                    ("b", "fp32", 10, 5, 99.0), ("b", "int8", 5, 2.5, 98.0)]:  # accuracy miss
        rows += [{"runtime": rt, "precision": p, "model": x, "median_ms": ms_x, "sqnr_db": 30.0,
                  "top1_agreement": 99.0, "top1": top1},
                 {"runtime": rt, "precision": p, "model": b, "median_ms": ms_b, "sqnr_db": 30.0,
                  "top1_agreement": 99.0}]
    from edgevit.bench.matrix import _add_ratios
    _add_ratios(rows)
    skipped = [{"runtime": "a", "precision": "bf16", "why": "this CPU has no bf16 instructions"},
               {"runtime": "c", "precision": "int8", "model": b, "why": "the quantizer died"}]
    c32 = [dict(r, runtime="c") for r in rows[:2]]
    verdicts = {(v["runtime"], v["precision"]): v for v in qt.standing({"results": rows + c32, "skipped": skipped})}
    assert set(verdicts) == {("a", "int8"), ("a", "int8-conv"), ("a", "fp16"), ("b", "int8"), ("c", "int8")}
    form = verdicts[("a", "int8-conv")]
    assert form["mnv2_precision"] == "int8" and form["gain_ratio"] == pytest.approx((10 / 7) / (5 / 4.4))
    met = verdicts[("a", "int8")]
    assert met["met"] and met["gain_ratio"] == pytest.approx(1.25 / (5 / 4.4))
    assert met["top1_drop"] == pytest.approx(0.4)
    assert not verdicts[("a", "fp16")]["speed_met"] and verdicts[("a", "fp16")]["accuracy_met"]
    assert verdicts[("b", "int8")]["speed_met"] and not verdicts[("b", "int8")]["accuracy_met"]
    assert verdicts[("c", "int8")] == {"runtime": "c", "precision": "int8", "met": False, "why": "the quantizer died"}
    table = qt.format_standing(list(verdicts.values()))
    assert "| a | int8 | 1.25 | 1.14 | 1.10 | 99.00 -> 98.60 | 30.0 | met |" in table
    assert "| a | fp16 | 1.01 | 2.00 | 0.51 | 99.00 -> 99.00 | 30.0 | miss: speed |" in table
    assert "| a | int8-conv | 1.43 | 1.14 (int8) | 1.26 | 99.00 -> 98.80 | 30.0 | met |" in table
    assert "| c | int8 | – | – | – | – | – | miss: the quantizer died |" in table


def test_train_throughput_phases_forms_and_profile(tmp_path, monkeypatch):
    """Forward, backward and optimizer step timed apart per model x form; the GMAC/s from them; one step profiled by
    operator kind; a bf16 form on a CPU without bf16 instructions said, not timed."""
    tt = _load("train_throughput")
    out = tmp_path / "tt.json"
    monkeypatch.setattr(sys, "argv", ["x", "--models", "edgevit_xxs", "--forms", "eager", "channels_last", "--batch",
                                      "2", "--rounds", "1", "--warmup", "0", "--profile", "edgevit_xxs",
                                      "--json", str(out)])
    assert tt.main() == 0
    doc = json.loads(out.read_text())
    assert [(r["model"], r["form"]) for r in doc["steps"]] == [("edgevit_xxs", f) for f in ("eager", "channels_last")]
    for row in doc["steps"]:
        assert all(row[k] > 0 for k in tt.PHASES)
        assert row["step_ms"] == pytest.approx(sum(row[k] for k in tt.PHASES))  # (one round: its own sum)
        assert row["gmacs"] == pytest.approx(0.557, abs=0.01)  # the release XXS at 224, as fvcore counts it
        assert row["images_per_s"] == pytest.approx(2 / (row["step_ms"] / 1e3))
        assert row["fwd_bwd_gmac_per_s"] == pytest.approx(3 * 0.557 * 2 / ((row["forward_ms"] + row["backward_ms"])
                                                                           / 1e3), rel=0.02)
    (prof,) = doc["profiles"]
    assert sum(k["share"] for k in prof["kinds"].values()) == pytest.approx(1.0)
    assert {"matmul", "depthwise conv", "conv", "normalisation"} <= set(prof["kinds"])
    assert prof["gemms"] and all(g["gmac_per_s"] > 0 and g["alone_gmac_per_s"] > 0 for g in prof["gemms"])
    assert tt.gemm_shape("aten::addmm", [[144], [6272, 576], [576, 144]]) == (6272, 576, 144)
    assert tt.gemm_shape("aten::mm", [[6304, 192], [192, 768]]) == (6304, 192, 768)
    assert tt.gemm_shape("aten::mm", [[4, 3], [5, 6]]) is None and tt.gemm_shape("aten::gelu", [[4, 3]]) is None
    assert doc["pipeline"]["images_per_s"] > 0 and doc["pipeline"]["decode_ms"] > 0
    assert tt.op_kind("aten::convolution_backward", [[4, 144, 14, 14], [4, 144, 14, 14], [144, 1, 3, 3]]) == \
        "depthwise conv"
    assert tt.op_kind("aten::mkldnn_convolution", [[4, 3, 224, 224], [36, 3, 4, 4]]) == "conv"
    monkeypatch.setattr(tt, "cpu_flags", lambda: ["avx2", "fma"])
    assert "neither AVX512-BF16 nor AMX" in tt.form_lacks("bf16", __import__("torch").device("cpu"))
    assert tt.form_lacks("channels_last", __import__("torch").device("cpu")) is None


def test_dense_profile_prints_kinds_side_by_side(tmp_path, monkeypatch, capsys):
    out = tmp_path / "p.json"
    monkeypatch.setattr(sys, "argv", ["dense_profile.py", "segment", "lraspp", "lraspp_mobilenet_v3_large",
                                      "--runtime", "onnxruntime", "--img-size", "64", "--runs", "2",
                                      "--json", str(out)])
    assert _load("dense_profile").main() == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "| op kind | lraspp-XXS (fused body) | lraspp_mobilenet_v3_large (torchvision) |"
    docs = json.loads(out.read_text())
    assert [d["model"] for d in docs] == ["lraspp-XXS (fused body)", "lraspp_mobilenet_v3_large (torchvision)"]
    assert all(d["total_ms"] > 0 and d["ops"] > 10 for d in docs)
    assert table[-1].startswith("| total |")


def test_runtime_forms_times_each_form_and_reports_a_wrong_one(monkeypatch, capsys):
    """benchmarks/runtime_forms.py on ncnn: a form it computes right is timed beside the release graph (which
    does not convert: named) and MobileNetV2; the form it computes wrongly (ln="mean") is reported, not timed."""
    mod = _load("runtime_forms")
    monkeypatch.setattr(sys, "argv", ["runtime_forms.py", "ncnn", "--only", "merged-native-pool-deconv",
                                      "merged-mean-pool-deconv", "--runs", "2", "--img-size", "64", "--json"])
    assert mod.main() == 0
    doc = json.loads(capsys.readouterr().out)
    assert [r["form"] for r in doc["results"]] and {r["form"] for r in doc["results"]} == \
        {"merged-native-pool-deconv", "mobilenetv2_100"}
    assert all(r["median_ms"] > 0 for r in doc["results"])
    assert "Tensor.slice" in doc["not_timed"]["release"]
    assert "fails its rule (max |diff|" in doc["not_timed"]["merged-mean-pool-deconv"]  # the writer refused it


def test_app_inputs_times_each_input_form_of_one_model(monkeypatch, capsys):
    """benchmarks/app_inputs.py: the NCHW file, the app-ready NHWC float and uint8 files and the NHWC-only file of
    one model, each written and checked by the one writer, timed in the same rounds; ratios to the NCHW file."""
    monkeypatch.setattr(sys, "argv", ["app_inputs.py", "onnxruntime", "--models", "test_efficientnet", "--img-size",
                                      "32", "--runs", "2", "--json"])
    assert _load("app_inputs").main() == 0
    doc = json.loads(capsys.readouterr().out)
    rows = {r["input"]: r for r in doc["results"]}
    assert list(rows) == ["NCHW float32", "NHWC float32", "NHWC plain", "NHWC uint8"]
    assert rows["NCHW float32"]["ratio_to_nchw"] == 1.0 and all(r["median_ms"] > 0 for r in rows.values())
    assert all(r["transposes"] is None for r in rows.values())  # (ONNX Runtime reports no op counts)
    assert doc["meta"]["cpu_flags"] and doc["runtime"] == "onnxruntime"
