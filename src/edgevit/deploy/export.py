"""Export a (fused) model to a runtime's file, run the file in that runtime and compare with PyTorch; open an
exported file for inference.

Each format is written through its runtime record (`edgevit.deploy.runtimes`: the maintained exporters —
torch.export + ExecuTorch's XNNPACK partitioner, torch.onnx, litert-torch, torch.jit); this module only chains
them and checks the result.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from ..errors import UserError
from ..utils.images import size_hw
from ..utils.quiet import filter_native_stderr
from ..utils.writes import atomic_path
from . import runtimes
from .metadata import FileMetadata, MetadataError, check_against_file, digest, read_sidecar, sidecar_path, write_sidecar
from .runtimes import Runtime
from .runtimes.base import FLOAT_RULE, Rule

TOLERANCE = FLOAT_RULE.max_abs_diff  # an fp32 file's largest |diff| from PyTorch
# (PyTorch's outputs, the file's outputs, per check image; the precision's rule; trained weights) ->
# (measures, what the file misses of the rule)
Compare = Callable[[Sequence[Sequence[torch.Tensor]], Sequence[Sequence[np.ndarray]], Rule, bool],
                   Tuple[Dict[str, object], List[str]]]


class FileRejected(UserError):
    """A written file that its precision's acceptance rule refuses (`Runtime.writers[p].rule`): not written."""


def seeded_input(img_size: int | Tuple[int, int] = 224) -> torch.Tensor:
    """The batch-1 random image every export is traced at and checked on (seed 0, standard normal)."""
    h, w = size_hw(img_size)
    return torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0))


def random_calibration(count: int, img_size, seed: int = 0) -> torch.Tensor:
    """Standard-normal inputs: enough to time an int8 graph, meaningless for its accuracy."""
    h, w = size_hw(img_size)
    return torch.randn(count, 3, h, w, generator=torch.Generator().manual_seed(seed))


def agreement(reference: torch.Tensor, got: torch.Tensor) -> Dict[str, float]:
    """Top-1 agreement (%) and the signal-to-quantization-noise ratio of the logits (dB):
    10·log10(Σ ref² / Σ (ref − got)²) over the whole batch."""
    reference, got = reference.double(), got.double()
    noise = (reference - got).pow(2).sum().item()
    signal = reference.pow(2).sum().item()
    if not math.isfinite(noise):  # outputs that overflowed (an fp16 file past 65504) or are not numbers
        sqnr = -math.inf
    else:
        sqnr = math.inf if noise == 0 else 10 * math.log10(max(signal, 1e-300) / noise)
    top1 = (reference.argmax(1) == got.argmax(1)).double().mean().item() * 100
    return {"top1_agreement": top1, "sqnr_db": sqnr}


def run_batch(run: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """Outputs of a batch-1 function (a runtime's, or a model) over every image."""
    return torch.cat([run(images[i:i + 1]).float() for i in range(len(images))])


def export_model(model: nn.Module, fmt: str | Runtime, output: os.PathLike | str,
                 img_size: Optional[int | Tuple[int, int]] = None,
                 threads: int = 2, check_x: Optional[torch.Tensor] = None, precision: str = "fp32",
                 images: Optional[torch.Tensor] = None, calibrated: str = "images", checked_on: str = "",
                 prepared: Optional[torch.fx.GraphModule] = None, trained: bool = False,
                 compare: Optional[Compare] = None, traced: bool = False,
                 sidecar: Optional[Mapping[str, object]] = None, metadata: Optional[FileMetadata] = None,
                 app_metadata: Optional[Callable[[Path], None]] = None
                 ) -> Dict[str, object]:
    """The one checked writer: every file the package makes (`edgevit export`, bench, the matrix, the benchmark
    scripts) is written here. `model` (eval, fused or not) is written to `output` in `fmt` as a `precision` file
    through its runtime's writer (`Runtime.writers`), run in that runtime on the check images, measured against
    the model in PyTorch fp32 (max |diff|, logits SQNR, top-1 agreement) and accepted by the precision's `Rule`;
    only then renamed into place (with its companions), so an existing file survives any failure and a file below
    its rule is one `FileRejected` naming what it missed.

    `img_size`: the traced size (square, or (H, W); default the images', else 224); a calibrated precision traces
    at its `images` (N x 3 x H x W, the model's eval transform), `calibrated` saying what they are. `check_x`:
    the images the file is measured on, named by `checked_on` (default: the seeded input for fp32, the
    calibration images for int8, 8 random inputs for 16-bit floats). `prepared`: a quantization-aware trained
    graph, converted as it is to the int8 it was trained as and measured against itself. `trained`: the weights
    are trained, so the rule's top-1 agreement floor applies (random weights give near-tied logits). `fmt`: an
    export format, or a runtime record (a variant of one, e.g. with writers of its own that a benchmark compares).
    A model with several outputs (a detector, a segmenter's class map) gives `compare(reference, got, rule)`:
    per check image, PyTorch's outputs and the file's -> (measures, what the file misses); the default measures a
    classifier's logits (`classify_measures`). `traced`: written by the runtime's tracing writer
    (`Runtime.write_traced`: graphs torch.export cannot capture). `sidecar`: written as FILE.json beside the file,
    committed last. `app_metadata(path)`: writes what an app client reads into the written file before the check
    (a segmenter's TFLite metadata for MediaPipe). `metadata` (`deploy.metadata.FileMetadata`): what the file says
    about itself, written in the format's own place before the file is checked (so the check covers the bytes
    shipped), or as a sidecar FILE.json with the files' digests where the format has no place. Returns the report:
    the writer's, plus the bytes written and the measures."""
    rt = fmt if isinstance(fmt, Runtime) else runtimes.by_format(fmt)
    fmt = rt.format
    writer = rt.writer(precision)
    if prepared is not None and (precision != "int8" or rt.save_qat is None):
        qat = " or ".join(r.format for r in runtimes.RUNTIMES.values() if r.save_qat)
        raise UserError(f"a quantization-aware checkpoint converts to the int8 it was trained as, in {qat} (the "
                        f"quantizer it was trained with), not to a {fmt} {precision} file", option="format")
    rt.require(writing=True)
    torch.set_num_threads(threads)
    given = images if writer.calibrated and images is not None else check_x
    img_size = img_size or (tuple(given.shape[-2:]) if given is not None else 224)
    if writer.calibrated and images is None:
        if prepared is None:
            raise UserError(f"{precision} files are calibrated: no calibration images given", option="calib")
        images, calibrated = random_calibration(8, img_size), "qat (checked on 8 random inputs)"
    x = images[:1].clone() if images is not None and writer.calibrated else seeded_input(img_size)
    if hasattr(model, "check_input"):
        model.check_input(x)
    model = model.eval()
    if check_x is None:
        check_x = images if writer.calibrated else (x if precision == "fp32" else random_calibration(8, x.shape[-2:],
                                                                                                     seed=1))
        checked_on = checked_on or ("the calibration images" if writer.calibrated else
                                    "the seeded input" if precision == "fp32" else "8 random inputs")
    size = list(x.shape[-2:])
    to_app = getattr(model, "app_input", None)  # (`deploy.app_input.AppInput`: the file takes what an app passes)
    if to_app is not None:
        if writer.integer_input:
            raise UserError(f"{precision} files take the integer input {rt.name} expects, not an image: an app input "
                            "(layout, dtype) is for files that take images", option="precision")
        x, check_x = to_app(x), to_app(check_x)
        images = to_app(images) if images is not None else None  # (calibrated on what the file will be fed)
    compare = compare or classify_measures
    with torch.no_grad():
        reference = [_as_list(prepared(c) if prepared is not None else model(c)) for c in check_x.split(1)]
    report: Dict[str, object] = {
        "format": fmt, "runtime": rt.name, "output": str(output), "precision": precision, "how": writer.how,
        "img_size": size, "checked_against": "the float model" if prepared is None else
        "the fake-quantized QAT model", "checked_on": checked_on or f"{len(check_x)} images",
        "check_images": len(check_x), "rule": writer.rule.describe()}
    if writer.calibrated:
        report.update(calibration=calibrated, calibration_images=len(images))
    if traced and (rt.write_traced is None or precision != "fp32"):
        raise UserError(f"this model exports only by tracing, which {rt.name} does not write"
                        + ("" if rt.write_traced is None else f" as {precision} (fp32 only)"), option="format")
    if sidecar is not None and metadata is not None:
        raise ValueError("give a dense model's sidecar or a classifier's metadata, not both")
    side = sidecar_path(output) if sidecar is not None or (metadata is not None and not rt.write_metadata) else None
    with (atomic_path(side) if side else contextlib.nullcontext()) as tmp_side, \
            atomic_path(output, rt.companions) as tmp:  # (the model file is renamed into place first)
        if prepared is not None:
            report.update(rt.save_qat(prepared, x, tmp))
        elif traced:
            report.update(rt.write_traced(model, x, tmp))
        else:
            report.update(rt.write(precision, model, x, tmp, images))
        if metadata is not None and rt.write_metadata:
            names = [Path(f).name for f in rt.files(Path(output))[1:]]  # (the companions, by their final names)
            metadata = dataclasses.replace(metadata, companions={n: digest(t) for n, t in zip(
                names, rt.files(tmp)[1:])})
            rt.write_metadata(tmp, metadata.to_json())
        if app_metadata is not None:
            app_metadata(tmp)
        run = rt.load(tmp, threads)
        got = [run(c.numpy()) for c in check_x.split(1)]
        measures, missed = compare(reference, got, writer.rule, trained)
        report.update(measures)
        if missed:
            raise FileRejected(f"{rt.name} {precision} file {output} fails its rule ({'; '.join(missed)}) against "
                               f"{report['checked_against']} in PyTorch on {report['checked_on']}: not written")
        report["bytes"] = rt.size(tmp)
        if side and metadata is not None:
            write_sidecar(tmp_side, metadata, {Path(f).name: t for f, t in zip(rt.files(Path(output)), rt.files(tmp))})
            report["metadata"] = str(side)
        elif side:
            tmp_side.write_text(json.dumps(dict(sidecar), indent=2) + "\n")
            report["sidecar"] = str(side)
        elif metadata is not None:
            report["metadata"] = f"in the file ({rt.name})"
    return report


def classify_measures(reference: Sequence[Sequence[torch.Tensor]], got: Sequence[Sequence[np.ndarray]], rule: Rule,
                      trained: bool = False) -> Tuple[Dict[str, float], List[str]]:
    """A classifier's (or a segmenter's) first output, the logits, over every check image: top-1 agreement (per
    pixel for a segmenter's [N, C, H, W]), logits SQNR and max |diff| from PyTorch; and what `rule` misses."""
    want = torch.cat([r[0].float() for r in reference])
    have = torch.cat([torch.from_numpy(np.ascontiguousarray(g[0])).float() for g in got])
    if have.shape != want.shape:
        return {}, [f"output of shape {list(have.shape)} where PyTorch's is {list(want.shape)}"]
    measures = {**agreement(want, have), "max_abs_diff": (have - want).abs().max().item(),
                "max_abs_output": want.abs().max().item()}
    return measures, rule.failures(measures, trained=trained)


def _as_list(out) -> List[torch.Tensor]:
    return [out] if torch.is_tensor(out) else list(out)


# ---- an exported file, opened for inference ---------------------------------------------------------
@dataclasses.dataclass
class ExportedModel:
    """An exported file loaded in its own runtime: `model(x)` on numpy arrays (float32 NCHW, or what the file's
    metadata says it takes) returns the file's output (a list when it has several); `input_size` is the (H, W) it
    was exported at, where the file says; `metadata` what the file says about itself (`deploy.metadata`), None
    for a file written without it."""

    path: Path
    runtime: Runtime
    input_size: Optional[Tuple[int, int]]
    run: Callable[..., List[np.ndarray]]
    metadata: Optional[FileMetadata] = None

    @property
    def format(self) -> str:
        return self.runtime.format

    def __call__(self, *inputs: np.ndarray):
        """The file run on `inputs`, each checked first against the shape, dtype and layout the file takes (one
        error naming the file, the same for every runtime: a runtime given another batch or channel count may
        answer wrong without a word)."""
        if not inputs:
            raise UserError(f"{self.path}: no input given; expected {self._expected()}")
        meta = self.metadata
        dtype = np.uint8 if meta is not None and meta.input_dtype == "uint8" else np.float32
        arrays = []
        for a in inputs:
            a = np.asarray(a)
            want = meta.input_shape() if meta is not None else (1, 3, *(self.input_size or (None, None)))
            if a.ndim != 4 or any(w is not None and g != w for g, w in zip(a.shape, want)) or (
                    a.dtype != dtype and not (dtype == np.float32 and np.issubdtype(a.dtype, np.floating))):
                raise UserError(f"{self.path}: input {a.dtype} of shape {list(a.shape)}; the file takes "
                                f"{self._expected()}")
            arrays.append(np.ascontiguousarray(a, dtype=dtype))
        outs = self.run(*arrays)
        return outs[0] if len(outs) == 1 else outs

    def classify(self, image) -> np.ndarray:
        """Class probabilities [num_classes] of a PIL image, fed as the file's metadata says (resize, crop and
        interpolation; scaling, normalisation, dtype, layout): what an app does with the file."""
        from ..utils.images import eval_transform

        meta = self.metadata
        if meta is None:
            raise MetadataError(f"{self.path}: the file carries no edgevit metadata (what its input is and what its "
                                "classes are)", option="exported")
        x01 = eval_transform(meta.input_size, meta.crop_pct, meta.interpolation, mean=(0.0, 0.0, 0.0),
                             std=(1.0, 1.0, 1.0))(image)[None].numpy()
        out = np.asarray(self(meta.file_input(x01)), dtype=np.float64)[0]
        if meta.probabilities:
            return out
        e = np.exp(out - out.max())
        return e / e.sum()

    def _expected(self) -> str:
        if self.metadata is not None:
            return f"{self.metadata.input_dtype} {list(self.metadata.input_shape())} ({self.metadata.layout})"
        size = "x".join(map(str, self.input_size)) if self.input_size else "H x W"
        return f"a float32 [1, 3, H, W] array at {size}"


def file_metadata(rt: Runtime, path: Path) -> Optional[FileMetadata]:
    """What an exported file says about itself, validated and checked against the file's input size: from the
    format's own place, or its sidecar (whose digests must match the files); None for a file written without it
    (an earlier or foreign export)."""
    if rt.read_metadata is not None:
        text = rt.read_metadata(path)
        meta = None if text is None else FileMetadata.from_json(text, str(path))
    else:
        meta = read_sidecar(path, rt.files(path))
    if meta is not None:
        check_against_file(meta, str(path), rt.input_size(path), companions=rt.files(path)[1:])
    return meta


def load_exported(path: os.PathLike | str, threads: int = 2) -> ExportedModel:
    """An exported file (any runtime's, by its suffix) ready to run. A missing file, an unknown extension, a
    missing runtime package or a file the runtime cannot load: one `UserError` naming it."""
    from ..utils.inputs import require_file

    path = require_file(path, "exported file")
    rt = runtimes.for_file(path)
    rt.require()
    problem = rt.companion_problem(path)
    if problem:
        raise UserError(f"{path}: {problem}", option="exported")
    try:
        # the runtime's own log lines about a file it cannot load say what our one line says
        with filter_native_stderr(patterns=("",)):
            loaded = ExportedModel(path, rt, rt.input_size(path), rt.load(path, threads))
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
    loaded.metadata = file_metadata(rt, path)
    return loaded
