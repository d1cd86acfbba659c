"""Deploying EdgeViTs: `fuse` (the exact inference graph) and `export` (ExecuTorch, ONNX, TorchScript)."""
from __future__ import annotations

import torch.nn as nn

from .fused import BACKENDS, FusedEdgeViT, fuse_edgevit, set_backend, set_impl
from .padding import pad_channels
from ..errors import UserError
from ..models.edgevit import EdgeViT

__all__ = ["fuse", "FusedEdgeViT", "set_backend", "set_impl", "pad_channels", "BACKENDS"]


def fuse(model: nn.Module, backend: str = "eager") -> FusedEdgeViT:
    """Inference copy of an EdgeViT with BN/CPE/LayerNorm-affine folded, same outputs (max |diff| <= 1e-4).

    `backend` (one of BACKENDS) picks the form of each part that runtime runs fastest, and for ExecuTorch
    pads the stages to XNNPACK's 16-channel GEMM tile; the release-layout `model` is left untouched (it is
    the one that trains and loads checkpoints)."""
    if isinstance(model, FusedEdgeViT):
        return set_backend(model, backend)
    if not isinstance(model, EdgeViT):
        raise UserError(f"fuse() takes an EdgeViT, got {type(model).__name__}")
    return fuse_edgevit(model, backend)
