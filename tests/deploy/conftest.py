import pytest
import timm
import torch
import torch.nn as nn

import edgevit  # noqa: F401  (registers the EdgeViTs)

# widths that are not multiples of 16 in 1, 2 and 3 heads (so ExecuTorch's channel padding is exercised,
# per head) and one that is (48: left as is)
TINY = dict(embed_dims=(12, 24, 36, 48), depths=(1, 1, 2, 1), head_dim=12, num_classes=7)


def randomize(model: nn.Module) -> nn.Module:
    """Random BN statistics and norm affines, so a wrong fold cannot hide behind identity defaults."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
            if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model.eval()


@pytest.fixture
def make_tiny():
    """make_tiny(**overrides) -> a small eval-mode EdgeViT with random norms (fast, 64x64 inputs)."""
    def make(**kw):
        torch.manual_seed(0)
        return randomize(timm.create_model("edgevit_xxs", **dict(TINY, **kw)))
    return make
