"""Images for training and evaluation: ImageFolder splits checked before any work, a sample that cannot be read
named (`SampleError`), and the recipe's transforms (timm's)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from timm.data import auto_augment as _auto_augment
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from ..errors import MissingFileError, UserError
from ..utils.images import eval_transform, read_image
from ..utils.inputs import require_dir

__all__ = ["SampleError", "UnreadableImageError", "CheckedImageFolder", "check_split_dir", "check_data_root",
           "train_transform", "eval_transform", "sample_error_message"]


def _posterize_any_bits(img: Image.Image, bits_to_keep: int, **kwargs) -> Image.Image:
    """timm's RandAugment asks PosterizeIncreasing for 0 bits at magnitude 10, which rand-m9-mstd0.5 reaches
    (9 + noise, clipped at 10). Pillow >= 11 rejects bits < 1 with a ValueError that would end the run;
    older Pillow returned the all-zero image that keeping 0 bits means, so that is what this returns."""
    if bits_to_keep < 1:
        return Image.new(img.mode, img.size)
    return _timm_posterize(img, bits_to_keep, **kwargs)


_timm_posterize = _auto_augment.posterize


def _fix_posterize(transform):
    """Swap timm's posterize for `_posterize_any_bits` in the augmentation ops of this transform only (timm's
    own table is left alone, so importing edgevit changes nothing for other users of timm)."""
    for t in getattr(transform, "transforms", []):
        for op in getattr(t, "ops", []):
            if getattr(op, "aug_fn", None) is _timm_posterize:
                op.aug_fn = _posterize_any_bits
    return transform


class SampleError(UserError):
    """A sample the loader cannot use (an image PIL cannot decode, a label outside the classes); the message
    names it. Raised in a DataLoader worker, torch re-raises it with the worker's traceback in the message:
    `sample_error_message` gives back the one line."""


class UnreadableImageError(SampleError):
    """An image file PIL cannot decode; the message names the file."""


def sample_error_message(e: BaseException) -> str:
    """The error's own line, also for an error re-raised by a DataLoader worker (whose message carries the
    worker's whole traceback, ending with 'module.ErrorType: message')."""
    lines = str(e).strip().splitlines()
    if len(lines) > 1 and "Original Traceback" in str(e):
        return lines[-1].split(f"{type(e).__name__}: ", 1)[-1].strip()
    return str(e)


def _load_rgb(path: str) -> Image.Image:
    try:  # the shared reader: 16-bit / float images scaled by their range, not clipped
        return read_image(path)
    except UserError as e:  # truncated, corrupt or not an image: name the file instead of a PIL traceback
        raise UnreadableImageError(f"cannot read {e}") from None  # e: "image PATH: what is wrong"


class CheckedImageFolder(ImageFolder):
    """torchvision ImageFolder whose loader names the file it cannot read."""

    def __init__(self, root: str | Path, transform=None, classes: Optional[Sequence[str]] = None):
        self._fixed_classes = list(classes) if classes is not None else None
        super().__init__(str(root), transform=transform, loader=_load_rgb)

    def find_classes(self, directory: str) -> Tuple[List[str], dict]:
        classes, _ = super().find_classes(directory)
        if self._fixed_classes is not None:
            classes = self._fixed_classes  # e.g. eval with the training class list
        return classes, {c: i for i, c in enumerate(classes)}


def _class_dirs(d: Path) -> List[str]:
    return sorted(e.name for e in d.iterdir() if e.is_dir() and not e.name.startswith("."))


def check_split_dir(d: Path, what: str) -> List[str]:
    """The class folder names of an ImageFolder directory, or a clear error if it is missing or empty."""
    d = require_dir(d, what, f"ImageFolder layout: {d}/<class>/<image>")
    classes = _class_dirs(d)
    if not classes:
        raise UserError(f"{what} {d}: no class folders inside (expected ImageFolder layout: {d}/<class>/<image>)")
    exts = tuple(IMG_EXTENSIONS)
    for c in classes:
        if not any(f.is_file() and f.name.lower().endswith(exts) for f in (d / c).iterdir()):
            raise UserError(f"{what} {d}: class folder {c!r} holds no images ({', '.join(exts)})")
    return classes


def check_data_root(root: str | Path, train: str = "train", val: str = "val") -> Tuple[Path, Path, List[str]]:
    """root/<train> and root/<val> with the same class folders; returns (train_dir, val_dir, classes)."""
    root = Path(root)
    if not root.is_dir():
        raise MissingFileError(f"{root}: no such directory (expected {root}/{train} and {root}/{val})", option="data")
    train_classes = check_split_dir(root / train, "train split")
    val_classes = check_split_dir(root / val, "val split")
    if train_classes != val_classes:
        only_t = sorted(set(train_classes) - set(val_classes))
        only_v = sorted(set(val_classes) - set(train_classes))
        raise UserError(f"{root}: {train}/ and {val}/ have different class folders "
                        f"(only in {train}: {only_t[:10]}, only in {val}: {only_v[:10]})", option="data")
    return root / train, root / val, train_classes


def train_transform(cfg: dict, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD):
    return _fix_posterize(create_transform(
        cfg["img_size"], is_training=True, scale=tuple(cfg["scale"]), ratio=tuple(cfg["ratio"]),
        hflip=cfg["hflip"], color_jitter=cfg["color_jitter"], auto_augment=cfg["aa"],
        interpolation=cfg["train_interpolation"], mean=mean, std=std,
        re_prob=cfg["reprob"], re_mode=cfg["remode"], re_count=cfg["recount"]))
