"""Weight arithmetic behind the fused EdgeViT: folding a norm into its neighbour, and zero-padding channels.

Both are exact rewrites (same outputs up to float rounding; folding runs in float64 so that it adds no error
of its own). No library does either for these modules: timm's `reparameterize_model` only calls each module's
own `fuse()`, and torch.ao's fusions cover conv+BN pairs, not BN/LayerNorm before a 1x1 conv or a channel
layout padded per attention head.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn


# ---- folding ------------------------------------------------------------------------------------
def bn_scale_shift(bn: nn.BatchNorm2d) -> Tuple[torch.Tensor, torch.Tensor]:
    """An eval-mode BatchNorm as y = s * x + t (float64)."""
    s = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    return s, bn.bias.double() - bn.running_mean.double() * s


def fold_input_affine(weight: torch.Tensor, bias: Optional[torch.Tensor], s: torch.Tensor,
                      t: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """W(s*x + t) + b for a linear/1x1-conv weight [O, I(,1,1)] -> (W', b')."""
    w = weight.double().reshape(weight.shape[0], -1)
    b = bias.double() if bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    if t is not None:
        b = b + w @ t.double()
    return (w * s.double()[None, :]).reshape(weight.shape), b


def conv1x1(weight: torch.Tensor, bias: torch.Tensor, dtype) -> nn.Conv2d:
    """A 1x1 conv with these weights ([O, I] or [O, I, 1, 1]) and bias, in `dtype`."""
    w = weight.reshape(weight.shape[0], -1, 1, 1)
    conv = nn.Conv2d(w.shape[1], w.shape[0], 1)
    conv.weight.data.copy_(w.to(dtype))
    conv.bias.data.copy_(bias.to(dtype))
    return conv


def merge_cpe(cpe: nn.Conv2d) -> nn.Conv2d:
    """x + dwconv(x) == dwconv'(x) with 1 added to the centre tap (kernel 3, padding 1, groups=C)."""
    k = cpe.kernel_size[0]
    conv = nn.Conv2d(cpe.in_channels, cpe.out_channels, k, padding=k // 2, groups=cpe.groups)
    w = cpe.weight.detach().double().clone()
    w[:, 0, k // 2, k // 2] += 1.0
    conv.weight.data.copy_(w.to(cpe.weight.dtype))
    conv.bias.data.copy_(cpe.bias.detach())
    return conv


def copy_conv(m: nn.Conv2d) -> nn.Conv2d:
    new = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
                    m.bias is not None)
    new.load_state_dict(m.state_dict())
    return new


# ---- channel padding ----------------------------------------------------------------------------
# XNNPACK's f32 GEMMs tile output channels by 16 (x86 AVX2/AVX-512): a stage of 36 or 72 channels runs slower in
# absolute time than one of 48 or 80 (docs/deploy.md, "Channel padding", with the command that measures it). So a
# backend's form may widen a stage with zero weights. Exactness: every padded channel is produced by a zero row of
# weights and a zero bias (so it is 0 wherever a residual or a norm's input carries it), every weight that reads a
# padded channel is 0, and the norms average over the real channels only. Heads stay heads: each head's channels
# are padded at its end, so q.k sums only add 0 * 0.
def padded_index(dim: int, heads: int, multiple: int) -> Tuple[int, torch.Tensor]:
    """(padded width, position of each real channel) for a stage of `dim` channels in `heads` heads."""
    head_dim = dim // heads
    padded_head = head_dim
    while (heads * padded_head) % multiple:
        padded_head += 1
    idx = torch.arange(dim)
    return heads * padded_head, (idx // head_dim) * padded_head + idx % head_dim


def expand_index(idx: torch.Tensor, group: int) -> torch.Tensor:
    """Channel c -> the `group` channels c*group ... c*group+group-1 (a space-to-depth or a channel multiplier)."""
    return (idx[:, None] * group + torch.arange(group)).reshape(-1)


def pad_conv(conv: nn.Module, in_idx: Optional[torch.Tensor], cin: int, out_idx: Optional[torch.Tensor],
             cout: int) -> nn.Module:
    """`conv` with its channels moved to positions in_idx/out_idx of a cin/cout-wide map (None: unmoved).

    Dense convs (groups 1), depthwise convs with a channel multiplier (groups == in_channels; output j of
    input channel c goes to out channel in_idx[c] * mult + j; `out_idx`/`cout` are then implied) and
    depthwise transposed convs."""
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
        out_idx = expand_index(in_idx, mult)
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
    return new.to(w.dtype)


def pad_depthwise(conv: nn.Module, idx: torch.Tensor, width: int) -> nn.Module:
    """A depthwise conv (or one with a channel multiplier, or a depthwise deconv) over a padded map."""
    return pad_conv(conv, idx, width, None, 0)
