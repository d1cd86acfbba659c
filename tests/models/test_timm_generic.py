"""The generic checks of timm's own `tests/test_models.py` that apply to a hierarchical model: TorchScript,
torch.fx tracing forward and backward, torchvision's FX feature extractor and timm's `feature_cls="fx"`.
(Run timm's file itself against edgevit_*: see docs/models.md.)"""
import pytest
import timm
import torch
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import edgevit  # noqa: F401  (registers edgevit_*)
from edgevit.errors import UserError

VARIANTS = ["edgevit_xxs", "edgevit_xs", "edgevit_s"]


@pytest.mark.parametrize("name", VARIANTS)
def test_torchscript_matches_eager(name):
    model = timm.create_model(name).eval()
    x = torch.randn(1, 3, 64, 96)
    scripted = torch.jit.script(model)
    torch.testing.assert_close(scripted(x), model(x), rtol=0, atol=1e-5)
    with pytest.raises(Exception, match="multiples of 32"):  # the input check survives scripting
        scripted(torch.randn(1, 3, 64, 100))


@pytest.mark.parametrize("name", VARIANTS)
def test_fx_trace_forward_and_backward(name):
    model = timm.create_model(name, drop_path_rate=0.0).train()
    gm = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 3, 64, 64)
    torch.manual_seed(0)
    ref = model(x)
    torch.manual_seed(0)
    out = gm(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    out.mean().backward()
    assert all(p.grad is not None for p in gm.parameters() if p.requires_grad)
    with pytest.raises(UserError, match="multiples of 32"):  # a leaf call in the graph, run on the real tensor
        gm(torch.randn(1, 3, 64, 100))


def test_torchvision_feature_extractor_and_timm_fx_features():
    model = timm.create_model("edgevit_xxs").eval()
    train_nodes, eval_nodes = get_graph_node_names(model)
    assert "check_input" in eval_nodes and any(n.startswith("stages.3.") for n in eval_nodes)
    fe = create_feature_extractor(model, {"stages.1": "c3", "stages.3": "c5"})
    x = torch.randn(1, 3, 128, 128)
    feats = fe(x)
    assert feats["c3"].shape == (1, 72, 16, 16) and feats["c5"].shape == (1, 288, 4, 4)
    torch.manual_seed(0)
    fx_feats = timm.create_model("edgevit_xxs", features_only=True, feature_cls="fx").eval()
    torch.manual_seed(0)  # the same initial weights in both wrappers
    getter = timm.create_model("edgevit_xxs", features_only=True).eval()
    for a, b in zip(fx_feats(x), getter(x)):
        torch.testing.assert_close(a, b)
    assert [f.shape[1] for f in fx_feats(x)] == [36, 72, 144, 288]
