"""Value checks for options, shared by the command line (as argparse `type=`) and config files.

Each checker takes the text of a flag or the value of a YAML key and returns the value, or raises
`argparse.ArgumentTypeError` saying what was expected; argparse then prints one line naming the flag, and
`check_value` turns it into a `ConfigError` naming the config file and key. One table of checks serves
both, so a value refused on the command line is refused in a config file too."""
from __future__ import annotations

import argparse
import json
import math
from typing import Any, Callable, Optional, Sequence

from ..errors import ConfigError

__all__ = ["number", "positive_int", "nonneg_int", "positive_float", "nonneg_float", "probability",
           "rate", "crop_fraction", "open_fraction", "image_size", "choice", "json_object", "check_value",
           "MAX_IMAGE_SIZE"]

# Largest input side accepted anywhere: 4096 px already needs ~10 GB of activations for EdgeViT-S training;
# beyond it a typo (100000) would only end in an out-of-memory kill after minutes.
MAX_IMAGE_SIZE = 4096


def number(kind: type, lo: Optional[float] = None, hi: Optional[float] = None, *, lo_open: bool = False,
           hi_open: bool = False, multiple: Optional[int] = None, what: str = "") -> Callable[[Any], Any]:
    """A checker for an int or float in [lo, hi] (ends open where asked), finite, optionally a multiple."""
    def parse(value: Any) -> Any:
        if isinstance(value, bool) or value is None:
            raise argparse.ArgumentTypeError(f"{value!r}: expected {desc}")
        try:
            if kind is int and isinstance(value, float):
                if not value.is_integer():
                    raise ValueError
                v = int(value)
            else:
                v = kind(value)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"{value!r}: expected {desc}") from None
        bad = (kind is float and not math.isfinite(v)) \
            or (lo is not None and (v <= lo if lo_open else v < lo)) \
            or (hi is not None and (v >= hi if hi_open else v > hi)) \
            or (multiple is not None and v % multiple)
        if bad:
            raise argparse.ArgumentTypeError(f"{value!r}: expected {desc}")
        return v

    parts = [what or ("an integer" if kind is int else "a number")]
    if lo is not None and hi is not None:
        parts.append(f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}")
    elif lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo:g}")
    elif hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {hi:g}")
    if multiple:
        parts.append(f"and a multiple of {multiple}")
    desc = " ".join(parts)
    parse.__name__ = desc
    return parse


positive_int = number(int, 1)
nonneg_int = number(int, 0)
positive_float = number(float, 0, lo_open=True)
nonneg_float = number(float, 0)
probability = number(float, 0, 1)
rate = number(float, 0, 1, hi_open=True)  # drop-path, dropout, label smoothing: 1 would erase everything
crop_fraction = number(float, 0, 1, lo_open=True)  # crop_pct: resize to size / crop_pct, crop size
open_fraction = number(float, 0, 1, lo_open=True, hi_open=True)
image_size = number(int, 32, MAX_IMAGE_SIZE, multiple=32, what="an image side in pixels")


def choice(*options: str) -> Callable[[Any], str]:
    """A checker for one of `options` (argparse's `choices=` says the same on the command line)."""
    def parse(value: Any) -> str:
        if value not in options:
            raise argparse.ArgumentTypeError(f"{value!r}: expected one of {', '.join(options)}")
        return value
    parse.__name__ = "one of " + ", ".join(options)
    return parse


def json_object(value: Any) -> dict:
    """A JSON object given as text (command line) or a mapping (config file)."""
    if isinstance(value, dict):
        return value
    try:
        obj = json.loads(value)
    except (TypeError, ValueError) as e:
        raise argparse.ArgumentTypeError(f"{value!r}: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise argparse.ArgumentTypeError(f"{value!r}: expected a JSON object such as '{{\"depths\": [1, 1, 1, 1]}}'")
    return obj


def check_value(check: Callable[[Any], Any], value: Any, where: str, nargs: Optional[int] = None) -> Any:
    """Apply a checker to a config-file value (a list for options that take several); errors name `where`."""
    try:
        if isinstance(value, (list, tuple)) and nargs is not None:
            if nargs > 0 and len(value) != nargs:
                raise argparse.ArgumentTypeError(f"{list(value)!r}: expected {nargs} values")
            return [check(v) for v in value]
        return check(value)
    except argparse.ArgumentTypeError as e:
        raise ConfigError(f"{where}: {e}") from None


def check_pair(values: Sequence[float], flag: str, increasing: bool = True) -> None:
    """Two values lo <= hi (RandomResizedCrop's scale and ratio ranges)."""
    shown = " ".join(map(str, values))
    if len(values) != 2:
        raise ConfigError(f"{flag} {shown}: expected two values (low high), got {len(values)}")
    if increasing and values[0] > values[1]:
        raise ConfigError(f"{flag} {shown}: the low value comes first (expected {values[1]} {values[0]})")
