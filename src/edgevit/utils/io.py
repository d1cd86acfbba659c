"""Small file helpers shared by every command: atomic writes, input checks and JSON output."""
from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

from ..errors import MissingFileError


@contextlib.contextmanager
def atomic_path(path: os.PathLike | str) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync it and rename it over `path`.

    On any error the temporary file is removed and an existing `path` is left untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the mode a plain open() would
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: os.PathLike | str, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def to_plain(o: Any) -> Any:
    """`o` with only str / int / float / bool / None, lists and str-keyed dicts: what JSON, YAML and a
    `torch.load(weights_only=True)` checkpoint hold. Tensors and numpy scalars become numbers, paths and
    anything else their text. The one converter for every file this package writes."""
    if isinstance(o, dict):
        return {str(k): to_plain(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [to_plain(v) for v in o]
    if o is None or isinstance(o, (str, int, float, bool)):
        return o
    if hasattr(o, "item") and getattr(o, "ndim", 0) == 0:
        return o.item()
    return str(o)


def write_json_atomic(path: os.PathLike | str, obj: Any) -> Path:
    """`obj` (through `to_plain`) as an indented JSON file, written atomically."""
    return write_text_atomic(path, json.dumps(to_plain(obj), indent=2) + "\n")


def print_json(obj: Any, file=None) -> None:
    """One JSON document on stdout (what every command's JSON output is)."""
    json.dump(to_plain(obj), file or sys.stdout, indent=2)
    (file or sys.stdout).write("\n")


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


@contextlib.contextmanager
def replace_dir(path: os.PathLike | str) -> Iterator[Path]:
    """Yield a new temporary directory beside `path`; on success it takes `path`'s place (an existing
    `path` is moved aside and removed only after the new one is in place), so readers see the old
    directory or the whole new one, never a mix with stale files. On error the temporary one is removed."""
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
