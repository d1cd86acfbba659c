"""Our EdgeViTs equal the authors' released code, stage by stage (../shared/reference)."""
import pytest
import torch

from edgevit.models import VARIANTS


@pytest.mark.parametrize("variant", VARIANTS)
def test_parity_with_authors_release(variant, reference_case):
    model, io = reference_case(variant)
    with torch.no_grad():
        final, stages = model.forward_intermediates(io["input"])
        logits = model.forward_head(final)
    for i, out in enumerate(stages):
        ref = io[f"stage{i + 1}"]
        assert out.shape == ref.shape
        assert (out - ref).abs().max().item() <= 1e-4, f"stage{i + 1}"
    assert (logits - io["logits"]).abs().max().item() <= 1e-4
    assert logits.argmax(1).tolist() == io["logits"].argmax(1).tolist()
