"""Checks of the paths and files a user names: one error naming the argument and what was expected."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import MissingFileError


def require_file(path: os.PathLike | str, what: str) -> Path:
    """`path` as a Path if it is an existing file; else a `MissingFileError` naming `what` and saying whether
    nothing is there or a directory is."""
    p = Path(path)
    if p.is_dir():
        raise MissingFileError(f"{what} {p}: is a directory; expected a file")
    if not p.is_file():
        raise MissingFileError(f"{what} {p}: " + ("a broken or looping symbolic link" if p.is_symlink()
                                                    else "no such file"))
    return p


def require_dir(path: os.PathLike | str, what: str, expected: str = "") -> Path:
    """`path` as a Path if it is an existing directory; else a `MissingFileError` naming `what`."""
    p = Path(path)
    hint = f" (expected {expected})" if expected else ""
    if p.is_file():
        raise MissingFileError(f"{what} {p}: is a file; expected a directory{hint}")
    if not p.is_dir():
        raise MissingFileError(f"{what} {p}: no such directory{hint}")
    return p


def is_within(path: os.PathLike | str, directory: os.PathLike | str) -> bool:
    """Whether `path` is `directory` or lies inside it (symbolic links resolved)."""
    p, d = Path(os.path.realpath(path)), Path(os.path.realpath(directory))
    return p == d or d in p.parents


def read_json(path: os.PathLike | str, what: str) -> Any:
    """A JSON document from a file the user named; anything else (missing, a directory, binary, malformed)
    is one `DataError` naming `what` and the file."""
    from ..errors import DataError

    p = require_file(path, what)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise DataError(f"{what} {p}: not a text file (expected JSON)") from None
    except ValueError as e:
        raise DataError(f"{what} {p}: not valid JSON ({e})") from None
