"""torchvision's mobile dense models, as the dense bench runs them beside the EdgeViT heads (random weights: latency
does not depend on them), with the attributes the dense export reads (`dense.registry` names these builders)."""
from __future__ import annotations

import torch
import torch.nn as nn


class _Logits(nn.Module):
    """torchvision's segmentation models answer {"out": logits}: the tensor, as ours."""

    def __init__(self, model: nn.Module, num_classes: int):
        super().__init__()
        self.model, self.num_classes = model, num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


def _segmenter(name: str, num_classes: int) -> nn.Module:
    import torchvision.models.segmentation as tvs

    return _Logits(getattr(tvs, name)(weights=None, weights_backbone=None, num_classes=num_classes), num_classes)


def _detector(name: str) -> nn.Module:
    """torchvision's COCO detectors have 91 outputs (90 category ids + background) whatever the data's count."""
    import torchvision.models.detection as tvd

    model = getattr(tvd, name)(weights=None, weights_backbone=None, num_classes=91)
    model.num_classes = 90
    return model


def lraspp_mobilenet_v3_large(num_classes: int) -> nn.Module:
    return _segmenter("lraspp_mobilenet_v3_large", num_classes)


def deeplabv3_mobilenet_v3_large(num_classes: int) -> nn.Module:
    return _segmenter("deeplabv3_mobilenet_v3_large", num_classes)


def ssdlite320_mobilenet_v3_large(num_classes: int) -> nn.Module:
    return _detector("ssdlite320_mobilenet_v3_large")


def fasterrcnn_mobilenet_v3_large_320_fpn(num_classes: int) -> nn.Module:
    return _detector("fasterrcnn_mobilenet_v3_large_320_fpn")
