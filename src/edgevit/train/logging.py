"""Per-epoch metrics: one JSON line per record in RUN_DIR/metrics.jsonl, optional TensorBoard scalars."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict

from ..utils.writes import append_line, to_plain

__all__ = ["MetricsLogger"]


class MetricsLogger:
    def __init__(self, run_dir: os.PathLike | str, is_main: bool = True, tensorboard: bool = False) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.is_main = is_main
        self._tb = None
        if is_main:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def log(self, record: Dict[str, Any]) -> None:
        """Append `record` as one JSON line (flushed + fsynced: a killed run keeps every finished epoch)."""
        if not self.is_main:
            return
        append_line(self.path, json.dumps(to_plain(record)))
        if self._tb is not None:
            step = int(record.get("epoch", record.get("step", 0)))
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("epoch", "step"):
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
