"""Energy per inference: live from Linux RAPL counters, or offline from a power-monitor trace.

Live (`measure_rapl`): run N forward passes, read the powercap RAPL package counters before and after,
then sit idle for the same time and read them again; energy per inference is
(E_active - P_idle * T) / N.  Repeated R times for a spread.

Offline (`analyze_trace`): the paper's method for a phone on a power monitor (e.g. a Monsoon) that ran N
inferences with pauses between them.  Background power is estimated from the idle samples (following slow
drift), the N contiguous regions of clearly higher draw are found, and the background-subtracted power is
integrated over each region -> energy per inference and average power, mean ± std over the regions.

Both return an `EnergyResult`, whose `to_json()` is what `edgevit energy --json` prints and
`edgevit report --energy FILE` reads.

No maintained library does either job (pyRAPL / pyJoules read RAPL but are unmaintained, need root and
do no idle subtraction; nothing parses Monsoon exports into per-inference energies), so both are written
here with plain numpy.
"""
from __future__ import annotations

import csv
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
from ..errors import DataError, UserError
from ..utils.io import read_json, require_file

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


# --------------------------------------------------------------------------------------------------
# RAPL


class RaplUnavailable(UserError):
    """No readable RAPL energy counter: the message says what is missing and points to the trace mode."""


@dataclass
class RaplZone:
    name: str            # e.g. "package-0"
    path: Path           # e.g. /sys/class/powercap/intel-rapl:0
    max_energy_uj: int   # the counter wraps to 0 after this value


_TRACE_HINT = ("measure with an external power monitor instead and analyse its trace: "
               "edgevit energy --trace FILE.csv --n N (see docs/energy_and_report.md)")


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
            raise UserError(f"--zone {', '.join(missing)}: no such RAPL zone under {root}; "
                             f"available: {', '.join(n for n, _ in zones)}")
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
        raise UserError(f"-n {n} and --repeats {repeats} must be >= 1")
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


# --------------------------------------------------------------------------------------------------
# Power-monitor traces

_SCALE = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "W": 1.0, "mW": 1e-3, "uW": 1e-6, "A": 1.0, "mA": 1e-3,
          "uA": 1e-6, "V": 1.0, "mV": 1e-3}
TIME_UNITS, POWER_UNITS, CURRENT_UNITS, VOLTAGE_UNITS = ("s", "ms", "us"), ("W", "mW", "uW"), \
    ("A", "mA", "uA"), ("V", "mV")
MIN_SAMPLES = 50


@dataclass
class Trace:
    t: np.ndarray        # seconds, strictly increasing
    p: np.ndarray        # watts
    source: dict


def _unit_in_header(name: str) -> Optional[str]:
    m = re.search(r"[(\[]\s*([munμ]?[a-zA-Z])\s*[)\]]", name)
    return m.group(1).replace("μ", "u") if m else None


def _find_col(header: List[str], wanted: Optional[str], keys: Sequence[str], path, what: str,
              required: bool, hint: str = "name it with its flag") -> Optional[int]:
    low = [h.strip().lower() for h in header]
    if wanted is not None:
        if wanted in header:
            return header.index(wanted)
        if wanted.lower() in low:
            return low.index(wanted.lower())
        raise UserError(f"{path}: no column {wanted!r} ({what}); columns are: {', '.join(header)}")
    bases = [re.split(r"[(\[]", h)[0].strip() for h in low]
    for k in keys:  # exact names first ("main" is a Monsoon current, not "main voltage")
        if k in bases:
            return bases.index(k)
    for i, base in enumerate(bases):  # then "time_s", "avg power", ...; single letters only exactly
        if any(len(k) > 1 and (base.startswith(k) or base.endswith(" " + k) or base.endswith("_" + k))
               for k in keys):
            return i
    if required:
        raise UserError(f"{path}: no {what} column found (looked for a header like "
                         f"{' / '.join(keys)}); columns are: {', '.join(header)} - {hint}")
    return None


def _unit(given: Optional[str], header_name: str, allowed: Sequence[str], default: str, flag: str,
          path) -> str:
    unit = given or _unit_in_header(header_name) or default
    if unit not in allowed:
        raise UserError(f"{path}: {flag} {unit!r} (from {'the flag' if given else repr(header_name)}) is "
                         f"not one of {', '.join(allowed)}")
    return unit


def load_trace(path: os.PathLike | str, time_col: Optional[str] = None, power_col: Optional[str] = None,
               current_col: Optional[str] = None, voltage_col: Optional[str] = None,
               time_unit: Optional[str] = None, power_unit: Optional[str] = None,
               current_unit: Optional[str] = None, voltage_unit: Optional[str] = None,
               voltage: Optional[float] = None) -> Trace:
    """Read a power trace CSV: time and power, or time, current and voltage (a Monsoon export:
    "Time(ms),Main(mA),Main Voltage(V)"), or time and current with a fixed `voltage` (volts).

    Columns are found by header name unless given; units come from the flag, else from the header's
    "(unit)", else s / W / A / V.  Bad input -> ValueError naming the file, row and what was expected."""
    path = require_file(path, "trace")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            sample = f.read(4096)
            f.seek(0)
            try:
                dialect = csv.Sniffer().sniff(sample, delimiters=",;\t")
            except csv.Error:
                dialect = csv.excel
            rows = list(csv.reader(f, dialect))
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"trace {path}: not a text CSV file ({type(e).__name__}); expected a header row and "
                        "one sample per row") from None
    rows = [r for r in rows if r and any(c.strip() for c in r)]
    if not rows:
        raise UserError(f"trace {path}: empty file; expected a CSV with a header row (time and power columns)")
    header = [h.strip() for h in rows[0]]
    data = rows[1:]
    ti = _find_col(header, time_col, ("time", "timestamp", "t"), path, "time", True)
    pi = _find_col(header, power_col, ("power", "watts", "p"), path, "power", False) \
        if current_col is None else None
    ci = vi = None
    if pi is None:
        ci = _find_col(header, current_col, ("current", "main", "i"), path, "power or current", True)
        if voltage is None:
            vi = _find_col(header, voltage_col, ("voltage", "main voltage", "v"), path, "voltage", True,
                           "with a current column, name the voltage column (--voltage-col) or give a fixed "
                           "--voltage VOLTS")
    tu = _unit(time_unit, header[ti], TIME_UNITS, "s", "--time-unit", path)
    cols = [ti]
    if pi is not None:
        pu = _unit(power_unit, header[pi], POWER_UNITS, "W", "--power-unit", path)
        cols.append(pi)
    else:
        cu = _unit(current_unit, header[ci], CURRENT_UNITS, "A", "--current-unit", path)
        cols.append(ci)
        if vi is not None:
            vu = _unit(voltage_unit, header[vi], VOLTAGE_UNITS, "V", "--voltage-unit", path)
            cols.append(vi)
    arr = np.empty((len(data), len(cols)))
    for r, row in enumerate(data):
        for j, c in enumerate(cols):
            cell = row[c].strip() if c < len(row) else ""
            try:
                arr[r, j] = float(cell)
            except ValueError:
                raise UserError(f"trace {path}: row {r + 2}, column {header[c]!r}: {cell!r} is not a number")
            if not math.isfinite(arr[r, j]):
                raise UserError(f"trace {path}: row {r + 2}, column {header[c]!r}: {cell!r} is not a finite "
                                 "number (NaN/inf); drop or fix those samples")
    if len(arr) < MIN_SAMPLES:
        raise UserError(f"trace {path}: only {len(arr)} samples; need at least {MIN_SAMPLES} to tell idle from "
                         "inference (record at >= 1 kHz over the whole run)")
    t = arr[:, 0] * _SCALE[tu]
    bad = np.flatnonzero(np.diff(t) <= 0)
    if bad.size:
        r = int(bad[0]) + 1
        raise UserError(f"trace {path}: time is not strictly increasing at row {r + 2} "
                         f"({arr[r - 1, 0]:g} then {arr[r, 0]:g}); expected one sample per row in time order")
    if pi is not None:
        p = arr[:, 1] * _SCALE[pu]
        units = {"time": tu, "power": pu}
        used = {"time": header[ti], "power": header[pi]}
    else:
        i = arr[:, 1] * _SCALE[cu]
        v = arr[:, 2] * _SCALE[vu] if vi is not None else np.full_like(i, float(voltage))
        p = i * v
        units = {"time": tu, "current": cu, **({"voltage": vu} if vi is not None else {})}
        used = {"time": header[ti], "current": header[ci],
                "voltage": header[vi] if vi is not None else f"{voltage} V (fixed)"}
    neg = np.flatnonzero(p < 0)
    if neg.size:
        r = int(neg[0])
        raise DataError(f"trace {path}: power is negative ({p[r]:g} W) at row {r + 2} and {neg.size - 1} other "
                        "row(s); a supply-side power monitor reads >= 0: check the column and its sign")
    return Trace(t=t, p=p, source={"trace": str(path), "columns": used, "units": units,
                                   "samples": int(len(t))})


def _median_filter(x: np.ndarray, k: int) -> np.ndarray:
    """Running median over k samples (k odd), edges padded by reflection."""
    h = k // 2
    padded = np.pad(x, h, mode="reflect")
    return np.median(np.lib.stride_tricks.sliding_window_view(padded, k), axis=1)


def _runs(mask: np.ndarray) -> List[tuple[int, int]]:
    """[start, end) index pairs of the True runs of a boolean array."""
    d = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    return list(zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1)))


def _robust_sigma(x: np.ndarray) -> float:
    return float(1.4826 * np.median(np.abs(x - np.median(x))))


def _baseline(t: np.ndarray, p: np.ndarray, idle: np.ndarray) -> np.ndarray:
    """Background power over time: the mean of the middle 80% of each idle stretch (away from the
    inferences' edges; `p` is already despiked), linearly interpolated between stretches (follows slow
    drift; flat before the first and after the last stretch)."""
    runs = [(a, b) for a, b in _runs(idle) if b - a >= 5] or _runs(idle)
    if not runs:
        return np.full_like(p, np.median(p))
    runs = [(a + (b - a) // 10, b - (b - a) // 10) for a, b in runs]
    tc = np.array([0.5 * (t[a] + t[b - 1]) for a, b in runs])
    pc = np.array([np.mean(p[a:b]) for a, b in runs])
    return np.interp(t, tc, pc)


def analyze_trace(trace: Trace, n: Optional[int] = None, threshold: float = 0.5, spike_k: int = 7,
                  **labels) -> EnergyResult:
    """Per-inference energy from a power trace of N inferences separated by idle pauses.

    1. Isolated spikes are removed with a Hampel filter (samples > 6 robust sigmas from the running
       median are replaced by it); steps (inference edges) pass through a running median unchanged.
    2. Background: the running-median signal is split into idle / busy; the background is the mean of
       every idle stretch, interpolated across the busy ones (slow drift is followed). Iterated 3 times.
    3. Busy regions: contiguous runs above `threshold` x the typical busy level (the median net power of
       the samples above half the peak), which must stand clearly (4 sigma) above the idle noise;
       short dips inside an inference are bridged, spike remnants shorter than a quarter of the typical
       region are dropped.
    4. Energy: net power (despiked trace minus background) integrated over each region, widened by a
       quarter of its length (at most half the neighbouring pauses) so the edges are fully counted.
    Raises ValueError if no region of clearly higher draw exists; if `n` is given and a different number
    of regions is found, the result carries a warning saying so."""
    t, p = trace.t, trace.p
    if not 0 < threshold < 1:
        raise UserError(f"--threshold {threshold} must be between 0 and 1 (a fraction of the busy level)")
    if len(t) < MIN_SAMPLES:
        raise UserError(f"trace has only {len(t)} samples; need at least {MIN_SAMPLES}")
    dt = np.diff(t)
    dt_med = float(np.median(dt))
    # 1. despike (Hampel)
    med = _median_filter(p, spike_k)
    resid = p - med
    sig = _robust_sigma(resid) or 1e-12
    clean = np.where(np.abs(resid) > 6 * sig, med, p)
    smooth = _median_filter(clean, 5)

    # 2./3. background and busy mask, refined
    # high quantiles, not the max, so a few leftover outliers do not set the scale; 99.9 % still lands
    # on inference samples when they are only ~1 % of the trace (short inferences, long pauses)
    lo, hi = np.percentile(smooth, [1, 99.9])
    idle = smooth <= lo + 0.5 * (hi - lo)
    for _ in range(3):
        base = _baseline(t, smooth, idle)
        net_s = smooth - base
        noise = _robust_sigma(net_s[idle]) if idle.sum() > 2 else _robust_sigma(net_s)
        peak = float(np.percentile(net_s, 99.9))
        busy_level = float(np.median(net_s[net_s > 0.5 * peak])) if peak > 0 else 0.0
        thr = threshold * busy_level
        if busy_level <= 0 or thr < 4 * noise:
            raise UserError(
                f"{trace.source.get('trace', 'trace')}: no activity found: the busiest samples are only "
                f"{max(busy_level, 0):.4g} W above the background, against {noise:.4g} W of noise; expected "
                "inferences drawing clearly more than idle (check the power/current column and units)")
        idle = net_s < thr
    busy = ~idle
    runs = _runs(busy)
    # bridge short dips inside an inference: gaps much shorter than the typical pause
    if len(runs) > 1:
        gaps = np.array([t[runs[i + 1][0]] - t[runs[i][1] - 1] for i in range(len(runs) - 1)])
        min_gap = 0.25 * float(np.median(gaps))
        merged = [list(runs[0])]
        for (a, b), g in zip(runs[1:], gaps):
            if g < min_gap:
                merged[-1][1] = b
            else:
                merged.append([a, b])
        runs = [tuple(r) for r in merged]
    durs = np.array([t[b - 1] - t[a] + dt_med for a, b in runs])
    keep = durs >= 0.25 * float(np.median(durs))
    dropped = int((~keep).sum())
    runs = [r for r, k in zip(runs, keep) if k]
    if not runs:
        raise UserError(f"{trace.source.get('trace', 'trace')}: no activity found (no busy region)")

    base = _baseline(t, clean, idle)
    net = clean - base
    energies, durations, net_powers, gross_powers = [], [], [], []
    for i, (a, b) in enumerate(runs):
        prev_end = runs[i - 1][1] if i else 0
        next_start = runs[i + 1][0] if i + 1 < len(runs) else len(t)
        margin = max((b - a) // 4, 3)  # enough for the edges; more would only add noise
        lo_i = a - min((a - prev_end) // 2, margin)
        hi_i = b + min((next_start - b) // 2, margin)
        seg_t, seg_p = t[lo_i:hi_i], net[lo_i:hi_i]
        e = float(np.trapezoid(seg_p, seg_t)) if len(seg_t) > 1 else float(seg_p.sum() * dt_med)
        d = float(t[b - 1] - t[a] + dt_med)
        energies.append(e * 1e3)
        durations.append(d * 1e3)
        net_powers.append(e / d)
        gross_powers.append(e / d + float(np.mean(base[a:b])))
    warnings = []
    if n is not None and len(runs) != n:
        warnings.append(f"expected {n} inferences but found {len(runs)} regions of higher power; "
                        "the reported numbers are over the regions found")
    if dropped:
        warnings.append(f"ignored {dropped} short burst(s) (< 1/4 of the typical inference) as spikes")
    em, es = _mean_std(energies)
    pm, ps = _mean_std(gross_powers)
    nm, ns = _mean_std(net_powers)
    lm, ls = _mean_std(durations)
    idle_w = float(np.mean(clean[idle])) if idle.any() else float(np.mean(base))
    return EnergyResult(
        method="trace", n=len(runs), repeats=len(runs), expected_n=n, energy_mj_mean=em, energy_mj_std=es,
        power_w_mean=pm, power_w_std=ps, net_power_w_mean=nm, net_power_w_std=ns, idle_power_w=idle_w,
        latency_ms_mean=lm, latency_ms_std=ls, per_inference_mj=energies, warnings=warnings,
        source={**trace.source, "sample_period_ms": dt_med * 1e3}, **labels)


def load_energy_json(path: os.PathLike | str) -> List[dict]:
    """Energy results written by `edgevit energy --json` / `-o`: one object or a list of them."""
    obj = read_json(path, "--energy")
    items = obj if isinstance(obj, list) else [obj]
    for i, it in enumerate(items):
        if not isinstance(it, dict) or "energy_mj_mean" not in it or "method" not in it:
            raise UserError(f"--energy {path}: item {i} is not an `edgevit energy --json` result "
                             "(expected keys method, energy_mj_mean, power_w_mean, ...)")
    return items
