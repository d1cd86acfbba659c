"""An exported file run in a process of its own by the standalone worker (`edgevit.deploy.worker`: numpy and the
runtime's package, nothing of edgevit, torch or timm unless the runtime itself needs torch), as an app runs it.

Two uses: the aarch64 lane (`edgevit.deploy.aarch64`, the worker under qemu) and `fresh_process`, what a device lab
reports beside a latency: the load time (open, parse, prepare, delegate), the first inference, and the process's
peak resident memory, all in a process that has done nothing else; plus the runtime's own planned memory where the
file or runtime says it (`Runtime.planned_memory`).

    from edgevit.deploy.process import fresh_process
    fresh_process("xxs.tflite", threads=2)
    # {"load_ms": ..., "first_inference_ms": ..., "peak_rss_mb": ..., "load_rss_mb": ..., "runtime_memory_mb": ...}
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Type

import numpy as np

from ..errors import UserError
from . import runtimes

WORKER = Path(__file__).with_name("worker.py")
# what `fresh_process` measures
FRESH_KEYS = ("load_ms", "first_inference_ms", "peak_rss_mb", "load_rss_mb", "runtime_memory_mb")


class WorkerError(UserError):
    """A file the worker process could not run: the process died (its signal named) or failed (its last line)."""


def run_worker(path: Path, inputs: Sequence[np.ndarray], settings: Sequence[Dict[str, object]],
               command: Sequence[str], threads: int = 1, timeout: float = 1800, env: Optional[Dict[str, str]] = None,
               where: str = "", error: Type[UserError] = WorkerError
               ) -> List[Tuple[List[List[np.ndarray]], Dict[str, object]]]:
    """Each batch-1 input through the file in a new worker process started by `command` (a Python), loaded once per
    entry of `settings` (`Runtime.worker`'s), in turn: per settings ([outputs of each input], what the worker said:
    the runtime's version and options, the CPU features the process saw, its load time, first inference and peak
    memory). A worker that dies or fails: one `error` naming `where` it ran."""
    path = Path(path)
    rt = runtimes.for_file(path)
    where = where or " ".join(command)
    with tempfile.TemporaryDirectory(prefix="edgevit-worker-") as tmp:
        tmp = Path(tmp)
        np.savez(tmp / "in.npz", *[np.ascontiguousarray(a) for a in inputs])
        request = {"runtime": rt.name, "file": str(path.resolve()), "threads": threads, "settings": list(settings),
                   "inputs": str(tmp / "in.npz"), "outputs": str(tmp / "out.npz")}
        (tmp / "request.json").write_text(json.dumps(request))
        try:
            done = subprocess.run([*command, str(WORKER), str(tmp / "request.json")], capture_output=True, text=True,
                                  env={**os.environ, **(env or {})}, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise error(f"{path}: the {rt.name} run on {where} took longer than {timeout:g} s") from None
        if done.returncode != 0:
            raise error(f"{path}: {rt.name} on {where} {_death(done)}")
        with np.load(tmp / "out.npz") as z:
            outs = [[[z[f"out_{k}_{i}_{j}"] for j in range(sum(n.startswith(f"out_{k}_{i}_") for n in z.files))]
                     for i in range(len(inputs))] for k in range(len(settings))]
    said = json.loads(next((ln for ln in reversed(done.stdout.splitlines()) if ln.startswith("{")), "{}"))
    common = {k: v for k, v in said.items() if k != "runs"}
    return [(o, {**common, **run}) for o, run in zip(outs, said.get("runs", [{}] * len(settings)))]


def _death(done: subprocess.CompletedProcess) -> str:
    """How the process ended, in one line: the signal that killed it (qemu re-raises the guest's), or the last line
    of its error."""
    rc = done.returncode
    number = -rc if rc < 0 else rc - 128 if rc > 128 else None
    if number is not None:
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return f"died on {name} ({signal.strsignal(number) or name})"
    lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
    return f"failed: {lines[-1].strip() if lines else f'exit status {rc}'}"


def file_input(path: Path, seed: int = 0) -> np.ndarray:
    """A batch-1 input the file takes, as an app feeds it (its metadata's layout, dtype and size; a file without
    metadata: float32 NCHW at its input size)."""
    from .export import file_metadata

    rt = runtimes.for_file(path)
    meta = file_metadata(rt, path)
    size = meta.input_size if meta is not None else (rt.input_size(path) or (224, 224))
    x01 = np.random.default_rng(seed).random((1, 3, *size), dtype=np.float32)
    return meta.file_input(x01) if meta is not None else x01


def fresh_process(path: Path, threads: int = 2, timeout: float = 600) -> Optional[Dict[str, Optional[float]]]:
    """What loading and first running `path` cost in a process of its own (this machine's Python running the worker
    with the package's settings, `Runtime.worker`): load_ms (open, parse, prepare, delegate/compile; the runtime's
    module already imported), first_inference_ms, peak_rss_mb (the process's resident high-water mark after load and
    one inference), load_rss_mb (that mark's rise over the one after the imports: what the file itself costs), and
    runtime_memory_mb (what the runtime plans for the file's tensors, where it says: `Runtime.planned_memory`).
    None for a runtime whose files the worker cannot load (a record without `worker`)."""
    path = Path(path)
    rt = runtimes.for_file(path)
    if rt.worker is None:
        return None
    (_, said), = run_worker(path, [file_input(path)], [rt.worker(path, "package")], [sys.executable],
                            threads=threads, timeout=timeout, where="a fresh process")
    planned = rt.planned_memory(path) if rt.planned_memory is not None else None
    return {"load_ms": 1e3 * said["load_s"], "first_inference_ms": said["first_inference_ms"],
            "peak_rss_mb": said["peak_rss_mb"], "load_rss_mb": said["peak_rss_mb"] - said["peak_rss_imports_mb"],
            "runtime_memory_mb": None if planned is None else planned / 2 ** 20}
