"""Deploying EdgeViTs: `fuse` (the exact inference graph) and `export` (ExecuTorch, ONNX, LiteRT, TorchScript)."""
from __future__ import annotations

from typing import Union

import torch.nn as nn

from .fused import Forms, fuse_model, is_fused, set_forms

__all__ = ["fuse", "Forms", "set_forms", "is_fused", "BACKEND_FORMS"]

BACKEND_FORMS = {
    "eager": Forms(),
    "torchscript": Forms(),
    "ptl": Forms(),
    "onnxruntime": Forms(qkv="merged", ln="native", sample="pool"),
    "executorch": Forms(embed="s2d", ln="conv", prop="shuffle", sample="pool", pad=16),
    "litert": Forms(qkv="merged", prop="d2s", sample="pool"),
}


def fuse(model: nn.Module, runtime: Union[str, Forms] = "eager") -> nn.Module:
    """Inference copy of an EdgeViT (or of a model holding EdgeViTs: a detector, a segmenter, timm's
    features_only wrapper) with BN/CPE/LayerNorm-affine folded, the same outputs (max |diff| <= 1e-4).

    `runtime` (a runtime's name, or `Forms`) picks the form of each part that runtime runs fastest, and for
    ExecuTorch pads the stages to XNNPACK's 16-channel GEMM tile; `model` is left untouched (it is the one that
    trains and loads checkpoints). The result is the same class with timm's API (`forward_intermediates`...)."""
    if isinstance(runtime, Forms):
        forms = runtime
    elif runtime in BACKEND_FORMS:
        forms = BACKEND_FORMS[runtime]
    else:
        from ..errors import UserError
        raise UserError(f"backend {runtime!r} is not one of {', '.join(BACKEND_FORMS)}")
    return fuse_model(model, forms)
