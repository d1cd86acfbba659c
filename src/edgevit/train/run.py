"""The skeleton every trainer here runs in (`edgevit train` and `edgevit detect|segment train`): the run
directory's guard, the checkpoint manager, the resume state, the saved config, the metrics log and the
DistributedDataParallel wrapper. A trainer brings its model, data and loop; the rest is this.

    with training_run(run_dir, resume, overwrite, info, inputs, "edgevit train", STATE_KEYS) as run:
        ...                              # run.state: the checkpoint resumed from (None for a new run)
        run.restore(run.state)           # after the trainer has loaded its parts of it
        log = run.start(config)          # config.yaml written, metrics.jsonl opened
        ddp = run.parallel(model)
        ...  run.ckpt.save(state, metric)
"""
from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence

import torch
import torch.nn as nn

from .distributed import DistInfo
from .logging import MetricsLogger
from .state import CheckpointManager, RunDirectory, load_training_state, save_config


class TrainingRun:
    """One run directory being trained into: its checkpoints, the state it resumes from, its logs."""

    def __init__(self, directory: RunDirectory, info: DistInfo, resume: Optional[str], command: str,
                 state_keys: Sequence[str]):
        self.path: Path = directory.path
        self.info = info
        self.ckpt = CheckpointManager(self.path, info.is_main, directory)
        self.resume_from = self.ckpt.resume_path(resume)
        # checked before any work: a checkpoint of another command or a damaged one is refused here
        self.state: Optional[Dict[str, Any]] = (load_training_state(self.resume_from, command, state_keys)
                                                if self.resume_from is not None else None)
        self.log: Optional[MetricsLogger] = None

    def restore(self, state: Dict[str, Any]) -> None:
        """The checkpoint manager's own part of a resumed state (the best metric so far)."""
        self.ckpt.restore(state)

    def start(self, config: Dict[str, Any], tensorboard: bool = False) -> MetricsLogger:
        """Training begins: the run's config.yaml (main process) and its metrics log."""
        if self.info.is_main:
            self.path.mkdir(parents=True, exist_ok=True)
            save_config(self.path, config)
        self.log = MetricsLogger(self.path, self.info.is_main, tensorboard=tensorboard)
        return self.log

    def parallel(self, model: nn.Module) -> nn.Module:
        """`model` under DistributedDataParallel when there are several processes (else itself)."""
        if not self.info.distributed:
            return model
        # Depthwise kernels [C, 1, k, k] get gradients whose stride on the size-1 dim differs from the bucket's;
        # the layouts are the same memory order, so DDP's warning about it says nothing useful.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        device = self.info.device
        return nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                                   gradient_as_bucket_view=True)

    def close(self) -> None:
        if self.log is not None:
            self.log.close()


@contextlib.contextmanager
def training_run(run_dir, resume: Optional[str], overwrite: bool, info: DistInfo, inputs: Sequence[tuple],
                 command: str, state_keys: Sequence[str]) -> Iterator[TrainingRun]:
    """The run directory guarded (an overwritten run is kept aside until the new one's first checkpoint; any
    failure before puts it back), then the run; its logs closed however it ends."""
    with RunDirectory(run_dir, resume, overwrite, info.is_main, inputs) as directory:
        run = TrainingRun(directory, info, resume, command, state_keys)
        try:
            yield run
        finally:
            run.close()


def autocast_context(device: torch.device, dtype: Optional[torch.dtype]):
    """The forward pass's precision, decided once (nanoGPT's `ctx`): autocast to `dtype`, or nothing."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
