"""EdgeViT + FPN backbones in torchvision's RetinaNet / Mask R-CNN, and a Semantic FPN.

The authors never released their dense-prediction code; the paper (Sec. 4.2) used mmdetection's
RetinaNet / Mask R-CNN 1x and mmsegmentation's Semantic FPN.  We rebuild those setups on
torchvision (detectors, FPN, extra pyramid levels) so only the glue below is hand-written:

* RetinaNet: FPN over C3-C5 (strides 8/16/32) plus P6 (3x3 stride-2 conv on C5, mmdet's
  ``add_extra_convs='on_input'``) and P7 -> P3-P7, 256 channels (torchvision ``LastLevelP6P7``).
* Mask R-CNN: FPN over C2-C5 plus a max-pooled P6 -> P2-P6 (torchvision ``LastLevelMaxPool``).
* SSDLite (beyond the paper, for phones): torchvision's ``SSD`` with its ``SSDLiteHead`` at 320x320 as
  ``ssdlite320_mobilenet_v3_large``: C4 (stride 16) and C5 (stride 32), then torchvision's four extra blocks
  (512, 256, 256, 128 channels) down to stride 512, six levels of ``DefaultBoxGenerator`` boxes.
* LR-ASPP (beyond the paper, for phones): torchvision's ``LRASPP`` head on stride-8 ("low") and stride-32
  ("high") features, as ``lraspp_mobilenet_v3_large``.
* Semantic FPN (Kirillov et al. 2019): FPN C2-C5 -> 256 ch, then per level a stack of
  3x3 conv(128)-BN-ReLU(-2x up) until 1/4 scale, summed, 1x1 classifier, x4 upsample.  Written by
  hand because segmentation_models_pytorch's FPN omits the 3x3 FPN output convs (~2.4 M params),
  so it cannot match the paper's parameter counts (see docs/dense.md).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops.feature_pyramid_network import (
    ExtraFPNBlock,
    FeaturePyramidNetwork,
    LastLevelMaxPool,
    LastLevelP6P7,
)

from ..errors import UserError
from ..models import VARIANTS, load_checkpoint
from . import registry

SSDLITE_SIZE = 320  # torchvision's ssdlite320 input: every image is resized to 320x320
FPN_CHANNELS = 256
SEM_CHANNELS = 128


def create_backbone(variant: str = "edgevit_xxs", checkpoint: Optional[str] = None, **kwargs) -> nn.Module:
    """A headless EdgeViT (no classifier, no final BN), initialised from an ImageNet checkpoint
    in this project's or the authors' layout; the classifier (and final BN) keys are dropped."""
    if variant not in VARIANTS:
        raise UserError(f"{variant!r}: dense prediction supports the EdgeViTs {', '.join(VARIANTS)}", option="model")
    body = timm.create_model(variant, num_classes=0, **kwargs)
    if checkpoint:
        load_checkpoint(body, checkpoint, skip=("head.",))
    body.prune_intermediate_layers(4, prune_norm=True, prune_head=True)
    return body


class EdgeViTFPN(nn.Module):
    """torchvision ``BackboneWithFPN`` for EdgeViT: ``IntermediateLayerGetter`` cannot reach the
    stage outputs through EdgeViT's ``forward_intermediates``, so this thin wrapper does it."""

    def __init__(self, body: nn.Module, in_indices: Sequence[int], out_channels: int = FPN_CHANNELS,
                 extra_blocks: Optional[ExtraFPNBlock] = None):
        super().__init__()
        self.body = body
        self.in_indices = list(in_indices)
        channels = [body.feature_info[i]["num_chs"] for i in self.in_indices]
        self.fpn = FeaturePyramidNetwork(channels, out_channels, extra_blocks=extra_blocks)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        feats = self.body.forward_intermediates(x, indices=self.in_indices, intermediates_only=True)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))


def retinanet_backbone(body: nn.Module, channels: int = FPN_CHANNELS) -> EdgeViTFPN:
    c5 = body.feature_info[3]["num_chs"]
    # P6 from C5 (mmdet 'on_input'); torchvision switches to C5 when its width differs from the FPN's
    if c5 == channels:
        raise UserError(f"FPN width {channels} equals C5's: LastLevelP6P7 would take P5, not C5")
    return EdgeViTFPN(body, (1, 2, 3), channels, extra_blocks=LastLevelP6P7(c5, channels))


def maskrcnn_backbone(body: nn.Module, channels: int = FPN_CHANNELS) -> EdgeViTFPN:
    return EdgeViTFPN(body, (0, 1, 2, 3), channels, extra_blocks=LastLevelMaxPool())


class SSDLiteFeatures(nn.Module):
    """torchvision's ``SSDLiteFeatureExtractorMobileNet`` for an EdgeViT body: C4 and C5 (strides 16, 32), then
    torchvision's own extra blocks (``_extra_block``: 1x1, 3x3 depthwise stride 2, 1x1, ReLU6) to strides 64-512.
    (torchvision's extractor slices a MobileNetV3 ``Sequential``; an EdgeViT's stages come out of
    ``forward_intermediates``, so only this forward is ours.)"""

    def __init__(self, body: nn.Module, norm_layer, extra_channels: Sequence[int] = (512, 256, 256, 128)):
        from torchvision.models.detection.ssdlite import _extra_block, _normal_init

        super().__init__()
        self.body = body
        widths = [body.feature_info[3]["num_chs"], *extra_channels]
        self.extra = nn.ModuleList(_extra_block(i, o, norm_layer) for i, o in zip(widths[:-1], widths[1:]))
        _normal_init(self.extra)
        self.out_channels = [body.feature_info[2]["num_chs"], *widths]

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        out = self.body.forward_intermediates(x, indices=[2, 3], intermediates_only=True)
        x = out[-1]
        for block in self.extra:
            x = block(x)
            out.append(x)
        return OrderedDict((str(i), v) for i, v in enumerate(out))


def build_ssdlite(body: nn.Module, num_classes: int) -> nn.Module:
    """torchvision's ``ssdlite320_mobilenet_v3_large`` construction with an EdgeViT body: its norm layer,
    anchors, thresholds and head; the images normalised with the ImageNet mean/std the EdgeViT was trained
    with (torchvision's MobileNet uses [-1, 1])."""
    from functools import partial

    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
    from torchvision.models.detection.ssd import SSD
    from torchvision.models.detection.ssdlite import SSDLiteHead

    norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)
    features = SSDLiteFeatures(body, norm_layer)
    anchors = DefaultBoxGenerator([[2, 3] for _ in range(6)], min_ratio=0.2, max_ratio=0.95)
    head = SSDLiteHead(features.out_channels, anchors.num_anchors_per_location(), num_classes + 1, norm_layer)
    cfg = body.pretrained_cfg
    defaults = {"score_thresh": 0.001, "nms_thresh": 0.55, "detections_per_img": 300, "topk_candidates": 300,
                "image_mean": list(cfg["mean"]), "image_std": list(cfg["std"])}
    return SSD(features, anchors, (SSDLITE_SIZE, SSDLITE_SIZE), num_classes + 1, head=head, **defaults)


def create_dense(arch: str, num_classes: int, variant: str = "edgevit_xxs", checkpoint: Optional[str] = None,
                 drop_path_rate: float = 0.1, task: Optional[str] = None, **options) -> nn.Module:
    """The `arch` model (`dense.registry`) with `num_classes` classes on an EdgeViT `variant` (initialised from an
    ImageNet `checkpoint`, if given); `options`: the builder's own (min_size, max_size, fpn_channels: those it
    does not take do not apply to it). The model carries `arch`, `num_classes`, `variant`, `label_offset` (add it to
    0-based dataset labels) and, for detectors, `fpn_channels`."""
    entry = registry.get(arch, task)
    if not entry.edgevit:  # a baseline with its own backbone (random weights)
        model = entry.build_fn()(num_classes)
        model.arch, model.label_offset = arch, entry.label_offset
        return model
    body = create_backbone(variant, checkpoint, drop_path_rate=drop_path_rate)
    model = entry.build_fn()(body, num_classes, **{k: v for k, v in options.items() if k in entry.options})
    model.arch, model.num_classes, model.variant, model.label_offset = arch, num_classes, variant, entry.label_offset
    if entry.task == "detect":
        model.transform.size_divisible = 32  # EdgeViT needs multiples of 32 (torchvision's default already)
        model.fpn_channels = options.get("fpn_channels", FPN_CHANNELS)
    return model


def create_detector(arch: str, num_classes: int, variant: str = "edgevit_xxs", checkpoint: Optional[str] = None,
                    min_size: int = 800, max_size: int = 1333, drop_path_rate: float = 0.1,
                    fpn_channels: int = FPN_CHANNELS) -> nn.Module:
    """A detector of `dense.registry` (torchvision's RetinaNet with `num_classes` foreground classes and labels
    0..K-1; Mask R-CNN and SSDLite with `num_classes + 1` outputs, labels 1..K)."""
    return create_dense(arch, num_classes, variant, checkpoint, drop_path_rate, "detect", min_size=min_size,
                        max_size=max_size, fpn_channels=fpn_channels)


def create_segmenter(num_classes: int, variant: str = "edgevit_xxs", checkpoint: Optional[str] = None,
                     drop_path_rate: float = 0.1, fpn_channels: int = FPN_CHANNELS, arch: str = "semfpn"
                     ) -> nn.Module:
    """A segmenter of `dense.registry`: logits at the input size."""
    return create_dense(arch, num_classes, variant, checkpoint, drop_path_rate, "segment", fpn_channels=fpn_channels)


# ---- the builders the registry names: (EdgeViT body, classes, the options each takes) -> model ----------------
def build_retinanet(body: nn.Module, num_classes: int, min_size: int = 800, max_size: int = 1333,
                    fpn_channels: int = FPN_CHANNELS) -> nn.Module:
    """torchvision's RetinaNet (sigmoid focal loss) on EdgeViT + FPN P3-P7. ``fpn_channels`` (paper: 256) is a
    knob for quick CPU runs: the 256-wide heads dominate the cost."""
    from torchvision.models.detection import RetinaNet

    return RetinaNet(retinanet_backbone(body, fpn_channels), num_classes=num_classes, min_size=min_size,
                     max_size=max_size)


def build_maskrcnn(body: nn.Module, num_classes: int, min_size: int = 800, max_size: int = 1333,
                   fpn_channels: int = FPN_CHANNELS) -> nn.Module:
    """torchvision's Mask R-CNN on EdgeViT + FPN P2-P6; its default mask head (4 conv 256 + deconv 256) written
    out so that its width follows the FPN's: identical at 256; at quick-run widths it stops being the dominant CPU
    cost (torchvision then wants both predictors given and num_classes=None)."""
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

    return MaskRCNN(maskrcnn_backbone(body, fpn_channels), num_classes=None, min_size=min_size, max_size=max_size,
                    mask_head=MaskRCNNHeads(fpn_channels, (fpn_channels,) * 4, 1),
                    mask_predictor=MaskRCNNPredictor(fpn_channels, fpn_channels, num_classes + 1),
                    box_predictor=FastRCNNPredictor(1024, num_classes + 1))  # TwoMLPHead's 1024


def build_semfpn(body: nn.Module, num_classes: int, fpn_channels: int = FPN_CHANNELS) -> nn.Module:
    """Semantic FPN, the semantic head half the FPN width (paper: 256 / 128)."""
    return SemanticFPN(body, num_classes, fpn_channels, fpn_channels // 2)


def build_lraspp(body: nn.Module, num_classes: int) -> nn.Module:
    """LR-ASPP with torchvision's 128-channel head."""
    return LRASPPSegmenter(body, num_classes)


class SemanticFPNHead(nn.Module):
    """Kirillov et al.'s semantic branch as in mmseg's ``FPNHead``: level i (stride 4*2^i) gets
    max(1, i) conv3x3-BN-ReLU blocks with a 2x bilinear upsample after each for i > 0."""

    def __init__(self, num_classes: int, in_channels: int = FPN_CHANNELS, channels: int = SEM_CHANNELS,
                 num_levels: int = 4, dropout: float = 0.1):
        super().__init__()
        self.scale_heads = nn.ModuleList()
        for i in range(num_levels):
            layers: List[nn.Module] = []
            for j in range(max(1, i)):
                layers += [nn.Conv2d(in_channels if j == 0 else channels, channels, 3, padding=1, bias=False),
                           nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
                if i > 0:
                    layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.scale_heads.append(nn.Sequential(*layers))
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        out = self.scale_heads[0](feats[0])
        for head, f in zip(self.scale_heads[1:], feats[1:]):
            out = out + F.interpolate(head(f), size=out.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.dropout(out))


class SemanticFPN(nn.Module):
    """EdgeViT -> FPN(256, C2-C5) -> semantic head at 1/4 -> logits upsampled to the input size."""

    def __init__(self, body: nn.Module, num_classes: int, fpn_channels: int = FPN_CHANNELS,
                 head_channels: int = SEM_CHANNELS):
        super().__init__()
        self.backbone = EdgeViTFPN(body, (0, 1, 2, 3), fpn_channels)
        self.decode_head = SemanticFPNHead(num_classes, fpn_channels, head_channels)
        self.fpn_channels = fpn_channels
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = list(self.backbone(x).values())
        logits = self.decode_head(feats)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


class LRASPPSegmenter(nn.Module):
    """torchvision's ``LRASPP`` (Howard et al. 2019, as ``lraspp_mobilenet_v3_large``) on an EdgeViT: "low" =
    stage 2 (stride 8), "high" = stage 4 (stride 32); logits at the input size, as a tensor."""

    def __init__(self, body: nn.Module, num_classes: int, inter_channels: int = 128):
        from torchvision.models.segmentation.lraspp import LRASPP

        super().__init__()
        self.lraspp = LRASPP(_LowHigh(body), body.feature_info[1]["num_chs"], body.feature_info[3]["num_chs"],
                             num_classes, inter_channels)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lraspp(x)["out"]


class _LowHigh(nn.Module):
    """The stride-8 and stride-32 stage outputs under LRASPP's names."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        low, high = self.body.forward_intermediates(x, indices=[1, 3], intermediates_only=True)
        return {"low": low, "high": high}
