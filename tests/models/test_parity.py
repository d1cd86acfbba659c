"""Our EdgeViTs equal the authors' released code, stage by stage (../shared/reference)."""
import pytest
import timm
import torch
from safetensors.torch import load_file

import edgevit
from edgevit.models import VARIANTS


@pytest.mark.parametrize("variant", VARIANTS)
def test_parity_with_authors_release(variant, reference_dir):
    tag = variant.split("_")[1]
    model = timm.create_model(variant).eval()
    edgevit.load_checkpoint(model, reference_dir / f"edgevit_{tag}_s0.official.safetensors")
    io = load_file(str(reference_dir / f"edgevit_{tag}_224x224_b2_s0.io.safetensors"))
    with torch.no_grad():
        final, stages = model.forward_intermediates(io["input"])
        logits = model.forward_head(final)
    for i, out in enumerate(stages):
        ref = io[f"stage{i + 1}"]
        assert out.shape == ref.shape
        assert (out - ref).abs().max().item() <= 1e-4, f"stage{i + 1}"
    assert (logits - io["logits"]).abs().max().item() <= 1e-4
    assert logits.argmax(1).tolist() == io["logits"].argmax(1).tolist()
