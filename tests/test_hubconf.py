"""hubconf.py: torch.hub.load(DIR, "edgevit_xxs", source="local") and the other variants, as the authors' release."""
from pathlib import Path

import pytest
import torch

from edgevit.errors import UserError
from edgevit.models import VARIANTS, EdgeViT

REPO = str(Path(__file__).resolve().parents[1])


def test_hub_has_the_three_variants():
    """(torch.hub.list reads GitHub repositories only: the entry points are read from hubconf.py as torch.hub
    lists them, the public callables.)"""
    import importlib.util

    spec = importlib.util.spec_from_file_location("hubconf", Path(REPO) / "hubconf.py")
    hub = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hub)
    entries = [n for n in dir(hub) if callable(getattr(hub, n)) and not n.startswith("_")]
    assert sorted(entries) == sorted(VARIANTS) and set(hub.dependencies) >= {"torch", "timm"}
    for name in VARIANTS:
        assert torch.hub.load(REPO, name, source="local").embed_dims == EdgeViT(**_release(name)).embed_dims


def _release(name: str) -> dict:
    from edgevit.models import MODEL_ARGS
    return MODEL_ARGS[name]


def test_hub_loads_the_authors_weights_and_matches_their_outputs(reference_dir):
    from safetensors.torch import load_file

    model = torch.hub.load(REPO, "edgevit_xxs", source="local",
                           checkpoint=str(reference_dir / "edgevit_xxs_s0.official.safetensors"))
    io = load_file(str(reference_dir / "edgevit_xxs_224x224_b2_s0.io.safetensors"))
    assert isinstance(model, EdgeViT) and not model.training
    with torch.no_grad():
        assert (model(io["input"]) - io["logits"]).abs().max().item() <= 1e-4


def test_hub_model_options_and_refusals():
    m = torch.hub.load(REPO, "edgevit_s", source="local", num_classes=10)
    assert m.num_classes == 10 and m(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    with pytest.raises(UserError, match="no trained weights exist"):
        torch.hub.load(REPO, "edgevit_xs", source="local", pretrained=True)
    with pytest.raises(UserError, match=r"edgevit_xxs: .*unexpected keyword argument 'foo'"):
        torch.hub.load(REPO, "edgevit_xxs", source="local", foo=1)
    with pytest.raises(UserError, match="num_classes=x: expected an integer >= 0"):
        torch.hub.load(REPO, "edgevit_xxs", source="local", num_classes="x")
