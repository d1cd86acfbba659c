"""The inference graph of an EdgeViT: same outputs, fewer and cheaper ops, one layout (NCHW) throughout.

What `fuse` folds (all exact up to float rounding; checked against the authors' outputs in tests/deploy):

* BatchNorm into its neighbour: LocalAgg's norm1/norm2 sit *before* a 1x1 conv (pw1 / mlp.fc1), the
  final BN sits before the average pool and the head: y = W(s*x + t) + b = (W*s) x + (W t + b).
* Each CPE residual x + dwconv3x3(x) into the depthwise kernel (+1 at its centre tap).
* Every LayerNorm that feeds a linear layer loses its affine (gamma, beta) to that layer (q/k/v, proj,
  mlp.fc1); the normalisation itself runs over the channels of the NCHW map, so the token-layout
  flatten/transpose round trips of the release graph disappear.
* qkv is split into three 1x1 convs (no chunk/select copies), the softmax scale is folded into q, and the
  attention is two explicit 3-D bmm's, which every backend lowers (no 4-D matmul expand copies). For ONNX
  Runtime the three convs are stacked into one and split after (`qkv="merged"`: at 49-196 tokens each op
  costs ~10 us of overhead, so three fewer ops per block is 2% of XXS; XNNPACK does not delegate the split).
* The r x r corner sampler (release: AvgPool2d(1, r)) is a strided slice, or the release's 1x1 average pool
  with stride r (XNNPACK slices with stride 1 only; ONNX Runtime runs the pool in its blocked layout);
  LocalProp's depthwise ConvTranspose2d(k=r, s=r) stays a deconv or becomes its exact pixel-shuffle form
  (a per-channel 1x1 conv to C*r^2 channels + depth-to-space), whichever the backend runs faster.
* LayerNorm over channels is written per backend: `mean` (reduce over C; eager/TorchScript) or `conv`
  (the channel mean as a 1x1 conv with weights 1/C: XNNPACK's mean only reduces H, W, so this keeps the
  whole network inside one XNNPACK partition) or `native` (permute + layer_norm: ONNX Runtime runs its
  fused LayerNormalization kernel; measured on the quiet 2-core VM, XXS median 13.2 ms vs 14.3 ms for
  `conv` and 14.2 ms for `mean`, one session at a time, 50 runs each).
* The patch embeddings (k x k conv, stride k) run as space-to-depth + 1x1 conv for XNNPACK
  (`embed="s2d"`: a GEMM at ~90 GMAC/s instead of an indirect GEMM at ~35; 3% of XXS).
* For XNNPACK every stage is widened to a multiple of 16 channels with zero weights (`pad_channels`, below):
  its GEMMs run 2x faster per multiply-add with 48 output channels than with 36.
* LiteRT runs NHWC; litert-torch turns the release's grouped ConvTranspose2d into one slice + one
  TRANSPOSE_CONV per channel (1,080 ops in XXS) and pixel_shuffle's NCHW reshapes into four transposes. There LocalProp is the per-channel conv + depth-to-space written channels-last around one
  transpose (`prop="d2s"`).

Every form is chosen per backend (`BACKENDS`, `set_backend`) from interleaved measurements on the 2-core
development VM (benchmarks/op_profile.py shows where each runtime spends its time; docs/deploy.md).

timm's repvit/fastvit do the same with `fuse()` / `reparameterize()` on each module; these classes are
inference-only (no training, no checkpoint loading: the release-layout EdgeViT does that).
"""
from __future__ import annotations

import copy
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from ..errors import UserError
from ..models.edgevit import (EdgeViTHead, check_input, GlobalBlock, LGLBlock, LocalAgg, LocalAggLSA, PatchEmbed,
                              register_fused_form)

LN_IMPLS = ("mean", "conv", "native")
EMBED_IMPLS = ("conv", "s2d")
QKV_IMPLS = ("split", "merged")
PROP_IMPLS = ("deconv", "shuffle", "d2s")
SAMPLE_IMPLS = ("slice", "pool")
# backend -> the form of each part (q/k/v convs, patch embedding, LayerNorm, LocalProp, sampler) and the
# channel multiple; chosen by measurement (docs/deploy.md). pad > 1 widens the stages to that multiple
# (`pad_channels`) and needs ln="conv".
BACKENDS = {
    "eager": dict(qkv="split", embed="conv", ln="mean", prop="deconv", sample="slice", pad=1),
    "torchscript": dict(qkv="split", embed="conv", ln="mean", prop="deconv", sample="slice", pad=1),
    "ptl": dict(qkv="split", embed="conv", ln="mean", prop="deconv", sample="slice", pad=1),
    "onnxruntime": dict(qkv="merged", embed="conv", ln="native", prop="deconv", sample="pool", pad=1),
    "executorch": dict(qkv="split", embed="s2d", ln="conv", prop="shuffle", sample="pool", pad=16),
    "litert": dict(qkv="merged", embed="conv", ln="mean", prop="d2s", sample="pool", pad=1),
}


# ---- folding helpers (float64 so that folding adds no error of its own) ---------------------------
def _bn_scale_shift(bn: nn.BatchNorm2d) -> Tuple[torch.Tensor, torch.Tensor]:
    s = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    return s, bn.bias.double() - bn.running_mean.double() * s


def _fold_input_affine(weight: torch.Tensor, bias: Optional[torch.Tensor], s: torch.Tensor,
                       t: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """W(s*x + t) + b for a linear/1x1-conv weight [O, I(,1,1)] -> (W', b')."""
    w = weight.double().reshape(weight.shape[0], -1)
    b = bias.double() if bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    if t is not None:
        b = b + w @ t.double()
    return (w * s.double()[None, :]).reshape(weight.shape), b


def _conv1x1(weight: torch.Tensor, bias: torch.Tensor, dtype) -> nn.Conv2d:
    w = weight.reshape(weight.shape[0], -1, 1, 1)
    conv = nn.Conv2d(w.shape[1], w.shape[0], 1)
    conv.weight.data.copy_(w.to(dtype))
    conv.bias.data.copy_(bias.to(dtype))
    return conv


def _merge_cpe(cpe: nn.Conv2d) -> nn.Conv2d:
    """x + dwconv(x) == dwconv'(x) with 1 added to the centre tap (kernel 3, padding 1, groups=C)."""
    k = cpe.kernel_size[0]
    conv = nn.Conv2d(cpe.in_channels, cpe.out_channels, k, padding=k // 2, groups=cpe.groups)
    w = cpe.weight.detach().double().clone()
    w[:, 0, k // 2, k // 2] += 1.0
    conv.weight.data.copy_(w.to(cpe.weight.dtype))
    conv.bias.data.copy_(cpe.bias.detach())
    return conv


def _copy_conv(m: nn.Conv2d) -> nn.Conv2d:
    new = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
                    m.bias is not None)
    new.load_state_dict(m.state_dict())
    return new


# ---- modules ------------------------------------------------------------------------------------
class ChannelNorm(nn.Module):
    """LayerNorm over the channels of an NCHW map; affine optional (None when folded downstream)."""

    def __init__(self, dim: int, eps: float, weight: Optional[torch.Tensor] = None,
                 bias: Optional[torch.Tensor] = None, impl: str = "mean"):
        super().__init__()
        self.dim, self.eps, self.impl = dim, eps, impl
        self.real_dim = dim  # < dim once padded (`pad_channels`): the channels the statistics run over
        self.register_buffer("avg", torch.full((1, dim, 1, 1), 1.0 / dim), persistent=False)
        if weight is not None:
            self.weight = nn.Parameter(weight.detach().clone())
            self.bias = nn.Parameter(bias.detach().clone())
        else:
            self.weight = self.bias = None

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


class FusedPatchEmbed(nn.Module):
    """Strided k x k conv (k == stride) + LayerNorm.  impl="s2d" runs the conv as space-to-depth + a 1x1
    conv (the same sums): XNNPACK runs a 1x1 conv as a GEMM at ~2.5x the MAC rate of its strided IGEMM."""

    def __init__(self, pe: nn.Module):
        super().__init__()
        self.k = pe.proj.stride[0]
        self.proj = _copy_conv(pe.proj)  # the one conv, in the form `impl` runs (no spare copy)
        self.norm = ChannelNorm(pe.norm.normalized_shape[0], pe.norm.eps, pe.norm.weight, pe.norm.bias)
        self.impl = "conv"

    def set_impl(self, impl: str) -> None:
        """Rewrite `proj` into the other form: conv weight [O, C, k, k] <-> 1x1 [O, C*k*k, 1, 1] (channel order
        (c, i, j), as forward's space-to-depth lays them out)."""
        if impl == self.impl:
            return
        w, b, k = self.proj.weight.detach(), self.proj.bias.detach(), self.k
        if impl == "s2d":
            self.proj = _conv1x1(w.reshape(w.shape[0], -1), b, w.dtype)
        else:
            conv = nn.Conv2d(w.shape[1] // (k * k), w.shape[0], k, stride=k).to(w.dtype)
            conv.weight.data.copy_(w.reshape(conv.weight.shape))
            conv.bias.data.copy_(b)
            self.proj = conv
        self.impl = impl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.impl == "s2d":
            k = self.k
            B, C, H, W = x.shape
            x = x.reshape(B, C, H // k, k, W // k, k).permute(0, 1, 3, 5, 2, 4)
            x = x.reshape(B, C * k * k, H // k, W // k)
        return self.norm(self.proj(x))


class FusedLocalAgg(nn.Module):
    """LocalAgg with both BNs folded into the 1x1 convs after them and the CPE merged."""

    def __init__(self, la: nn.Module):
        super().__init__()
        self.cpe = _merge_cpe(la.cpe)
        dtype = la.pw1.weight.dtype
        s, t = _bn_scale_shift(la.norm1)
        self.pw1 = _conv1x1(*_fold_input_affine(la.pw1.weight, la.pw1.bias, s, t), dtype)
        self.dw = _copy_conv(la.dw)
        self.pw2 = _copy_conv(la.pw2)
        s, t = _bn_scale_shift(la.norm2)
        self.fc1 = _conv1x1(*_fold_input_affine(la.mlp.fc1.weight, la.mlp.fc1.bias, s, t), dtype)
        self.act = la.mlp.act
        self.fc2 = _copy_conv(la.mlp.fc2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cpe(x)
        x = x + self.pw2(self.dw(self.pw1(x)))
        return x + self.fc2(self.act(self.fc1(x)))


class FusedLocalAggLSA(nn.Module):
    """The LSA ablation: only its CPE is merged (Twins' attention has nothing to fold); tokens as released."""

    def __init__(self, la: nn.Module):
        super().__init__()
        self.cpe = _merge_cpe(la.cpe)
        self.norm1, self.attn, self.norm2, self.mlp = (copy.deepcopy(m) for m in (la.norm1, la.attn, la.norm2, la.mlp))
        # the explicit softmax(q k^T) v form: the same sums, and the ONNX exporter lowers only 4-D
        # scaled_dot_product_attention (timm's windowed attention is 5-D)
        self.attn.fused_attn = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cpe(x)
        B, C, H, W = x.shape
        t = x.flatten(2).transpose(1, 2)
        t = t + self.attn(self.norm1(t), (H, W))
        t = t + self.mlp(self.norm2(t))
        return t.transpose(1, 2).reshape(B, C, H, W)


class FusedGlobalBlock(nn.Module):
    """CPE + sparse global attention + FFN, on NCHW maps (Eq. 1c, 1d)."""

    def __init__(self, gb: nn.Module):
        super().__init__()
        a = gb.attn
        C = gb.cpe.in_channels
        dtype = a.qkv.weight.dtype
        self.num_heads, self.head_dim, self.r = a.num_heads, a.head_dim, a.sr_ratio
        self.sampler, self.prop_kind = a.sampler_kind, a.local_prop_kind
        self.sra = self.r > 1 and self.prop_kind == "none"
        self.cpe = _merge_cpe(gb.cpe)

        g, beta = gb.norm1.weight.detach(), gb.norm1.bias.detach()
        wq, wk, wv = a.qkv.weight.detach().split(C)
        bq, bk, bv = a.qkv.bias.detach().split(C) if a.qkv.bias is not None else (None,) * 3
        scale = a.head_dim ** -0.5
        if self.sra:  # q sees norm1(x); k, v see LN(sample(norm1(x))): norm1 keeps its affine
            self.norm1 = ChannelNorm(C, gb.norm1.eps, g, beta)
            self.q = _conv1x1(*_fold_input_affine(wq * scale, None if bq is None else bq * scale,
                                                  torch.ones(C), None), dtype)
            g, beta = a.norm.weight.detach(), a.norm.bias.detach()  # k/v's LayerNorm folds into k, v
            self.kv_norm = ChannelNorm(C, a.norm.eps)
        elif self.sampler == "max":  # max pooling commutes with neither the norm nor a negative gamma
            self.norm1 = ChannelNorm(C, gb.norm1.eps, g, beta)
            g, beta = torch.ones(C), None
            self.q = _conv1x1(*_fold_input_affine(wq * scale, None if bq is None else bq * scale, g, beta), dtype)
        else:  # corner/centre pick tokens: the per-token norm commutes, so sample first (r*r fewer tokens to
            # normalise); avg pooling commutes only with the norm's affine. Either way the affine goes to q/k/v.
            self.norm1 = ChannelNorm(C, gb.norm1.eps)
            self.q = _conv1x1(*_fold_input_affine(wq * scale, None if bq is None else bq * scale, g, beta), dtype)
        self.k = _conv1x1(*_fold_input_affine(wk, bk, g, beta), dtype)
        self.v = _conv1x1(*_fold_input_affine(wv, bv, g, beta), dtype)

        self.qkv_impl = "split"
        pw, pb = a.proj.weight.detach(), a.proj.bias.detach()
        self.prop_impl, self.sample_impl = "deconv", "slice"
        if self.r > 1 and not self.sra:
            if self.prop_kind == "deconv":
                self.local_prop = nn.ConvTranspose2d(C, C, self.r, stride=self.r, groups=C)
                self.local_prop.load_state_dict(a.local_prop.state_dict())
            self.prop_norm = ChannelNorm(C, a.norm.eps)  # the release's LayerNorm after LocalProp
            pw, pb = _fold_input_affine(pw, pb, a.norm.weight.detach(), a.norm.bias.detach())
        self.proj = _conv1x1(pw, pb, dtype)

        self.norm2 = ChannelNorm(C, gb.norm2.eps)
        self.fc1 = _conv1x1(*_fold_input_affine(gb.mlp.fc1.weight, gb.mlp.fc1.bias, gb.norm2.weight.detach(),
                                                gb.norm2.bias.detach()), dtype)
        self.act = gb.mlp.act
        self.fc2 = _conv1x1(gb.mlp.fc2.weight.detach(), gb.mlp.fc2.bias.detach(), dtype)

    def sample(self, x: torch.Tensor) -> torch.Tensor:
        r = self.r
        if self.sampler in ("corner", "center"):
            o = 0 if self.sampler == "corner" else r // 2
            if self.sample_impl == "pool":  # a 1x1 pool with stride r picks the same tokens
                return F.avg_pool2d(x[:, :, o:, o:] if o else x, 1, r)
            return x[:, :, o::r, o::r]
        if self.sampler == "avg":
            return F.avg_pool2d(x, r, r)
        return F.max_pool2d(x, r, r)

    def set_qkv(self, impl: str) -> None:
        """"split": q, k, v as three 1x1 convs; "merged": one conv with their weights stacked. The module keeps
        the form it runs only. (SRA blocks stay split: their q reads other tokens than k and v.)"""
        if impl == self.qkv_impl or self.sra:
            return
        if impl == "merged":
            convs = (self.q, self.k, self.v)
            self.qkv = _conv1x1(torch.cat([c.weight.detach() for c in convs]),
                                torch.cat([c.bias.detach() for c in convs]), self.q.weight.dtype)
            del self.q, self.k, self.v
        else:
            w, b = self.qkv.weight.detach().chunk(3), self.qkv.bias.detach().chunk(3)
            self.q, self.k, self.v = (_conv1x1(wi.flatten(1), bi, wi.dtype) for wi, bi in zip(w, b))
            del self.qkv
        self.qkv_impl = impl

    def set_prop(self, impl: str) -> None:
        """LocalProp as the release's depthwise ConvTranspose2d(k=r, s=r) ("deconv") or, the same map, a
        per-channel 1x1 conv to C*r*r channels then depth-to-space, written as torch's pixel_shuffle ("shuffle")
        or as one channels-last transpose ("d2s": NHWC runtimes keep the map channels-last, where pixel_shuffle's
        NCHW reshapes cost a chain of layout changes); only the conv it runs is kept."""
        r = self.r
        if impl in ("shuffle", "d2s") and hasattr(self, "local_prop"):
            lp = self.local_prop
            C = lp.in_channels
            self.prop_shuffle = nn.Conv2d(C, C * r * r, 1, groups=C).to(lp.weight.dtype)
            self.prop_shuffle.weight.data.copy_(lp.weight.detach().reshape(C * r * r, 1, 1, 1))
            self.prop_shuffle.bias.data.copy_(lp.bias.detach().repeat_interleave(r * r))
            del self.local_prop
        elif impl == "deconv" and hasattr(self, "prop_shuffle"):
            ps = self.prop_shuffle
            C = ps.in_channels
            self.local_prop = nn.ConvTranspose2d(C, C, r, stride=r, groups=C).to(ps.weight.dtype)
            self.local_prop.weight.data.copy_(ps.weight.detach().reshape(C, 1, r, r))
            self.local_prop.bias.data.copy_(ps.bias.detach().reshape(C, r * r)[:, 0])
            del self.prop_shuffle
        self.prop_impl = impl

    def depth_to_space(self, a: torch.Tensor) -> torch.Tensor:
        """[B, C*r*r, h, w] (channel c*r*r + i*r + j) -> [B, C, h*r, w*r], as channels-last reshapes around one
        transpose: B, h, w, C, i, j -> B, h, i, w, j, C."""
        B, _, h, w = a.shape
        r, C = self.r, a.shape[1] // (self.r * self.r)
        t = a.permute(0, 2, 3, 1).reshape(B, h, w, C, r, r).permute(0, 1, 4, 2, 5, 3)
        return t.reshape(B, h * r, w * r, C).permute(0, 3, 1, 2)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q [B, C, h, w], k/v [B, C, h', w'] -> [B, C, h, w]; heads are channel groups, scale is in q."""
        B, C, h, w = q.shape
        n = k.shape[2] * k.shape[3]
        q = q.reshape(B * self.num_heads, self.head_dim, h * w)
        k = k.reshape(B * self.num_heads, self.head_dim, n)
        v = v.reshape(B * self.num_heads, self.head_dim, n)
        attn = torch.bmm(q.transpose(1, 2), k).softmax(dim=-1)  # [B*heads, hw, n]
        return torch.bmm(v, attn.transpose(1, 2)).reshape(B, C, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cpe(x)
        r = self.r
        if self.sra:
            n = self.norm1(x)
            d = self.kv_norm(self.sample(n))
            a = self.attend(self.q(n), self.k(d), self.v(d))
        else:
            if r == 1:
                s = self.norm1(x)
            elif self.sampler in ("corner", "center"):
                s = self.norm1(self.sample(x))
            else:
                s = self.sample(self.norm1(x))
            if self.qkv_impl == "merged":  # one conv to 3C channels, split (fewer, larger ops)
                a = self.attend(*self.qkv(s).chunk(3, dim=1))
            else:
                a = self.attend(self.q(s), self.k(s), self.v(s))
            if r > 1:
                if self.prop_kind == "bilinear":
                    a = F.interpolate(a, size=x.shape[-2:], mode="bilinear", align_corners=False)
                elif self.prop_impl == "shuffle":
                    a = F.pixel_shuffle(self.prop_shuffle(a), r)
                elif self.prop_impl == "d2s":
                    a = self.depth_to_space(self.prop_shuffle(a))
                else:
                    a = self.local_prop(a)
                a = self.prop_norm(a)
        x = x + self.proj(a)
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class FusedLGLBlock(nn.Module):
    def __init__(self, blk: nn.Module):
        super().__init__()
        if isinstance(blk.local_agg, LocalAgg):
            self.local_agg = FusedLocalAgg(blk.local_agg)
        elif isinstance(blk.local_agg, LocalAggLSA):
            self.local_agg = FusedLocalAggLSA(blk.local_agg)
        else:
            self.local_agg = nn.Identity()
        self.global_attn = FusedGlobalBlock(blk.global_attn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.global_attn(self.local_agg(x))


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
    """The head's BatchNorm folded into the classifier where pooling averages (a per-channel affine
    commutes with the mean); else the BN is kept (eval mode: one scale and shift)."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.pool = head.global_pool == "avg"
        fc = merged_classifier(head)
        if isinstance(fc, nn.Linear) and self.pool:
            s, t = _bn_scale_shift(head.norm)
            w, b = _fold_input_affine(fc.weight.detach(), fc.bias.detach() if fc.bias is not None else None, s, t)
            self.norm = nn.Identity()
            self.fc = nn.Linear(fc.in_features, fc.out_features)
            self.fc.weight.data.copy_(w.to(fc.weight.dtype))
            self.fc.bias.data.copy_(b.to(fc.weight.dtype))
        else:
            self.norm, self.fc = head.norm, fc

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.norm(x)
        if self.pool:
            x = x.mean((2, 3), keepdim=True).flatten(1)  # keepdim: XNNPACK's global-average-pool form
        return x if pre_logits else self.fc(x)


class FusedEdgeViT(nn.Module):
    """Inference-only EdgeViT.  forward(x) == EdgeViT.forward(x); `stage_outputs(x)` == its intermediates."""

    def __init__(self, model: nn.Module, backend: str = "eager"):
        super().__init__()
        self.in_chans, self.num_classes = model.in_chans, model.num_classes
        self.embed_dims, self.num_features = model.embed_dims, model.num_features
        self.pretrained_cfg = getattr(model, "pretrained_cfg", {})
        self.stages = nn.ModuleList(
            nn.Sequential(FusedPatchEmbed(s.downsample), *[FusedLGLBlock(b) for b in s.blocks])
            for s in model.stages)
        head = FusedHead(model.head)
        self.pool = head.pool
        self.norm, self.head = head.norm, head.fc
        self.pad_multiple = 1
        set_backend(self, backend)

    def check_input(self, x: torch.Tensor) -> None:
        check_input(x, self.in_chans)

    def real_channels(self, x: torch.Tensor, stage: int) -> torch.Tensor:
        """A stage's output without the padding channels (`pad_channels`), as the release model has it."""
        idx = getattr(self, f"real_channels_{stage}", None)
        return x if idx is None or idx.numel() == x.shape[1] else x.index_select(1, idx)

    def stage_outputs(self, x: torch.Tensor) -> List[torch.Tensor]:
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            outs.append(self.real_channels(x, i))
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        if not (isinstance(self.head, nn.Linear) and self.pool):  # a padded head reads the padded map as is
            x = self.real_channels(x, len(self.stages) - 1)
        x = self.norm(x)
        if self.pool:
            x = x.mean((2, 3), keepdim=True).flatten(1)  # keepdim: XNNPACK's global-average-pool form
        return self.head(x)


def set_backend(model: FusedEdgeViT, backend: str) -> FusedEdgeViT:
    """Pick the forms (`set_impl`) and channel padding that `backend` runs fastest (same outputs)."""
    if backend not in BACKENDS:
        raise UserError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
    from .padding import pad_channels  # (padding builds on this module's classes)

    cfg = BACKENDS[backend]
    if model.pad_multiple != cfg["pad"]:
        pad_channels(model, cfg["pad"])
    return set_impl(model, **{k: v for k, v in cfg.items() if k != "pad"})


def set_impl(model: nn.Module, ln: Optional[str] = None, prop: Optional[str] = None,
             sample: Optional[str] = None, embed: Optional[str] = None, qkv: Optional[str] = None) -> nn.Module:
    """Switch the exact alternative forms: LayerNorm (LN_IMPLS), LocalProp (PROP_IMPLS), sampler
    (SAMPLE_IMPLS), patch embedding (EMBED_IMPLS), q/k/v convs (QKV_IMPLS)."""
    if ln is not None and ln not in LN_IMPLS:
        raise UserError(f"ln={ln!r} is not one of {LN_IMPLS}")
    if prop is not None and prop not in PROP_IMPLS:
        raise UserError(f"prop={prop!r} is not one of {PROP_IMPLS}")
    if sample is not None and sample not in SAMPLE_IMPLS:
        raise UserError(f"sample={sample!r} is not one of {SAMPLE_IMPLS}")
    if embed is not None and embed not in EMBED_IMPLS:
        raise UserError(f"embed={embed!r} is not one of {EMBED_IMPLS}")
    if qkv is not None and qkv not in QKV_IMPLS:
        raise UserError(f"qkv={qkv!r} is not one of {QKV_IMPLS}")
    for m in model.modules():
        if isinstance(m, ChannelNorm) and ln is not None:
            if ln != "conv" and m.real_dim != m.dim:
                raise UserError(f"ln={ln!r} cannot skip padding channels; a padded model (pad_channels) "
                                 "needs ln='conv'")
            m.impl = ln
        if isinstance(m, FusedPatchEmbed) and embed is not None:
            m.set_impl(embed)
        if isinstance(m, FusedGlobalBlock):
            if qkv is not None:
                m.set_qkv(qkv)
            if prop is not None:
                m.set_prop(prop)
            m.sample_impl = sample or m.sample_impl
    return model


@torch.no_grad()
def fuse_edgevit(model: nn.Module, backend: str = "eager") -> FusedEdgeViT:
    """The fused inference copy of a release-layout EdgeViT (which is left untouched)."""
    return FusedEdgeViT(model, backend).eval()


def _register_forms() -> None:
    """The model's modules get their inference form from here (`Fusable.fuse`, timm's reparameterize_model)."""
    for cls, form in ((PatchEmbed, FusedPatchEmbed), (LocalAgg, FusedLocalAgg), (LocalAggLSA, FusedLocalAggLSA),
                      (GlobalBlock, FusedGlobalBlock), (LGLBlock, FusedLGLBlock), (EdgeViTHead, FusedHead)):
        register_fused_form(cls, form)


_register_forms()
