"""Deploying EdgeViTs: `fuse` (the exact inference graph), the runtimes' records (`runtimes`: ExecuTorch, ONNX
Runtime, LiteRT, TorchScript lite and TorchScript, OpenVINO, MNN, ncnn), `export_model` (the one checked writer)
and `load_exported`."""
from __future__ import annotations

from typing import Union

import torch.nn as nn

from ..models.fused import Forms
from . import runtimes
from .export import ExportedModel, export_model, load_exported
from .forms import forms_of, fuse_model, is_fused, set_forms

__all__ = ["fuse", "Forms", "forms_for", "forms_of", "set_forms", "is_fused", "runtimes", "export_model",
           "load_exported", "ExportedModel"]


def forms_for(runtime: str) -> Forms:
    """The fused EdgeViT's forms for `runtime` (its record's, chosen by measurement)."""
    return runtimes.get(runtime).forms


def fuse(model: nn.Module, runtime: Union[str, Forms] = "eager") -> nn.Module:
    """Inference copy of an EdgeViT (or of a model holding EdgeViTs: a detector, a segmenter, timm's
    features_only wrapper) with BN/CPE/LayerNorm-affine folded, the same outputs (max |diff| <= 1e-4).

    `runtime` (a runtime's name, or `Forms`) picks the form of each part that runtime runs fastest, and for
    ExecuTorch pads the stages to XNNPACK's 16-channel GEMM tile; `model` is left untouched (it is the one that
    trains and loads checkpoints). The result is the same class with timm's API (`forward_intermediates`...)."""
    return fuse_model(model, runtime if isinstance(runtime, Forms) else forms_for(runtime))
