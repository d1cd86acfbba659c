"""EdgeViT: Local-Global-Local vision transformers for mobile devices.

Pan et al., "EdgeViTs: Competing Light-weight CNNs on Mobile Devices with Vision Transformers",
ECCV 2022 (https://arxiv.org/abs/2205.03436).  Defaults follow the authors' *released* code
(saic-fi/edgevit, commit df3d070), which differs from the paper's Table 1 text; see the README.

One LGL block (paper Eq. 1), as implemented here:

    X   = LocalAgg(Norm(X_in)) + X_in               -> LocalAgg.forward, lines marked (1a)
    Y   = FFN(Norm(X)) + X                          -> LocalAgg.forward, (1b)
    Z   = LocalProp(GlobalSparseAttn(Norm(Y))) + Y  -> GlobalBlock.forward, (1c)
    Out = FFN(Norm(Z)) + Z                          -> GlobalBlock.forward, (1d)

The release adds a depthwise 3x3 conditional position encoding (CPE) residual before each half,
normalises LocalAgg with BatchNorm and the global half with LayerNorm, and applies a LayerNorm
after LocalProp, before the output projection.

Module names differ from the authors' (`blocks1.0.LocalAgg.conv1` -> `stages.0.blocks.0.local_agg.pw1`);
`checkpoint_filter_fn` converts their checkpoints.
"""
import re
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, Mlp, trunc_normal_, use_fused_attn
from timm.models import (
    build_model_with_cfg,
    clean_state_dict,
    generate_default_cfgs,
    register_model,
    register_notrace_function,
)
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq
from timm.models.twins import LocallyGroupedAttn

from ..errors import UserError

__all__ = ["EdgeViT", "checkpoint_filter_fn", "LOCAL_AGG", "SAMPLERS", "LOCAL_PROPS", "SpatialReductionAttn"]

LOCAL_AGG = ("conv", "lsa", "none")
SAMPLERS = ("corner", "center", "avg", "max")
LOCAL_PROPS = ("deconv", "bilinear", "none")

# Twins' LSA window (Chu et al. 2021 use 7); used only by the local_agg="lsa" ablation.
LSA_WINDOW = 7


@register_notrace_function  # a leaf for timm's FX feature extraction ...
def check_input(x: torch.Tensor, in_chans: int) -> None:
    """[B, in_chans, H, W] with H and W multiples of 32; else a UserError saying what was expected.

    Python control flow on the input's shape: FX cannot trace it, so it is a leaf call in FX graphs (it then
    runs on the real tensor), and TorchScript compiles its raise as an exception with the same message. While
    torch.jit.trace records a graph it is skipped (a traced graph has fixed shapes; the exporter checked them)."""
    if torch.jit.is_tracing():
        return
    if x.dim() != 4 or x.shape[1] != in_chans:
        raise UserError(f"expected input [B, {in_chans}, H, W], got {list(x.shape)}")
    H, W = x.shape[-2], x.shape[-1]
    if H < 32 or W < 32 or H % 32 != 0 or W % 32 != 0:
        raise UserError(f"input H and W must be multiples of 32 (EdgeViT's total stride), got {H}x{W}")


torch.fx.wrap("check_input")  # ... and for plain torch.fx.symbolic_trace / torchvision's feature extractor


def _check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise UserError(f"{name}={value!r} is not one of {list(choices)}")
    return value


# ---- inference forms ----------------------------------------------------------------------------
# Each module below has `fuse()`, the hook timm's `reparameterize_model` calls on every child that has it (as in
# timm's repvit.py / fastvit.py): it returns the module's exact inference form (BN / CPE / LayerNorm affines
# folded), defined in `edgevit.models.fused` beside the folding arithmetic, and leaves the module as it is. The
# import is inside `fuse()` because those forms are built from (and type-check) the classes of this file.


class PatchEmbed(nn.Module):
    """Non-overlapping strided conv, then LayerNorm over channels (release: eps 1e-5)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chs, out_chs, kernel_size=stride, stride=stride)
        self.norm = nn.LayerNorm(out_chs, eps=1e-5)

    @torch.no_grad()
    def fuse(self) -> nn.Module:
        """The inference form: the patch embedding's BN folded into its conv."""
        from .fused import FusedPatchEmbed

        return FusedPatchEmbed(self).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class LocalAgg(nn.Module):
    """Local aggregation: depthwise conv over each token's neighbourhood (Eq. 1a, 1b)."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0, kernel_size: int = 5, drop_path: float = 0.0,
                 act_layer=nn.GELU):
        super().__init__()
        self.cpe = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.BatchNorm2d(dim)
        self.pw1 = nn.Conv2d(dim, dim, 1)
        self.dw = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.pw2 = nn.Conv2d(dim, dim, 1)
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, use_conv=True)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    @torch.no_grad()
    def fuse(self) -> nn.Module:
        """The inference form: CPE residual in its kernel, norm1/norm2 folded into pw1 / mlp.fc1."""
        from .fused import FusedLocalAgg

        return FusedLocalAgg(self).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.cpe(x)
        x = x + self.drop_path(self.pw2(self.dw(self.pw1(self.norm1(x)))))  # (1a)
        x = x + self.drop_path(self.mlp(self.norm2(x)))  # (1b)
        return x


class LocalAggLSA(nn.Module):
    """Ablation (Table 4): Twins' locally-grouped self-attention in place of the depthwise conv."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, window: int = LSA_WINDOW,
                 drop_path: float = 0.0, act_layer=nn.GELU):
        super().__init__()
        self.cpe = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = LocallyGroupedAttn(dim, num_heads=num_heads, ws=window)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    @torch.no_grad()
    def fuse(self) -> nn.Module:
        """The inference form: CPE residual in its kernel, LayerNorm affines folded into the linear layers."""
        from .fused import FusedLocalAggLSA

        return FusedLocalAggLSA(self).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.cpe(x)
        B, C, H, W = x.shape
        t = x.flatten(2).transpose(1, 2)
        t = t + self.drop_path(self.attn(self.norm1(t), (H, W)))
        t = t + self.drop_path(self.mlp(self.norm2(t)))
        return t.transpose(1, 2).reshape(B, C, H, W)


class GlobalSparseAttn(nn.Module):
    """Self-attention over one delegate token per r x r window, propagated back (Eq. 1c).

    sampler   picks the delegates: "corner" = AvgPool2d(1, r), the top-left token of each window (the
              release; the paper calls it the centre), "center" = the true middle token, "avg"/"max" =
              pooling over the window.
    local_prop spreads the delegates back: "deconv" = depthwise ConvTranspose2d(k=r, s=r) (release),
              "bilinear" = parameter-free bilinear upsampling. (Table 4's third choice, no propagation, is
              another attention: `SpatialReductionAttn`.)
    """

    def __init__(self, dim: int, num_heads: int, sr_ratio: int = 1, qkv_bias: bool = True,
                 sampler: str = "corner", local_prop: str = "deconv", attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise UserError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.sr_ratio = sr_ratio
        self.sampler_kind = _check_choice("sampler", sampler, SAMPLERS)
        self.local_prop_kind = _check_choice("local_prop", local_prop, ("deconv", "bilinear"))
        self.fused_attn = use_fused_attn()

        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        # Identity where a part is absent (r = 1, or bilinear LocalProp): no parameters, so the state_dict is the
        # release's, and every attribute exists on every path (TorchScript compiles all of forward).
        self.local_prop = nn.ConvTranspose2d(dim, dim, sr_ratio, stride=sr_ratio, groups=dim) \
            if sr_ratio > 1 and local_prop == "deconv" else nn.Identity()
        self.norm = nn.LayerNorm(dim, eps=1e-5) if sr_ratio > 1 else nn.Identity()  # after LocalProp (release)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def sample(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> delegates [B, C, H/r, W/r]."""
        r = self.sr_ratio
        if self.sampler_kind == "corner":
            return x[:, :, ::r, ::r]  # == AvgPool2d(kernel_size=1, stride=r) of the release
        if self.sampler_kind == "center":
            return x[:, :, r // 2::r, r // 2::r]
        if self.sampler_kind == "avg":
            return F.avg_pool2d(x, r, r)
        return F.max_pool2d(x, r, r)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.fused_attn:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        return self.attn_drop(attn.softmax(dim=-1)) @ v

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        B, N, C = t.shape
        return t.reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        """x: tokens [B, H*W, C] (already normalised) -> [B, H*W, C]."""
        B, N, C = x.shape
        H, W = size
        r = self.sr_ratio
        if r > 1:  # one delegate per r x r window
            x = self.sample(x.transpose(1, 2).reshape(B, C, H, W)).flatten(2).transpose(1, 2)
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        x = self._attend(self._heads(q), self._heads(k), self._heads(v))
        x = x.transpose(1, 2).reshape(B, -1, C)
        if r > 1:  # LocalProp: delegates -> their r x r windows
            x = x.transpose(1, 2).reshape(B, C, H // r, W // r)
            if self.local_prop_kind == "deconv":
                x = self.local_prop(x)
            else:
                x = F.interpolate(x, size=(H, W), mode="bilinear", align_corners=False)
            x = self.norm(x.flatten(2).transpose(1, 2))
        return self.proj_drop(self.proj(x))


class SpatialReductionAttn(GlobalSparseAttn):
    """Table 4's "no LocalProp" row: every token queries the delegates' keys and values, so nothing is
    propagated back (PVTv2's spatial-reduction attention, with EdgeViT's sampler). The release's parameter
    names: `qkv` (q's rows first), `norm` on the reduced keys/values (PVTv2's), `proj`."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int = 2, qkv_bias: bool = True,
                 sampler: str = "corner", attn_drop: float = 0.0, proj_drop: float = 0.0):
        if sr_ratio < 2:
            raise UserError(f"spatial-reduction attention needs sr_ratio >= 2, got {sr_ratio}")
        # (the parent's parts without a LocalProp: its `norm` is PVTv2's, on the reduced keys/values)
        super().__init__(dim, num_heads, sr_ratio, qkv_bias, sampler, "bilinear", attn_drop, proj_drop)
        self.local_prop_kind = "none"

    def forward(self, x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        B, N, C = x.shape
        H, W = size
        q_w, kv_w = self.qkv.weight.split([C, 2 * C])
        bias = self.qkv.bias
        q_b: Optional[torch.Tensor] = None
        kv_b: Optional[torch.Tensor] = None
        if bias is not None:
            q_b, kv_b = bias.split([C, 2 * C])
        d = self.sample(x.transpose(1, 2).reshape(B, C, H, W)).flatten(2).transpose(1, 2)
        k, v = F.linear(self.norm(d), kv_w, kv_b).chunk(2, dim=-1)
        x = self._attend(self._heads(F.linear(x, q_w, q_b)), self._heads(k), self._heads(v))
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, C)))


class GlobalBlock(nn.Module):
    """The global half of an LGL block: sparse attention + FFN on tokens (Eq. 1c, 1d)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, sr_ratio: int = 1,
                 qkv_bias: bool = True, sampler: str = "corner", local_prop: str = "deconv",
                 proj_drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0, act_layer=nn.GELU):
        super().__init__()
        self.cpe = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        if _check_choice("local_prop", local_prop, LOCAL_PROPS) == "none" and sr_ratio > 1:
            self.attn = SpatialReductionAttn(dim, num_heads, sr_ratio, qkv_bias, sampler, attn_drop, proj_drop)
        else:  # (at r = 1 every token is a delegate: full attention, nothing to propagate)
            self.attn = GlobalSparseAttn(dim, num_heads, sr_ratio, qkv_bias, sampler,
                                         "deconv" if local_prop == "none" else local_prop, attn_drop, proj_drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    @torch.no_grad()
    def fuse(self) -> nn.Module:
        """The inference form: Eq. (1b-d) with the LayerNorm affines in q/k/v, proj and fc1, attention as bmm's
        (PVTv2's spatial-reduction attention of the paper's ablation likewise)."""
        from .fused import FusedGlobalBlock, FusedSRABlock

        return (FusedSRABlock if isinstance(self.attn, SpatialReductionAttn) else FusedGlobalBlock)(self).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.cpe(x)
        B, C, H, W = x.shape
        t = x.flatten(2).transpose(1, 2)
        t = t + self.drop_path(self.attn(self.norm1(t), (H, W)))  # (1c)
        t = t + self.drop_path(self.mlp(self.norm2(t)))  # (1d)
        return t.transpose(1, 2).reshape(B, C, H, W)


class LGLBlock(nn.Module):
    """Local-Global-Local bottleneck. Stages with r = 1 (full attention) have no LocalAgg."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, sr_ratio: int = 1,
                 qkv_bias: bool = True, local_agg: str = "conv", sampler: str = "corner",
                 local_prop: str = "deconv", local_kernel: int = 5, proj_drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0, act_layer=nn.GELU):
        super().__init__()
        _check_choice("local_agg", local_agg, LOCAL_AGG)
        if isinstance(local_kernel, bool) or not isinstance(local_kernel, int) or local_kernel < 1 \
                or local_kernel % 2 == 0:
            raise UserError(f"local_kernel={local_kernel} must be a positive odd number")
        if sr_ratio > 1 and local_agg == "conv":
            self.local_agg = LocalAgg(dim, mlp_ratio, local_kernel, drop_path, act_layer)
        elif sr_ratio > 1 and local_agg == "lsa":
            self.local_agg = LocalAggLSA(dim, num_heads, mlp_ratio, drop_path=drop_path, act_layer=act_layer)
        else:
            self.local_agg = nn.Identity()
        self.global_attn = GlobalBlock(dim, num_heads, mlp_ratio, sr_ratio, qkv_bias, sampler, local_prop,
                                       proj_drop, attn_drop, drop_path, act_layer)

    @torch.no_grad()
    def fuse(self) -> nn.Module:
        """The inference form: its local and global parts' inference forms."""
        from .fused import FusedLGLBlock

        return FusedLGLBlock(self).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.global_attn(self.local_agg(x))


class EdgeViTHead(nn.Module):
    """The release's final BatchNorm, global average pooling, dropout and classifier, as one module.

    The BN sits in the head (as in ConvNeXt's NormMlpClassifierHead) so that `fuse()` (timm's
    reparameterize_model) can fold it into the classifier: a per-channel affine commutes with averaging.

    `distill`: a second classifier `fc_dist` trained on a teacher's targets (DeiT's distillation token, LeViT's
    and RepViT's `head_dist`): while distilled training is on, training returns (class logits, distillation
    logits); otherwise the two heads' average (as DeiT, LeViT and RepViT evaluate). `fuse()` merges the two
    into one linear layer (the average of two affine maps is one)."""

    def __init__(self, in_features: int, num_classes: int, pool_type: str = "avg", drop_rate: float = 0.0,
                 distill: bool = False):
        super().__init__()
        self.in_features = in_features
        self.norm = nn.BatchNorm2d(in_features)
        self.global_pool = _check_choice("global_pool", pool_type, ("avg", ""))
        self.drop = nn.Dropout(drop_rate)
        self.distill = distill
        self.distilled_training = False
        self.fc = nn.Linear(in_features, num_classes) if num_classes > 0 else nn.Identity()
        # (an Identity without the distillation head: no weights, and TorchScript compiles forward all the same)
        self.fc_dist = nn.Linear(in_features, num_classes) if distill and num_classes > 0 else nn.Identity()

    def reset(self, num_classes: int, pool_type: Optional[str] = None) -> None:
        if pool_type is not None:
            self.global_pool = _check_choice("global_pool", pool_type, ("avg", ""))
        ref = next(self.parameters(), None)  # a new classifier on the device / in the dtype of the rest
        dd = {"device": ref.device, "dtype": ref.dtype} if ref is not None else {}
        for name in ("fc", "fc_dist") if self.distill else ("fc",):
            fc = nn.Linear(self.in_features, num_classes, **dd) if num_classes > 0 else nn.Identity()
            setattr(self, name, fc.train(self.training))

    def feature_norm(self, x: torch.Tensor) -> torch.Tensor:
        """The final BN alone (`forward_intermediates(norm=True)`)."""
        return self.norm(x)

    def drop_norm(self) -> None:
        """No final BN (timm's `prune_norm`)."""
        self.norm = nn.Identity()

    @torch.no_grad()
    def fuse(self) -> nn.Module:
        """The inference form: the final BN folded into the classifier (the two heads merged)."""
        from .fused import FusedHead

        return FusedHead(self).eval()

    def forward(self, x: torch.Tensor, pre_logits: bool = False):
        x = self.norm(x)
        if self.global_pool == "avg":
            x = x.mean((2, 3))
        x = self.drop(x)
        if pre_logits:
            return x
        if not self.distill:
            return self.fc(x)
        x, x_dist = self.fc(x), self.fc_dist(x)
        if self.distilled_training and self.training and not torch.jit.is_scripting():
            return x, x_dist
        return (x + x_dist) / 2


class EdgeViTStage(nn.Module):
    def __init__(self, in_chs: int, dim: int, depth: int, stride: int, num_heads: int,
                 drop_path: Sequence[float], **block_kwargs):
        super().__init__()
        self.downsample = PatchEmbed(in_chs, dim, stride)
        self.blocks = nn.Sequential(*[
            LGLBlock(dim, num_heads, drop_path=drop_path[i], **block_kwargs) for i in range(depth)])
        self.grad_checkpointing = False
        # An inference form may run the stage wider than `dim`, zero-padded to a backend's SIMD width
        # (edgevit.deploy's channel padding); it names here which channels of the output are the features.
        self.register_buffer("real_channels", None, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The stage's output map (in a padded inference form: the padded map the next stage reads)."""
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The stage's output map as features: its `dim` channels."""
        idx = self.real_channels
        return x if idx is None else x.index_select(1, idx)


class EdgeViT(nn.Module):
    """EdgeViT. Input H and W must be multiples of 32 (the total stride)."""

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = "avg",
            embed_dims: Sequence[int] = (48, 96, 240, 384),
            depths: Sequence[int] = (1, 2, 5, 3),
            head_dim: int = 48,
            mlp_ratio: float = 4.0,
            sr_ratios: Sequence[int] = (4, 2, 2, 1),
            qkv_bias: bool = True,
            local_agg: str = "conv",
            sampler: str = "corner",
            local_prop: str = "deconv",
            local_kernel: int = 5,
            drop_rate: float = 0.0,
            proj_drop_rate: float = 0.0,
            attn_drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            distill_head: bool = False,
            device: Optional[Union[str, torch.device]] = None,
            dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        if len(embed_dims) != 4 or len(depths) != 4 or len(sr_ratios) != 4:
            raise UserError("embed_dims, depths and sr_ratios each need 4 values (one per stage)")
        for name, values, low in (("embed_dims", embed_dims, 1), ("depths", depths, 0), ("sr_ratios", sr_ratios, 1),
                                  ("head_dim", [head_dim], 1), ("in_chans", [in_chans], 1),
                                  ("num_classes", [num_classes], 0)):
            if any(isinstance(v, bool) or not isinstance(v, int) or v < low for v in values):
                raise UserError(f"{name}={list(values) if len(values) > 1 else values[0]}: expected "
                                f"{'integers' if len(values) > 1 else 'an integer'} >= {low}")
        if not (isinstance(mlp_ratio, (int, float)) and mlp_ratio > 0):
            raise UserError(f"mlp_ratio={mlp_ratio}: expected a number > 0")
        for i, (dim, r) in enumerate(zip(embed_dims, sr_ratios)):
            if dim % head_dim:
                raise UserError(f"embed_dims[{i}]={dim} is not a multiple of head_dim={head_dim}")
            # stage i sees H/2^(i+2), a multiple of 2^(3-i) for H a multiple of 32
            if r < 1 or (2 ** (3 - i)) % r:
                raise UserError(f"sr_ratios[{i}]={r} must divide {2 ** (3 - i)} so windows tile every valid input")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.embed_dims = tuple(embed_dims)
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.drop_rate = drop_rate

        dpr = [x.tolist() for x in torch.linspace(0, drop_path_rate, sum(depths), device="cpu").split(list(depths))]
        stages, in_chs, self.feature_info = [], in_chans, []
        for i in range(4):
            stride = 4 if i == 0 else 2
            stages.append(EdgeViTStage(
                in_chs, embed_dims[i], depths[i], stride, embed_dims[i] // head_dim, dpr[i],
                mlp_ratio=mlp_ratio, sr_ratio=sr_ratios[i], qkv_bias=qkv_bias, local_agg=local_agg,
                sampler=sampler, local_prop=local_prop, local_kernel=local_kernel,
                proj_drop=proj_drop_rate, attn_drop=attn_drop_rate))
            in_chs = embed_dims[i]
            self.feature_info.append(dict(num_chs=embed_dims[i], reduction=2 ** (i + 2), module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.head = EdgeViTHead(self.num_features, num_classes, global_pool, drop_rate,  # final BN + classifier
                                distill=distill_head)
        self.apply(self._init_weights)
        if device is not None or dtype is not None:  # timm's factory kwargs: built on CPU in fp32, then moved
            self.to(device=device, dtype=dtype)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # As the release: trunc-normal linears, zero biases, unit LayerNorm; convs keep PyTorch's init.
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    # ---- timm model API -------------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return set()  # timm already exempts 1-d params (norms, biases); CPE kernels are 4-d and decay

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        return dict(stem=r"^stages\.0\.downsample",
                    blocks=r"^stages\.(\d+)" if coarse else [
                        (r"^stages\.(\d+)\.downsample", (0,)), (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                        (r"^head\.norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for s in self.stages:
            s.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    @torch.jit.ignore
    def set_distilled_training(self, enable: bool = True) -> None:
        """With a distillation head: training returns (class logits, distillation logits) (timm's DeiT/LeViT
        API); evaluation always returns their average."""
        self.head.distilled_training = enable

    @property
    def global_pool(self) -> str:
        return self.head.global_pool

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes, global_pool)

    def check_input(self, x: torch.Tensor) -> None:
        check_input(x, self.in_chans)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Stage outputs (strides 4, 8, 16, 32). `norm` applies the final BN (the head's) to the last one; the
        returned features are forward_features' (before that BN, which forward_head applies)."""
        if output_fmt != "NCHW":
            raise ValueError("EdgeViT intermediates are NCHW only")
        self.check_input(x)
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        intermediates = []
        stages = self.stages if torch.jit.is_scripting() or not stop_early else self.stages[:max_index + 1]
        last = len(self.stages) - 1
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                feat = stage.features(x)
                intermediates.append(self.head.feature_norm(feat) if norm and i == last else feat)
        if intermediates_only:
            return intermediates
        return stages[-1].features(x), intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[:max_index + 1]
        if prune_head:  # (first: a fused head's classifier holds the final BN until it is reset)
            self.reset_classifier(0, "")
        if prune_norm:
            self.head.drop_norm()
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's output (the release's `forward_features` also applies the final BN: here the head
        does, so that it folds into the classifier)."""
        self.check_input(x)
        return self.stages[-1].features(self.stages(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# ---- authors' checkpoints ---------------------------------------------------------------------
_AUTHOR_RULES = [  # (authors' key pattern, ours)
    (r"^patch_embed(\d)\.", lambda m: f"stages.{int(m[1]) - 1}.downsample."),
    (r"^blocks(\d)\.(\d+)\.LocalAgg\.", lambda m: f"stages.{int(m[1]) - 1}.blocks.{m[2]}.local_agg."),
    (r"^blocks(\d)\.(\d+)\.SelfAttn\.", lambda m: f"stages.{int(m[1]) - 1}.blocks.{m[2]}.global_attn."),
]
_AUTHOR_LEAVES = {  # leaf renames inside a block
    "local_agg.pos_embed.": "local_agg.cpe.", "local_agg.conv1.": "local_agg.pw1.",
    "local_agg.attn.": "local_agg.dw.", "local_agg.conv2.": "local_agg.pw2.",
    "global_attn.pos_embed.": "global_attn.cpe.", "global_attn.attn.LocalProp.": "global_attn.attn.local_prop.",
}


_HEAD_KEYS = {"head.weight": "head.fc.weight", "head.bias": "head.fc.bias"}


def _head_module_keys(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The release's final `norm.*` and `head.weight/bias` as keys of our head module (head.norm, head.fc)."""
    return {_HEAD_KEYS.get(k, "head.norm." + k[5:] if k.startswith("norm.") else k): v for k, v in state_dict.items()}


def is_authors_layout(state_dict: Dict[str, torch.Tensor]) -> bool:
    return any(k.startswith(("patch_embed1.", "blocks1.")) for k in state_dict)


def convert_authors_state_dict(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename the authors' keys (saic-fi/edgevit) to this module's; values are not touched."""
    out = {}
    for k, v in state_dict.items():
        for pattern, repl in _AUTHOR_RULES:
            m = re.match(pattern, k)
            if m:
                k = repl(m) + k[m.end():]
                for old, new in _AUTHOR_LEAVES.items():
                    k = k.replace(old, new)
                break
        out[k] = v
    return _head_module_keys(out)


def _fit_distill_head(state_dict: Dict[str, torch.Tensor], model: "EdgeViT") -> Dict[str, torch.Tensor]:
    """The rule between checkpoints and models with and without a distillation head, chosen so the loaded model
    answers what the checkpoint's model answered: a checkpoint with `head.fc_dist` into a model without one
    gets the two heads' average as its classifier (what the distilled model evaluates); a checkpoint without
    it into a model with one starts `fc_dist` as a copy of `fc` (same answers, and the two heads then diverge
    in distilled training)."""
    has = "head.fc_dist.weight" in state_dict
    wants = bool(getattr(model.head, "distill", False))
    if has and not wants:
        out = {k: v for k, v in state_dict.items() if not k.startswith("head.fc_dist.")}
        for leaf in ("weight", "bias"):
            if f"head.fc.{leaf}" in out and f"head.fc_dist.{leaf}" in state_dict:
                out[f"head.fc.{leaf}"] = (state_dict[f"head.fc.{leaf}"] + state_dict[f"head.fc_dist.{leaf}"]) / 2
        return out
    if wants and not has and "head.fc.weight" in state_dict:
        return {**state_dict, **{f"head.fc_dist.{leaf}": state_dict[f"head.fc.{leaf}"].clone()
                                 for leaf in ("weight", "bias") if f"head.fc.{leaf}" in state_dict}}
    return state_dict


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: EdgeViT) -> Dict[str, torch.Tensor]:
    """timm hook: the authors' layout or ours (before or after the final BN moved into the head), a distillation
    head or not, in the model's dtype. timm's file reader has already unwrapped a training state and removed DDP /
    torch.compile prefixes; its URL / Hugging Face Hub path hands the download over as it is, so a
    `{"model": ...}` / `{"state_dict": ...}` wrapper is taken off here too."""
    for wrapper in ("model", "state_dict"):
        if isinstance(state_dict.get(wrapper), dict):
            state_dict = clean_state_dict(state_dict[wrapper])
            break
    if is_authors_layout(state_dict):
        state_dict = convert_authors_state_dict(state_dict)
    if isinstance(model, EdgeViT):
        state_dict = _head_module_keys(state_dict)  # this project's earlier checkpoints: `norm.*`, `head.weight`
        state_dict = _fit_distill_head(state_dict, model)
    target = model.state_dict()
    return {k: v.to(target[k].dtype) if k in target and v.is_floating_point() else v for k, v in state_dict.items()}


# ---- variants ---------------------------------------------------------------------------------
def _cfg(**kwargs):
    return {
        "url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7),
        "crop_pct": 0.875, "interpolation": "bicubic", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stages.0.downsample.proj", "classifier": "head.fc",
        "paper_ids": "arXiv:2205.03436", "paper_name": "EdgeViTs: Competing Light-weight CNNs on Mobile "
                                                      "Devices with Vision Transformers",
        "origin_url": "https://github.com/saic-fi/edgevit", "license": "apache-2.0", **kwargs,
    }


# No trained weights exist anywhere: the authors never released any.  Load your own with
# `pretrained=True, pretrained_cfg_overlay=dict(file=PATH)`: a run's weights bring their input size, crop,
# interpolation and class count into `pretrained_cfg` (what timm's resolve_data_config reads).
default_cfgs = generate_default_cfgs({
    "edgevit_xxs.untrained": _cfg(),
    "edgevit_xs.untrained": _cfg(),
    "edgevit_s.untrained": _cfg(),
})

# The authors' release (the configuration that reproduces the paper's Table 1 params/GMACs).
MODEL_ARGS: Dict[str, dict] = {
    "edgevit_xxs": dict(embed_dims=(36, 72, 144, 288), depths=(1, 1, 3, 2), head_dim=36),
    "edgevit_xs": dict(embed_dims=(48, 96, 240, 384), depths=(1, 1, 3, 1), head_dim=48),
    "edgevit_s": dict(embed_dims=(48, 96, 240, 384), depths=(1, 2, 5, 3), head_dim=48),
}


VARIANTS = tuple(MODEL_ARGS)


def _create_edgevit(variant: str, pretrained: bool = False, **kwargs) -> EdgeViT:
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    overlay = kwargs.get("pretrained_cfg_overlay") or {}
    if pretrained and overlay.get("file"):  # your own weights: their training preprocessing and class count
        from .reading import checkpoint_preprocessing

        found = checkpoint_preprocessing(overlay["file"])
        kwargs["pretrained_cfg_overlay"] = {**found, **overlay}  # (what the caller gave wins)
        if "num_classes" in found:
            kwargs.setdefault("num_classes", found["num_classes"])
    return build_model_with_cfg(
        EdgeViT, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(feature_cls="getter", out_indices=out_indices),
        **kwargs,
    )


@register_model
def edgevit_xxs(pretrained: bool = False, **kwargs) -> EdgeViT:
    return _create_edgevit("edgevit_xxs", pretrained, **dict(MODEL_ARGS["edgevit_xxs"], **kwargs))


@register_model
def edgevit_xs(pretrained: bool = False, **kwargs) -> EdgeViT:
    return _create_edgevit("edgevit_xs", pretrained, **dict(MODEL_ARGS["edgevit_xs"], **kwargs))


@register_model
def edgevit_s(pretrained: bool = False, **kwargs) -> EdgeViT:
    return _create_edgevit("edgevit_s", pretrained, **dict(MODEL_ARGS["edgevit_s"], **kwargs))
