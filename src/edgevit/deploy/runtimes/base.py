"""What a runtime record holds: one `Runtime` per runtime, defined in its own module of this package.

Everything the package knows about a runtime lives in its record: the name (`bench --runtime`), the export
format and file suffixes, the Python packages it needs (import and pip names, the requirements file that pins
them), the fused EdgeViT's forms for it, its precisions (a `Writer` each: how to write such a file, and the
`Rule` that accepts it), how to load a file and run it on numpy arrays, the exported input size, the op/partition
report, and what to say about a file it cannot load. Export, bench, eval --exported, quantize, the profiler and
the CLI read these records instead of naming runtimes (one exception: the LiteRT profile, whose Python
interpreter has no per-operator timer).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from ...errors import MissingDependencyError, UserError
from ...models.fused import Forms

# run(*inputs) -> every output, as numpy arrays (batch-1 float32 NCHW images in, for the models here)
RunFn = Callable[..., List[np.ndarray]]


@dataclasses.dataclass(frozen=True)
class Package:
    """A Python package: its import name, what to pip install, and the requirements file that pins it."""

    module: str
    pip: str = ""
    requirements: str = "requirements.txt"

    def require(self) -> None:
        """One MissingDependencyError naming the package when it is not installed."""
        if importlib.util.find_spec(self.module) is None:
            raise MissingDependencyError(f"this needs the Python package {self.module!r}: pip install "
                                         f"{self.pip or self.module} (pinned in {self.requirements})")


@dataclasses.dataclass(frozen=True)
class Rule:
    """When a written file is accepted: measured in its own runtime against the model in PyTorch fp32 on the check
    images (`edgevit.deploy.export.export_model`). A float file by its largest |difference|; a reduced-precision
    file by its logits' signal-to-quantization-noise ratio and, where the model's weights are trained (random
    weights give near-tied logits, whose top-1 means nothing), the share of images whose top-1 it keeps. The
    floors sit below every file the runtimes write and above a broken one (docs/deploy.md, "Acceptance rules")."""

    max_abs_diff: Optional[float] = None
    # ... or, where the outputs are larger than max_abs_diff / this (untrained weights whose activations grow
    # unbounded, e.g. MobileOne's at init: logits near 4e7), this share of the largest |output| (fp32's own precision)
    max_rel_diff: Optional[float] = None
    min_sqnr_db: Optional[float] = None
    min_top1_agreement: Optional[float] = None  # %, judged with trained weights only

    def failures(self, measured: Mapping[str, float], trained: bool = True) -> List[str]:
        """What `measured` (max_abs_diff, sqnr_db, top1_agreement) misses of this rule; empty if accepted."""
        out = []
        diff, sqnr, agree = (measured.get(k) for k in ("max_abs_diff", "sqnr_db", "top1_agreement"))
        if self.max_abs_diff is not None:
            bound, relative = self.max_abs_diff, False
            if self.max_rel_diff and self.max_rel_diff * (measured.get("max_abs_output") or 0.0) > bound:
                bound, relative = self.max_rel_diff * measured["max_abs_output"], True
            if not (diff is not None and diff <= bound):
                out.append(f"max |diff| {diff:.3g} > {bound:.3g}" + (
                    f" ({self.max_rel_diff:g} of its largest |output|, {measured['max_abs_output']:.3g})"
                    if relative else ""))
        if self.min_sqnr_db is not None and not (sqnr is not None and sqnr >= self.min_sqnr_db):
            out.append(f"logits SQNR {sqnr:.1f} dB < {self.min_sqnr_db:g} dB")
        if trained and self.min_top1_agreement is not None and not (agree is not None
                                                                     and agree >= self.min_top1_agreement):
            out.append(f"top-1 agreement {agree:.1f}% < {self.min_top1_agreement:g}%")
        return out

    def describe(self) -> str:
        parts = []
        if self.max_abs_diff is not None:
            parts.append(f"max |diff| <= {self.max_abs_diff:g}" + (
                f" (or {self.max_rel_diff:g} of the largest |output| past it)" if self.max_rel_diff else ""))
        if self.min_sqnr_db is not None:
            parts.append(f"SQNR >= {self.min_sqnr_db:g} dB")
        if self.min_top1_agreement is not None:
            parts.append(f"top-1 agreement >= {self.min_top1_agreement:g}% (trained weights)")
        return ", ".join(parts)


# The acceptance rules of the precisions the runtimes write. fp32: the files agree with PyTorch to 6e-7 (MNN's
# converter's folding: 2.4e-4); 16-bit floats measured at 37.6-68.6 dB, int8 at 12.0-32.6 dB, every trained file
# 100% top-1 agreement on 16 digits images (docs/deploy.md's matrices, three CPUs).
FLOAT_RULE = Rule(max_abs_diff=1e-3, max_rel_diff=2e-6)
HALF_RULE = Rule(min_sqnr_db=30.0, min_top1_agreement=90.0)
INT8_RULE = Rule(min_sqnr_db=10.0, min_top1_agreement=85.0)


@dataclasses.dataclass(frozen=True)
class Writer:
    """How a runtime writes one precision: `write(model, x, path)` (`calibrated`: `write(model, x, path, images)`,
    images N x 3 x H x W through the model's eval transform) returns the format's report; `how` is one line for
    help texts; `rule` accepts or refuses the file; `integer_input`: the file takes the integer input its runtime
    expects (a full-integer file), not an image (so no app-ready input: `deploy.app_input`)."""

    write: Callable[..., Dict[str, object]]
    how: str = ""
    calibrated: bool = False
    rule: Rule = FLOAT_RULE
    integer_input: bool = False


def image_size(shape) -> Tuple[int, int]:
    """(H, W) of an image input's shape, NCHW or NHWC (the side that holds the 3 channels: an app-ready file's
    input is [1, H, W, 3])."""
    dims = [int(d) for d in shape]
    nhwc = len(dims) == 4 and dims[-1] == 3 and dims[1] != 3
    return (dims[1], dims[2]) if nhwc else (dims[-2], dims[-1])


def fp32(write: Callable[..., Dict[str, object]], how: str = "") -> Writer:
    return Writer(write, how or "fp32", rule=FLOAT_RULE)


def int8(write: Callable[..., Dict[str, object]], how: str, integer_input: bool = False) -> Writer:
    return Writer(write, how, calibrated=True, rule=INT8_RULE, integer_input=integer_input)


def half(write: Callable[..., Dict[str, object]], how: str) -> Writer:
    return Writer(write, how, rule=HALF_RULE)


@dataclasses.dataclass(frozen=True)
class Runtime:
    """One runtime. `format` None: the runtime runs the PyTorch module itself (eager), there is no file."""

    name: str
    title: str  # one line for help texts
    format: Optional[str] = None  # `export --format`
    suffixes: Tuple[str, ...] = ()  # file names it takes; the first is what export writes
    packages: Tuple[Package, ...] = (Package("torch"),)  # to load and run a file
    export_packages: Tuple[Package, ...] = ()  # beyond `packages`, to write one
    forms: Forms = Forms()  # the fused EdgeViT's forms (edgevit.models.fused), chosen by measurement
    # precision ("fp32", "int8", "int8-conv", "fp16", "bf16", ...) -> how to write such a file and when it is
    # accepted; in the order help texts list them, fp32 first. Adding a precision to a runtime is one entry here.
    writers: Mapping[str, Writer] = dataclasses.field(default_factory=dict)
    # a written file -> run(*numpy inputs) -> [numpy outputs], with `threads` threads
    load: Optional[Callable[[Path, int], RunFn]] = None
    # (H, W) a file was exported at, where the file says
    input_size: Callable[[Path], Optional[Tuple[int, int]]] = lambda path: None
    # int8 from a quantization-aware trained graph (fake quantizers hold the scales): not a precision of its own,
    # another source of the "int8" file
    save_qat: Optional[Callable[[torch.fx.GraphModule, torch.Tensor, Path], Dict[str, object]]] = None
    # why this machine's CPU cannot run `precision` files as that precision (None: it can), e.g. bf16 without bf16
    # instructions, where the runtime would silently run f32
    cpu_lacks: Callable[[str], Optional[str]] = lambda precision: None
    # the other files a written file needs beside it, by name (OpenVINO's weights .bin beside its .xml): written
    # with it and renamed into place before it (utils.writes.atomic_path)
    companions: Optional[Callable[[Path], Tuple[Path, ...]]] = None
    # per-operator times of a written file: (path, x, threads, runs, warmup, desc) -> [{op, kind, median_ms}]
    profile: Optional[Callable[..., List[dict]]] = None
    # one line for the export command from the save report (partitions, ops left outside the delegate)
    describe: Callable[[Dict[str, object]], str] = lambda report: ""
    # a file this runtime cannot load: what it is instead, if that can be told (e.g. a checkpoint given as an
    # exported file), else None
    misread: Callable[[Path], Optional[str]] = lambda path: None
    # what it does with a dense model (`edgevit.dense.registry`): `detections_in_graph`, a one-stage detector's
    # file holds its decoding and NMS (outputs of data-dependent length) instead of ending at the head;
    # `write_traced(model, x, path)`, a graph that torch.export cannot capture (a two-stage detector's RPN and RoI
    # heads: NMS and RoIAlign over data-dependent counts) written by tracing; `constant_outputs`, the converter
    # keeps an output that is a constant (a raw detector's anchors)
    # where a file keeps its metadata (`edgevit.deploy.metadata`): write_metadata(path, json_text) into the written
    # file, read_metadata(path) -> the text or None; both None: a sidecar FILE.json beside it (with digests)
    write_metadata: Optional[Callable[[Path, str], None]] = None
    read_metadata: Optional[Callable[[Path], Optional[str]]] = None
    detections_in_graph: bool = False
    # the inputs its float files can take (`deploy.app_input.AppInput`: NHWC, uint8 camera bytes), measured
    input_layouts: Tuple[str, ...] = ("NCHW",)
    input_dtypes: Tuple[str, ...] = ("float32",)
    # the layout `edgevit export` writes when none is asked for: what the runtime's apps feed (LiteRT's: NHWC)
    default_layout: str = "NCHW"
    # an app-ready segmenter's metadata in the format's own place, for its app clients (MediaPipe's ImageSegmenter):
    # write_segmenter_metadata(path, class_names)
    write_segmenter_metadata: Optional[Callable[[Path, Sequence[str]], None]] = None
    write_traced: Optional[Callable[[nn.Module, torch.Tensor, Path], Dict[str, object]]] = None
    constant_outputs: bool = True
    # how the standalone worker (`edgevit.deploy.worker`: numpy and the runtime's package, no edgevit) loads a file,
    # in the aarch64 lane and in a fresh process here: worker(path, defaults) -> the settings it applies, `defaults`
    # "package" (what `load` sets, as on x86) or "runtime" (the runtime's own defaults: what an app that sets nothing
    # gets on a phone); None: the worker cannot load its files (no fresh-process measures, no lane)
    worker: Optional[Callable[[Path, str], Dict[str, object]]] = None
    # bytes the runtime plans for a file's tensors (activations, inputs, outputs), where the file or the runtime's
    # API says it (ExecuTorch's memory-planned buffers); None: it does not say
    planned_memory: Optional[Callable[[Path], Optional[int]]] = None
    # how much of a file's graph the runtime's delegate takes, read from the file as the runtime loads it:
    # delegation(path) -> {"delegate_partitions", "ops_outside"} (ops_outside None where the runtime does not say)
    delegation: Optional[Callable[[Path], Dict[str, Optional[int]]]] = None

    @property
    def suffix(self) -> str:
        return self.suffixes[0]

    @property
    def precisions(self) -> Tuple[str, ...]:
        """What this runtime's files can hold (its writers, fp32 first)."""
        return tuple(self.writers)

    def writer(self, precision: str) -> Writer:
        """The writer of `precision` (one UserError naming the runtimes that write it otherwise)."""
        if precision not in self.writers:
            raise UserError(f"{self.name} writes no {precision} files (its precisions: "
                            f"{', '.join(self.precisions) or 'none: it runs the PyTorch module'})", option="precision")
        return self.writers[precision]

    def write(self, precision: str, model: nn.Module, x: torch.Tensor, path: Path,
              images: Optional[torch.Tensor] = None) -> Dict[str, object]:
        """Write `model` at `x` to `path` as a `precision` file, unchecked (`deploy.export.export_model` is the
        checked call); a calibrated precision takes `images`, N x 3 x H x W. Returns the writer's report."""
        w = self.writer(precision)
        if w.calibrated:
            if images is None:
                raise ValueError(f"a {precision} file is calibrated: no calibration images given")
            return w.write(model, x, path, images)
        return w.write(model, x, path)

    def files(self, path: Path) -> Tuple[Path, ...]:
        """A written file and its companions."""
        return (Path(path), *(self.companions(Path(path)) if self.companions else ()))

    def companion_problem(self, path: Path) -> Optional[str]:
        """What is wrong with the files a written file needs beside it (missing, a directory), or None."""
        for c in (self.companions(Path(path)) if self.companions else ()):
            if c.is_dir():
                return f"its companion file {c.name} is a directory; expected the file the export wrote beside it"
            if not c.is_file():
                return (f"its companion file {c.name} is not beside it ({self.name} reads "
                        f"{' with '.join(f.name for f in self.files(Path(path)))})")
        return None

    def size(self, path: Path) -> int:
        """Bytes of a written file with its companions."""
        return sum(f.stat().st_size for f in self.files(path))

    def require(self, writing: bool = False) -> None:
        """The packages to run this runtime's files (and, `writing`, to write them): one error naming the
        first that is missing."""
        for package in (*self.packages, *(self.export_packages if writing else ())):
            package.require()


def first_output(run: RunFn) -> Callable[[torch.Tensor], torch.Tensor]:
    """A classifier's run function on torch tensors: its one output, as a tensor."""
    def call(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(run(x.detach().cpu().numpy())[0]))
    return call


class SigmoidGelu(nn.Module):
    """GELU's tanh form, 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), written as x·σ(2·√(2/π)·(x + 0.044715·x³))
    (the same function: 0.5·(1 + tanh z) = σ(2z)), for 16-bit float files of runtimes that have fp16 sigmoid,
    multiply and add kernels but no fp16 GELU (XNNPACK). It differs from the exact (erf) GELU by at most 4.7e-4
    (at x ≈ 2.7, where fp16's spacing is 2.0e-3); the file's logits SQNR against the fp32 model is the check
    (docs/deploy.md, "ExecuTorch fp16"). The constants are buffers so that they take the graph's dtype with
    `.half()` (a Python float would be cast at run time, outside the delegate)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("scale", torch.tensor(2 * math.sqrt(2 / math.pi)), persistent=False)
        self.register_buffer("cubic", torch.tensor(0.044715), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.scale * (x + self.cubic * x * x * x))


class Float16Graph(nn.Module):
    """`model` in fp16 behind an fp32 interface: the file takes and returns float32 like every other file here
    (the casts are the graph's first and last ops), so the same loaders and checks apply. `gelu="sigmoid"`:
    each nn.GELU becomes `SigmoidGelu` (a runtime without an fp16 GELU kernel)."""

    def __init__(self, model: nn.Module, gelu: str = "erf"):
        super().__init__()
        import copy
        if gelu not in ("erf", "sigmoid"):
            raise ValueError(f"gelu={gelu!r}: expected 'erf' or 'sigmoid'")
        model = copy.deepcopy(model)
        if gelu == "sigmoid":
            for parent in list(model.modules()):
                for name, child in parent.named_children():
                    if isinstance(child, nn.GELU) and child.approximate == "none":
                        setattr(parent, name, SigmoidGelu())
        self.model = model.half().eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.half()).float()


class ConversionError(UserError):
    """A converter cannot lower an op of the model; the message names the op and where it is."""
