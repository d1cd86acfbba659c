"""`edgevit.deploy.fuse`: the inference graph computes what the release graph (and the authors' code) does,
as the same model class with timm's API."""
import pytest
import timm
import torch
import torch.nn as nn

from edgevit.deploy import Forms, forms_for, fuse, is_fused, set_forms
from edgevit.deploy.forms import forms_of
from edgevit.errors import UserError
from edgevit.models import VARIANTS, EdgeViT
from edgevit.models.complexity import count_gmacs
from edgevit.models.fused import FORM_CHOICES, ChannelNorm


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-4) -> bool:
    return a.shape == b.shape and (a - b).abs().max().item() <= tol


@pytest.mark.parametrize("variant", VARIANTS)
def test_fused_matches_authors_reference(variant, reference_case):
    model, io = reference_case(variant)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # every backend's exact forms: eager (mean norm, deconv), ONNX Runtime (native norm, pooled sampler,
    # one qkv conv), ExecuTorch (channels padded to 16, conv norm, pixel-shuffle LocalProp, space-to-depth embedding)
    for backend in ("eager", "onnxruntime", "executorch", "litert"):
        fused = fuse(model, backend)
        assert type(fused) is EdgeViT and is_fused(fused) and forms_of(fused) == forms_for(backend)
        with torch.no_grad():
            final, stages = fused.forward_intermediates(io["input"])
            logits = fused(io["input"])
            assert torch.equal(fused.forward_head(fused.forward_features(io["input"])), logits)
            assert torch.equal(final, fused.forward_features(io["input"]))
        # 1e-4, plus 1e-5 of the reference's own magnitude: fp32 rounding of a reordered sum grows with the values
        # (XS/S stage-3 outputs reach |x| ~ 10, where ExecuTorch's padded, conv-norm form differs by 1.03e-4 on
        # one thread on some CPUs: 1e-5 relative, rounding, not a wrong fold)
        for i, out in enumerate(stages):
            ref = io[f"stage{i + 1}"]
            assert out.shape == ref.shape
            assert (out - ref).abs().max().item() <= 1e-4 + 1e-5 * ref.abs().max().item(), (backend, f"stage{i + 1}")
        assert (logits - io["logits"]).abs().max().item() <= 1e-4, backend
    # the release model is untouched (it still trains and loads checkpoints)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # the fused graph really is cheaper: no BatchNorm on its path, no LayerNorm at all
    assert not any(isinstance(m, nn.BatchNorm2d) for n, m in fused.named_modules() if "final_norm" not in n)
    assert not any(isinstance(m, nn.LayerNorm) for m in fused.modules())
    if variant == "edgevit_xxs":  # (fvcore tracing is slow: once is enough)
        # (the unpadded form; ExecuTorch's padding adds 9% multiply-adds that XNNPACK runs faster)
        assert count_gmacs(fuse(model), 224) < count_gmacs(model, 224) < count_gmacs(fuse(model, "executorch"), 224)


TABLE4 = [dict(local_agg="conv"), dict(local_agg="lsa"), dict(local_agg="none"),
          dict(sampler="corner"), dict(sampler="center"), dict(sampler="avg"), dict(sampler="max"),
          dict(local_prop="deconv"), dict(local_prop="bilinear"), dict(local_prop="none"),
          dict(local_kernel=3), dict(local_kernel=7), dict(qkv_bias=False)]


@pytest.mark.parametrize("option", TABLE4, ids=lambda d: ",".join(f"{k}={v}" for k, v in d.items()))
def test_fused_matches_every_table4_option(option, make_tiny):
    model = make_tiny(**option)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ref_final, ref_stages = model.forward_intermediates(x)
        ref = model.forward_head(ref_final)
        forms = [forms_for(b) for b in ("eager", "onnxruntime", "executorch", "litert")] + [  # + no backend's:
            Forms(ln="native", prop="shuffle", sample="pool", embed="s2d", qkv="merged"),
            forms_for("executorch").replace(prop="deconv", sample="slice", embed="conv", qkv="merged"),
            forms_for("executorch").replace(prop="d2s"), forms_for("litert").replace(prop="shuffle")]
        for f in forms:
            if option.get("local_agg") == "lsa" and f.pad > 1:  # (the tiny widths need padding: refused, named)
                with pytest.raises(UserError, match="LSA"):
                    fuse(model, f)
                continue
            fused = fuse(model, f)
            for a, b in zip(fused.forward_intermediates(x, intermediates_only=True), ref_stages):
                assert _close(a, b), f
            out = fused(x)
            assert out.shape == (2, 7)
            assert _close(out, ref), f


@pytest.mark.parametrize("backend", ["eager", "executorch"])
def test_fuse_without_head_keeps_final_norm(make_tiny, backend):
    model = make_tiny(num_classes=0, embed_dims=(12, 24, 36, 60))  # (60: the last stage padded too)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        fused = fuse(model, backend)
        out = fused(x)
        # norm=True: the final BN on the last feature map, as the release model applies it
        ref_norm = model.forward_intermediates(x, norm=True, intermediates_only=True)[-1]
        got_norm = fused.forward_intermediates(x, norm=True, intermediates_only=True)[-1]
        assert _close(fused.forward_head(fused.forward_features(x), pre_logits=True),
                      model.forward_head(model.forward_features(x), pre_logits=True))
    assert out.shape == ref.shape == (1, 60)  # the padding channels are dropped before the final norm
    assert _close(out, ref) and _close(got_norm, ref_norm)


def test_pad_channels_widens_stages_per_head(make_tiny):
    """ExecuTorch's form pads each stage to a multiple of 16 (XNNPACK's GEMM tile), each head at its end."""
    model = make_tiny()
    fused = fuse(model, "executorch")
    assert forms_of(fused).pad == 16
    # 12 = 1 head of 12 -> 16; 24 = 2 x 12 -> 2 x 16; 36 = 3 x 12 -> 3 x 16; 48 stays
    assert [s.downsample.proj.out_channels for s in fused.stages] == [16, 32, 48, 48]
    convs = [m for m in fused.stages.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert all(c.out_channels % 16 == 0 for c in convs)  # (MLP hidden widths 4 x C are already)
    assert all(c.in_channels % 16 == 0 for c in convs if c is not fused.stages[0].downsample.proj)  # (but RGB)
    assert fused.stages[1].real_channels.tolist() == list(range(12)) + list(range(16, 28))
    assert fused.stages[3].real_channels is None  # (48 needs no padding)
    gb = fused.stages[2].blocks[0].global_attn
    assert gb.num_heads == 3 and gb.qkv.q.out_channels == 48
    # the padded rows of q/k/v are zero: q.k only ever adds 0 * 0
    pad_rows = torch.ones(48, dtype=torch.bool)
    pad_rows[fused.stages[2].real_channels] = False
    for conv in (gb.qkv.q, gb.qkv.k, gb.qkv.v):
        assert conv.weight[pad_rows].abs().max() == 0 and conv.bias[pad_rows].abs().max() == 0
    with pytest.raises(UserError, match="padded model"):
        set_forms(fused, forms_of(fused).replace(ln="mean"))
    with pytest.raises(UserError, match="already padded"):
        fuse(fused, "eager")
    # the LSA ablation (timm's token attention) has no padded form: refused, by name
    with pytest.raises(UserError, match="LSA ablation"):
        fuse(make_tiny(local_agg="lsa"), "executorch")
    # ... unless its widths need no padding (Table 4's LSA row: 32/64/128/288 channels, heads of 32)
    lsa = timm.create_model("edgevit_xxs", local_agg="lsa", embed_dims=(32, 64, 128, 288), head_dim=32).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert _close(fuse(lsa, "executorch")(x), lsa(x))


def test_channel_norm_forms_equal_layernorm():
    x = torch.randn(2, 12, 5, 7) * 3 + 1
    w, b = torch.rand(12) + 0.5, torch.randn(12)
    ref = nn.functional.layer_norm(x.permute(0, 2, 3, 1), (12,), w, b, 1e-6).permute(0, 3, 1, 2)
    for impl in FORM_CHOICES["ln"]:
        out = ChannelNorm(12, 1e-6, w, b, impl=impl)(x)
        assert (out - ref).abs().max().item() <= 1e-5, impl


def test_fuse_bad_input(make_tiny):
    with pytest.raises(UserError, match="EdgeViT"):
        fuse(nn.Linear(2, 2))
    fused = fuse(make_tiny())
    with pytest.raises(UserError, match="multiples of 32"):
        fused.check_input(torch.randn(1, 3, 64, 40))
    with pytest.raises(UserError, match="runtime 'tflite' is not one of eager, executorch"):
        fuse(fused, "tflite")
    for kw in (dict(ln="x"), dict(prop="x"), dict(sample="x"), dict(embed="x"), dict(qkv="x"), dict(pad=0)):
        with pytest.raises(UserError, match="not one of|expected an integer"):
            Forms(**kw)


def test_module_fuse_methods_timm_style(make_tiny):
    """Each release module's `fuse()` returns an inference module with the same outputs."""
    model = make_tiny()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        stage = model.stages[0]
        pe = stage.downsample
        feat = pe(x)
        assert (pe.fuse()(x) - feat).abs().max().item() <= 1e-5
        blk = stage.blocks[0]
        la = blk.local_agg(feat)
        assert (blk.local_agg.fuse()(feat) - la).abs().max().item() <= 1e-4
        assert (blk.global_attn.fuse()(la) - blk.global_attn(la)).abs().max().item() <= 1e-4
        assert (blk.fuse()(feat) - blk(feat)).abs().max().item() <= 1e-4
        assert (fuse(model)(x) - model(x)).abs().max().item() <= 1e-4  # the one entry point for a whole model


def test_timm_reparameterize_model_is_fuse(make_tiny):
    """timm.utils.reparameterize_model (which calls `fuse()` on every child that has it) gives the same kind of
    model as `fuse()`: an EdgeViT with every part in its inference form, the same outputs, the original
    untouched; `fuse()` of it switches its forms in place."""
    from timm.utils import reparameterize_model

    from edgevit.models.edgevit import EdgeViTHead, LGLBlock, PatchEmbed
    from edgevit.models.fused import FusedHead, FusedLGLBlock, FusedPatchEmbed

    model = make_tiny()
    rep = reparameterize_model(model)
    kinds = {type(m) for m in rep.modules()}
    assert type(rep) is EdgeViT and is_fused(rep) and not is_fused(model)
    assert {FusedPatchEmbed, FusedLGLBlock, FusedHead} <= kinds and not kinds & {PatchEmbed, LGLBlock, EdgeViTHead}
    assert {type(m) for m in model.modules()} >= {PatchEmbed, LGLBlock, EdgeViTHead}
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ref = model(x)
        assert _close(rep(x), ref)
        assert _close(fuse(model)(x), rep(x), 0.0)  # the same computation as fuse()'s eager form
        assert fuse(rep, "onnxruntime") is rep and _close(rep(x), ref)


@pytest.mark.parametrize("backend", ["eager", "executorch"])
def test_fused_body_in_features_only_and_dense_models(make_tiny, backend):
    """A fused body gives the same feature maps through timm's features_only wrapper and inside the dense
    models (torchvision's FPN reads `forward_intermediates`)."""
    from edgevit.dense.models import create_segmenter

    torch.manual_seed(0)
    feats = timm.create_model("edgevit_xxs", features_only=True, out_indices=(1, 2, 3), embed_dims=(12, 24, 36, 48),
                              depths=(1, 1, 2, 1), head_dim=12).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ref = feats(x)
        fused = fuse(feats, backend)
        got = fused(x)
        assert fused.feature_info.channels() == [24, 36, 48] and is_fused(fused) and not is_fused(feats)
        assert len(got) == 3 and all(_close(a, b) for a, b in zip(got, ref))
        seg = create_segmenter(5, "edgevit_xxs", fpn_channels=32).eval()
        fused_seg = fuse(seg, backend)
        assert type(fused_seg) is type(seg) and is_fused(fused_seg.backbone.body)
        assert _close(fused_seg(x), seg(x))


def test_fused_model_keeps_only_the_form_it_runs(make_tiny):
    """Each fused module holds the one form it runs (no q/k/v beside the stacked qkv, no deconv beside its
    pixel-shuffle form, no k x k conv beside its space-to-depth 1x1), so a parameter count is a plain sum;
    switching forms rewrites the weights and keeps the outputs."""
    from edgevit.models.complexity import count_params
    from edgevit.models.fused import FusedPatchEmbed, LocalProp, QKVProjection

    model = make_tiny()
    x = torch.randn(1, 3, 64, 64)
    release = count_params(model)
    ort = fuse(model, "onnxruntime")
    qkvs = [m for m in ort.modules() if isinstance(m, QKVProjection)]
    assert qkvs and all(hasattr(m, "qkv") and not hasattr(m, "q") for m in qkvs)
    assert count_params(ort) < release  # BNs and LayerNorm affines folded away, nothing kept twice
    with torch.no_grad():
        ref = model(x)
        for impls in (dict(qkv="split", prop="shuffle", embed="s2d"), dict(qkv="merged", prop="deconv", embed="conv")):
            f = fuse(model, Forms(**impls))
            pes = [m for m in f.modules() if isinstance(m, FusedPatchEmbed)]
            props = [m for m in f.modules() if isinstance(m, LocalProp)]
            assert pes and props and all(m.impl == impls["embed"] for m in pes)
            assert all(hasattr(m, "shuffle") != hasattr(m, "deconv") for m in props)
            assert _close(f(x), ref), impls
            before = count_params(f)
            set_forms(f, Forms())  # and back: the same weights, counted once
            assert count_params(f) == pytest.approx(count_params(fuse(model)))
            assert before > 0 and _close(f(x), ref)


def test_fused_head_api_and_pruning(make_tiny):
    """The fused head answers timm's head API: global_pool, reset_classifier (a new classifier on the BN's output),
    prune_intermediate_layers with prune_norm; and it keeps no unused weights (the BN as scale/shift buffers
    outside the state dict)."""
    model = make_tiny()
    fused = fuse(model)
    x = torch.randn(1, 3, 64, 64)
    assert fused.global_pool == "avg" and not any("head.norm" in k for k in fused.state_dict())
    with torch.no_grad():
        feats = fused.forward_features(x)
        pooled = fused.forward_head(feats, pre_logits=True)
        assert _close(pooled, model.forward_head(model.forward_features(x), pre_logits=True))
        fused.reset_classifier(3)
        torch.manual_seed(0)
        w = fused.head.fc.weight
        assert _close(fused(x), pooled @ w.T + fused.head.fc.bias)  # the new classifier reads the BN's output
    pruned = fuse(make_tiny())
    pruned.prune_intermediate_layers([2], prune_norm=True)
    m = torch.randn(1, 36, 2, 2)
    assert len(pruned.stages) == 3 and torch.equal(pruned.forward_head(m), m)  # no norm, no pool, no classifier
    with pytest.raises(UserError, match="prune the norm of the release model"):
        fuse(make_tiny()).head.drop_norm()


def test_lsa_refusal_leaves_the_model_as_it_was(make_tiny):
    fused = fuse(make_tiny(local_agg="lsa"))
    before = {k: v.clone() for k, v in fused.state_dict().items()}
    with pytest.raises(UserError, match="LSA ablation"):
        set_forms(fused, forms_for("executorch"))
    after = fused.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
