"""Value checks for options, shared by the command line (as argparse `type=`) and config files.

Each checker takes the text of a flag or the value of a YAML key and returns the value, or raises
`argparse.ArgumentTypeError` saying what was expected; argparse then prints one line naming the flag, and
`check_value` turns it into a `ConfigError` naming the config file and key. One table of checks serves
both, so a value refused on the command line is refused in a config file too."""
from __future__ import annotations

import argparse
import json
import math
import os
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import yaml

from ..errors import ConfigError
from .inputs import require_file

__all__ = ["number", "positive_int", "nonneg_int", "positive_float", "nonneg_float", "probability",
           "rate", "crop_fraction", "crop_pct", "thread_count", "open_fraction", "image_size", "choice", "json_object",
           "check_value",
           "load_config", "read_config", "MAX_IMAGE_SIZE", "MAX_THREADS"]

# Largest input side accepted anywhere. EdgeViT's global attention runs over one delegate token per 4x4 window of
# the stride-4 stage: (side / 16)^2 tokens, an attention matrix of (side / 16)^4 floats per head; at 4096 px that
# is 65,536^2 x 4 bytes = 17 GB for one head of one image (the process is killed for memory with nothing said),
# at 2048 px 1 GB. Beyond 2048 a typo would only end in an out-of-memory kill.
MAX_IMAGE_SIZE = 2048
# Most compute threads accepted: far beyond the cores only oversubscribes (and 100,000 threads hang OpenMP or crash
# the runtimes' thread pools).
MAX_THREADS = max(8, 4 * (os.cpu_count() or 1))


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
crop_fraction = number(float, 0, 1, lo_open=True)  # RandomResizedCrop's scale range
# crop_pct: resize to size / crop_pct, then center-crop size. Below 1/4 the resize is over 4x the input size
# (1e-9 overflows the resize); timm's pretrained configs use 0.8 to 1.0.
crop_pct = number(float, 0.25, 1, what="a center-crop fraction")
thread_count = number(int, 1, MAX_THREADS, what="a thread count")
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


def check_pair(values: Sequence[float], flag: str) -> None:
    """Two values lo <= hi (RandomResizedCrop's scale and ratio ranges)."""
    shown = " ".join(map(str, values))
    if len(values) != 2:
        raise ConfigError(f"{flag} {shown}: expected two values (low high), got {len(values)}")
    if values[0] > values[1]:
        raise ConfigError(f"{flag} {shown}: the low value comes first (expected {values[1]} {values[0]})")


# An option's check for config files: (checker or bool / str / None, nargs: None = one value, 0 = a list of any
# length, k = exactly k values).
OptionCheck = Tuple[Optional[Callable[[Any], Any]], Optional[int]]


def load_config(path: "os.PathLike | str") -> Dict[str, Any]:
    """A YAML file of option: value pairs; unreadable or malformed -> one `ConfigError` naming the file."""
    path = require_file(path, "config file")
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path}: not a text file (expected YAML)") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"config file {path}: not valid YAML ({what}{at})") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"config file {path}: expected a mapping of option: value, got {type(cfg).__name__}")
    return cfg


def read_config(path: str, checks: Dict[str, OptionCheck]) -> Dict[str, Any]:
    """The options of a YAML config file, each through the same check as its flag: the one config reader of
    every command. Keys may use '-' or '_'; unknown keys, wrong types and values the flag would refuse are
    `ConfigError`s naming the file and the key."""
    loaded = load_config(path)
    out: Dict[str, Any] = {}
    unknown = sorted(k for k in loaded if str(k).replace("-", "_") not in checks)
    if unknown:
        raise ConfigError(f"config file {path}: unknown option(s) {unknown}; known: {sorted(checks)}")
    for k, v in loaded.items():
        key = str(k).replace("-", "_")
        check, nargs = checks[key]
        where = f"config file {path}: {k}"
        if v is None:
            out[key] = None
        elif check is bool:
            if not isinstance(v, bool):
                raise ConfigError(f"{where}: {v!r}: expected true or false")
            out[key] = v
        elif check is None or check is str:
            out[key] = v if check is None else str(v)
        else:
            if nargs is not None and not isinstance(v, (list, tuple)):
                v = [v]
            out[key] = check_value(check, v, where, nargs)
    return out
