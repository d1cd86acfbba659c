"""`edgevit.deploy.fuse`: the inference graph computes what the release graph (and the authors' code) does."""
import pytest
import timm
import torch
import torch.nn as nn
from safetensors.torch import load_file

import edgevit
from edgevit.deploy import BACKENDS, FusedEdgeViT, fuse, set_impl
from edgevit.deploy.fused import LN_IMPLS, PROP_IMPLS, SAMPLE_IMPLS, ChannelNorm
from edgevit.models import VARIANTS
from edgevit.models.complexity import count_gmacs

@pytest.mark.parametrize("variant", VARIANTS)
def test_fused_matches_authors_reference(variant, reference_dir):
    tag = variant.split("_")[1]
    model = timm.create_model(variant).eval()
    edgevit.load_checkpoint(model, reference_dir / f"edgevit_{tag}_s0.official.safetensors")
    io = load_file(str(reference_dir / f"edgevit_{tag}_224x224_b2_s0.io.safetensors"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused = fuse(model)
    assert isinstance(fused, FusedEdgeViT)
    # every exact alternative form: the default, the ExecuTorch one, and the remaining ones
    for ln, prop, sample in [BACKENDS["eager"], BACKENDS["executorch"]]:  # (other forms: tiny models below)
        set_impl(fused, ln, prop, sample)
        with torch.no_grad():
            stages = fused.stage_outputs(io["input"])
            logits = fused(io["input"])
        for i, out in enumerate(stages):
            assert out.shape == io[f"stage{i + 1}"].shape
            assert (out - io[f"stage{i + 1}"]).abs().max().item() <= 1e-4, (ln, prop, sample, f"stage{i + 1}")
        assert (logits - io["logits"]).abs().max().item() <= 1e-4, (ln, prop, sample)
    # the release model is untouched (it still trains and loads checkpoints)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # the fused graph really is cheaper: no BatchNorm left, fewer norm layers and parameters
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert not any(isinstance(m, nn.LayerNorm) for m in fused.modules())
    if variant == "edgevit_xxs":  # (fvcore tracing is slow: once is enough)
        assert count_gmacs(fused, 224) < count_gmacs(model, 224)


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
        fused = fuse(model)
        for impls in [BACKENDS["eager"], BACKENDS["executorch"], ("native", "shuffle", "pool")]:
            set_impl(fused, *impls)
            for a, b in zip(fused.stage_outputs(x), ref_stages):
                assert (a - b).abs().max().item() <= 1e-4, impls
            out = fused(x)
            assert out.shape == (2, 7)
            assert (out - ref).abs().max().item() <= 1e-4, impls


def test_fuse_without_head_keeps_final_norm(make_tiny):
    model = make_tiny(num_classes=0)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        out = fuse(model)(x)
    assert out.shape == ref.shape == (1, 64)
    assert (out - ref).abs().max().item() <= 1e-4


def test_channel_norm_forms_equal_layernorm():
    x = torch.randn(2, 12, 5, 7) * 3 + 1
    w, b = torch.rand(12) + 0.5, torch.randn(12)
    ref = nn.functional.layer_norm(x.permute(0, 2, 3, 1), (12,), w, b, 1e-6).permute(0, 3, 1, 2)
    for impl in LN_IMPLS:
        out = ChannelNorm(12, 1e-6, w, b, impl=impl)(x)
        assert (out - ref).abs().max().item() <= 1e-5, impl


def test_fuse_bad_input(make_tiny):
    with pytest.raises(ValueError, match="EdgeViT"):
        fuse(nn.Linear(2, 2))
    fused = fuse(make_tiny())
    with pytest.raises(ValueError, match="multiples of 32"):
        fused.check_input(torch.randn(1, 3, 64, 40))
    with pytest.raises(ValueError, match="backend"):
        fuse(fused, "tflite")
    for kw in (dict(ln="x"), dict(prop="x"), dict(sample="x")):
        with pytest.raises(ValueError, match="not one of"):
            set_impl(fused, **kw)
    assert set(PROP_IMPLS) == {"deconv", "shuffle"} and set(SAMPLE_IMPLS) == {"slice", "pool"}


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
        assert (model.fuse()(x) - model(x)).abs().max().item() <= 1e-4
