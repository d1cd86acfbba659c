"""Dense prediction with EdgeViT backbones: torchvision RetinaNet / Mask R-CNN / SSDLite with an EdgeViT (+ FPN), a
Semantic FPN and LR-ASPP (`registry`: one entry per architecture), COCO / ADE20K data, metrics, the training loop,
the export and a synthetic shapes generator.

Entry points: `edgevit detect ...`, `edgevit segment ...` (see docs/dense.md)."""
from . import registry

__all__ = ["registry"]
# the builders (edgevit.dense.models) load torchvision's detection models: imported on first use, so that reading
# the registry (the CLI's --help) stays fast
_BUILDERS = ("create_dense", "create_backbone", "create_detector", "create_segmenter")


def __getattr__(name: str):
    if name in _BUILDERS:
        from . import models

        return getattr(models, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
