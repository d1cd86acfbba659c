"""The phone's instruction set on an x86 box: an exported file run on aarch64 under qemu's user-mode emulation, in
the runtime's own aarch64 wheel, and compared with the same file on x86 and with the model in PyTorch.

The lane (built by `make arm-lane`, `scripts/build_aarch64_lane.sh`: qemu 10's user-mode emulator from Debian's
bookworm-backports in `.aarch64/qemu`, Debian 12's arm64 Python 3.11 with the libraries it links in
`.aarch64/sysroot`, the runtimes' aarch64 wheels from PyPI in `.aarch64/site`; nothing on the host changes) runs
`deploy/worker.py` with the settings the runtime's record gives (`Runtime.worker`) in two forms: the
package's (what `load` sets on x86) and the runtime's own defaults (what an app that sets nothing gets on a phone:
ncnn and OpenVINO compute in fp16 there).

Emulated times say nothing about a phone: none is measured. The CPU model picks the code paths the runtimes take:
`max` has every feature (fp16 arithmetic, dot product, i8mm, SVE2, bf16), `cortex-a710` a phone's ARMv9 big core
(SVE2, i8mm), `cortex-a55` its ARMv8.2 little core (fp16, dot product, no i8mm), `cortex-a72` none of them.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import UserError
from . import runtimes
from .export import ExportedModel, agreement, load_exported
from .process import WorkerError, run_worker

LANE_ENV = "EDGEVIT_AARCH64_LANE"
# a file's run on aarch64: ([outputs of each input], what the worker said)
Run = Tuple[List[List[np.ndarray]], Dict[str, object]]
DEFAULTS = ("package", "runtime")  # the settings each file is run with (`Runtime.worker`)
# qemu's aarch64 CPU models the lane offers: all features; phones' ARMv9 and ARMv8.2 big and little cores; ARMv8.0
CPUS = ("max", "cortex-a710", "cortex-a76", "cortex-a55", "cortex-a72")


class LaneError(WorkerError):
    """The aarch64 lane is missing, cannot run a file, or the emulated runtime died."""


def lane_root() -> Path:
    """Where the lane is: $EDGEVIT_AARCH64_LANE, else `.aarch64` in the checkout the package runs from."""
    if os.environ.get(LANE_ENV):
        return Path(os.environ[LANE_ENV])
    repo = Path(__file__).resolve().parents[3]
    return (repo if (repo / "Makefile").is_file() else Path.cwd()) / ".aarch64"


def lane_command(cpu: str = "max", root: Optional[Path] = None) -> List[str]:
    """The command that starts the lane's arm64 Python under qemu (one LaneError saying how to build a missing
    lane)."""
    root = Path(root or lane_root())
    qemu, python = root / "qemu" / "qemu-aarch64", root / "sysroot" / "usr" / "bin" / "python3.11"
    if not (qemu.is_file() and python.is_file() and (root / "site").is_dir()):
        raise LaneError(f"the aarch64 lane is not built in {root}: `make arm-lane` builds it (set {LANE_ENV} for "
                        "another place)")
    if cpu not in CPUS:
        raise LaneError(f"{cpu!r}: expected one of {', '.join(CPUS)} (qemu's aarch64 CPU models)", option="cpu")
    return [str(qemu), "-cpu", cpu, "-L", str(root / "sysroot"), str(python)]


def lane_runtime(path: Path) -> runtimes.Runtime:
    """The runtime record of an exported file the lane can run (one LaneError saying why one cannot)."""
    rt = runtimes.for_file(path)
    if rt.worker is None:
        raise LaneError(f"{path}: {rt.name} files cannot run in the aarch64 lane: the worker cannot load them")
    return rt


def run_on_aarch64(path: Path, inputs: Sequence[np.ndarray], defaults: str = "package", cpu: str = "max",
                   threads: int = 1, timeout: float = 1800, python: Optional[Sequence[str]] = None) -> Run:
    """Each batch-1 input in `inputs` through the file on aarch64: ([outputs of each input], what the worker said:
    the runtime's version and options, the CPU features the process saw). `python`: the command that runs the
    worker instead of the lane's (a real arm64 board's Python with the runtime installed, or this machine's own)."""
    return _runs_on_aarch64(path, inputs, [defaults], cpu, threads, timeout, python)[0]


def _runs_on_aarch64(path: Path, inputs: Sequence[np.ndarray], each: Sequence[str], cpu: str = "max",
                     threads: int = 1, timeout: float = 1800, python: Optional[Sequence[str]] = None) -> List[Run]:
    """`run_on_aarch64` under each of the settings `each` ("package", "runtime": `DEFAULTS`) in turn, in one
    process: one `Run` per entry."""
    path = Path(path)
    rt = lane_runtime(path)
    for d in each:
        if d not in DEFAULTS:
            raise ValueError(f"defaults {d!r}: expected one of {DEFAULTS}")
    cmd = list(python) if python else lane_command(cpu)
    env = {} if python else {"PYTHONPATH": str(lane_root() / "site"), "PYTHONNOUSERSITE": "1"}
    return run_worker(path, inputs, [rt.worker(path, d) for d in each], cmd, threads, timeout, env,
                      f"aarch64 (qemu -cpu {cpu})" if not python else " ".join(python), LaneError)


def check_on_aarch64(path: Path, images01: torch.Tensor, labels: Optional[torch.Tensor] = None,
                     reference: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, cpu: str = "max",
                     threads: int = 1, progress: Callable[[str], None] = lambda what: None,
                     loaded: Optional[ExportedModel] = None) -> Dict[str, object]:
    """A classification file on aarch64 against the same file on x86 and, given `reference` (the model in PyTorch
    fp32, fed images in [0, 1]: `reference_model`), against PyTorch: max |diff|, SQNR and top-1 agreement over
    `images01` (N x 3 x H x W in [0, 1], resized and cropped as the file's metadata says); with `labels`, top-1
    accuracy on each side. Under the package's settings and under the runtime's own defaults:
    `report["aarch64"]["package"]` and `["runtime"]`. `loaded`: the file already opened with `threads` (else it is
    opened here)."""
    lane_command(cpu)  # (a lane that is not built, a file it cannot run: said before anything runs)
    lane_runtime(path)
    m = loaded if loaded is not None else load_exported(path, threads)
    meta = m.metadata
    if meta is None:
        raise LaneError(f"{path}: the file carries no edgevit metadata (its input and classes); export it again")
    inputs = [meta.file_input(images01[i:i + 1].numpy()) for i in range(len(images01))]
    x86 = torch.cat([torch.as_tensor(np.asarray(m(a), np.float32)) for a in inputs]).double()
    pytorch = None
    if reference is not None:  # (in the file's output form: probabilities for an app-ready file)
        with torch.no_grad():
            pytorch = torch.cat([reference(images01[i:i + 1]) for i in range(len(images01))]).double()
        pytorch = pytorch.softmax(1) if meta.probabilities else pytorch
        if pytorch.shape != x86.shape:
            raise UserError(f"{path} answers {x86.shape[1]} classes and the model given {pytorch.shape[1]}: not the "
                            "weights the file was exported from", option="checkpoint")
    report: Dict[str, object] = {"file": str(path), "runtime": m.runtime.name, "precision": meta.precision,
                                 "arch": "aarch64", "cpu": cpu, "images": len(inputs), "threads": threads}
    if pytorch is not None:
        report["x86_vs_pytorch"] = _measure(pytorch, x86)
    if labels is not None:
        report["x86_top1"] = _top1(x86, labels)
    rows: Dict[str, Dict[str, object]] = {}
    # (each settings the runtime distinguishes, in one emulated process: one start and one import of the runtime)
    distinct = [d for d in DEFAULTS if d == "package" or m.runtime.worker(path, d) != m.runtime.worker(path, "package")]
    progress(" and ".join(f"{d} settings" for d in distinct))
    for defaults, (outs, said) in zip(distinct, _runs_on_aarch64(path, inputs, distinct, cpu, threads)):
        arm = torch.cat([torch.as_tensor(np.asarray(o[0], np.float32)).reshape(1, -1) for o in outs]).double()
        row: Dict[str, object] = {"options": said.get("options"), "runtime_version": said.get("version"),
                                  "vs_x86": _measure(x86, arm)}
        if pytorch is not None:
            row["vs_pytorch"] = _measure(pytorch, arm)
        if labels is not None:
            row["top1"] = _top1(arm, labels)
        rows[defaults] = row
        report["cpu_features"] = said.get("cpu_features", [])
    for defaults in DEFAULTS:
        if defaults not in rows:  # (the same settings as the package's: nothing run again)
            rows[defaults] = {**rows["package"], "same_as_package": True}
    report["aarch64"] = {d: rows[d] for d in DEFAULTS}
    return report


def reference_model(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model in PyTorch fp32 on images in [0, 1], normalised with its own mean/std (its data config)."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    mean, std = (torch.tensor(cfg[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    return lambda x01: model((x01 - mean) / std)


def _measure(reference: torch.Tensor, got: torch.Tensor) -> Dict[str, float]:
    return {"max_abs_diff": float((reference - got).abs().max()), **agreement(reference, got)}


def _top1(out: torch.Tensor, labels: torch.Tensor) -> float:
    return float((out.argmax(1) == labels).double().mean() * 100)
