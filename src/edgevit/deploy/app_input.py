"""The input an app passes, in the graph: `AppInput(model, layout, dtype, mean, std)` is `model` behind an NHWC
and/or uint8 input (what Android camera pipelines, MediaPipe and the web hand over), with the scaling and the
per-channel mean/std done by the graph's first ops (MediaPipe normalises per tensor only, so per-channel
ImageNet statistics must be in the file). Exported like any model; its metadata says `normalization: "in the
graph"` and the layout and dtype. Its output is the class probabilities (what an app shows, and what MediaPipe's
classifier reports as scores).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from ..errors import UserError
from .metadata import INPUT_DTYPES, LAYOUTS


class AppInput(nn.Module):
    def __init__(self, model: nn.Module, layout: str, dtype: str, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        if layout not in LAYOUTS or dtype not in INPUT_DTYPES:
            raise UserError(f"input {layout} {dtype}: expected a layout of {', '.join(LAYOUTS)} and a dtype of "
                            f"{', '.join(INPUT_DTYPES)}")
        self.model, self.layout, self.dtype = model, layout, dtype
        mean_t, std_t = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
        scale = 1.0 / 255 if dtype == "uint8" else 1.0
        # (x * scale - mean) / std as one multiply-add per channel
        self.register_buffer("mul", (scale / std_t).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("add", (-mean_t / std_t).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("mean", mean_t.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", std_t.view(1, 3, 1, 1), persistent=False)
        for k in ("num_classes", "pretrained_cfg"):
            if hasattr(model, k):
                setattr(self, k, getattr(model, k))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layout == "NHWC":
            x = x.permute(0, 3, 1, 2)
        return self.answer(self.model(x.to(torch.float32) * self.mul + self.add))

    def answer(self, logits: torch.Tensor) -> torch.Tensor:
        """What the file answers: the class probabilities."""
        return logits.softmax(-1)

    def app_input(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised NCHW images (what the model behind takes) as the app passes them (`app_image`). (What export
        checks and calibrates the file on.)"""
        return app_image(x, self.mean, self.std, self.layout, self.dtype)


def app_image(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, layout: str, dtype: str) -> torch.Tensor:
    """Normalised NCHW images ([N, 3, H, W], `mean`/`std` [1, 3, 1, 1]) as an app passes them: in [0, 1]
    (clipped: a fitted image's zero padding becomes the mean, which the graph normalises back to zero), as camera
    bytes for uint8, in `layout`."""
    x01 = (x * std + mean).clamp(0, 1)
    x = torch.round(x01 * 255).to(torch.uint8) if dtype == "uint8" else x01
    return x.permute(0, 2, 3, 1).contiguous() if layout == "NHWC" else x
