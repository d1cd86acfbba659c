"""int8: post-training files for ExecuTorch and ONNX Runtime, quantization-aware fine-tuning, agreement."""
import math

import numpy as np
import pytest
import torch

from edgevit.deploy import fuse, runtimes
from edgevit.deploy import quantize as q
from edgevit.deploy.export import export_model, run_batch
from edgevit.deploy.runtimes import first_output
from edgevit.deploy.runtimes.executorch import convert_pt2e_model
from edgevit.errors import UserError

# Thresholds, and why: int8 activations carry ~8 bits (48 dB for one ideally scaled tensor); the noise of
# every quantized layer adds up, and on the digits XXS the files measure 32-34 dB (docs/deploy.md). 20 dB
# (noise amplitude 1/10 of the logits') leaves room for a tiny random model's worse-conditioned layers,
# while a broken flow (a scale off by a factor, a missing dequantize, float weights read as int8) lands
# far below 10 dB.
MIN_SQNR_DB = 20.0
# ai-edge-quantizer's static min/max recipe loses more in the weights of this random-norm model (13-15 dB, the same
# with int16 activations or only the convolutions quantized); on the digits XXS it keeps the fp32 top-1 (98.89%) at
# 18.1 dB, and on a random XXS at 224 it gives 26.7 dB (ExecuTorch 25.2): docs/deploy.md, "The runtime x precision
# matrix"
# MNN's EMA quantizer (per-tensor activations) gives this model 12.9 dB at 100% top-1 agreement; on the digits XXS
# it keeps the fp32 top-1 (98.89%) at 21.3 dB (docs/deploy.md)
MIN_SQNR_DB_OF = {"tflite": 12.0, "mnn": 11.0}
MIN_AGREEMENT = 85.0  # % top-1 on 24 inputs of a random 7-class model (logits close to ties are common)


def images(n=24, size=64, seed=0):
    """Inputs with image-like structure (smooth, in the normalised range), so calibration means something."""
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.interpolate(torch.randn(n, 3, size // 8, size // 8, generator=g), size=size,
                                        mode="bilinear", align_corners=False)
    return x * 1.5


def test_agreement_is_exact_for_the_same_logits_and_drops_with_noise():
    a = torch.randn(50, 10, generator=torch.Generator().manual_seed(0))
    assert q.agreement(a, a) == {"top1_agreement": 100.0, "sqnr_db": math.inf}
    noisy = a + 0.1 * torch.randn(50, 10, generator=torch.Generator().manual_seed(1))
    r = q.agreement(a, noisy)
    assert 19 < r["sqnr_db"] < 21  # noise at 1/10 of the signal's amplitude = 20 dB
    assert q.agreement(a, -a)["top1_agreement"] < 20
    overflowed = a.clone()
    overflowed[3, 2] = math.inf  # (an fp16 file whose logits passed 65504): no signal left, and no error
    assert q.agreement(a, overflowed)["sqnr_db"] == -math.inf
    assert q.agreement(a, torch.full_like(a, math.nan))["sqnr_db"] == -math.inf


# ExecuTorch's lowering passes cost ~0.1 s per graph node on the 2-core VM, and an int8 graph has ~3x the
# nodes of an fp32 one (quantize/dequantize pairs): the ExecuTorch tests use the smallest EdgeViT there is.
SMALLEST = dict(embed_dims=(16, 16, 16, 16), depths=(1, 1, 1, 1), head_dim=16, num_classes=7)


@pytest.mark.parametrize("fmt", [r.format for r in runtimes.RUNTIMES.values() if "int8" in r.writers])
def test_ptq_file_runs_in_its_runtime_and_agrees_with_the_float_model(fmt, make_tiny, tmp_path):
    kw = SMALLEST if fmt == "pte" else {}
    model = fuse(make_tiny(**kw), runtimes.by_format(fmt).name)
    calib = images(24)
    out = tmp_path / f"m{runtimes.by_format(fmt).suffix}"
    report = export_model(model, fmt, out, precision="int8", images=calib, calibrated="test")
    assert out.is_file() and report["bytes"] == runtimes.by_format(fmt).size(out)
    floor = MIN_SQNR_DB_OF.get(fmt, MIN_SQNR_DB)
    assert report["sqnr_db"] >= floor and report["top1_agreement"] >= MIN_AGREEMENT, report
    if fmt == "pte":  # the short-reduction convs (the depthwise ones among them) stay float, in the same graph
        assert report["delegate_partitions"] == 1 and report["non_delegated_ops"] == 0, report
        from edgevit.deploy.runtimes.executorch import PTQ_FLOAT_BELOW_K, ptq_float_convs, short_convs
        dw = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and m.groups == m.in_channels > 1]
        assert dw and set(dw) <= set(ptq_float_convs(model)) == set(short_convs(model, PTQ_FLOAT_BELOW_K))
        assert report["float_convs"] == len(ptq_float_convs(model)) < \
            sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
        import timm  # a CNN keeps the quantizer's default: every convolution int8
        assert ptq_float_convs(timm.create_model("mobilenetv2_100")) == []
    # independently: new inputs, the file loaded again, compared with the release model itself
    x = images(8, seed=5)
    got = run_batch(first_output(runtimes.by_format(fmt).load(out, 2)), x)
    with torch.no_grad():
        ref = make_tiny(**kw)(x)
    assert q.agreement(ref, got)["sqnr_db"] >= floor


def test_int8_weights_are_a_quarter_of_fp32(make_tiny, tmp_path):
    """The int8 ONNX file stores int8 weights (per-channel scales beside them), not fp32 ones."""

    model = fuse(make_tiny(embed_dims=(48, 96, 192, 384)), "onnxruntime")
    export_model(model, "onnx", tmp_path / "f.onnx", img_size=64)
    export_model(model, "onnx", tmp_path / "i.onnx", precision="int8", images=images(8))
    assert (tmp_path / "i.onnx").stat().st_size < 0.35 * (tmp_path / "f.onnx").stat().st_size


def test_ort_int8_can_leave_short_reduction_convs_float(tmp_path):
    """`float_below_k`: the convs whose reduction (in-channels per group x kernel area) is shorter stay float
    (no QLinear/QDQ weights), the others are quantized: a form benchmarks/quant_targets.py measures."""
    import onnx

    from edgevit.deploy.runtimes.onnxruntime import save_onnx, save_onnx_int8, short_convs

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), torch.nn.Conv2d(8, 8, 3, padding=1, groups=8),
                              torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.Conv2d(16, 4, 1)).eval()
    x = torch.randn(1, 3, 16, 16)
    save_onnx(net, x, tmp_path / "f.onnx")
    graph = onnx.load(str(tmp_path / "f.onnx")).graph
    convs = [n.name for n in graph.node if n.op_type == "Conv"]
    assert len(convs) == 4 and short_convs(graph, 10) == [convs[0], convs[1]]  # K = 3, 9 | 72, 16
    assert short_convs(graph, 17) == [convs[0], convs[1], convs[3]] and short_convs(graph, 1) == []
    save_onnx_int8(net, x, tmp_path / "q.onnx", torch.randn(4, 3, 16, 16), float_below_k=10)
    q8 = onnx.load(str(tmp_path / "q.onnx")).graph
    made_by = {o: n.op_type for n in q8.node for o in n.output}  # (QDQ: a quantized conv reads dequantized weights)
    assert [made_by.get(n.input[1]) == "DequantizeLinear" for n in q8.node if n.op_type == "Conv"] == \
        [False, False, True, True]


@pytest.mark.parametrize("activations", ["QUInt8", "QInt8"])
def test_ort_int8_gelu_as_a_table_computes_what_the_qdq_chain_does(tmp_path, activations):
    """`gelu_table`: each DequantizeLinear -> Gelu -> QuantizeLinear becomes Cast -> Gather over 256 codes, and
    ONNX Runtime's output is the QDQ file's to the bit (u8 and s8 activations: s8 codes index from the end)."""
    import onnx

    from edgevit.deploy.runtimes.onnxruntime import load, save_onnx_int8

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 1), torch.nn.GELU(), torch.nn.Conv2d(16, 8, 1),
                              torch.nn.GELU(), torch.nn.Conv2d(8, 4, 1)).eval()
    x, calib = torch.randn(1, 3, 16, 16), 3 * torch.randn(8, 3, 16, 16)
    for name, table in (("qdq.onnx", False), ("table.onnx", True)):
        save_onnx_int8(net, x, tmp_path / name, calib, gelu_table=table, activation_type=activations)
    kinds = [n.op_type for n in onnx.load(str(tmp_path / "table.onnx")).graph.node]
    assert "Gelu" not in kinds and kinds.count("Gather") == 2 and kinds.count("Cast") == 2
    assert [n.op_type for n in onnx.load(str(tmp_path / "qdq.onnx")).graph.node].count("Gelu") == 2
    probe = (3 * torch.randn(1, 3, 16, 16)).numpy()
    ref, got = load(tmp_path / "qdq.onnx", 1)(probe)[0], load(tmp_path / "table.onnx", 1)(probe)[0]
    assert np.abs(ref).max() > 0.1 and np.array_equal(ref, got)


def test_pt2e_int8_can_leave_short_reduction_convs_float():
    """ExecuTorch's form of the same: the XNNPACK quantizer skips the named short-reduction convs, so their
    weights are not quantized in the converted graph; the rest are."""
    from edgevit.deploy.runtimes.executorch import quantize_pt2e, short_convs

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), torch.nn.Conv2d(8, 8, 3, padding=1, groups=8),
                              torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.Conv2d(16, 4, 1)).eval()
    assert short_convs(net, 10) == ["0", "1"] and short_convs(net, 17) == ["0", "1", "3"]
    x = torch.randn(1, 3, 16, 16)

    def quantized_weights(gm):  # convolutions whose weight comes through a dequantize op
        convs = [n for n in gm.graph.nodes if n.target == torch.ops.aten.conv2d.default]
        return [w.op == "call_function" and "dequantize" in str(w.target) for w in (c.args[1] for c in convs)]
    assert quantized_weights(quantize_pt2e(net, x, torch.randn(4, 3, 16, 16))) == [True] * 4
    assert quantized_weights(quantize_pt2e(net, x, torch.randn(4, 3, 16, 16), float_below_k=10)) == \
        [False, False, True, True]


def test_calibration_reads_every_image_of_any_depth_with_the_eval_transform(tmp_path):
    from PIL import Image

    for i, sub in enumerate(["a", "b/c", "."]):
        d = tmp_path / sub
        d.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 30), (i * 80, 10, 200)).save(d / f"im{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    x = q.calibration_images(tmp_path, 10, (64, 96), crop_pct=1.0)
    assert x.shape == (3, 3, 64, 96)
    assert len(q.calibration_files(tmp_path, 2)) == 2  # a seeded sample when there are more


def test_calibration_folder_without_images_names_it(tmp_path):
    (tmp_path / "x.txt").write_text("no images here")
    with pytest.raises(UserError, match=str(tmp_path)):
        q.calibration_images(tmp_path, 4, 64)
    with pytest.raises(UserError, match="no-such"):
        q.calibration_images(tmp_path / "no-such", 4, 64)


def test_an_unreadable_calibration_image_is_named(tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match="broken.jpg"):
        q.calibration_images(tmp_path, 4, 64)


def test_qat_trains_then_converts_to_what_it_trained(make_tiny, tmp_path):
    """A few steps of QAT lower the loss; the converted int8 graph computes what the fake-quantized model
    computes (no recalibration: the scales it trained are the ones converted; the .pte of a QAT run is
    checked end to end in tests/train/test_quantized.py), and the state reloads exactly."""
    model = make_tiny()
    prepared = q.prepare_qat(model, 64, batch=8)
    x, y = images(16, seed=2), torch.arange(16) % 7
    opt = torch.optim.AdamW(prepared.parameters(), lr=2e-3)
    prepared.train()
    losses = []
    for _ in range(8):
        loss = torch.nn.functional.cross_entropy(prepared(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    prepared.eval()
    with torch.no_grad():
        before = prepared(x)
        torch.testing.assert_close(prepared(x * 3), prepared(x * 3))  # evaluating moves no scale
        assert torch.equal(prepared(x), before)
    converted = convert_pt2e_model(prepared)
    with torch.no_grad():
        r = q.agreement(before, converted(x))
    assert r["sqnr_db"] >= 30 and r["top1_agreement"] == 100.0, r
    ops = {str(n.target) for n in converted.graph.nodes if n.op == "call_function"}
    assert any("quantize_per_tensor" in o for o in ops) and any("dequantize_per_channel" in o for o in ops)
    with torch.no_grad():
        assert torch.equal(prepared(x), before)  # converting a copy left the QAT model as it was
    # a checkpoint round trip: the same graph prepared again takes the trained state exactly
    again = q.prepare_qat(make_tiny(), 64)
    again.load_state_dict(prepared.state_dict())
    again.eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x[:4]), prepared(x[:4]))


def test_int8_is_refused_for_formats_without_an_int8_flow(make_tiny, tmp_path):
    with pytest.raises(UserError, match="ptl writes no int8 files"):
        export_model(make_tiny(), "ptl", tmp_path / "m.ptl", precision="int8", images=images(2))
