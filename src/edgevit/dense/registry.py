"""The dense-prediction architectures, one entry each (torchvision's `models/_api.py` manner: `register`,
`get`, `names`). An entry says what the architecture is (task, builder, default input, how its file is read);
what a runtime can do with it (a detector's NMS inside the file, constant outputs, int8) comes from the
runtime's record (`edgevit.deploy.runtimes`), never from the architecture's name.

A new head is one module that builds it plus one `register(...)` line; training, eval, predict, export and the
dense bench take it from here. This module imports nothing heavy (the CLI reads it to build `--help`); the
builder is imported when a model is made.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Callable, Dict, Optional, Tuple

from ..errors import UserError

TASKS = ("detect", "segment")
COCO_CLASSES, ADE_CLASSES = 80, 150  # the class counts the benchmarks and complexity tables build with


@dataclasses.dataclass(frozen=True)
class DenseArch:
    """One architecture. `builder` ("module:function"): with `edgevit=True`, `function(body, num_classes,
    **options)` on a headless EdgeViT body (`dense.models.create_backbone`); otherwise a whole model (a
    torchvision baseline, random weights) from `function(num_classes)`."""

    name: str
    task: str  # "detect" or "segment"
    title: str  # one line for help texts
    builder: str
    size: int = 512  # default (square) input of its exported file and the dense bench
    # how an image becomes the file's input: "fit" (resized keeping its aspect ratio, zero-padded: torchvision's
    # detector transform, mmseg's eval) or "stretch" (resized to the input: SSD's fixed 320 x 320)
    resize: str = "fit"
    # what a file returns. "logits": a segmenter's per-pixel class scores (or, asked for, the class map);
    # "raw": a one-stage detector's head outputs (class logits, box regression, anchors) decoded by
    # `dense.postprocess` with `decoding`, or detections where the runtime runs NMS in the graph;
    # "detections": a two-stage detector, whose RPN and RoI heads run NMS over data-dependent counts, so only a
    # runtime that writes such graphs (`Runtime.write_traced`) exports it
    outputs: str = "logits"
    decoding: Optional[str] = None  # "retinanet" (sigmoid, per-class top-k) or "ssd" (softmax with background)
    label_offset: int = 0  # added to 0-based dataset labels for the model (a background class at 0: 1)
    masks: bool = False  # instance masks (Mask R-CNN): COCO's segm AP beside bbox
    min_batch: int = 1  # images per process in training (SSDLite's 1x1 extra-block BatchNorm needs 2)
    options: Tuple[str, ...] = ()  # the builder's options among min_size, max_size, fpn_channels
    baselines: Tuple[str, ...] = ()  # the entries it is compared with in the dense bench (same task)
    edgevit: bool = True  # False: a baseline with its own backbone, for benchmarks only
    bench: bool = True  # in the dense bench's default rows

    @property
    def quantizable(self) -> bool:
        """int8 files are checked by their logits' SQNR and the class map: a segmenter's outputs."""
        return self.outputs == "logits"

    def build_fn(self) -> Callable:
        module, _, fn = self.builder.partition(":")
        return getattr(importlib.import_module(module), fn)


_REGISTRY: Dict[str, DenseArch] = {}


def register(arch: DenseArch) -> DenseArch:
    if arch.task not in TASKS:
        raise ValueError(f"{arch.name}: task {arch.task!r} is not one of {TASKS}")
    if arch.name in _REGISTRY and _REGISTRY[arch.name] != arch:
        raise ValueError(f"a dense architecture named {arch.name!r} is already registered")
    _REGISTRY[arch.name] = arch
    return arch


def get(name: str, task: Optional[str] = None) -> DenseArch:
    """The entry of `name` (of `task`, when given): one UserError naming the choices otherwise."""
    arch = _REGISTRY.get(name)
    if arch is None or (task is not None and arch.task != task) or (task is not None and not arch.edgevit):
        choices = names(task)
        raise UserError(f"{name!r}: expected one of {', '.join(choices)}", option="arch")
    return arch


def names(task: Optional[str] = None, edgevit: bool = True) -> Tuple[str, ...]:
    """The registered architectures (of `task`), EdgeViT models only unless `edgevit` is False."""
    return tuple(n for n, a in _REGISTRY.items() if (task is None or a.task == task) and (a.edgevit or not edgevit))


def entries(task: Optional[str] = None) -> Tuple[DenseArch, ...]:
    return tuple(a for a in _REGISTRY.values() if task is None or a.task == task)


_M = "edgevit.dense.models"
_DETECTOR = ("min_size", "max_size", "fpn_channels")
register(DenseArch("retinanet", "detect", "RetinaNet on EdgeViT + FPN (the paper's)", f"{_M}:build_retinanet",
                   outputs="raw", decoding="retinanet", options=_DETECTOR))
register(DenseArch("maskrcnn", "detect", "Mask R-CNN on EdgeViT + FPN (the paper's; exports to onnx)",
                   f"{_M}:build_maskrcnn", outputs="detections", label_offset=1, masks=True, options=_DETECTOR,
                   bench=False))
register(DenseArch("ssdlite", "detect", "SSDLite head at 320x320 (torchvision's mobile detector)",
                   f"{_M}:build_ssdlite", size=320, resize="stretch", outputs="raw", decoding="ssd",
                   label_offset=1, min_batch=2, baselines=("ssdlite320_mobilenet_v3_large",)))
register(DenseArch("semfpn", "segment", "Semantic FPN on EdgeViT (the paper's)", f"{_M}:build_semfpn",
                   options=("fpn_channels",)))
register(DenseArch("lraspp", "segment", "LR-ASPP head (torchvision's mobile segmenter)", f"{_M}:build_lraspp",
                   baselines=("lraspp_mobilenet_v3_large",)))
# torchvision's mobile models, run beside the EdgeViT heads by the dense bench (random weights)
_TV = "edgevit.dense.baselines"
register(DenseArch("lraspp_mobilenet_v3_large", "segment", "torchvision's LR-ASPP on MobileNetV3-Large",
                   f"{_TV}:lraspp_mobilenet_v3_large", edgevit=False))
register(DenseArch("deeplabv3_mobilenet_v3_large", "segment", "torchvision's DeepLabV3 on MobileNetV3-Large",
                   f"{_TV}:deeplabv3_mobilenet_v3_large", edgevit=False))
register(DenseArch("ssdlite320_mobilenet_v3_large", "detect", "torchvision's SSDLite on MobileNetV3-Large",
                   f"{_TV}:ssdlite320_mobilenet_v3_large", size=320, resize="stretch", outputs="raw",
                   decoding="ssd", label_offset=1, edgevit=False))
register(DenseArch("fasterrcnn_mobilenet_v3_large_320_fpn", "detect",
                   "torchvision's Faster R-CNN on MobileNetV3-Large (320)",
                   f"{_TV}:fasterrcnn_mobilenet_v3_large_320_fpn", size=320, outputs="detections", label_offset=1,
                   edgevit=False))
