"""Keeping native libraries' start-up chatter out of the user's terminal.

ExecuTorch's C++ runtime logs its CPU probing and thread-pool set-up (`cpuinfo_utils.cpp`, `threadpool.cpp`)
straight to file descriptor 2, where Python's `warnings`/`logging` filters cannot reach. No library option
turns those lines off in the released wheels, so this captures fd 2 around the calls that print them and
writes back every line that is not such a known start-up message: real errors still reach the user."""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from typing import Iterator, Sequence

__all__ = ["NATIVE_NOISE", "filter_native_stderr", "capture_native_output", "NativeOutput"]

NATIVE_NOISE = ("cpuinfo_utils.cpp", "threadpool.cpp:")


@contextlib.contextmanager
def filter_native_stderr(patterns: Sequence[str] = NATIVE_NOISE) -> Iterator[None]:
    """Capture what native code writes to fd 2 inside the block; re-emit the lines matching no pattern."""
    fd = 2  # native code writes to the process's fd 2, whatever Python's sys.stderr is
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), fd)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            tmp.seek(0)
            kept = [ln for ln in tmp.read().splitlines(keepends=True)
                    if not any(p.encode() in ln for p in patterns)]
            if kept:
                os.write(fd, b"".join(kept))


class NativeOutput:
    """What native code wrote inside a `capture_native_output` block (filled when the block ends)."""

    text: str = ""


@contextlib.contextmanager
def capture_native_output() -> Iterator[NativeOutput]:
    """Capture everything native code writes to fd 1 and fd 2 inside the block, for converters that print their
    progress there (MNN's converter): nothing reaches the terminal; the caller reads `.text` to explain a failure."""
    captured = NativeOutput()
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 1)
        os.dup2(tmp.fileno(), 2)
        try:
            yield captured
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, old in zip((1, 2), saved):
                os.dup2(old, fd)
                os.close(old)
            tmp.seek(0)
            captured.text = tmp.read().decode(errors="replace")
