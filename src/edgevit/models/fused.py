"""The inference form of an EdgeViT's modules: same outputs, fewer and cheaper ops, one layout (NCHW) throughout.

Each module of `edgevit.models.edgevit` returns its form below from `fuse()` (timm's repvit.py / fastvit.py
way); `edgevit.deploy.fuse_model(model, forms)` (and timm's `reparameterize_model`) returns the
*same* `EdgeViT` class with every patch embedding, LGL block and the head replaced by the modules below (FastViT's
way), so the fused model keeps timm's API: `forward_features`, `forward_head`, `forward_intermediates` (the same
stage outputs), `feature_info`, and drops into the dense models and timm's `features_only` wrapper.

What is folded (all exact up to float rounding; checked against the authors' outputs in tests/deploy):

* BatchNorm into its neighbour: LocalAgg's norm1/norm2 sit *before* a 1x1 conv (pw1 / mlp.fc1), the final BN
  sits before the average pool and the classifier: y = W(s*x + t) + b = (W*s) x + (W t + b).
* Each CPE residual x + dwconv3x3(x) into the depthwise kernel (+1 at its centre tap).
* Every LayerNorm that feeds a linear layer loses its affine to that layer (q/k/v, proj, mlp.fc1); the
  normalisation runs over the channels of the NCHW map, so the release graph's token-layout round trips go.
* qkv becomes 1x1 convs with the softmax scale in q, and the attention two explicit 3-D bmm's (every backend
  lowers them; no 4-D matmul expand copies).

Each part has exact alternative forms (`Forms`), and each runtime's record (`edgevit.deploy.runtimes`) names
the ones it runs fastest, chosen by interleaved measurements (docs/deploy.md, benchmarks/op_profile.py):

* `ln`     LayerNorm over channels: "mean" (reduce over C), "conv" (the channel mean as a 1x1 conv with weights
           1/C: XNNPACK's mean reduces H, W only, so this keeps the network in one partition), "native"
           (permute + layer_norm: ONNX Runtime's fused LayerNormalization kernel).
* `embed`  patch embedding: the k x k stride-k "conv", or "s2d": space-to-depth + a 1x1 conv (the same sums;
           XNNPACK runs the 1x1 conv as a GEMM, faster than its strided indirect GEMM).
* `qkv`    "split" (three 1x1 convs) or "merged" (one conv, then split: fewer ops where each op costs
           overhead; XNNPACK does not delegate the split).
* `prop`   LocalProp: the release's depthwise ConvTranspose2d ("deconv"), or its exact pixel-shuffle form (a
           per-channel 1x1 conv to C*r^2 channels + depth-to-space) as torch's pixel_shuffle ("shuffle") or as
           one channels-last transpose ("d2s": NHWC runtimes, where pixel_shuffle's NCHW reshapes cost layout
           changes).
* `sample` the corner sampler: a strided "slice", or the release's 1x1 average "pool" with stride r (XNNPACK
           slices with stride 1 only; ONNX Runtime runs the pool in its blocked layout).
* `pad`    widen every stage to a multiple of `pad` channels with zero weights (XNNPACK's GEMM tile; needs
           ln="conv", the one form that averages over the real channels only). Each module pads itself.

These classes are inference-only (no training, no checkpoint loading: the release-layout EdgeViT does that).
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UserError
from .folding import (
    bn_scale_shift,
    conv1x1,
    copy_conv,
    expand_index,
    fold_input_affine,
    merge_cpe,
    pad_conv,
    pad_depthwise,
)

FORM_CHOICES = {"ln": ("mean", "conv", "native"), "embed": ("conv", "s2d"), "qkv": ("split", "merged"),
                "prop": ("deconv", "shuffle", "d2s"), "sample": ("slice", "pool")}


@dataclasses.dataclass(frozen=True)
class Forms:
    """The exact alternative forms of a fused EdgeViT's parts (module docstring); the defaults are eager
    PyTorch's."""

    ln: str = "mean"
    embed: str = "conv"
    qkv: str = "split"
    prop: str = "deconv"
    sample: str = "slice"
    pad: int = 1

    def __post_init__(self):
        for name, choices in FORM_CHOICES.items():
            if getattr(self, name) not in choices:
                raise UserError(f"{name}={getattr(self, name)!r} is not one of {choices}")
        if isinstance(self.pad, bool) or not isinstance(self.pad, int) or self.pad < 1:
            raise UserError(f"pad={self.pad!r}: expected an integer >= 1")
        if self.pad > 1 and self.ln != "conv":
            raise UserError(f"ln={self.ln!r} cannot skip padding channels; a padded model (pad > 1) needs ln='conv'")

    def replace(self, **changes) -> "Forms":
        return dataclasses.replace(self, **changes)


# ---- normalisation --------------------------------------------------------------------------------
class ChannelNorm(nn.Module):
    """LayerNorm over the channels of an NCHW map; affine optional (None when folded downstream)."""

    def __init__(self, dim: int, eps: float, weight: Optional[torch.Tensor] = None,
                 bias: Optional[torch.Tensor] = None, impl: str = "mean"):
        super().__init__()
        self.dim, self.eps, self.impl = dim, eps, impl
        self.real_dim = dim  # < dim once padded: the channels the statistics run over
        self.register_buffer("avg", torch.full((1, dim, 1, 1), 1.0 / dim), persistent=False)
        if weight is not None:
            self.weight = nn.Parameter(weight.detach().clone())
            self.bias = nn.Parameter(bias.detach().clone())
        else:
            self.weight = self.bias = None

    def set_form(self, forms: Forms) -> None:
        if forms.ln != "conv" and self.real_dim != self.dim:
            raise UserError(f"ln={forms.ln!r} cannot skip padding channels; a padded model needs ln='conv'")
        self.impl = forms.ln

    def pad(self, idx: torch.Tensor, width: int) -> None:
        """Statistics over the real channels `idx` of a `width`-wide map (its `conv` form); padded outputs 0."""
        self.real_dim, self.dim, self.impl = self.dim, width, "conv"
        self.avg = self.avg.new_zeros(1, width, 1, 1).index_fill_(1, idx, 1.0 / self.real_dim)
        if self.weight is not None:
            self.weight = nn.Parameter(self.weight.detach().new_zeros(width).index_copy_(0, idx, self.weight.detach()))
            self.bias = nn.Parameter(self.bias.detach().new_zeros(width).index_copy_(0, idx, self.bias.detach()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.impl == "native":
            x = F.layer_norm(x.permute(0, 2, 3, 1), (self.dim,), self.weight, self.bias, self.eps)
            return x.permute(0, 3, 1, 2)
        if self.impl == "conv":  # channel mean as a GEMM: XNNPACK runs it inside the same partition
            d = x - F.conv2d(x, self.avg)
            y = d * torch.rsqrt(F.conv2d(d * d, self.avg) + self.eps)
        else:
            d = x - x.mean(1, keepdim=True)
            y = d * torch.rsqrt((d * d).mean(1, keepdim=True) + self.eps)
        if self.weight is not None:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return y

    def extra_repr(self) -> str:
        pad = f" (real {self.real_dim})" if self.real_dim != self.dim else ""
        return f"{self.dim}{pad}, eps={self.eps}, impl={self.impl}, affine={self.weight is not None}"


class ChannelFFN(nn.Module):
    """x + fc2(act(fc1(norm(x)))) with 1x1 convs (Eq. 1b, 1d); the norm's affine (or LocalAgg's BN) is in fc1."""

    def __init__(self, norm: nn.Module, fc1: nn.Conv2d, act: nn.Module, fc2: nn.Conv2d):
        super().__init__()
        self.norm, self.fc1, self.act, self.fc2 = norm, fc1, act, fc2

    def pad(self, idx: torch.Tensor, width: int) -> None:
        if isinstance(self.norm, ChannelNorm):
            self.norm.pad(idx, width)
        self.fc1 = pad_conv(self.fc1, idx, width, None, self.fc1.out_channels)
        self.fc2 = pad_conv(self.fc2, None, self.fc2.in_channels, idx, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.act(self.fc1(self.norm(x))))


# ---- patch embedding and local aggregation -----------------------------------------------------------
class FusedPatchEmbed(nn.Module):
    """Strided k x k conv (k == stride) + LayerNorm over channels; `embed="s2d"` runs the conv as
    space-to-depth + a 1x1 conv (the same sums). The module keeps the one conv its form runs."""

    def __init__(self, pe: nn.Module):
        super().__init__()
        self.k = pe.proj.stride[0]
        self.proj = copy_conv(pe.proj)
        self.norm = ChannelNorm(pe.norm.normalized_shape[0], pe.norm.eps, pe.norm.weight, pe.norm.bias)
        self.impl = "conv"

    def set_form(self, forms: Forms) -> None:
        """Rewrite `proj` into the other form: conv weight [O, C, k, k] <-> 1x1 [O, C*k*k, 1, 1] (channel order
        (c, i, j), as forward's space-to-depth lays them out)."""
        if forms.embed == self.impl:
            return
        w, b, k = self.proj.weight.detach(), self.proj.bias.detach(), self.k
        if forms.embed == "s2d":
            self.proj = conv1x1(w.reshape(w.shape[0], -1), b, w.dtype)
        else:
            conv = nn.Conv2d(w.shape[1] // (k * k), w.shape[0], k, stride=k).to(w.dtype)
            conv.weight.data.copy_(w.reshape(conv.weight.shape))
            conv.bias.data.copy_(b)
            self.proj = conv
        self.impl = forms.embed

    def pad(self, in_idx: Optional[torch.Tensor], in_width: int, idx: torch.Tensor, width: int) -> None:
        """Read a padded input (`in_idx` of `in_width`; None: the unpadded image/map) and write a padded map."""
        group = self.k * self.k if self.impl == "s2d" else 1  # each input channel is k*k inputs of the 1x1 form
        cin = self.proj.in_channels // group
        in_idx = torch.arange(cin) if in_idx is None else in_idx
        self.proj = pad_conv(self.proj, expand_index(in_idx, group), in_width * group, idx, width)
        self.norm.pad(idx, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.impl == "s2d":
            k = self.k
            B, C, H, W = x.shape
            x = x.reshape(B, C, H // k, k, W // k, k).permute(0, 1, 3, 5, 2, 4)
            x = x.reshape(B, C * k * k, H // k, W // k)
        return self.norm(self.proj(x))


class FusedLocalAgg(nn.Module):
    """LocalAgg (Eq. 1a, 1b) with both BNs folded into the 1x1 convs after them and the CPE merged."""

    def __init__(self, la: nn.Module):
        super().__init__()
        self.cpe = merge_cpe(la.cpe)
        dtype = la.pw1.weight.dtype
        s, t = bn_scale_shift(la.norm1)
        self.pw1 = conv1x1(*fold_input_affine(la.pw1.weight, la.pw1.bias, s, t), dtype)
        self.dw = copy_conv(la.dw)
        self.pw2 = copy_conv(la.pw2)
        s, t = bn_scale_shift(la.norm2)
        self.ffn = ChannelFFN(nn.Identity(), conv1x1(*fold_input_affine(la.mlp.fc1.weight, la.mlp.fc1.bias, s, t),
                                                     dtype), la.mlp.act, copy_conv(la.mlp.fc2))

    def pad(self, idx: torch.Tensor, width: int) -> None:
        self.cpe, self.dw = pad_depthwise(self.cpe, idx, width), pad_depthwise(self.dw, idx, width)
        self.pw1 = pad_conv(self.pw1, idx, width, idx, width)
        self.pw2 = pad_conv(self.pw2, idx, width, idx, width)
        self.ffn.pad(idx, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cpe(x)
        x = x + self.pw2(self.dw(self.pw1(x)))  # (1a)
        return self.ffn(x)  # (1b)


class FusedLocalAggLSA(nn.Module):
    """The LSA ablation: only its CPE is merged (Twins' attention has nothing to fold); tokens as released."""

    def __init__(self, la: nn.Module):
        super().__init__()
        self.cpe = merge_cpe(la.cpe)
        self.norm1, self.attn, self.norm2, self.mlp = (copy.deepcopy(m) for m in (la.norm1, la.attn, la.norm2, la.mlp))
        # the explicit softmax(q k^T) v form: the same sums, and the ONNX exporter lowers only 4-D
        # scaled_dot_product_attention (timm's windowed attention is 5-D)
        self.attn.fused_attn = False

    def pad(self, idx: torch.Tensor, width: int) -> None:
        raise UserError(f"the LSA ablation (local_agg='lsa') has no channel-padded form (timm's token-layout "
                        f"attention normalises over every channel): this runtime's form widens a stage of "
                        f"{len(idx)} channels to {width}; give the LSA model stage and head widths that need no "
                        "padding (Table 4's LSA row has them), or export it for another runtime")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cpe(x)
        B, C, H, W = x.shape
        t = x.flatten(2).transpose(1, 2)
        t = t + self.attn(self.norm1(t), (H, W))
        t = t + self.mlp(self.norm2(t))
        return t.transpose(1, 2).reshape(B, C, H, W)


# ---- global sparse attention (Eq. 1c) ----------------------------------------------------------------
class DelegateSampler(nn.Module):
    """One delegate token per r x r window: a corner/centre token (a strided slice, or the release's 1x1
    average pool with stride r: `sample="pool"`), or the window's average or maximum."""

    def __init__(self, kind: str, r: int):
        super().__init__()
        self.kind, self.r, self.impl = kind, r, "slice"

    def set_form(self, forms: Forms) -> None:
        self.impl = forms.sample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.r
        if self.kind in ("corner", "center"):
            o = 0 if self.kind == "corner" else r // 2
            if self.impl == "pool":  # a 1x1 pool with stride r picks the same tokens
                return F.avg_pool2d(x[:, :, o:, o:] if o else x, 1, r)
            return x[:, :, o::r, o::r]
        if self.kind == "avg":
            return F.avg_pool2d(x, r, r)
        return F.max_pool2d(x, r, r)

    def extra_repr(self) -> str:
        return f"{self.kind}, r={self.r}, impl={self.impl}"


class QKVProjection(nn.Module):
    """q, k, v of the normalised delegates as 1x1 convs (the norm's affine and the softmax scale folded in):
    three convs (`qkv="split"`) or one with their weights stacked, split after ("merged"). The module keeps the
    form it runs only."""

    def __init__(self, q: nn.Conv2d, k: nn.Conv2d, v: nn.Conv2d):
        super().__init__()
        self.q, self.k, self.v = q, k, v
        self.impl = "split"

    def set_form(self, forms: Forms) -> None:
        if forms.qkv == self.impl:
            return
        if forms.qkv == "merged":
            convs = (self.q, self.k, self.v)
            self.qkv = conv1x1(torch.cat([c.weight.detach() for c in convs]),
                               torch.cat([c.bias.detach() for c in convs]), self.q.weight.dtype)
            del self.q, self.k, self.v
        else:
            w, b = self.qkv.weight.detach().chunk(3), self.qkv.bias.detach().chunk(3)
            self.q, self.k, self.v = (conv1x1(wi.flatten(1), bi, wi.dtype) for wi, bi in zip(w, b))
            del self.qkv
        self.impl = forms.qkv

    def pad(self, idx: torch.Tensor, width: int) -> None:
        if self.impl == "merged":  # q's, k's and v's rows each at their own third of the padded output
            out = torch.cat([idx, idx + width, idx + 2 * width])
            self.qkv = pad_conv(self.qkv, idx, width, out, 3 * width)
        else:
            self.q, self.k, self.v = (pad_conv(c, idx, width, idx, width) for c in (self.q, self.k, self.v))

    def forward(self, s: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.impl == "merged":
            q, k, v = self.qkv(s).chunk(3, dim=1)
            return q, k, v
        return self.q(s), self.k(s), self.v(s)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """softmax(q^T k) v per head: q [B, C, h, w], k/v [B, C, h', w'] -> [B, C, h, w]; heads are groups of
    channels, the scale is in q."""
    B, C, h, w = q.shape
    n = k.shape[2] * k.shape[3]
    q = q.reshape(B * heads, C // heads, h * w)
    k = k.reshape(B * heads, C // heads, n)
    v = v.reshape(B * heads, C // heads, n)
    attn = torch.bmm(q.transpose(1, 2), k).softmax(dim=-1)  # [B*heads, hw, n]
    return torch.bmm(v, attn.transpose(1, 2)).reshape(B, C, h, w)


class LocalProp(nn.Module):
    """LocalProp (the release's depthwise ConvTranspose2d(k=r, s=r)) then the release's LayerNorm.

    `prop="shuffle"`/`"d2s"`: the same map as a per-channel 1x1 conv to C*r*r channels then depth-to-space,
    by torch's pixel_shuffle or by channels-last reshapes around one transpose. Only the conv it runs is kept."""

    def __init__(self, deconv: nn.ConvTranspose2d, r: int, norm: ChannelNorm):
        super().__init__()
        self.r, self.impl = r, "deconv"
        self.deconv = copy.deepcopy(deconv)
        self.norm = norm

    def set_form(self, forms: Forms) -> None:
        r, impl = self.r, forms.prop
        if impl != "deconv" and self.impl == "deconv":
            lp = self.deconv
            C = lp.in_channels
            self.shuffle = nn.Conv2d(C, C * r * r, 1, groups=C).to(lp.weight.dtype)
            self.shuffle.weight.data.copy_(lp.weight.detach().reshape(C * r * r, 1, 1, 1))
            self.shuffle.bias.data.copy_(lp.bias.detach().repeat_interleave(r * r))
            del self.deconv
        elif impl == "deconv" and self.impl != "deconv":
            ps = self.shuffle
            C = ps.in_channels
            self.deconv = nn.ConvTranspose2d(C, C, r, stride=r, groups=C).to(ps.weight.dtype)
            self.deconv.weight.data.copy_(ps.weight.detach().reshape(C, 1, r, r))
            self.deconv.bias.data.copy_(ps.bias.detach().reshape(C, r * r)[:, 0])
            del self.shuffle
        self.impl = impl

    def pad(self, idx: torch.Tensor, width: int) -> None:
        name = "deconv" if self.impl == "deconv" else "shuffle"
        setattr(self, name, pad_depthwise(getattr(self, name), idx, width))
        self.norm.pad(idx, width)

    def depth_to_space(self, a: torch.Tensor) -> torch.Tensor:
        """[B, C*r*r, h, w] (channel c*r*r + i*r + j) -> [B, C, h*r, w*r], as channels-last reshapes around one
        transpose: B, h, w, C, i, j -> B, h, i, w, j, C."""
        B, _, h, w = a.shape
        r, C = self.r, a.shape[1] // (self.r * self.r)
        t = a.permute(0, 2, 3, 1).reshape(B, h, w, C, r, r).permute(0, 1, 4, 2, 5, 3)
        return t.reshape(B, h * r, w * r, C).permute(0, 3, 1, 2)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        if self.impl == "shuffle":
            a = F.pixel_shuffle(self.shuffle(a), self.r)
        elif self.impl == "d2s":
            a = self.depth_to_space(self.shuffle(a))
        else:
            a = self.deconv(a)
        return self.norm(a)


class BilinearProp(nn.Module):
    """Table 4's parameter-free LocalProp: bilinear upsampling by r, then the release's LayerNorm."""

    def __init__(self, r: int, norm: ChannelNorm):
        super().__init__()
        self.r, self.norm = r, norm

    def pad(self, idx: torch.Tensor, width: int) -> None:
        self.norm.pad(idx, width)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        size = (a.shape[2] * self.r, a.shape[3] * self.r)
        return self.norm(F.interpolate(a, size=size, mode="bilinear", align_corners=False))


class FusedGlobalBlock(nn.Module):
    """The global half of an LGL block on NCHW maps: CPE, attention over the delegates, LocalProp (Eq. 1c),
    FFN (Eq. 1d). At r = 1 every token is a delegate (full attention) and nothing is propagated."""

    def __init__(self, gb: nn.Module):
        super().__init__()
        a = gb.attn
        C, r = gb.cpe.in_channels, a.sr_ratio
        dtype = a.qkv.weight.dtype
        self.cpe = merge_cpe(gb.cpe)
        self.num_heads = a.num_heads
        g, beta = gb.norm1.weight.detach(), gb.norm1.bias.detach()
        # A corner/centre delegate is one token: the per-token norm commutes with picking it, so pick first (r*r
        # fewer tokens to normalise). Average pooling commutes with the norm's affine only, max pooling with
        # neither (a negative gamma flips the maximum): there the norm runs first, max keeps its affine.
        self.sample_first = r > 1 and a.sampler_kind in ("corner", "center")
        if r > 1 and a.sampler_kind == "max":
            self.norm1 = ChannelNorm(C, gb.norm1.eps, g, beta)
            g, beta = torch.ones(C), None
        else:
            self.norm1 = ChannelNorm(C, gb.norm1.eps)
        self.sample = DelegateSampler(a.sampler_kind, r) if r > 1 else nn.Identity()
        wq, wk, wv = a.qkv.weight.detach().split(C)
        bq, bk, bv = a.qkv.bias.detach().split(C) if a.qkv.bias is not None else (None,) * 3
        scale = a.head_dim ** -0.5
        self.qkv = QKVProjection(
            conv1x1(*fold_input_affine(wq * scale, None if bq is None else bq * scale, g, beta), dtype),
            conv1x1(*fold_input_affine(wk, bk, g, beta), dtype), conv1x1(*fold_input_affine(wv, bv, g, beta), dtype))
        pw, pb = a.proj.weight.detach(), a.proj.bias.detach()
        if r > 1:  # the release's LayerNorm after LocalProp: its affine goes to proj
            norm = ChannelNorm(C, a.norm.eps)
            pw, pb = fold_input_affine(pw, pb, a.norm.weight.detach(), a.norm.bias.detach())
            self.prop = LocalProp(a.local_prop, r, norm) if a.local_prop_kind == "deconv" else BilinearProp(r, norm)
        else:
            self.prop = nn.Identity()
        self.proj = conv1x1(pw, pb, dtype)
        self.ffn = _fused_ffn(gb, dtype)

    def pad(self, idx: torch.Tensor, width: int) -> None:
        self.cpe = pad_depthwise(self.cpe, idx, width)
        self.norm1.pad(idx, width)
        self.qkv.pad(idx, width)
        if not isinstance(self.prop, nn.Identity):
            self.prop.pad(idx, width)
        self.proj = pad_conv(self.proj, idx, width, idx, width)
        self.ffn.pad(idx, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cpe(x)
        s = self.norm1(self.sample(x)) if self.sample_first else self.sample(self.norm1(x))
        a = self.prop(attend(*self.qkv(s), self.num_heads))  # (1c)
        return self.ffn(x + self.proj(a))  # (1d)


class FusedSRABlock(nn.Module):
    """Table 4's "no LocalProp" global block (PVTv2's spatial-reduction attention): queries from every token,
    keys and values from the delegates, so nothing is propagated back. norm1 keeps its affine (q and k/v read
    different tokens); the keys'/values' LayerNorm folds into k and v."""

    def __init__(self, gb: nn.Module):
        super().__init__()
        a = gb.attn
        C = gb.cpe.in_channels
        dtype = a.qkv.weight.dtype
        self.cpe = merge_cpe(gb.cpe)
        self.num_heads = a.num_heads
        self.norm1 = ChannelNorm(C, gb.norm1.eps, gb.norm1.weight, gb.norm1.bias)
        self.sample = DelegateSampler(a.sampler_kind, a.sr_ratio)
        wq, wk, wv = a.qkv.weight.detach().split(C)
        bq, bk, bv = a.qkv.bias.detach().split(C) if a.qkv.bias is not None else (None,) * 3
        scale = a.head_dim ** -0.5
        self.q = conv1x1(*fold_input_affine(wq * scale, None if bq is None else bq * scale, torch.ones(C), None),
                         dtype)
        self.kv_norm = ChannelNorm(C, a.norm.eps)
        g, beta = a.norm.weight.detach(), a.norm.bias.detach()
        self.k = conv1x1(*fold_input_affine(wk, bk, g, beta), dtype)
        self.v = conv1x1(*fold_input_affine(wv, bv, g, beta), dtype)
        self.proj = conv1x1(a.proj.weight.detach(), a.proj.bias.detach(), dtype)
        self.ffn = _fused_ffn(gb, dtype)

    def pad(self, idx: torch.Tensor, width: int) -> None:
        self.cpe = pad_depthwise(self.cpe, idx, width)
        self.norm1.pad(idx, width)
        self.kv_norm.pad(idx, width)
        self.q, self.k, self.v, self.proj = (pad_conv(c, idx, width, idx, width)
                                             for c in (self.q, self.k, self.v, self.proj))
        self.ffn.pad(idx, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cpe(x)
        n = self.norm1(x)
        d = self.kv_norm(self.sample(n))
        a = attend(self.q(n), self.k(d), self.v(d), self.num_heads)
        return self.ffn(x + self.proj(a))


def _fused_ffn(gb: nn.Module, dtype) -> ChannelFFN:
    """A GlobalBlock's FFN (Eq. 1d) with norm2's affine folded into fc1."""
    C = gb.cpe.in_channels
    fc1 = conv1x1(*fold_input_affine(gb.mlp.fc1.weight, gb.mlp.fc1.bias, gb.norm2.weight.detach(),
                                     gb.norm2.bias.detach()), dtype)
    return ChannelFFN(ChannelNorm(C, gb.norm2.eps), fc1, gb.mlp.act,
                      conv1x1(gb.mlp.fc2.weight.detach(), gb.mlp.fc2.bias.detach(), dtype))


class FusedLGLBlock(nn.Module):
    def __init__(self, blk: nn.Module):
        super().__init__()
        self.local_agg = nn.Identity() if isinstance(blk.local_agg, nn.Identity) else blk.local_agg.fuse()
        self.global_attn = blk.global_attn.fuse()

    def pad(self, idx: torch.Tensor, width: int) -> None:
        if not isinstance(self.local_agg, nn.Identity):
            self.local_agg.pad(idx, width)
        self.global_attn.pad(idx, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.global_attn(self.local_agg(x))


# ---- head ------------------------------------------------------------------------------------------
def merged_classifier(head: nn.Module) -> nn.Module:
    """The head's classifier; with a distillation head, one linear layer computing the two heads' average
    (W = (W_cls + W_dist) / 2, b = (b_cls + b_dist) / 2: exact, as evaluation averages them), so every exported
    file has one output."""
    fc = head.fc
    dist = getattr(head, "fc_dist", None) if getattr(head, "distill", False) else None
    if not isinstance(dist, nn.Linear):
        return fc
    merged = nn.Linear(fc.in_features, fc.out_features, bias=fc.bias is not None or dist.bias is not None)
    merged.weight.data.copy_((fc.weight.detach() + dist.weight.detach()) / 2)
    if merged.bias is not None:
        zero = torch.zeros(fc.out_features, dtype=fc.weight.dtype)
        merged.bias.data.copy_(((fc.bias.detach() if fc.bias is not None else zero)
                                + (dist.bias.detach() if dist.bias is not None else zero)) / 2)
    return merged.to(fc.weight.dtype)


class FusedHead(nn.Module):
    """The final BN folded into the classifier where pooling averages (a per-channel affine commutes with the
    mean); else kept (eval mode: one scale and shift). `feature_norm` (forward_intermediates' `norm=True`) and
    `pre_logits` apply the BN as its scale and shift (buffers outside the state dict: the fused model's weights
    are the ones it runs)."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.pool = head.global_pool == "avg"
        self.in_features = head.in_features
        fc = merged_classifier(head)
        bn = head.norm if isinstance(head.norm, nn.BatchNorm2d) else None
        s, t = bn_scale_shift(bn) if bn is not None else (None, None)
        self.register_buffer("feature_scale", None if s is None else s.float().view(1, -1, 1, 1), persistent=False)
        self.register_buffer("feature_shift", None if t is None else t.float().view(1, -1, 1, 1), persistent=False)
        self.folded = isinstance(fc, nn.Linear) and self.pool and bn is not None
        if self.folded:
            w, b = fold_input_affine(fc.weight.detach(), fc.bias.detach() if fc.bias is not None else None, s, t)
            self.norm = nn.Identity()
            self.fc = nn.Linear(fc.in_features, fc.out_features)
            self.fc.weight.data.copy_(w.to(fc.weight.dtype))
            self.fc.bias.data.copy_(b.to(fc.weight.dtype))
        else:
            self.norm, self.fc = (copy.deepcopy(bn).eval() if bn is not None else nn.Identity()), fc

    @property
    def global_pool(self) -> str:
        return "avg" if self.pool else ""

    def feature_norm(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.feature_scale is None else x * self.feature_scale + self.feature_shift

    def reset(self, num_classes: int, pool_type: Optional[str] = None) -> None:
        """A new (untrained) classifier reads the BN's output: the BN comes back out of the old one."""
        if pool_type is not None:
            self.pool = pool_type == "avg"
        ref = next(self.parameters(), None)
        dd = {"device": ref.device, "dtype": ref.dtype} if ref is not None else {}
        self.folded = False
        self.fc = nn.Linear(self.in_features, num_classes, **dd) if num_classes > 0 else nn.Identity()

    def drop_norm(self) -> None:
        """No final BN at all (timm's prune_norm); a BN already folded into the classifier cannot leave it."""
        if self.folded:
            raise UserError("this fused head holds the final BN inside its classifier; prune the norm of the "
                            "release model before fusing it (or reset the classifier first)")
        self.norm = nn.Identity()
        self.feature_scale = self.feature_shift = None

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if pre_logits or (not self.folded and isinstance(self.norm, nn.Identity)):
            x = self.feature_norm(x)  # (the BN as scale and shift: pre-logits, or a reset classifier's input)
        else:
            x = self.norm(x)
        if self.pool:
            x = x.mean((2, 3), keepdim=True).flatten(1)  # keepdim: XNNPACK's global-average-pool form
        return x if pre_logits else self.fc(x)
