"""What an exported file says about itself: enough for an app (or `edgevit predict|eval --exported`) to feed it
and read it with nothing else at hand.

One JSON document (`FileMetadata`, schema "edgevit.file/1") per file, stored in the format's own standard place
where it has one (ONNX model `metadata_props`, TorchScript extra files, OpenVINO `rt_info`, TFLite model
metadata's associated files: each runtime record's `write_metadata` / `read_metadata`), else in a sidecar
`FILE.json` beside it (ExecuTorch, MNN, ncnn), which then records the digest of every file it describes so that a
sidecar beside another export is refused. Read back, it is validated (types, lengths, ranges, and agreement with
the file's own input size); what is wrong is one `MetadataError` naming the file.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..errors import UserError

SCHEMA = "edgevit.file/1"
KEY = "edgevit"  # the key / record / rt_info name under which the formats with a place of their own keep it
LAYOUTS = ("NCHW", "NHWC")
INPUT_DTYPES = ("float32", "uint8")


class MetadataError(UserError):
    """An exported file's metadata is missing, malformed, or disagrees with the file."""


def sidecar_path(path: Path | str) -> Path:
    """The JSON written beside an exported file (FILE.json) that says what it is and how to read it."""
    return Path(str(path) + ".json")


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclasses.dataclass(frozen=True)
class FileMetadata:
    """A classification file's metadata. The input: `layout` (NCHW or NHWC) at `input_size` (H, W), `input_dtype`
    float32 with values in `value_range` ((0, 1): RGB / 255) or uint8 camera bytes (0-255); `mean`/`std`
    (per channel, in the units of `value_range`) the app applies before the file, or None when `normalization` is
    "in the graph". The image becomes that input by resizing its shorter side to `input_size / crop_pct` with
    `interpolation` and cropping the centre (timm's eval transform). The output: `outputs` (name, shape,
    meaning), logits over `class_names`."""

    model: str
    class_names: Tuple[str, ...]
    input_size: Tuple[int, int]
    precision: str
    task: str = "classify"
    layout: str = "NCHW"
    input_dtype: str = "float32"
    value_range: Tuple[float, float] = (0.0, 1.0)
    normalization: str = "app"  # "app": (x - mean) / std before the file; "in the graph"
    mean: Optional[Tuple[float, ...]] = None
    std: Optional[Tuple[float, ...]] = None
    resize: str = "shorter side to input_size / crop_pct, then the centre input_size crop"
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    outputs: Tuple[Mapping[str, Any], ...] = ()
    # the SHA-256 of each file the model file needs beside it (OpenVINO's weights .bin), by name
    companions: Mapping[str, str] = dataclasses.field(default_factory=dict)
    edgevit_version: str = ""
    schema: str = SCHEMA

    @property
    def probabilities(self) -> bool:
        """The file answers class probabilities (an app-ready file), not logits."""
        return self.outputs[0]["name"] == "probabilities"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str | bytes, source: str) -> "FileMetadata":
        """Parsed and validated; `source` names where it was read (the file, or its sidecar)."""
        try:
            raw = json.loads(text)
        except (ValueError, UnicodeDecodeError) as e:
            raise MetadataError(f"{source}: its edgevit metadata is not JSON ({e})") from None
        if not isinstance(raw, dict) or raw.get("schema") != SCHEMA:
            raise MetadataError(f"{source}: not edgevit file metadata (expected schema {SCHEMA!r})")
        known = {f.name for f in dataclasses.fields(cls)}
        missing = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING and f.name not in raw]
        if missing:
            raise MetadataError(f"{source}: its metadata lacks {', '.join(missing)}")
        values = {k: raw[k] for k in known if k in raw}
        for k in ("class_names", "input_size", "value_range", "mean", "std", "outputs"):
            if isinstance(values.get(k), list):
                values[k] = tuple(values[k])
        meta = cls(**values)
        problem = meta.problem()
        if problem:
            raise MetadataError(f"{source}: its metadata {problem}")
        return meta

    def problem(self) -> Optional[str]:
        """What is wrong with these values (None: nothing)."""
        def numbers(v, n=None) -> bool:
            return isinstance(v, tuple) and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                and math.isfinite(x) for x in v) and (n is None or len(v) == n)
        if self.task != "classify":
            return f"task {self.task!r}: this reader takes classification files"
        if not (isinstance(self.class_names, tuple) and self.class_names
                and all(isinstance(c, str) for c in self.class_names)):
            return "class_names: expected a non-empty list of names"
        if not (numbers(self.input_size, 2) and all(isinstance(v, int) and v > 0 for v in self.input_size)):
            return f"input_size {list(self.input_size) if isinstance(self.input_size, tuple) else self.input_size}" \
                   ": expected [H, W], positive integers"
        if self.layout not in LAYOUTS:
            return f"layout {self.layout!r}: expected one of {', '.join(LAYOUTS)}"
        if self.input_dtype not in INPUT_DTYPES:
            return f"input_dtype {self.input_dtype!r}: expected one of {', '.join(INPUT_DTYPES)}"
        if not (numbers(self.value_range, 2) and self.value_range[0] < self.value_range[1]):
            return f"value_range {self.value_range}: expected [low, high] with low < high"
        if self.normalization == "app":
            for name, v in (("mean", self.mean), ("std", self.std)):
                if not numbers(v, 3):
                    return f"{name} {v}: expected 3 numbers (one per RGB channel)"
            if min(self.std) <= 0:
                return f"std {list(self.std)}: expected positive values"
        elif self.normalization != "in the graph":
            return f"normalization {self.normalization!r}: expected 'app' or 'in the graph'"
        if not (isinstance(self.crop_pct, (int, float)) and 0 < self.crop_pct <= 1):
            return f"crop_pct {self.crop_pct}: expected a number in (0, 1]"
        if not isinstance(self.companions, Mapping) or not all(isinstance(v, str) for v in self.companions.values()):
            return "companions: expected {file name: sha256}"
        if not self.outputs or not all(isinstance(o, Mapping) and "name" in o for o in self.outputs):
            return "outputs: expected a list of {name, shape, meaning}"
        shape = self.outputs[0].get("shape")
        if not (isinstance(shape, (list, tuple)) and len(shape) == 2 and shape[-1] == self.num_classes):
            return (f"says {self.num_classes} classes, but its first output is {shape} (expected [1, "
                    f"{self.num_classes}])")
        return None

    def input_shape(self) -> Tuple[int, int, int, int]:
        h, w = self.input_size
        return (1, 3, h, w) if self.layout == "NCHW" else (1, h, w, 3)

    def file_input(self, x01: np.ndarray) -> np.ndarray:
        """The file's input from an RGB image batch [N, 3, H, W] in [0, 1] (resized and cropped): scaled to the
        value range, normalised where the app does it, in the file's dtype and layout."""
        lo, hi = self.value_range
        x = x01.astype(np.float32) * (hi - lo) + lo
        if self.normalization == "app":
            x = (x - np.asarray(self.mean, np.float32).reshape(1, 3, 1, 1)) / \
                np.asarray(self.std, np.float32).reshape(1, 3, 1, 1)
        if self.input_dtype == "uint8":
            x = np.clip(np.rint(x), 0, 255).astype(np.uint8)
        if self.layout == "NHWC":
            x = x.transpose(0, 2, 3, 1)
        return np.ascontiguousarray(x)


def classifier_metadata(model: str, class_names: Sequence[str], input_size: Tuple[int, int], precision: str,
                        cfg: Mapping[str, Any], num_classes: int, layout: str = "NCHW",
                        input_dtype: str = "float32", normalization: str = "app") -> FileMetadata:
    """The metadata of a classifier written from `cfg` (timm's pretrained_cfg fields: mean, std, crop_pct,
    interpolation; `edgevit.models.reading.preprocessing_cfg`)."""
    from .. import __version__

    names = tuple(str(c) for c in class_names) if class_names else tuple(str(i) for i in range(num_classes))
    rng = (0.0, 255.0) if input_dtype == "uint8" else (0.0, 1.0)
    scale = rng[1]
    mean = tuple(float(m) * scale for m in cfg["mean"]) if normalization == "app" else None
    std = tuple(float(s) * scale for s in cfg["std"]) if normalization == "app" else None
    app = normalization == "in the graph"  # (an app-ready file: `deploy.app_input.AppInput`, softmax included)
    out = ({"name": "probabilities", "shape": [1, num_classes], "meaning": "class probabilities in class_names order"}
           if app else {"name": "logits", "shape": [1, num_classes],
                        "meaning": "class logits in class_names order (softmax gives probabilities)"})
    return FileMetadata(
        model=model, class_names=names, input_size=tuple(int(v) for v in input_size), precision=precision,
        layout=layout, input_dtype=input_dtype, value_range=rng, normalization=normalization, mean=mean, std=std,
        crop_pct=float(cfg.get("crop_pct") or 0.875), interpolation=str(cfg.get("interpolation") or "bicubic"),
        outputs=(out,),
        edgevit_version=__version__)


def write_sidecar(target: Path, meta: FileMetadata, files: Mapping[str, Path]) -> None:
    """The metadata as a sidecar JSON at `target`, with the digest of each file it describes (`files`: the name
    each will have -> where it is now)."""
    doc: Dict[str, Any] = json.loads(meta.to_json())
    doc["files"] = {name: digest(Path(f)) for name, f in files.items()}
    target.write_text(json.dumps(doc, indent=1) + "\n")


def read_sidecar(path: Path, files: Sequence[Path]) -> Optional[FileMetadata]:
    """A sidecar's metadata, checked against the digests of the files beside it; None when there is no sidecar
    or it is another kind's (a dense model's)."""
    side = sidecar_path(path)
    if not side.is_file():
        return None
    try:
        raw = json.loads(side.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise MetadataError(f"{side}: not JSON ({e})") from None
    if not isinstance(raw, dict) or raw.get("schema") != SCHEMA:
        return None
    recorded = raw.pop("files", None)
    if not isinstance(recorded, dict):
        raise MetadataError(f"{side}: lacks the digests of the files it describes")
    for f in files:
        if recorded.get(Path(f).name) != digest(Path(f)):
            raise MetadataError(f"{side}: describes another {Path(f).name} (its digest differs): the files come "
                                "from different exports; export again")
    return FileMetadata.from_json(json.dumps(raw), str(side))


def check_against_file(meta: FileMetadata, source: str, input_size: Optional[Sequence[int]],
                       output_shapes: Sequence[Sequence[int]] = (), companions: Sequence[Path] = ()) -> None:
    """Refuse metadata that disagrees with the file's own input size or first output, or with the files beside it
    (a weights file of another export: same architecture, other weights, no runtime error)."""
    for c in companions:
        want = meta.companions.get(Path(c).name)
        if want is not None and digest(Path(c)) != want:
            raise MetadataError(f"{source}: {Path(c).name} beside it is not the one exported with it (its digest "
                                "differs): the files come from different exports; export again")
    if input_size is not None and tuple(input_size) != tuple(meta.input_size):
        raise MetadataError(f"{source}: the file takes {input_size[0]}x{input_size[1]}, its metadata says "
                            f"{meta.input_size[0]}x{meta.input_size[1]}")
    if output_shapes and list(output_shapes[0])[-1:] != [meta.num_classes]:
        raise MetadataError(f"{source}: the file answers {list(output_shapes[0])}, its metadata names "
                            f"{meta.num_classes} classes")


__all__: List[str] = ["FileMetadata", "MetadataError", "SCHEMA", "classifier_metadata", "sidecar_path",
                      "write_sidecar", "read_sidecar", "check_against_file", "digest"]
