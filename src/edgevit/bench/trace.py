"""Energy per inference offline from a power-monitor trace (the paper's method: a phone on a Monsoon that ran
N inferences with pauses between them). Background power is estimated from the idle samples (following
slow drift), the N contiguous regions of clearly higher draw are found, and the background-subtracted
power is integrated over each region -> energy per inference and average power, mean +- std.

Nothing maintained parses power-monitor exports into per-inference energies, so it is written here on
numpy and scipy."""
from __future__ import annotations

import csv
import math
import os
import re
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np

from ..errors import DataError, UserError
from ..utils.inputs import require_file
from .energy import EnergyResult, _mean_std

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
              required: bool, hint: str = "name the column explicitly") -> Optional[int]:
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
        raise UserError(f"{unit!r} (from {'the option' if given else repr(header_name)} of {path}) is "
                        f"not one of {', '.join(allowed)}", option=flag if given else None)
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
                           "with a current column, name the voltage column (voltage_col) or give a fixed "
                           "voltage")
    tu = _unit(time_unit, header[ti], TIME_UNITS, "s", "time_unit", path)
    cols = [ti]
    if pi is not None:
        pu = _unit(power_unit, header[pi], POWER_UNITS, "W", "power_unit", path)
        cols.append(pi)
    else:
        cu = _unit(current_unit, header[ci], CURRENT_UNITS, "A", "current_unit", path)
        cols.append(ci)
        if vi is not None:
            vu = _unit(voltage_unit, header[vi], VOLTAGE_UNITS, "V", "voltage_unit", path)
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
    """Running median over k samples (k odd), edges mirrored (scipy's filter; numpy's "reflect" padding)."""
    from scipy.ndimage import median_filter

    return median_filter(np.asarray(x, dtype=float), size=k, mode="mirror")


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
        raise UserError(f"{threshold} must be between 0 and 1 (a fraction of the busy level)", option="threshold")
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
