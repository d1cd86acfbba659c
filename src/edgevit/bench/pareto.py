"""Energy-aware efficiency and Pareto-optimal sets (the paper's Table 3 metric and Fig. 1 / Fig. 5 fronts).

efficiency = top-1 accuracy (%) / energy per inference (mJ): "accuracy per millijoule".
A model is Pareto-optimal for accuracy-vs-cost when no other model is at least as accurate AND at most
as costly, and strictly better in one of the two.
"""
from __future__ import annotations

from typing import Iterable, List, Mapping, Optional, Sequence

from ..errors import UserError


def efficiency(top1: float, energy_mj: float) -> float:
    """Top-1 % per mJ (the paper's energy-aware efficiency)."""
    if energy_mj <= 0:
        raise UserError(f"energy per inference must be > 0 mJ, got {energy_mj}")
    return float(top1) / float(energy_mj)


def pareto_front(cost: Sequence[float], accuracy: Sequence[float]) -> List[int]:
    """Indices of the non-dominated points (lower cost, higher accuracy), sorted by cost.

    Point j dominates i when cost[j] <= cost[i] and accuracy[j] >= accuracy[i] with one strict.
    Identical points do not dominate each other (both stay)."""
    if len(cost) != len(accuracy):
        raise ValueError("cost and accuracy must have the same length")
    pts = list(zip(cost, accuracy))
    front = []
    for i, (ci, ai) in enumerate(pts):
        dominated = any(cj <= ci and aj >= ai and (cj < ci or aj > ai) for j, (cj, aj) in enumerate(pts)
                        if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (pts[i][0], -pts[i][1]))


def add_efficiency(rows: Iterable[dict], energy_key: str = "energy_mj", acc_key: str = "top1",
                   out_key: str = "efficiency") -> List[dict]:
    """Rows with `efficiency` (top-1 % per mJ) filled where both numbers exist (None otherwise)."""
    out = []
    for r in rows:
        r = dict(r)
        e, a = r.get(energy_key), r.get(acc_key)
        r[out_key] = efficiency(a, e) if e is not None and a is not None and e > 0 else None
        out.append(r)
    return out


def dominated_by(rows: Sequence[Mapping], name: str, cost_key: str, acc_key: str = "top1",
                 name_key: str = "name") -> Optional[List[str]]:
    """The rows that dominate row `name` (empty if it is Pareto-optimal); None if it lacks the numbers."""
    me = next((r for r in rows if r[name_key] == name), None)
    if me is None or me.get(cost_key) is None or me.get(acc_key) is None:
        return None
    c, a = float(me[cost_key]), float(me[acc_key])
    return [r[name_key] for r in rows if r is not me and r.get(cost_key) is not None
            and r.get(acc_key) is not None and float(r[cost_key]) <= c and float(r[acc_key]) >= a
            and (float(r[cost_key]) < c or float(r[acc_key]) > a)]


def pareto_membership(lo: Sequence[float], hi: Sequence[float], accuracy: Sequence[float]) -> List[Optional[bool]]:
    """Pareto membership when each cost is only known to an interval [lo, hi] (a timing's confidence
    interval): True where a point is on the front even at its worst (its hi, every other point at its lo),
    False where it is off even at its best (its lo, the others at their hi), None where the intervals
    leave it open. Lower cost is better."""
    n = len(lo)
    out: List[Optional[bool]] = []
    for i in range(n):
        best = [lo[j] if j == i else hi[j] for j in range(n)]
        worst = [hi[j] if j == i else lo[j] for j in range(n)]
        if i in pareto_front(worst, accuracy):
            out.append(True)
        elif i not in pareto_front(best, accuracy):
            out.append(False)
        else:
            out.append(None)
    return out
