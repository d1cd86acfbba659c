"""A whole EdgeViT (or a model holding EdgeViTs) in its inference form: `fuse_model` (each module's `fuse()`, through
timm's `reparameterize_model`), the forms it runs in (`set_forms`, `forms_of`), channel padding, and whether a
model is fused. The fused modules themselves are `edgevit.models.fused`."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
from timm.utils.model import reparameterize_model

from ..errors import UserError
from ..models.edgevit import EdgeViT, EdgeViTHead, LGLBlock, PatchEmbed
from ..models.folding import padded_index
from ..models.fused import Forms, FusedLocalAggLSA

_UNFUSED = (PatchEmbed, LGLBlock, EdgeViTHead)


def holds_edgevit(model: nn.Module) -> bool:
    """`model` is an EdgeViT or holds one (a detector, a segmenter, timm's `features_only` wrapper)."""
    return any(isinstance(m, EdgeViT) for m in model.modules())


def is_fused(model: nn.Module) -> bool:
    """Every EdgeViT inside `model` is in its inference form (and there is at least one)."""
    edgevits = [m for m in model.modules() if isinstance(m, EdgeViT)]
    return bool(edgevits) and not any(isinstance(m, _UNFUSED) for e in edgevits for m in e.modules())


def forms_of(model: EdgeViT) -> Forms:
    """The forms a fused EdgeViT runs in."""
    return getattr(model, "deploy_forms", Forms())


@torch.no_grad()
def pad_channels(model: EdgeViT, multiple: int) -> None:
    """Widen every stage of a fused EdgeViT to a multiple of `multiple` channels, in place; the same outputs
    (`forward_intermediates` and `forward_features` return the real channels: `EdgeViTStage.features`)."""
    plan = []
    for i, stage in enumerate(model.stages):
        (heads,) = {blk.global_attn.num_heads for blk in stage.blocks}  # (one per stage)
        plan.append(padded_index(model.embed_dims[i], heads, multiple))
        if plan[-1][0] != model.embed_dims[i]:  # refused before anything is padded (no half-padded model)
            for blk in stage.blocks:
                if isinstance(blk.local_agg, FusedLocalAggLSA):
                    blk.local_agg.pad(plan[-1][1], plan[-1][0])
    prev: Tuple[Optional[torch.Tensor], int] = (None, model.in_chans)
    for i, stage in enumerate(model.stages):
        dim = model.embed_dims[i]
        width, idx = plan[i]
        if width != dim or prev[0] is not None:
            stage.downsample.pad(*prev, idx, width)
        if width != dim:
            for blk in stage.blocks:
                blk.pad(idx, width)
            stage.real_channels = idx
        prev = (idx, width) if width != dim else (None, dim)


@torch.no_grad()
def set_forms(model: nn.Module, forms: Forms) -> nn.Module:
    """Switch every fused EdgeViT in `model` to `forms`, in place (same outputs). Padding is added once: a model
    padded to one multiple is not re-padded to another (fuse the release model again)."""
    for edgevit in [m for m in model.modules() if isinstance(m, EdgeViT)]:
        current = forms_of(edgevit)
        if forms.pad != current.pad:
            if current.pad != 1:
                raise UserError(f"this model is already padded to a multiple of {current.pad}; fuse the release "
                                "model again for another runtime")
            pad_channels(edgevit, forms.pad)
        for m in list(edgevit.modules()):
            if hasattr(m, "set_form"):
                m.set_form(forms)
        edgevit.deploy_forms = forms
    return model


@torch.no_grad()
def fuse_model(model: nn.Module, forms: Forms = Forms()) -> nn.Module:
    """The inference copy of `model` in `forms` (`model` is left untouched): an EdgeViT, or any module holding
    EdgeViTs (a detector or segmenter, timm's `features_only` wrapper), each with every part fused. A model
    already fused is switched to `forms` in place."""
    if not holds_edgevit(model):
        raise UserError(f"fuse() takes an EdgeViT or a model holding one, got {type(model).__name__}")
    if not is_fused(model):
        model = reparameterize_model(model)  # a deep copy with each part's `fuse()` (timm's, as FastViT's)
    return set_forms(model, forms).eval()
