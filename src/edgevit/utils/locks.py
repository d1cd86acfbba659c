"""One writer per output: a command holds an exclusive lock on each output it writes (filelock's flock-based
`FileLock`: released by the kernel even when the process is killed), so a second command writing the same output
is refused by name instead of both reporting success and one silently replacing the other."""
from __future__ import annotations

import atexit
import contextlib
import errno
import os
import shutil
from pathlib import Path
from typing import Dict, Optional, Tuple

from filelock import FileLock, Timeout

from ..errors import OutputError
from .writes import helper_name

_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_HELD: Dict[Path, Tuple[FileLock, str]] = {}  # lock file -> (its lock, what the command calls the output)


def _lock_file_for(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    return path.parent / helper_name(path.name, ".lock", path.parent)


def holds_output(path: os.PathLike | str) -> Optional[str]:
    """What this process called the output `path` when it locked it (e.g. "--json"), or None if it holds no lock
    on it."""
    held = _HELD.get(_lock_file_for(Path(path)))
    return held[1] if held else None


def _write_pid(fd: int) -> None:
    """The holder's pid in the lock file (what a refused second command names)."""
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError as e:  # a full disk: the lock holds all the same (flock), only the pid could not be written
        if e.errno not in _NO_SPACE:
            raise


def lock_output(path: os.PathLike | str, what: str, distinct: bool = False) -> bool:
    """Hold an exclusive lock on the output `path` (a file or a directory) until `release_outputs()` or the
    process ends. The lock is a hidden `.NAME.lock` file beside the output (a stale file left by a kill is
    reused). Returns whether this call took the lock (False: this process held it already).

    `distinct`: `path` is one of several outputs of one command, each its own file: one this process already
    holds under another name (`--plot F` after `--json F`) is refused, naming both."""
    lock_file = _lock_file_for(path)
    had = holds_output(path)
    if had is not None:
        if distinct and had != what:
            raise OutputError(f"{what} {path}: is also the {had} output; give each output a file of its own")
        return False
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_file, blocking=False, thread_local=False, on_acquired=_write_pid)
    try:
        lock.acquire()
    except Timeout:
        try:
            holder = lock_file.read_text(errors="replace").strip()[:20]
        except OSError:
            holder = ""
        raise OutputError(f"{what} {path}: another edgevit command (pid {holder or '?'}) is writing it; wait for "
                          "it to finish, or choose another output") from None
    _HELD[lock_file] = (lock, what)
    _remove_stale_temporaries(Path(os.path.abspath(path)))
    return True


def release_output(path: os.PathLike | str) -> None:
    """Give up this process's lock on one output (a library caller that locked it is done with it)."""
    lock_file = _lock_file_for(Path(path))
    held = _HELD.pop(lock_file, None)
    if held:
        _release(lock_file, held[0])


def _release(lock_file: Path, lock: FileLock) -> None:
    """The lock file removed while still held (filelock's native lock keeps it; a command that waits on the removed
    file takes it anyway, filelock checks the file is still linked), then released."""
    with contextlib.suppress(OSError):
        lock_file.unlink()
    with contextlib.suppress(OSError):
        lock.release()


def _remove_stale_temporaries(path: Path) -> None:
    """Temporaries of `path` left by a command that was killed (SIGKILL, power): `atomic_path`'s `.NAME.*.tmp` and
    `replace_dir`'s `.NAME.*.tmp` / `.NAME.*.old`. Safe while this process holds the output's lock: no other
    writer of it runs."""
    try:
        siblings = list(path.parent.iterdir())
    except OSError:
        return
    for p in siblings:
        if p.name.startswith(helper_name(path.name, ".", path.parent)) and p.name.endswith((".tmp", ".old")):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def release_outputs() -> None:
    """Give up every output lock this process holds (the command is done)."""
    while _HELD:
        lock_file, (lock, _) = _HELD.popitem()
        _release(lock_file, lock)


atexit.register(release_outputs)
