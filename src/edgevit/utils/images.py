"""One image reader for every command: 8-bit RGB by the image's real value range, as a viewer shows it
(EXIF orientation applied, transparency over white), or one clear error.

PIL's `convert("RGB")` clips 16-bit and float images to 0..255 instead of scaling them, so a 16-bit scan
(0..65535) becomes almost all white and a float image in 0..1 almost all black: the model then answers
confidently and wrongly. Here high-bit-depth and float images are scaled by their range first."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DataError
from .inputs import require_file

__all__ = ["read_image", "read_image_for", "decode_image", "as_shown", "shown_rgb8", "ShownRGB8", "to_rgb8",
           "eval_transform", "size_hw", "warn_if_not_trained_size"]


def size_hw(img_size) -> tuple:
    """(H, W) of an image size given as one side (square) or (H, W)."""
    if isinstance(img_size, int):
        return img_size, img_size
    h, w = img_size
    return int(h), int(w)


def warn_if_not_trained_size(size, trained, what: str) -> None:
    """A warning when `size` (one side or (H, W)) differs from the size the weights were trained at (`trained`,
    None when unknown): a model run at another size than it learned answers worse, often much worse."""
    if size is None or trained is None or size_hw(size) == size_hw(trained):
        return
    import warnings

    h, w = size_hw(size)
    th, tw = size_hw(trained)
    warnings.warn(f"{what} at {h}x{w}, but the model was trained at {th}x{tw}: expect lower accuracy than at "
                  "its training size")


def eval_transform(img_size, crop_pct: float = 0.875, interpolation: str = "bicubic", mean=None, std=None):
    """The standard center crop (timm's eval transform): resize to img_size / crop_pct, crop img_size.
    `img_size` an int (square) or (height, width). Used by eval, predict, training's val split and int8
    calibration alike."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
    return create_transform(img_size, is_training=False, crop_pct=crop_pct, interpolation=interpolation,
                            mean=mean or IMAGENET_DEFAULT_MEAN, std=std or IMAGENET_DEFAULT_STD)

# PIL modes holding more than 8 bits per sample (integer) or floats.
_WIDE_INT = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535}


def to_rgb8(img: Image.Image, name: str = "image") -> Image.Image:
    """An RGB image with 8 bits per channel, scaled by the source's range (see the module docstring).

    16-bit modes are scaled by 65535/255. 32-bit integer images ("I", as PIL opens many 16-bit PNGs) by the
    smallest of 8/16 bits that holds their maximum. Float images ("F") in [0, 1] are scaled by 255, in
    [0, 255] kept; anything else (negative, above 255, NaN) has no range we could know: a `DataError`."""
    mode = img.mode
    if mode not in _WIDE_INT and mode not in ("I", "F"):
        return img.convert("RGB")
    a = np.asarray(img, dtype=np.float64)
    if mode in _WIDE_INT:
        scale = 255.0 / 65535.0
    elif mode == "I":
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if lo < 0 or hi > 65535:
            raise DataError(f"{name}: 32-bit integer pixels in [{lo:g}, {hi:g}]; expected 8- or 16-bit values")
        scale = 1.0 if hi <= 255 else 255.0 / 65535.0
    else:
        if not np.isfinite(a).all():
            raise DataError(f"{name}: float pixels include NaN or infinity")
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if lo < 0 or hi > 255:
            raise DataError(f"{name}: float pixels in [{lo:g}, {hi:g}]; expected values in [0, 1] or [0, 255]")
        scale = 255.0 if hi <= 1.0 else 1.0
    grey = np.clip(np.rint(a * scale), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


def as_shown(img: Image.Image, orientation: bool = True) -> Image.Image:
    """The picture a person sees: the EXIF orientation applied (phones store a portrait photo as landscape pixels
    plus a rotation tag), and transparency composited on white (what a viewer or a browser shows on a page; strokes
    carried by the alpha channel alone would vanish in a plain RGB conversion, which drops alpha over black).
    `orientation=False` keeps the stored pixel grid (annotations made on it: see `read_image_for`)."""
    if orientation:
        img = ImageOps.exif_transpose(img)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba).convert("RGB")
    return img


def shown_rgb8(img: Image.Image, name: str = "image", orientation: bool = True) -> Image.Image:
    """A decoded image as the model takes it: as shown (`as_shown`), 8-bit RGB by its value range (`to_rgb8`)."""
    return to_rgb8(as_shown(img, orientation), name)


class ShownRGB8:
    """`shown_rgb8` as the first step of a transform, for readers that decode images themselves (timm's
    WebDataset and tar readers, told to keep the image's own mode)."""

    def __init__(self, transform, name: str = "a sample"):
        self.transform, self.name = transform, name

    def __call__(self, img):
        return self.transform(shown_rgb8(img, self.name))


def decode_image(source, name: str, orientation: bool = True) -> Image.Image:
    """The one image decoder (folders, shards, tars, calibration, dense data): a path or a binary file object as
    8-bit RGB as shown (`as_shown`), scaled by its value range (`to_rgb8`); anything undecodable is one
    `DataError` naming `name`."""
    try:
        with Image.open(source) as im:
            im.load()
            return shown_rgb8(im, name, orientation)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{name}: not a readable image ({type(e).__name__}: {e})") from None


def read_image(path: str | Path, what: str = "image", orientation: bool = True) -> Image.Image:
    """The image at `path` as 8-bit RGB, as shown; a missing file, a directory or an undecodable file is one
    `UserError` naming it."""
    path = require_file(path, what)
    return decode_image(path, f"{what} {path}", orientation)


def read_image_for(path: str | Path, size: tuple, what: str = "image") -> Image.Image:
    """The image at `path` on the pixel grid its annotations (boxes, masks, a label map) of `size` (W, H) were
    made on: as shown when that fits (tools that honour EXIF), else as stored when that fits (COCO-style
    width/height of the stored pixels); the caller reports a size that fits neither."""
    img = read_image(path, what)
    if img.size != tuple(size):
        stored = read_image(path, what, orientation=False)
        if stored.size == tuple(size):
            return stored
    return img
