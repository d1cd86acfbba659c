"""The paper's claims checked against its own numbers, and a device compared with the paper's phone.

Tradeoffs (the paper's Fig. 1 / Fig. 5 and Sec. 4.1): accuracy vs latency (Table 2, Galaxy S21 CPU),
accuracy vs energy and accuracy vs efficiency (Table 3, Snapdragon 888 HDK). Efficiency is recomputed from
Table 3's own top-1 and energy columns. Pareto sets come from `edgevit.bench.pareto` (one implementation).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

from ..errors import DataError
from ..paper import by_timm_name, load_paper, rows
from .pareto import dominated_by, efficiency, pareto_front

__all__ = ["TRADEOFFS", "efficiency_rows", "tradeoff_rows", "paper_pareto", "vits_no_edgevit_dominates",
           "claims", "kendall_tau", "compare_latency", "RUNTIME_NOTE"]

# tradeoff: (table, cost key, cost std key, higher cost is better?)
TRADEOFFS = {
    "accuracy_latency": ("table2", "latency_ms", "latency_std_ms", False),
    "accuracy_energy": ("table3", "energy_mj", "energy_std_mj", False),
    "accuracy_efficiency": ("table3", "efficiency", None, True),
}
RUNTIME_NOTE = ("The paper measured latency with PyTorch's TorchScript lite interpreter on a Samsung Galaxy S21 "
                "CPU (fp32, batch 1, 50 runs) and energy on a Snapdragon 888 HDK; the numbers beside them here "
                "come from another runtime on another machine, so compare ratios and rankings, not milliseconds.")


# Table 3 prints top-1 and energy to 1 decimal and efficiency to 3: each is exact to half its last digit.
_HALF_TOP1 = _HALF_ENERGY = 0.05
_HALF_EFF = 0.0005


def efficiency_rows(paper: Optional[dict] = None) -> List[dict]:
    """Table 3 with `efficiency` = top-1 / energy recomputed, the printed value beside it, and whether they
    agree to the printed rounding: the printed efficiency (+- half its last digit) must meet the range that
    top-1 / energy can take when each is only known to half its own last printed digit."""
    out = []
    for r in rows("table3", paper):
        eff = efficiency(r["top1"], r["energy_mj"])
        lo = (r["top1"] - _HALF_TOP1) / (r["energy_mj"] + _HALF_ENERGY)
        hi = (r["top1"] + _HALF_TOP1) / (r["energy_mj"] - _HALF_ENERGY)
        printed = r["efficiency_pct_per_mj"]
        out.append({**r, "efficiency": eff, "efficiency_printed": printed,
                    "efficiency_agrees": printed + _HALF_EFF >= lo and printed - _HALF_EFF <= hi})
    return out


def tradeoff_rows(tradeoff: str, paper: Optional[dict] = None) -> List[dict]:
    """Rows for one tradeoff: name (the paper's), family, top1, cost, cost_std, better (higher cost better?)."""
    table, key, std, higher = TRADEOFFS[tradeoff]
    src = efficiency_rows(paper) if table == "table3" else rows(table, paper)
    return [{"name": r["model"], "timm_name": r.get("timm_name"), "family": r["family"], "top1": r["top1"],
             "cost": r[key], "cost_std": r.get(std) if std else None, "higher_is_better": higher} for r in src]


def _front(rs: Sequence[dict]) -> List[str]:
    sign = -1.0 if rs and rs[0]["higher_is_better"] else 1.0  # efficiency: more is better = less "cost"
    idx = pareto_front([sign * r["cost"] for r in rs], [r["top1"] for r in rs])
    return [rs[i]["name"] for i in idx]


def paper_pareto(paper: Optional[dict] = None) -> Dict[str, List[str]]:
    """{tradeoff: the Pareto-optimal models, by the paper's names}."""
    return {t: _front(tradeoff_rows(t, paper)) for t in TRADEOFFS}


def vits_no_edgevit_dominates(tradeoff: str = "accuracy_efficiency", paper: Optional[dict] = None) -> List[str]:
    """The ViTs (not EdgeViTs, not CNNs) that no EdgeViT dominates in `tradeoff`."""
    rs = tradeoff_rows(tradeoff, paper)
    sign = -1.0 if rs[0]["higher_is_better"] else 1.0
    pts = [{"name": r["name"], "cost": sign * r["cost"], "top1": r["top1"], "family": r["family"]} for r in rs]
    out = []
    for r in pts:
        if r["family"] != "ViT":
            continue
        others = [p for p in pts if p["family"] == "EdgeViT" or p is r]
        if not dominated_by(others, r["name"], "cost"):
            out.append(r["name"])
    return out


def claims(paper: Optional[dict] = None) -> List[dict]:
    """The paper's Pareto claims (Sec. 4.1, A.3, Figs. 1 and 5), each checked against its own tables:
    [{"claim", "holds", "finding"}]. Where wording and numbers disagree, `finding` says so in one sentence."""
    sets = paper_pareto(paper)
    edgevits = [r["model"] for r in rows("table2", paper) if r["family"] == "EdgeViT"]
    mobilevits = [r["model"] for r in rows("table2", paper) if r["model"].startswith("MobileViT")]
    out = []
    for t, what in (("accuracy_latency", "latency (Table 2)"), ("accuracy_energy", "energy (Table 3)")):
        missing = [m for m in edgevits if m not in sets[t]]
        out.append({"claim": f"All three EdgeViTs are Pareto-optimal in accuracy vs {what}.", "holds": not missing,
                    "finding": "They are." if not missing else f"Not Pareto-optimal: {', '.join(missing)}."})
    for t, what in (("accuracy_latency", "latency"), ("accuracy_energy", "energy")):
        rs = [{"name": r["name"], "cost": r["cost"], "top1": r["top1"]} for r in tradeoff_rows(t, paper)]
        dom = dominated_by(rs, "MobileNet-v2", "cost") or []
        out.append({"claim": f"MobileNet-v2 is dominated by MobileNet-v3 0.75 in accuracy vs {what}.",
                    "holds": "MobileNet-v3 0.75" in dom,
                    "finding": f"MobileNet-v2 is dominated by {', '.join(dom) or 'no model'}."})
    on_front = sorted({m for t in ("accuracy_latency", "accuracy_energy") for m in sets[t] if m in mobilevits})
    out.append({"claim": "No MobileViT is Pareto-optimal (latency or energy).", "holds": not on_front,
                "finding": "None is." if not on_front else f"Pareto-optimal: {', '.join(on_front)}."})
    free = vits_no_edgevit_dominates("accuracy_efficiency", paper)
    holds = free == ["PVT-v2-B1"]
    finding = ("Only PVT-v2-B1 escapes, as the paper says." if holds else
               f"The paper names only PVT-v2-B1, but by its own Table 3 numbers no EdgeViT dominates "
               f"{_join(free)} in accuracy vs efficiency (each has a higher top-1 than every EdgeViT that is "
               f"more efficient, or a higher efficiency than every more accurate one).")
    out.append({"claim": "In accuracy vs efficiency, EdgeViTs dominate all other ViTs except PVT-v2-B1.",
                "holds": holds, "finding": finding, "not_dominated": free})
    return out


def _join(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


# ---------------------------------------------------------------- a device vs the paper's phone
def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b rank correlation (scipy's), 1.0 = the same order."""
    from scipy.stats import kendalltau

    return float(kendalltau(a, b).statistic)


PAPER_IMG_SIZE = 224  # the paper's input size where its Table 2 gives none (MobileViT: 256)


def _side(size) -> Optional[int]:
    """One side of a square size (an int, or [H, W] with H == W); None for a non-square size."""
    if isinstance(size, (list, tuple)):
        return int(size[0]) if len(size) == 2 and size[0] == size[1] else None
    return int(size)


def _size_text(size) -> str:
    h, w = (size if isinstance(size, (list, tuple)) else (size, size))
    return f"{h}x{w} px"


def _pick_rows(bench_docs: Sequence[dict]) -> Dict[str, dict]:
    """One measured row per timm model: an EdgeViT's fused form (what ships) before its release form."""
    out: Dict[str, dict] = {}
    for doc in bench_docs:
        for r in doc.get("results", []):
            if "[" in (r.get("label") or ""):  # a Table-4 ablation, not the model itself
                continue
            have = out.get(r["model"])
            if have is None or (r.get("fused") is True and have.get("fused") is not True):
                out[r["model"]] = r
    return out


def compare_latency(bench_docs: Sequence[dict], accuracy: Optional[Dict[str, float]] = None,
                    paper: Optional[dict] = None, reference: str = "mobilenetv2_100") -> dict:
    """Measured latencies beside the paper's Table 2 for the models both have.

    Returns {"rows": [{name, model, latency_ms, ratio, paper_latency_ms, paper_ratio, top1}], "kendall_tau",
    "pareto": {"paper": [...], "yours": [...], "changes": [{name, paper, yours}]}, "runtime", "note"}.
    Latency ratios are to `reference` (MobileNet-v2) on each side; Pareto sets are over the common models,
    with the paper's top-1 unless `accuracy` ({timm name: top-1}) gives another."""
    paper = paper or load_paper()
    table2 = by_timm_name("table2", paper)
    measured = _pick_rows(bench_docs)
    common = [m for m in table2 if m in measured]
    if len(common) < 2:
        raise DataError(f"the bench results share {len(common)} model(s) with the paper's Table 2; need at least 2 "
                        f"of: {', '.join(table2)}")
    if reference not in common:
        raise DataError(f"the bench results have no {reference} (the paper's reference point for latency ratios)")
    sizes = {m: measured[m].get("img_size") for m in common}
    other = {m: sz for m, sz in sizes.items()
             if sz is not None and _side(sz) != int(table2[m].get("input_size") or PAPER_IMG_SIZE)}
    if other:
        shown = ", ".join(f"{m} at {_size_text(sz)} (the paper: {int(table2[m].get('input_size') or PAPER_IMG_SIZE)})"
                          for m, sz in sorted(other.items()))
        raise DataError(f"the paper's phone latencies (Table 2) are at each model's input size; the bench results "
                        f"measured {shown}: measure at the paper's sizes (each model's default) to compare")
    lat = {m: float(measured[m].get("median_ms", measured[m]["mean_ms"])) for m in common}
    acc = {m: float((accuracy or {}).get(m, table2[m]["top1"])) for m in common}
    out_rows = [{"name": table2[m]["model"], "model": m, "label": measured[m].get("label", m),
                 "latency_ms": lat[m], "ratio": lat[m] / lat[reference],
                 "paper_latency_ms": table2[m]["latency_ms"],
                 "paper_ratio": table2[m]["latency_ms"] / table2[reference]["latency_ms"], "top1": acc[m]}
                for m in common]
    names = [r["name"] for r in out_rows]
    yours = pareto_front([r["latency_ms"] for r in out_rows], [r["top1"] for r in out_rows])
    theirs = pareto_front([r["paper_latency_ms"] for r in out_rows], [r["top1"] for r in out_rows])
    yours_s, theirs_s = {names[i] for i in yours}, {names[i] for i in theirs}
    changes = [{"name": n, "paper": n in theirs_s, "yours": n in yours_s} for n in names
               if (n in theirs_s) != (n in yours_s)]
    runtimes = sorted({str(measured[m].get("runtime")) for m in common})
    return {"rows": out_rows, "reference": reference,
            "kendall_tau": kendall_tau([r["latency_ms"] for r in out_rows], [r["paper_latency_ms"] for r in out_rows]),
            "pareto": {"paper": [names[i] for i in theirs], "yours": [names[i] for i in yours], "changes": changes},
            "runtime": ", ".join(runtimes), "note": RUNTIME_NOTE}
