"""The runtimes, one record each (`base.Runtime`): what export, bench, eval --exported, quantize, the profiler
and the command line know about a runtime, they read here.

Adding a runtime: a module beside these that defines its `Runtime` (see `onnxruntime.py` for a complete one),
its tests, and one line below.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Tuple

from ...errors import UserError
from . import eager, executorch, litert, mnn, ncnn, onnxruntime, openvino, torchscript
from .base import ConversionError, Package, Rule, Runtime, Writer, first_output

__all__ = ["Runtime", "Package", "Writer", "Rule", "ConversionError", "RUNTIMES", "get", "by_format", "for_file",
           "names", "formats", "all_precisions", "first_output", "calibrated", "reduced_precisions",
           "precision_help"]

RUNTIMES: Dict[str, Runtime] = {}


def register(runtime: Runtime) -> Runtime:
    RUNTIMES[runtime.name] = runtime
    return runtime


register(eager.RUNTIME)
register(executorch.RUNTIME)
register(onnxruntime.RUNTIME)
register(litert.RUNTIME)
register(torchscript.PTL)
register(torchscript.TORCHSCRIPT)
register(openvino.RUNTIME)
register(mnn.RUNTIME)
register(ncnn.RUNTIME)


def names() -> Tuple[str, ...]:
    return tuple(RUNTIMES)


def formats() -> Tuple[str, ...]:
    """The export formats, one per runtime that writes a file."""
    return tuple(r.format for r in RUNTIMES.values() if r.format)


def calibrated(precision: str) -> bool:
    """Whether files of `precision` are calibrated on images (its writers say so)."""
    return any(r.writers[precision].calibrated for r in RUNTIMES.values() if precision in r.writers)


def reduced_precisions() -> Tuple[str, ...]:
    """Every precision some runtime writes besides fp32: the calibrated ones first, in the records' order."""
    found = dict.fromkeys(p for r in RUNTIMES.values() for p in r.precisions if p != "fp32")
    return tuple(sorted(found, key=lambda p: not calibrated(p)))  # (stable: the records' order within each)


def all_precisions() -> Tuple[str, ...]:
    """Every precision some runtime writes, fp32 first (read from the records each time)."""
    return ("fp32", *reduced_precisions())


def precision_help() -> str:
    """One line per runtime x reduced precision: how its writer makes the file (help texts)."""
    return "; ".join(f"{r.format} {p}: {w.how}" for r in RUNTIMES.values() for p, w in r.writers.items()
                     if p != "fp32")


def get(name: str) -> Runtime:
    """The record of runtime `name` (one UserError listing the runtimes otherwise)."""
    if name not in RUNTIMES:
        raise UserError(f"{name!r} is not one of {', '.join(RUNTIMES)}", option="runtime")
    return RUNTIMES[name]


def by_format(fmt: str) -> Runtime:
    for r in RUNTIMES.values():
        if r.format is not None and r.format == fmt:
            return r
    raise UserError(f"{fmt!r} is not one of {', '.join(formats())}", option="format")


def for_file(path: os.PathLike | str) -> Runtime:
    """The runtime of an exported file, by its suffix (the longest that matches: `.ncnn.param`; one UserError
    naming the file otherwise)."""
    name = Path(path).name.lower()
    matches = [(len(s), r) for r in RUNTIMES.values() for s in r.suffixes if name.endswith(s)]
    if matches:
        return max(matches, key=lambda m: m[0])[1]
    known = ", ".join(s for r in RUNTIMES.values() for s in r.suffixes)
    raise UserError(f"{path}: unknown exported-file extension; expected one of {known}", option="exported")
