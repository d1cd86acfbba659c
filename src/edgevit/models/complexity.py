"""Parameter and multiply-add counts, the way the paper (and the authors' code) report them."""
from __future__ import annotations

import logging
import warnings

import torch
import torch.nn as nn


def count_params(model: nn.Module) -> float:
    """Millions of parameters (a fused EdgeViT keeps only the form it runs, so this is what a forward pass
    and an exported graph use)."""
    return sum(p.numel() for p in model.parameters()) / 1e6


def count_gmacs(model: nn.Module, img_size: int | tuple[int, int] = 224, in_chans: int = 3) -> float:
    """Billions of multiply-adds for one image, counted by fvcore (one per MAC: the papers' "FLOPs").

    fvcore is what the EdgeViT authors (and DeiT/PVT) used, so the numbers compare directly with the
    paper's Table 1 (XXS 0.557, XS 1.136, S 1.923 with the release configs)."""
    with warnings.catch_warnings():  # fvcore's import calls the deprecated torch.jit.script
        warnings.simplefilter("ignore", FutureWarning)
        from fvcore.nn import FlopCountAnalysis

    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    was_training = model.training
    # fvcore cannot see inside F.scaled_dot_product_attention: count timm attention modules on their
    # explicit q@k / attn@v path instead (same maths), then restore.
    fused = [m for m in model.modules() if getattr(m, "fused_attn", False) is True]
    for m in fused:
        m.fused_attn = False
    model.eval()
    try:
        x = torch.zeros(1, in_chans, h, w, device=next(model.parameters()).device)
        analysis = FlopCountAnalysis(model, x)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        logging.getLogger("fvcore").setLevel(logging.ERROR)
        with torch.no_grad():
            return analysis.total() / 1e9
    finally:
        model.train(was_training)
        for m in fused:
            m.fused_attn = True
