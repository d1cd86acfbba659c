"""An exported detector / segmenter opened for use: its sidecar (FILE.json, what the file is and how to read it)
read and checked, and the file run the way the checkpoint's eval runs the model (`DenseFile.segment`,
`DenseFile.detect`)."""
from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..deploy.app_input import app_image
from ..deploy.metadata import sidecar_path
from ..errors import UserError
from . import registry
from .postprocess import Decoding, postprocess

SIDECAR_VERSION = 1


def score_cut(outputs: Dict[str, object]) -> float:
    """The score threshold a file's detections pass (its decoding's, or the R-CNN graph's; 0 for segmenters)."""
    return float(outputs["decoding"]["score_thresh"] if "decoding" in outputs else outputs.get("score_thresh", 0.0))


def fit_into(x: torch.Tensor, size: Sequence[int]) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """A [1, C, h, w] (normalised) image resized to fit `size` (H, W) keeping its aspect ratio, zero-padded
    bottom/right to it (what torchvision's batching pads with after normalising); and the resized (h', w').
    The resized size is floor(side * scale), as torchvision's resize with recompute_scale_factor."""
    h, w = x.shape[-2:]
    th, tw = size
    s = min(th / h, tw / w)
    nh, nw = min(th, max(1, math.floor(h * s))), min(tw, max(1, math.floor(w * s)))
    x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)
    return F.pad(x, (0, tw - nw, 0, th - nh)), (nh, nw)


@dataclasses.dataclass
class DenseFile:
    """An exported detector / segmenter (or, for comparison, its graph in PyTorch) with its sidecar: `segment`
    and `detect` take the images the data sets give and answer as the model's eval does."""

    path: Path
    meta: dict
    run: Callable[..., List[np.ndarray]]

    @property
    def arch(self) -> str:
        return self.meta["arch"]

    @property
    def size(self) -> Tuple[int, int]:
        return tuple(self.meta["input_size"])

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    def _normalize(self, img: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.meta["mean"]).view(3, 1, 1)
        std = torch.tensor(self.meta["std"]).view(3, 1, 1)
        return (img - mean) / std

    def segment(self, img: torch.Tensor, out_size: Sequence[int]) -> torch.Tensor:
        """Class map [H, W] at `out_size` of a normalised image (the segmentation data set's): fitted into the
        file's input (aspect ratio kept, zero-padded bottom/right: the sidecar's "fit"), run, the image's part
        of the logits (or of the class map, nearest) resized to `out_size`."""
        x, (nh, nw) = fit_into(img[None].float(), self.size)
        if self.meta.get("layout") == "NHWC":  # the app-ready form: [0, 1] NHWC in, probabilities NHWC out
            mean, std = (torch.tensor(self.meta[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
            x = app_image(x, mean, std, "NHWC", "float32")
            probs = np.moveaxis(np.asarray(self.run(x.numpy())[0], np.float32), -1, 1)
            # their logarithms: the logits less one number per pixel, so resized they give the logits' argmax
            out = torch.from_numpy(np.log(np.maximum(probs, np.finfo(np.float32).tiny)))[..., :nh, :nw]
        else:
            out = torch.from_numpy(np.ascontiguousarray(self.run(x.numpy())[0]))[..., :nh, :nw]
        if self.meta["outputs"][0] == "classes":
            return F.interpolate(out[:, None].float(), size=tuple(out_size), mode="nearest")[0, 0].long()
        return F.interpolate(out.float(), size=tuple(out_size), mode="bilinear", align_corners=False)[0].argmax(0)

    @property
    def score_thresh(self) -> float:
        """The score cut the file applies (raw-output files: the decoding's, which `detect` can lower)."""
        return score_cut(self.meta)

    def detect(self, img: torch.Tensor, score_thresh: Optional[float] = None) -> Dict[str, torch.Tensor]:
        """Detections (boxes in `img`'s pixels, scores, 0-based labels[, masks]) of a [3, H, W] image in [0, 1].
        `score_thresh` lowers the decoding's cut for raw-output files (files with NMS inside keep theirs)."""
        h, w = img.shape[-2:]
        th, tw = self.size
        if self.meta["resize"] == "stretch":  # torchvision's SSD: every image to the fixed size
            nh, nw = th, tw
            x = F.interpolate(self._normalize(img)[None], size=(th, tw), mode="bilinear", align_corners=False)
        else:  # RetinaNet, Mask R-CNN: fitted (aspect kept), padded bottom/right, as torchvision batches
            x, (nh, nw) = fit_into(self._normalize(img)[None], self.size)
        sy, sx = nh / h, nw / w  # the real resize ratio per axis (torchvision's resize_boxes)
        outs = self.run(x.numpy())
        if self.meta["outputs"][0] == "cls_logits":
            dec = Decoding.from_dict(self.meta["decoding"])
            # boxes clipped to the image's part of the canvas, as torchvision clips to the resized image
            dec = dataclasses.replace(dec, image_size=(nh, nw), score_thresh=min(
                dec.score_thresh, dec.score_thresh if score_thresh is None else score_thresh))
            det = postprocess(*outs[:3], dec)
        else:
            det = dict(zip(self.meta["outputs"], outs))
        boxes = torch.from_numpy(np.asarray(det["boxes"], dtype=np.float32)).reshape(-1, 4).clone()
        boxes[:, 0::2] = (boxes[:, 0::2] / sx).clamp(0, w)
        boxes[:, 1::2] = (boxes[:, 1::2] / sy).clamp(0, h)
        out = {"boxes": boxes, "scores": torch.from_numpy(np.asarray(det["scores"], dtype=np.float32)),
               "labels": torch.from_numpy(np.asarray(det["labels"]).astype(np.int64))}
        if "masks" in det:  # probabilities at the file's input: the image's part, back at the image's size
            masks = torch.from_numpy(np.asarray(det["masks"], dtype=np.float32))[..., :nh, :nw]
            out["masks"] = F.interpolate(masks, size=(h, w), mode="bilinear", align_corners=False) if len(masks) \
                else masks.new_zeros(0, 1, h, w)
        return out


SIDECAR_KEYS = ("task", "arch", "input_size", "resize", "mean", "std", "outputs", "num_classes")


def read_sidecar(path: os.PathLike | str) -> dict:
    """The sidecar of an exported dense file, checked (the file first, then its FILE.json and its keys)."""
    from ..utils.inputs import require_file

    require_file(path, "exported file")
    side = sidecar_path(path)
    if not side.is_file():
        raise UserError(f"{path}: no {side.name} beside it (the sidecar `edgevit detect|segment export` writes: "
                        "what the file is and how to read its outputs)", option="exported")
    try:
        meta = json.loads(side.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{side}: not a JSON sidecar of an exported dense model ({e})", option="exported") from e
    if not isinstance(meta, dict) or meta.get("edgevit_dense_file") != SIDECAR_VERSION:
        raise UserError(f"{side}: not the sidecar of an exported dense model (version {SIDECAR_VERSION})",
                        option="exported")
    missing = [k for k in SIDECAR_KEYS if k not in meta]
    if missing:
        raise UserError(f"{side}: lacks {', '.join(missing)} (re-export the model)", option="exported")
    problem = _sidecar_problem(meta)
    if problem:
        raise UserError(f"{side}: {problem}", option="exported")
    return meta


OUTPUT_NAMES = {"logits", "probabilities", "classes", "cls_logits", "bbox_regression", "anchors", "boxes", "scores",
                "labels", "masks"}


def _sidecar_problem(meta: dict) -> Optional[str]:
    """What is wrong with a dense sidecar's values (None: nothing): the values a file is fed and read by."""
    def numbers(v, n):
        return isinstance(v, list) and len(v) == n and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)
    if meta["task"] not in registry.TASKS:
        return f"task {meta['task']!r}: expected one of {', '.join(registry.TASKS)}"
    size = meta["input_size"]
    if not (numbers(size, 2) and all(isinstance(v, int) and v >= 32 and v % 32 == 0 for v in size)):
        return f"input_size {size}: expected [H, W], multiples of 32"
    for key in ("mean", "std"):
        if not numbers(meta[key], 3):
            return f"{key} {meta[key]}: expected 3 numbers (one per RGB channel)"
    if min(meta["std"]) <= 0:
        return f"std {meta['std']}: expected positive values"
    n = meta["num_classes"]
    if not (isinstance(n, int) and not isinstance(n, bool) and n > 0):
        return f"num_classes {n!r}: expected a positive integer"
    names = meta.get("class_names") or []
    if names and len(names) != n:
        return f"num_classes {n} but {len(names)} class names"
    outputs = meta["outputs"]
    if not (isinstance(outputs, list) and outputs and all(o in OUTPUT_NAMES for o in outputs)):
        return f"outputs {outputs!r}: expected the list of the file's outputs ({', '.join(sorted(OUTPUT_NAMES))})"
    if outputs[0] == "cls_logits" and not isinstance(meta.get("decoding"), dict):
        return "a raw-output detector's sidecar without its decoding (how the outputs become detections)"
    layout = meta.get("layout", "NCHW")
    if layout not in ("NCHW", "NHWC"):
        return f"layout {layout!r}: expected NCHW or NHWC"
    app = (meta["task"], outputs, meta.get("normalization")) == ("segment", ["probabilities"], "in the graph")
    if (layout == "NHWC" or "probabilities" in outputs) and not (layout == "NHWC" and app):
        return (f"layout {layout}, outputs {outputs}: the app-ready form is a segmenter's, NHWC with the "
                "normalisation in the graph and probabilities out")
    if meta["resize"] not in ("fit", "stretch"):
        return f"resize {meta['resize']!r}: expected fit or stretch"
    return None


def load_dense_file(path: os.PathLike | str, task: str, threads: int = 2) -> DenseFile:
    """An exported dense file and its sidecar, checked: the task asked for, the input size the file takes."""
    from ..deploy import load_exported

    meta = read_sidecar(path)
    if meta["task"] != task:
        raise UserError(f"{path}: a {meta['arch']} file; `edgevit {task}` takes "
                        f"{', '.join(registry.names(task))}", option="exported")
    exported = load_exported(path, threads)
    if exported.input_size is not None and list(exported.input_size) != list(meta["input_size"]):
        raise UserError(f"{path}: the file takes {exported.input_size[0]}x{exported.input_size[1]}, its sidecar "
                        f"says {meta['input_size'][0]}x{meta['input_size'][1]}: they come from different exports",
                        option="exported")
    return DenseFile(Path(path), meta, exported.run)
