"""Writing files so that nothing that exists is lost: atomic paths (with companion files), directories replaced
whole, a full disk as one error, helper names that fit the file system, and the JSON every command writes."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Sequence

from ..errors import DiskFullError, OutputError

# errno values that mean "the file system has no room": the full disk, a quota, a file-size limit
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
# a directory written by replace_dir carries this file, so that replacing it again can tell it from a
# directory of the user's (whose other files a replacement would delete)
OUTPUT_MARKER = ".edgevit-output"


def _name_max(directory: os.PathLike | str) -> int:
    """The longest file name (bytes) the file system of `directory` (or its nearest existing ancestor) takes."""
    d = Path(os.path.abspath(directory))
    while d.parent != d:
        try:
            if d.exists():
                break
        except OSError:  # (a component too long: Python 3.11's exists() raises ENAMETOOLONG)
            pass
        d = d.parent
    try:
        return os.pathconf(d, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def helper_name(name: str, tag: str, directory: os.PathLike | str = ".") -> str:
    """The hidden `.NAME{tag}` name of a file the package puts beside the user's NAME (a lock, a temporary), short
    enough for the file system wherever NAME itself fits: a long NAME is cut and a digest of it added (a legal
    250-byte name plus `.lock` is over Linux's 255-byte limit). Written by hand: no library names sibling files."""
    room = _name_max(directory) - 48  # for mkstemp's random part and .tmp, and a writer's own suffix (".strip")
    full = f".{name}{tag}"
    if len(full.encode(errors="surrogateescape")) <= room:
        return full
    digest = hashlib.sha256(name.encode(errors="surrogateescape")).hexdigest()[:16]
    keep = name.encode(errors="surrogateescape")[: max(0, room - len(tag.encode()) - 18)]
    return f".{keep.decode(errors='ignore')}-{digest}{tag}"


def check_name_fits(path: os.PathLike | str, what: str) -> None:
    """An `OutputError` naming `what` when the file system refuses `path`'s name as too long (the one line instead
    of the traceback an ENAMETOOLONG gives half-way through a command)."""
    p = Path(os.path.abspath(path))
    limit = _name_max(p.parent)
    for part in p.parts:
        if len(part.encode(errors="surrogateescape")) > limit:
            raise OutputError(f"{what} {path}: the name {part[:40]}... is {len(part.encode())} bytes, over the "
                              f"{limit} bytes the file system takes; choose a shorter name")


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _free_bytes(directory: Path) -> Optional[int]:
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def is_disk_full(e: BaseException, directory: os.PathLike | str) -> bool:
    """Whether `e` means the file system of `directory` ran out of room. An OSError says so by errno; writers
    that wrap the failure (torch.save's zip writer raises a RuntimeError "file write failed", safetensors its own
    error) are judged by the room left, which the caller must read before the partial file is removed."""
    for err in (e, e.__cause__, e.__context__):
        if isinstance(err, OSError) and err.errno in _NO_SPACE:
            return True
    if isinstance(e, OSError):
        return False
    free = _free_bytes(Path(directory))
    return free is not None and free < 1 << 16


def disk_full_error(what: os.PathLike | str, directory: os.PathLike | str) -> DiskFullError:
    return DiskFullError(f"{what}: could not be written, no space left on the device holding {directory}; "
                         f"nothing was half-written, and a {Path(what).name} that existed there is intact")


@contextlib.contextmanager
def atomic_path(path: os.PathLike | str,
                companions: Optional[Callable[[Path], Sequence[Path]]] = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync it and rename it over `path`.

    On any error the temporary file is removed and an existing `path` is left untouched; a full disk is one
    `DiskFullError` naming `path`. The file gets the mode a plain open() would give (writers such as
    safetensors recreate the temporary file, so the mode is set after they ran).

    `companions(p)`: the other files a writer puts beside `p` (OpenVINO's `.bin` beside its `.xml`, ncnn's
    weights beside its `.param`), found by their name. Then the yielded path keeps `path`'s own name, inside a
    hidden temporary folder beside it, so that the writer names its companions as they will be named; on
    success each companion is renamed into place first and `path` last: the main file, which names the others,
    is the commit (a reader that finds it finds its companions)."""
    path = Path(path)
    if companions is not None:
        with _atomic_group(path, companions) as tmp:
            yield tmp
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=helper_name(path.name, ".", path.parent), suffix=".tmp", dir=path.parent)
    except OSError as e:
        if e.errno in _NO_SPACE:
            raise disk_full_error(path, path.parent) from e
        raise
    os.close(fd)
    tmp = Path(tmp)
    try:
        try:
            yield tmp
            _commit(tmp, path)
        except Exception as e:
            if isinstance(e, DiskFullError) or is_disk_full(e, path.parent):  # (judged before the file is removed)
                raise disk_full_error(path, path.parent) from e
            raise
    finally:
        tmp.unlink(missing_ok=True)


def _commit(tmp: Path, path: Path) -> None:
    """fsync `tmp`, give it a plain open()'s mode, rename it over `path`, fsync the folder."""
    os.chmod(tmp, 0o666 & ~_umask())
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _temp_dir_beside(path: Path) -> Path:
    """A new hidden `.NAME.*.tmp` folder beside `path` (what a killed command leaves is removed by the next one
    that locks `path`); a full disk is one `DiskFullError` naming `path`."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=helper_name(path.name, ".", path.parent), suffix=".tmp",
                                     dir=path.parent))
    except OSError as e:
        if e.errno in _NO_SPACE:
            raise disk_full_error(path, path.parent) from e
        raise


@contextlib.contextmanager
def _atomic_group(path: Path, companions: Callable[[Path], Sequence[Path]]) -> Iterator[Path]:
    folder = _temp_dir_beside(path)
    tmp = folder / path.name
    try:
        try:
            yield tmp
            written = [Path(c) for c in companions(tmp)]
            missing = [c.name for c in (tmp, *written) if not c.is_file()]
            if missing:  # the writer did not write what its format holds: a bug, not the user's input
                raise RuntimeError(f"{path}: the writer left no {', '.join(missing)}")
            for c in written:
                _commit(c, path.parent / c.name)
            _commit(tmp, path)
        except Exception as e:
            if isinstance(e, DiskFullError) or is_disk_full(e, path.parent):
                raise disk_full_error(path, path.parent) from e
            raise
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def require_room(path: os.PathLike | str, nbytes: int) -> None:
    """A `DiskFullError` unless the file system of `path` has `nbytes` free (plus 1 MiB): for writers that abort
    the process instead of raising when the disk fills (torch's zip writer under TorchScript saves)."""
    path = Path(path)
    free = _free_bytes(path.parent)
    if free is not None and free < nbytes + (1 << 20):
        raise disk_full_error(path, path.parent)


def append_line(path: os.PathLike | str, line: str) -> None:
    """Append one line, flushed and fsynced. A full disk truncates the file back to what it held (no half line
    left behind) and is one `DiskFullError`."""
    path = Path(path)
    with open(path, "a") as f:
        size = f.tell()
        try:
            f.write(line.rstrip("\n") + "\n")
            f.flush()
            os.fsync(f.fileno())
        except OSError as e:
            if e.errno in _NO_SPACE:
                f.truncate(size)
                raise disk_full_error(path, path.parent) from e
            raise


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


def _tree(root: Path) -> List[str]:
    """Every file and directory below `root`, as relative paths."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def unmarked_entries(path: os.PathLike | str) -> List[str]:
    """What replacing an existing directory would delete that an edgevit command did not write: everything in it
    that is not listed in its `OUTPUT_MARKER` (the manifest `replace_dir` writes: a file added there afterwards,
    by the user, is not in it)."""
    p = Path(path)
    if not p.is_dir():
        return []
    marker = p / OUTPUT_MARKER
    written = set(marker.read_text().splitlines()[1:]) if marker.is_file() else set()
    return [e for e in _tree(p) if e != OUTPUT_MARKER and e not in written and not e.endswith(".lock")]


@contextlib.contextmanager
def replace_dir(path: os.PathLike | str) -> Iterator[Path]:
    """Yield a new temporary directory beside `path`; on success it takes `path`'s place (an existing
    `path` is moved aside and removed only after the new one is in place), so readers see the old
    directory or the whole new one, never a mix with stale files. On error the temporary one is removed;
    a full disk is one `DiskFullError`. The new directory has the mode a plain mkdir gives and carries
    `OUTPUT_MARKER`."""
    path = Path(os.path.abspath(path))  # "." and "dir/.." have no name to put a sibling beside
    tmp = _temp_dir_beside(path)
    try:
        try:
            yield tmp
            # the manifest: what this command wrote (a later replacement deletes only directories holding no more)
            (tmp / OUTPUT_MARKER).write_text("\n".join(["written by edgevit:", *_tree(tmp)]) + "\n")
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
        except Exception as e:
            if is_disk_full(e, path.parent):
                raise disk_full_error(path, path.parent) from e
            raise
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=helper_name(path.name, ".", path.parent), suffix=".old",
                                        dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
