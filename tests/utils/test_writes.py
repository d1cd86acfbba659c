"""The shared writers: a full disk (injected ENOSPC, and torch.save's wrapped form) is one DiskFullError and
leaves what existed intact; an appended line is never left half written; an output's lock (filelock) is taken,
refused to a second holder with its pid, reused after a kill and removed after use."""
import errno

import pytest

from edgevit.errors import DiskFullError
from edgevit.utils import locks
from edgevit.utils import writes as eio


def test_a_full_disk_during_an_atomic_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "last.pth"
    target.write_bytes(b"the run so far")
    with pytest.raises(DiskFullError, match="no space left.*intact"):
        with eio.atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert target.read_bytes() == b"the run so far"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]  # no temporary left


def test_torch_saves_wrapped_failure_is_judged_by_the_room_left(tmp_path, monkeypatch):
    monkeypatch.setattr(eio, "_free_bytes", lambda d: 0)  # the file system is full
    with pytest.raises(DiskFullError):
        with eio.atomic_path(tmp_path / "x.pth"):
            raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")
    monkeypatch.setattr(eio, "_free_bytes", lambda d: 1 << 30)  # room left: a real error, not a full disk
    with pytest.raises(RuntimeError, match="file write failed"):
        with eio.atomic_path(tmp_path / "x.pth"):
            raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")


def test_an_appended_line_is_whole_or_absent(tmp_path, monkeypatch):
    log = tmp_path / "metrics.jsonl"
    eio.append_line(log, '{"epoch": 1}')
    real_fsync = eio.os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(eio.os, "fsync", full)
    with pytest.raises(DiskFullError):
        eio.append_line(log, '{"epoch": 2}')
    monkeypatch.setattr(eio.os, "fsync", real_fsync)
    assert log.read_text() == '{"epoch": 1}\n'


def test_lock_files_are_reused_after_a_kill_and_removed_after_use(tmp_path):
    out = tmp_path / "o"
    (tmp_path / ".o.lock").write_text("12345\n")  # left by a killed command: nobody holds it
    assert locks.lock_output(out, "o") and not locks.lock_output(out, "o")  # (taken once per process)
    assert (tmp_path / ".o.lock").read_text().strip() == str(__import__("os").getpid())
    locks.release_outputs()
    assert not (tmp_path / ".o.lock").exists()


def test_a_second_process_is_refused_naming_the_holder(tmp_path):
    import os
    import subprocess
    import sys

    from edgevit.errors import OutputError

    out = tmp_path / "o"
    locks.lock_output(out, "--output")
    try:
        code = ("import sys; from edgevit.utils.locks import lock_output\n"
                "try:\n    lock_output(sys.argv[1], '--output')\n"
                "except Exception as e:\n    print(type(e).__name__, e)")
        got = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True).stdout
        assert got.startswith(OutputError.__name__) and f"(pid {os.getpid()})" in got, got
    finally:
        locks.release_outputs()
