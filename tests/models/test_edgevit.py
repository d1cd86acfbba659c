"""Shapes, timm integration, Table-4 options and input validation of the EdgeViT family."""
import pytest
import timm
import torch

import edgevit
from edgevit.models import LOCAL_AGG, LOCAL_PROPS, SAMPLERS, VARIANTS
from edgevit.models.complexity import count_gmacs, count_params

CHANNELS = {"edgevit_xxs": [36, 72, 144, 288], "edgevit_xs": [48, 96, 240, 384], "edgevit_s": [48, 96, 240, 384]}
# Measured from the authors' release (params, fvcore GMACs at 224).
RELEASE = {"edgevit_xxs": (4.068, 0.557), "edgevit_xs": (6.770, 1.136), "edgevit_s": (13.108, 1.923)}


@pytest.mark.parametrize("variant", VARIANTS)
def test_release_params_and_gmacs(variant):
    model = timm.create_model(variant)
    params, gmacs = RELEASE[variant]
    assert count_params(model) == pytest.approx(params, abs=5e-4)
    assert count_gmacs(model, 224) == pytest.approx(gmacs, abs=5e-4)
    heads = [blk.global_attn.attn.num_heads for s in model.stages for blk in s.blocks[:1]]
    assert heads == ([1, 2, 4, 8] if variant == "edgevit_xxs" else [1, 2, 5, 8])


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("size,batch", [((224, 224), 1), ((256, 192), 3), ((160, 288), 1)])
def test_any_size_and_batch(variant, size, batch):
    model = timm.create_model(variant, num_classes=7).eval()
    x = torch.randn(batch, 3, *size)
    with torch.no_grad():
        feats = model.forward_features(x)
        out = model.forward_head(feats)
        inter = model.forward_intermediates(x, intermediates_only=True)
    assert out.shape == (batch, 7)
    assert feats.shape == (batch, CHANNELS[variant][-1], size[0] // 32, size[1] // 32)
    for i, f in enumerate(inter):
        assert f.shape == (batch, CHANNELS[variant][i], size[0] // 2 ** (i + 2), size[1] // 2 ** (i + 2))
    torch.testing.assert_close(model.forward_head(model.forward_features(x[:1])), out[:1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_features_only(variant):
    model = timm.create_model(variant, features_only=True, out_indices=(0, 1, 2, 3)).eval()
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    assert model.feature_info.channels() == CHANNELS[variant]
    feats = model(torch.randn(1, 3, 128, 96))
    expected = [(c, 128 // r, 96 // r) for c, r in zip(CHANNELS[variant], [4, 8, 16, 32])]
    assert [tuple(f.shape[1:]) for f in feats] == expected
    sub = timm.create_model(variant, features_only=True, out_indices=(1, 3))
    assert sub.feature_info.reduction() == [8, 32]


def test_timm_api():
    model = timm.create_model("edgevit_xxs", drop_path_rate=0.2, num_classes=3)
    rates = [getattr(blk.global_attn.drop_path, "drop_prob", 0.0) for s in model.stages for blk in s.blocks]
    assert rates == pytest.approx(torch.linspace(0, 0.2, 7).tolist())
    # both halves of one LGL block share its rate
    first = model.stages[1].blocks[0]
    assert first.local_agg.drop_path.drop_prob == first.global_attn.drop_path.drop_prob > 0
    model.reset_classifier(11)
    assert model.get_classifier().out_features == 11
    model.reset_classifier(0)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 288)
    model.set_grad_checkpointing(True)
    model.train()
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert model.pretrained_cfg["first_conv"] == "stages.0.downsample.proj"


def test_fused_and_explicit_attention_agree():
    model = timm.create_model("edgevit_xxs").eval()
    x = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        fused = model(x)
        for m in model.modules():
            if hasattr(m, "fused_attn"):
                m.fused_attn = False
        explicit = model(x)
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("local_agg", LOCAL_AGG)
@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("local_prop", LOCAL_PROPS)
def test_table4_options_train(local_agg, sampler, local_prop):
    model = timm.create_model("edgevit_xxs", local_agg=local_agg, sampler=sampler, local_prop=local_prop,
                              num_classes=4, embed_dims=(16, 32, 64, 128), head_dim=16, drop_path_rate=0.1)
    out = model(torch.randn(2, 3, 64, 96))
    assert out.shape == (2, 4)
    out.sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_table4_options_change_the_computation():
    x = torch.randn(1, 3, 64, 64)
    outs = {}
    for sampler in SAMPLERS:
        torch.manual_seed(0)
        m = timm.create_model("edgevit_xxs", sampler=sampler).eval()
        with torch.no_grad():
            outs[sampler] = m(x)
    for a in SAMPLERS:
        for b in SAMPLERS:
            if a < b:
                assert not torch.allclose(outs[a], outs[b]), (a, b)
    bilinear = timm.create_model("edgevit_xxs", local_prop="bilinear").stages[0].blocks[0].global_attn.attn
    assert isinstance(bilinear.local_prop, torch.nn.Identity)  # no parameters: nothing to learn
    assert not [k for k in bilinear.state_dict() if k.startswith("local_prop")]
    assert isinstance(timm.create_model("edgevit_xxs", local_agg="none").stages[0].blocks[0].local_agg,
                      torch.nn.Identity)
    k7 = timm.create_model("edgevit_xxs", local_kernel=7)
    assert k7.stages[0].blocks[0].local_agg.dw.kernel_size == (7, 7)


def test_sampler_semantics():
    from edgevit.models.edgevit import GlobalSparseAttn

    x = torch.arange(64.0).reshape(1, 1, 8, 8)
    pick = lambda s: GlobalSparseAttn(4, 1, sr_ratio=4, sampler=s).sample(x)[0, 0]  # noqa: E731
    assert pick("corner").tolist() == [[0, 4], [32, 36]]
    assert pick("center").tolist() == [[18, 22], [50, 54]]
    assert pick("max").tolist() == [[27, 31], [59, 63]]
    assert pick("avg").tolist() == [[13.5, 17.5], [45.5, 49.5]]


def test_depth_width_overrides_scale_gmacs():
    small = timm.create_model("edgevit_xxs", depths=(1, 1, 2, 1), embed_dims=(32, 64, 128, 256), head_dim=32)
    assert count_gmacs(small, 224) < 0.5 < count_gmacs(timm.create_model("edgevit_xxs"), 224)


@pytest.mark.parametrize("shape", [(1, 3, 224, 200), (1, 3, 100, 224), (1, 1, 224, 224), (3, 224, 224), (1, 3, 0, 0)])
def test_bad_input_sizes(shape):
    model = timm.create_model("edgevit_xxs")
    with pytest.raises(ValueError, match="multiples of 32|expected input"):
        model(torch.randn(*shape))


@pytest.mark.parametrize("kwargs,match", [
    (dict(sampler="middle"), "sampler"), (dict(local_prop="nearest"), "local_prop"),
    (dict(local_agg="dw"), "local_agg"), (dict(local_kernel=4), "local_kernel"),
    (dict(sr_ratios=(3, 2, 2, 1)), "sr_ratios"), (dict(embed_dims=(36, 72, 144, 290)), "head_dim"),
])
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        timm.create_model("edgevit_xxs", **kwargs)


def test_importing_registers_with_timm():
    assert set(VARIANTS) <= set(timm.list_models("edgevit_*"))
    assert edgevit.EdgeViT is type(timm.create_model("edgevit_xs"))
