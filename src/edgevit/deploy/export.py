"""Export a (fused) model to a runtime's file, run the file in that runtime and compare with PyTorch; open an
exported file for inference.

Each format is written through its runtime record (`edgevit.deploy.runtimes`: the maintained exporters —
torch.export + ExecuTorch's XNNPACK partitioner, torch.onnx, litert-torch, torch.jit); this module only chains
them and checks the result.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

from ..errors import UserError
from ..utils.images import size_hw
from ..utils.io import atomic_path
from ..utils.quiet import filter_native_stderr
from . import runtimes
from .runtimes import Runtime, first_output

TOLERANCE = 1e-3


def seeded_input(img_size: int | Tuple[int, int] = 224) -> torch.Tensor:
    """The batch-1 random image every export is traced at and checked on (seed 0, standard normal)."""
    h, w = size_hw(img_size)
    return torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0))


def save_file(fmt: str, model: nn.Module, x: torch.Tensor, path: Path) -> Dict[str, object]:
    """Write `model` traced/exported at `x` to `path` in `fmt`; returns the format's report (pte: partitions)."""
    return runtimes.by_format(fmt).save(model, x, path)


def load_file(fmt: str, path: Path, threads: int = 2) -> Callable[[torch.Tensor], torch.Tensor]:
    """The exported classifier loaded in its own runtime, as a function of the input (torch tensors)."""
    return first_output(runtimes.by_format(fmt).load(path, threads))


def run_file(fmt: str, path: Path, x: torch.Tensor, threads: int = 2) -> torch.Tensor:
    """Run an exported file in its runtime on `x` (the check that the file works on its own)."""
    return load_file(fmt, path, threads)(x)


def export_model(model: nn.Module, fmt: str, output: os.PathLike | str, img_size: int | Tuple[int, int] = 224,
                 threads: int = 2, check_x: Optional[torch.Tensor] = None) -> Dict[str, object]:
    """Export `model` (already fused/eval) to `output` in `fmt` at `img_size` (square, or (H, W)); verify it
    in its runtime.

    The file is written beside `output` and renamed over it only after the check passes, so an existing
    file survives any failure.  Returns a report (max_abs_diff, size, the runtime's own report)."""
    rt = runtimes.by_format(fmt)
    rt.require(writing=True)
    torch.set_num_threads(threads)
    h, w = size_hw(img_size)
    x = seeded_input((h, w))
    if hasattr(model, "check_input"):
        model.check_input(x)
    check_x = x if check_x is None else check_x
    model = model.eval()
    with torch.no_grad():
        expected = model(check_x)
    report: Dict[str, object] = {"format": fmt, "runtime": rt.name, "output": str(output),
                                 "img_size": [h, w], "precision": "fp32"}
    with atomic_path(output, rt.companions) as tmp:
        report.update(rt.save(model, x, tmp))
        got = first_output(rt.load(tmp, threads))(check_x)
        diff = (got.float() - expected).abs().max().item()
        report["max_abs_diff"] = diff
        if not diff <= TOLERANCE:
            raise UserError(f"{fmt} export of {output} disagrees with PyTorch: max |diff| {diff:.3g} > "
                            f"{TOLERANCE} (file not written)")
        report["bytes"] = rt.size(tmp)
    return report


# ---- an exported file, opened for inference ---------------------------------------------------------
@dataclasses.dataclass
class ExportedModel:
    """An exported file loaded in its own runtime: `model(x)` on numpy arrays (float32 NCHW) returns the file's
    output (a list when it has several); `input_size` is the (H, W) it was exported at, where the file says."""

    path: Path
    runtime: Runtime
    input_size: Optional[Tuple[int, int]]
    run: Callable[..., List[np.ndarray]]

    @property
    def format(self) -> str:
        return self.runtime.format

    def __call__(self, *inputs: np.ndarray):
        arrays = [np.ascontiguousarray(a, dtype=np.float32) for a in inputs]
        if not arrays:
            raise UserError(f"{self.path}: no input given; expected a float32 [1, C, H, W] array")
        for a in arrays:
            if a.ndim != 4 or (self.input_size is not None and tuple(a.shape[-2:]) != tuple(self.input_size)):
                size = "x".join(map(str, self.input_size)) if self.input_size else "H x W"
                raise UserError(f"{self.path}: input of shape {list(a.shape)}; the file takes [1, C, H, W] at {size}")
        outs = self.run(*arrays)
        return outs[0] if len(outs) == 1 else outs


def load_exported(path: os.PathLike | str, threads: int = 2) -> ExportedModel:
    """An exported file (any runtime's, by its suffix) ready to run. A missing file, an unknown extension, a
    missing runtime package or a file the runtime cannot load: one `UserError` naming it."""
    from ..utils.io import require_file

    path = require_file(path, "exported file")
    rt = runtimes.for_file(path)
    rt.require()
    problem = rt.companion_problem(path)
    if problem:
        raise UserError(f"{path}: {problem}", option="exported")
    try:
        # the runtime's own log lines about a file it cannot load say what our one line says
        with filter_native_stderr(patterns=("",)):
            return ExportedModel(path, rt, rt.input_size(path), rt.load(path, threads))
    except UserError:
        raise
    except Exception as e:  # the runtime's own loader: a corrupt/foreign file is the user's input, not a bug
        instead = rt.misread(path)
        if instead:
            raise UserError(f"{path}: {instead}", option="exported") from e
        # torch's messages span lines and append advice about checkpoints: the first sentence, whole
        first = " ".join(str(e).split()).split(" This is an internal miniz error")[0]
        first = first if len(first) <= 300 else first[:297] + "..."
        raise UserError(f"{path}: {rt.name} cannot load it as a {rt.suffix} file ({first or type(e).__name__})",
                        option="exported") from e



