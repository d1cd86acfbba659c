"""Energy per inference live from Linux RAPL counters (powercap): run N forward passes, read the package
counters before and after, then sit idle for the same time and read them again; energy per inference is
(E_active - P_idle * T) / N, repeated R times for a spread.

No maintained library does this (pyRAPL / pyJoules read RAPL but are unmaintained, need root and do no
idle subtraction), so it is written here."""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import numpy as np

from ..errors import UserError
from .energy import POWERCAP_ROOT, EnergyResult, _mean_std


class RaplUnavailable(UserError):
    """No readable RAPL energy counter: the message says what is missing and points to the trace mode."""


@dataclass
class RaplZone:
    name: str            # e.g. "package-0"
    path: Path           # e.g. /sys/class/powercap/intel-rapl:0
    max_energy_uj: int   # the counter wraps to 0 after this value


_TRACE_HINT = ("measure with an external power monitor instead and analyse its trace (trace mode; see "
               "docs/energy_and_report.md)")


def find_rapl_zones(root: os.PathLike | str = POWERCAP_ROOT, names: Optional[Sequence[str]] = None
                    ) -> List[RaplZone]:
    """The top-level RAPL zones under `root` (powercap), by default the `package-*` ones.

    Sub-zones (core, uncore, dram: intel-rapl:0:0 ...) are parts of a package and `psys` contains the
    packages, so summing them with the packages would count energy twice; `names` picks zones by their
    `name` file instead (e.g. ["psys"]).  Raises RaplUnavailable saying what is missing."""
    root = Path(root)
    if not root.is_dir():
        raise RaplUnavailable(f"RAPL is not available: {root} does not exist (no powercap interface; "
                              f"typical in VMs and containers and on non-Intel/AMD CPUs); {_TRACE_HINT}")
    tops = sorted(p for p in root.iterdir() if re.fullmatch(r"intel-rapl:\d+", p.name))
    if not tops:
        raise RaplUnavailable(f"RAPL is not available: {root} has no intel-rapl:N zone (the kernel's "
                              f"intel_rapl driver is not loaded or the CPU exposes none); {_TRACE_HINT}")
    zones = []
    for p in tops:
        try:
            name = (p / "name").read_text().strip()
        except OSError:
            name = p.name
        zones.append((name, p))
    if names:
        picked = [(n, p) for n, p in zones if n in names]
        missing = sorted(set(names) - {n for n, _ in picked})
        if missing:
            raise UserError(f"{', '.join(missing)}: no such RAPL zone under {root}; "
                            f"available: {', '.join(n for n, _ in zones)}", option="zone")
    else:
        picked = [(n, p) for n, p in zones if n.startswith("package")] or zones
    out = []
    for name, p in picked:
        for f in ("energy_uj", "max_energy_range_uj"):
            fp = p / f
            if not fp.exists():
                raise RaplUnavailable(f"RAPL zone {p} has no {f}; {_TRACE_HINT}")
            if not os.access(fp, os.R_OK):
                raise RaplUnavailable(
                    f"RAPL counter {fp} is not readable by this user (Linux >= 5.10 restricts it to root: "
                    f"run as root or `sudo chmod o+r {root}/intel-rapl:*/energy_uj`); or {_TRACE_HINT}")
        out.append(RaplZone(name, p, _read_counter(p / "max_energy_range_uj")))
    return out


def _read_counter(path: Path) -> int:
    """A powercap counter file: one non-negative integer."""
    text = path.read_text(errors="replace").strip()
    if not text.isdigit():
        raise RaplUnavailable(f"RAPL file {path}: {text[:40]!r} is not a counter value (expected a whole number "
                              f"of microjoules); {_TRACE_HINT}")
    return int(text)


class RaplReader:
    """Reads the chosen RAPL zones' cumulative energy counters (microjoules) and differences them."""

    def __init__(self, root: os.PathLike | str = POWERCAP_ROOT, zones: Optional[Sequence[str]] = None):
        self.root = Path(root)
        self.zones = find_rapl_zones(root, zones)

    def read(self) -> List[int]:
        try:
            return [_read_counter(z.path / "energy_uj") for z in self.zones]
        except PermissionError as e:
            raise RaplUnavailable(f"RAPL counter {e.filename} is not readable by this user; {_TRACE_HINT}")

    def joules(self, before: Sequence[int], after: Sequence[int]) -> float:
        """Energy between two readings, summed over zones; a counter that went down wrapped once at
        max_energy_range_uj (readings are seconds apart, so it cannot wrap twice)."""
        total = 0
        for z, b, a in zip(self.zones, before, after):
            d = a - b
            if d < 0:
                d += z.max_energy_uj + 1
            total += d
        return total * 1e-6


def measure_rapl(workload: Callable[[], object], n: int = 50, repeats: int = 5, warmup: int = 3,
                 reader: Optional[RaplReader] = None, root: os.PathLike | str = POWERCAP_ROOT,
                 zones: Optional[Sequence[str]] = None, clock: Callable[[], float] = time.perf_counter,
                 sleep: Callable[[float], None] = time.sleep, progress: bool = False,
                 **labels) -> EnergyResult:
    """Energy per call of `workload` from RAPL: `repeats` times, N calls then an equal idle interval.

    `clock`/`sleep` are injectable so tests can drive a fake powercap tree; `labels` (model, runtime,
    label, img_size) are copied into the result."""
    if n < 1 or repeats < 1:
        raise UserError(f"n {n} and repeats {repeats} must be >= 1")
    reader = reader or RaplReader(root, zones)
    for _ in range(warmup):
        workload()
    energies, powers, nets, idles, lats = [], [], [], [], []
    it = range(repeats)
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc="energy (rapl)", unit="repeat", leave=False)
    for _ in it:
        e0, t0 = reader.read(), clock()
        for _ in range(n):
            workload()
        e1, t1 = reader.read(), clock()
        active_s = t1 - t0
        sleep(active_s)  # an equal idle interval: the machine's background draw over the same time
        e2, t2 = reader.read(), clock()
        idle_s = t2 - t1
        if active_s <= 0 or idle_s <= 0:
            raise RuntimeError("the clock did not advance during a repeat")
        e_active, e_idle = reader.joules(e0, e1), reader.joules(e1, e2)
        p_idle = e_idle / idle_s
        energies.append((e_active - p_idle * active_s) / n * 1e3)
        powers.append(e_active / active_s)
        nets.append(e_active / active_s - p_idle)
        idles.append(p_idle)
        lats.append(active_s / n * 1e3)
    em, es = _mean_std(energies)
    pm, ps = _mean_std(powers)
    nm, ns = _mean_std(nets)
    lm, ls = _mean_std(lats)
    warnings = []
    if em <= 0:
        warnings.append(f"net energy per inference is {em:.3f} mJ <= 0: the workload's draw is lost in the "
                        "idle noise (other processes running?); use a larger -n or a quieter machine")
    return EnergyResult(
        method="rapl", n=n, repeats=repeats, energy_mj_mean=em, energy_mj_std=es, power_w_mean=pm,
        power_w_std=ps, net_power_w_mean=nm, net_power_w_std=ns, idle_power_w=float(np.mean(idles)),
        latency_ms_mean=lm, latency_ms_std=ls, per_inference_mj=[float(e) for e in energies],
        warnings=warnings,
        source={"zones": [z.name for z in reader.zones], "root": str(reader.root)}, **labels)
