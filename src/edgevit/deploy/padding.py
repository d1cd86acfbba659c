"""Channel padding of a fused EdgeViT to a backend's GEMM tile (exact: the same outputs)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn

from ..errors import UserError
from .fused import (ChannelNorm, FusedEdgeViT, FusedGlobalBlock, FusedLocalAgg, FusedLocalAggLSA, FusedPatchEmbed,
                    set_impl)

__all__ = ["pad_channels"]


# ---- channel padding to the backend's SIMD width -----------------------------------------------
# XNNPACK's f32 GEMMs on x86 (AVX2/FMA3) tile the output channels by 16: a 1x1 conv with 36 or 40 output
# channels runs at 40 GMAC/s, one with 48 at 85-90 GMAC/s, i.e. 36 -> 48 channels is *faster in absolute
# time* (measured on the 2-core VM with ExecuTorch's XNNPACK profiler; see docs/deploy.md). XXS's 36/72-
# channel stages hit exactly that, so for such backends the stages are widened to a multiple of the tile
# with zero weights, which no library does for us. Exactness: every padded channel is produced by a zero
# row of weights and a zero bias (so it is 0 wherever a residual or a norm's input carries it), every
# weight that reads a padded channel is 0, and the norms average over the real channels only (their
# `conv` form, whose averaging weights are 0 on padding). Heads stay heads: each head's channels are
# padded at its end, so q.k sums only add 0 * 0.
def _padded_index(dim: int, heads: int, multiple: int) -> Tuple[int, torch.Tensor]:
    """(padded width, position of each real channel) for a stage of `dim` channels in `heads` heads."""
    head_dim = dim // heads
    padded_head = head_dim
    while (heads * padded_head) % multiple:
        padded_head += 1
    idx = torch.arange(dim)
    return heads * padded_head, (idx // head_dim) * padded_head + idx % head_dim


def _pad_conv(conv: nn.Module, in_idx: Optional[torch.Tensor], cin: int, out_idx: Optional[torch.Tensor],
              cout: int) -> nn.Module:
    """`conv` with its channels moved to positions in_idx/out_idx of a cin/cout-wide map (None: unmoved).

    Dense convs (groups 1), depthwise convs with a channel multiplier (groups == in_channels; output j of
    input channel c goes to out channel in_idx[c] * mult + j) and depthwise transposed convs."""
    w, b = conv.weight.detach(), conv.bias.detach() if conv.bias is not None else None
    transposed = isinstance(conv, nn.ConvTranspose2d)
    if conv.groups == 1 and not transposed:
        in_idx = torch.arange(conv.in_channels) if in_idx is None else in_idx
        out_idx = torch.arange(conv.out_channels) if out_idx is None else out_idx
        new_w = w.new_zeros(cout, cin, *w.shape[2:])
        new_w[out_idx[:, None], in_idx[None, :]] = w
        groups = 1
    elif conv.groups == conv.in_channels and in_idx is not None:
        mult = w.shape[1] if transposed else conv.out_channels // conv.groups  # (transposed: [in, out/g, ..])
        out_idx = (in_idx[:, None] * mult + torch.arange(mult)).reshape(-1)
        new_w = w.new_zeros(cin * mult, *w.shape[1:])
        new_w[out_idx] = w
        groups, cout = cin, cin * mult
    else:
        raise ValueError(f"cannot pad the channels of {conv}")
    if transposed:
        new = nn.ConvTranspose2d(cin, cout, conv.kernel_size, conv.stride, conv.padding, conv.output_padding,
                                 groups, b is not None, conv.dilation)
    else:
        new = nn.Conv2d(cin, cout, conv.kernel_size, conv.stride, conv.padding, conv.dilation, groups,
                        b is not None)
    new.weight.data.copy_(new_w)
    if b is not None:
        new.bias.data.copy_(b.new_zeros(cout).index_copy_(0, out_idx, b))
    return new


def _pad_norm(norm: ChannelNorm, idx: torch.Tensor, width: int) -> None:
    norm.real_dim, norm.dim = norm.dim, width
    norm.avg = norm.avg.new_zeros(1, width, 1, 1).index_fill_(1, idx, 1.0 / norm.real_dim)
    if norm.weight is not None:  # padded outputs: 0 * anything + 0
        norm.weight = nn.Parameter(norm.weight.detach().new_zeros(width).index_copy_(0, idx, norm.weight.detach()))
        norm.bias = nn.Parameter(norm.bias.detach().new_zeros(width).index_copy_(0, idx, norm.bias.detach()))


@torch.no_grad()
def pad_channels(model: FusedEdgeViT, multiple: int) -> FusedEdgeViT:
    """Widen every stage of a fused EdgeViT to a multiple of `multiple` channels, in place; same outputs.

    The LayerNorms switch to their `conv` form (the only one that averages over real channels only)."""
    if model.pad_multiple != 1:
        raise UserError(f"this model is already padded to a multiple of {model.pad_multiple}; fuse the "
                         "release model again for another backend")
    if multiple == 1:
        return model
    if any(isinstance(m, FusedLocalAggLSA) for m in model.modules()):
        return model  # the LSA ablation runs timm's token-layout attention, which has no padded form
    # pad the plain forms (k x k patch conv, q/k/v, deconv LocalProp), then rewrite them as they were
    forms = {}
    for m in model.modules():
        if isinstance(m, FusedPatchEmbed):
            forms.setdefault("embed", m.impl)
        elif isinstance(m, FusedGlobalBlock):
            forms.setdefault("qkv", m.qkv_impl)
            forms.setdefault("prop", m.prop_impl)
    set_impl(model, embed="conv", qkv="split", prop="deconv")
    prev = None
    for i, stage in enumerate(model.stages):
        (heads,) = {m.num_heads for m in stage.modules() if isinstance(m, FusedGlobalBlock)}  # one per stage
        width, idx = _padded_index(model.embed_dims[i], heads, multiple)
        model.register_buffer(f"real_channels_{i}", idx, persistent=False)
        pe = stage[0]
        pe.proj = _pad_conv(pe.proj, *(prev or (None, pe.proj.in_channels)), idx, width)
        _pad_norm(pe.norm, idx, width)
        for blk in stage[1:]:
            la, gb = blk.local_agg, blk.global_attn
            if isinstance(la, FusedLocalAgg):
                la.cpe, la.dw = _pad_conv(la.cpe, idx, width, None, 0), _pad_conv(la.dw, idx, width, None, 0)
                la.pw1 = _pad_conv(la.pw1, idx, width, idx, width)
                la.pw2 = _pad_conv(la.pw2, idx, width, idx, width)
                la.fc1 = _pad_conv(la.fc1, idx, width, None, la.fc1.out_channels)
                la.fc2 = _pad_conv(la.fc2, None, la.fc2.in_channels, idx, width)
            gb.cpe = _pad_conv(gb.cpe, idx, width, None, 0)
            gb.head_dim = width // gb.num_heads
            for name in ("q", "k", "v", "proj"):
                setattr(gb, name, _pad_conv(getattr(gb, name), idx, width, idx, width))
            if hasattr(gb, "local_prop"):
                gb.local_prop = _pad_conv(gb.local_prop, idx, width, None, 0)
            for name in ("norm1", "kv_norm", "prop_norm", "norm2"):
                if isinstance(getattr(gb, name, None), ChannelNorm):
                    _pad_norm(getattr(gb, name), idx, width)
            gb.fc1 = _pad_conv(gb.fc1, idx, width, None, gb.fc1.out_channels)
            gb.fc2 = _pad_conv(gb.fc2, None, gb.fc2.in_channels, idx, width)
        prev = (idx, width)
    if isinstance(model.head, nn.Linear) and model.pool:
        w = model.head.weight.detach()
        head = nn.Linear(prev[1], w.shape[0])
        head.weight.data.copy_(w.new_zeros(w.shape[0], prev[1]).index_copy_(1, prev[0], w))
        head.bias.data.copy_(model.head.bias.detach())
        model.head = head
    model.pad_multiple = multiple
    return set_impl(model, ln="conv", **forms)
