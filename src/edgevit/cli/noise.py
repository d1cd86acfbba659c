"""Keeping third-party libraries' start-up chatter out of the user's output (our own warnings still show)."""
from __future__ import annotations

import logging
import warnings


def quiet_third_party() -> None:
    """Keep libraries' start-up chatter (deprecations of their own internals, CPU probes) out of the
    user's output; our own warnings still show."""
    for mod in ("torch", "torchvision", "timm", "executorch", "torchao", "onnxscript", "onnx", "fvcore",
                "coremltools", "tensorboard"):
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=mod)
        warnings.filterwarnings("ignore", category=FutureWarning, module=mod)
    warnings.filterwarnings("ignore", message=r".*pytree.*")
    for name in ("torch._export", "torch.export", "torch._dynamo", "torch.onnx", "torch.utils._pytree",
                 "executorch", "onnxscript"):
        logging.getLogger(name).setLevel(logging.ERROR)
