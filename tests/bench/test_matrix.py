"""The runtime x precision matrix: every cell a runtime can make, measured and checked; the others named."""
import json

import pytest
from PIL import Image

from edgevit.bench import matrix as mx
from edgevit.cli.main import main
from edgevit.deploy import runtimes

TINY = ["--img-size", "32", "--runs", "3", "--warmup", "1", "--no-progress"]


def test_plan_names_every_cell_that_cannot_be_made(monkeypatch):
    plan = mx.plan_cells(("all",), ("all",))
    assert [c["runtime"] for c in plan] == [r.name for r in runtimes.RUNTIMES.values() if r.format]
    for c in plan:  # every precision of every record, made or (only for want of CPU instructions) skipped
        rt = runtimes.get(c["runtime"])
        assert sorted(c["precisions"] + list(c["skipped"])) == sorted(rt.precisions)
        assert c["skipped"] == {p: rt.cpu_lacks(p) for p in rt.precisions if rt.cpu_lacks(p)}
    from edgevit.deploy.runtimes import openvino
    monkeypatch.setattr(openvino, "_core", lambda: type("C", (), {"get_property": lambda self, *a: ["FP32", "INT8"]})())
    plan = {c["runtime"]: c for c in mx.plan_cells(("openvino",), ("all",))}
    assert plan["openvino"]["precisions"] == ["fp32", "int8"]
    assert plan["openvino"]["skipped"] == {"bf16": "this CPU has no bf16 instructions (OpenVINO's capabilities: "
                                                   "FP32, INT8)"}
    monkeypatch.undo()
    plan = {c["runtime"]: c for c in mx.plan_cells(("onnxruntime", "mnn"), ("fp32", "bf16"))}
    assert plan["onnxruntime"]["precisions"] == ["fp32"] and "writes no bf16" in plan["onnxruntime"]["skipped"]["bf16"]
    # a runtime whose package is missing: every cell skipped, naming the package and its requirements file
    from edgevit.deploy.runtimes import base
    monkeypatch.setattr(base.importlib.util, "find_spec", lambda name: None if name == "MNN" else object())
    plan = {c["runtime"]: c for c in mx.plan_cells(("mnn",), ("fp32",))}
    assert plan["mnn"]["precisions"] == [] and "requirements-edge.txt" in plan["mnn"]["skipped"]["fp32"]
    with pytest.raises(ValueError, match="eager runs the PyTorch module itself"):
        mx.plan_cells(("eager",), ("fp32",))


def test_ratios_are_taken_within_a_cell_and_a_runtime():
    rows = [{"runtime": "r", "precision": p, "model": m, "median_ms": t}
            for p, m, t in [("fp32", "edgevit_xxs", 8.0), ("fp32", mx.BASELINE, 4.0), ("int8", "edgevit_xxs", 5.0),
                            ("int8", mx.BASELINE, 2.0)]]
    mx._add_ratios(rows)
    assert [r["ratio_to_baseline"] for r in rows] == [2.0, None, 2.5, None]
    assert [r["speedup_vs_fp32"] for r in rows] == [None, None, 1.6, 2.0]


def test_matrix_command_with_a_checkpoint_and_val(tmp_path, capsys, monkeypatch):
    """Two runtimes (the others are the same code path), fp32 and int8 and bf16: rows checked against PyTorch,
    the checkpoint's top-1 on VAL in each file, the missing cells named, JSON/CSV/plot written."""
    import timm
    import torch

    ck = tmp_path / "tiny.pth"
    kwargs = {"embed_dims": [12, 24, 36, 48], "depths": [1, 1, 2, 1], "head_dim": 12}
    torch.manual_seed(0)
    torch.save({"model": timm.create_model("edgevit_xxs", num_classes=3, **kwargs).state_dict(),
                "classes": ["c0", "c1", "c2"],
                "config": {"model": "edgevit_xxs", "model_kwargs": kwargs, "num_classes": 3, "img_size": 32,
                           "crop_pct": 1.0, "eval_interpolation": "bicubic"}}, ck)
    g = torch.Generator().manual_seed(0)
    for c in range(3):
        (tmp_path / "val" / f"c{c}").mkdir(parents=True)
        for i in range(3):
            Image.fromarray((torch.rand(32, 32, 3, generator=g) * 255).byte().numpy()).save(
                tmp_path / "val" / f"c{c}" / f"{i}.png")
    monkeypatch.setattr(mx, "plan_cells", lambda names, precisions, real=mx.plan_cells: real(
        ("onnxruntime", "openvino"), precisions))
    out = tmp_path / "m"
    assert main(["bench", "--runtime", "all", "--precision", "fp32", "int8", "bf16", "--checkpoint", str(ck),
                 "--data", str(tmp_path / "val"), "--calib", str(tmp_path / "val"), "--check-images", "4",
                 "--json", f"{out}.json", "--csv", f"{out}.csv", "--plot", f"{out}.png", *TINY]) == 0
    printed = capsys.readouterr().out
    doc = json.loads((tmp_path / "m.json").read_text())
    cells = {(r["runtime"], r["precision"], r["model"]): r for r in doc["results"]}
    bf16 = "BF16" in __import__("openvino").Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    want = {(rt, p, m) for rt, ps in (("onnxruntime", ["fp32", "int8"]),
                                      ("openvino", ["fp32", "int8"] + ["bf16"] * bf16))
            for p in ps for m in mx.MATRIX_MODELS}
    assert set(cells) == want
    for (rt, p, m), r in cells.items():
        assert r["median_ms"] > 0 and r["ci_lo_ms"] <= r["median_ms"] <= r["ci_hi_ms"] and r["bytes"] > 10_000
        # what a device lab reports beside it: a fresh process's load, first inference and memory
        assert r["status"] == "ok" and r["load_ms"] > 0 and r["first_inference_ms"] > 0
        assert r["peak_rss_mb"] > r["load_rss_mb"] >= 0 and r["runtime_memory_mb"] is None
        assert r["weights"] == ("checkpoint" if m == "edgevit_xxs" else "random")
        if p == "fp32":
            assert r["max_abs_diff"] <= 1e-3 and r["sqnr_db"] > 60 and r["top1_agreement"] == 100.0
        else:
            assert r["sqnr_db"] > 10 and r["speedup_vs_fp32"] > 0
        if m == "edgevit_xxs":
            assert 0 <= r["top1"] <= 100 and r["ratio_to_baseline"] > 0
        else:
            assert "top1" not in r and r["ratio_to_baseline"] is None
    # every fp32 file's top-1 is the checkpoint's own
    from edgevit.train.evaluate import evaluate_checkpoint
    ref = evaluate_checkpoint(tmp_path / "val", ck, workers=0, progress=False)["top1"]
    assert cells[("onnxruntime", "fp32", "edgevit_xxs")]["top1"] == cells[("openvino", "fp32", "edgevit_xxs")]["top1"] \
        == ref
    assert {(s["runtime"], s["precision"]) for s in doc["skipped"]} >= {("onnxruntime", "bf16")}
    assert "onnxruntime bf16: onnxruntime writes no bf16 files" in printed and "| openvino | int8 |" in printed
    assert doc["meta"]["cpu_flags"] == __import__("edgevit.bench.bench", fromlist=["cpu_flags"]).cpu_flags()
    assert (tmp_path / "m.csv").read_text().splitlines()[0].startswith("status,runtime,precision,model")
    assert "| ✅ | onnxruntime | fp32 | edgevit_xxs (fused) |" in printed
    assert (tmp_path / "m.png").read_bytes()[:4] == b"\x89PNG"
    # what the matrix does not take is refused before any work
    assert main(["bench", "--runtime", "all", "--plot", str(tmp_path / "p.pdf"), *TINY]) == 2
    assert "expected a .png or .svg" in capsys.readouterr().err
    assert main(["bench", "--runtime", "onnxruntime", "--data", str(tmp_path / "val"), *TINY]) == 2
    assert "--data: only used with --runtime all" in capsys.readouterr().err


def test_a_file_below_its_rule_is_a_failed_cell_never_timed(tmp_path, capsys, monkeypatch):
    """int8 calibrated on black images (every activation range collapsed): the files are made, refused by the
    int8 rule (logits SQNR 0.6 dB for the tiny XXS, 7.5 dB for MobileNetV2, against >= 10), and reported as ❌
    with that reason instead of a latency; the fp32 cells are timed."""
    g = __import__("torch").Generator().manual_seed(0)
    for split, pixels in (("black", lambda: __import__("numpy").zeros((32, 32, 3), "uint8")),
                          ("val", lambda: (__import__("torch").rand(32, 32, 3, generator=g) * 255).byte().numpy())):
        (tmp_path / split / "c").mkdir(parents=True)
        for i in range(8):
            Image.fromarray(pixels()).save(tmp_path / split / "c" / f"{i}.png")
    monkeypatch.setattr(mx, "plan_cells", lambda names, precisions, real=mx.plan_cells: real(
        ("onnxruntime",), precisions))
    assert main(["bench", "--runtime", "all", "--precision", "fp32", "int8", "--data", str(tmp_path / "val"),
                 "--calib", str(tmp_path / "black"), "--check-images", "8", "--json", *TINY]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(r["precision"], r["model"]) for r in doc["results"]] == [("fp32", m) for m in mx.MATRIX_MODELS]
    rejected = [s for s in doc["skipped"] if s.get("status") == "rejected"]
    assert [(s["precision"], s["model"]) for s in rejected] == [("int8", m) for m in mx.MATRIX_MODELS]
    assert all("fails its rule (logits SQNR" in s["why"] and "< 10 dB" in s["why"] for s in rejected)
    assert "❌" in mx.format_matrix(doc)


def test_a_top1_floor_fails_the_cells_under_it(tmp_path, capsys, monkeypatch):
    """--min-top1 (Ultralytics' metric floor): the EdgeViT file under it is ❌ with its top-1 and not timed; the
    baseline (random weights: no top-1) is timed; a floor without the top-1 it needs is refused before any work."""
    import timm
    import torch

    from edgevit.train.evaluate import evaluate_checkpoint

    kwargs = {"embed_dims": [12, 24, 36, 48], "depths": [1, 1, 2, 1], "head_dim": 12}
    torch.save({"model": timm.create_model("edgevit_xxs", num_classes=2, **kwargs).state_dict(), "classes": ["a", "b"],
                "config": {"model": "edgevit_xxs", "model_kwargs": kwargs, "num_classes": 2, "img_size": 32,
                           "crop_pct": 1.0, "eval_interpolation": "bicubic"}}, tmp_path / "ck.pth")
    g = torch.Generator().manual_seed(0)
    for c in "ab":
        (tmp_path / "val" / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray((torch.rand(32, 32, 3, generator=g) * 255).byte().numpy()).save(
                tmp_path / "val" / c / f"{i}.png")
    top1 = evaluate_checkpoint(tmp_path / "val", tmp_path / "ck.pth", workers=0, progress=False)["top1"]
    monkeypatch.setattr(mx, "plan_cells", lambda names, precisions, real=mx.plan_cells: real(
        ("onnxruntime",), precisions))
    args = ["bench", "--runtime", "all", "--precision", "fp32", "--checkpoint", str(tmp_path / "ck.pth"),
            "--data", str(tmp_path / "val"), "--check-images", "4", *TINY]
    assert main([*args, "--min-top1", f"{top1 + 1:g}", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in doc["results"]] == [mx.BASELINE]
    (failed,) = [s for s in doc["skipped"] if s["model"] == "edgevit_xxs"]
    assert failed["status"] == "rejected" and f"top-1 {top1:.2f}% on {tmp_path / 'val'} is below the floor" in \
        failed["why"]
    assert main([*args[:-len(TINY) - 4], "--min-top1", "50", *TINY]) == 2
    assert "--min-top1 50: expected a percentage in [0, 100], with --checkpoint and --data" in capsys.readouterr().err
