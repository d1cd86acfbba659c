"""Energy per inference: the result both ways of measuring return (`edgevit.bench.rapl`: live from Linux RAPL
counters; `edgevit.bench.trace`: offline from a power-monitor trace), and reading saved results.

An `EnergyResult`'s `to_json()` is what `edgevit energy --json` prints and `edgevit report --energy FILE`
reads."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..errors import UserError
from ..utils.inputs import read_json

POWERCAP_ROOT = "/sys/class/powercap"
ENERGY_FORMAT = "edgevit-energy/1"

# --------------------------------------------------------------------------------------------------
# Result


@dataclass
class EnergyResult:
    """Energy per inference and average power, with their spread (std) over repeats or regions.

    energy_mj: net energy of one inference (idle/background power subtracted), millijoules.
    power_w:   average power while inferring; `net_power_w` is the same minus the idle power."""

    method: str                      # "rapl" | "trace"
    n: int                           # inferences per repeat (rapl) / regions found (trace)
    energy_mj_mean: float
    energy_mj_std: float
    power_w_mean: float
    power_w_std: float
    net_power_w_mean: float
    net_power_w_std: float
    idle_power_w: float
    latency_ms_mean: float
    latency_ms_std: float
    model: Optional[str] = None
    runtime: Optional[str] = None
    label: Optional[str] = None
    img_size: Optional[int] = None
    repeats: Optional[int] = None    # rapl: repeats; trace: regions used
    expected_n: Optional[int] = None
    warnings: List[str] = field(default_factory=list)
    per_inference_mj: List[float] = field(default_factory=list)  # per repeat (rapl) / per region (trace)
    source: Dict[str, object] = field(default_factory=dict)      # zones / trace file, columns, units

    def to_json(self) -> dict:
        d = asdict(self)
        d["format"] = ENERGY_FORMAT
        d["energy_mj"] = {"mean": self.energy_mj_mean, "std": self.energy_mj_std}
        d["power_w"] = {"mean": self.power_w_mean, "std": self.power_w_std}
        return d


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def load_energy_json(path: os.PathLike | str) -> List[dict]:
    """Energy results written by `edgevit energy --json` / `-o`: one object or a list of them."""
    obj = read_json(path, "energy result")
    items = obj if isinstance(obj, list) else [obj]
    for i, it in enumerate(items):
        if not isinstance(it, dict) or "energy_mj_mean" not in it or "method" not in it:
            raise UserError(f"energy result {path}: item {i} is not an `edgevit energy --json` result "
                             "(expected keys method, energy_mj_mean, power_w_mean, ...)")
    return items
