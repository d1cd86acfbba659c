"""Dense prediction with EdgeViT backbones: torchvision RetinaNet / Mask R-CNN with an EdgeViT + FPN,
a Semantic FPN, COCO / ADE20K data, metrics, the training loop and a synthetic shapes generator.

Entry points: `edgevit detect ...`, `edgevit segment ...` (see docs/dense.md)."""
from .models import ARCHS, create_backbone, create_detector, create_segmenter

__all__ = ["ARCHS", "create_backbone", "create_detector", "create_segmenter"]
