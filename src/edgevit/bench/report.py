"""`edgevit report`: latency (edgevit bench), energy (edgevit energy) and accuracy (the paper's numbers and/or
`edgevit eval`) in one markdown report with accuracy-latency / accuracy-energy Pareto plots (Fig. 1 / Fig. 5
of the paper: front drawn, EdgeViTs highlighted, labels that do not overlap), PNG and SVG.

    from edgevit.bench.report import make_report
    make_report(out_dir="out/demo/report", bench=["out/demo/bench.json"])
"""
from __future__ import annotations

import dataclasses
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from ..errors import UserError
from ..paper import load_paper, published_top1
from ..utils.inputs import read_json
from ..utils.writes import write_json_atomic, write_text_atomic
from .energy import load_energy_json
from .paper import RUNTIME_NOTE, TRADEOFFS, claims, compare_latency, efficiency_rows, paper_pareto, tradeoff_rows
from .pareto import add_efficiency, pareto_front, pareto_membership
from .plots import plot_tradeoff

# --------------------------------------------------------------------------------------------------
# Inputs


def load_bench_json(path: os.PathLike | str) -> dict:
    """An `edgevit bench --json FILE` result: {"meta": {...}, "results": [{"model", "runtime", "mean_ms", ...}]}."""
    data = read_json(path, "bench results")
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise UserError(f"bench results {path}: expected an `edgevit bench --json` file "
                         "({'meta': {...}, 'results': [...]})")
    for i, r in enumerate(data["results"]):
        missing = [k for k in ("model", "runtime") if k not in r] + \
            ([] if "mean_ms" in r or "median_ms" in r else ["median_ms"])
        if missing:
            raise UserError(f"bench results {path}: result {i} lacks {', '.join(missing)}")
        for k in ("mean_ms", "median_ms", "std_ms", "ci_lo_ms", "ci_hi_ms"):
            v = r.get(k)
            if v is None and (k != "mean_ms" or "median_ms" in r):  # (the matrix's rows: medians only)
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 or \
                    (v == 0 and k in ("mean_ms", "median_ms")):
                raise UserError(f"bench results {path}: result {i} ({r.get('model')}): {k} {v!r} is not a latency "
                                "(expected a finite number of milliseconds > 0)")
    return data


def load_accuracy_json(path: os.PathLike | str) -> List[dict]:
    """`edgevit eval --json` output(s): one object or a list, each with at least model and top1."""
    data = read_json(path, "accuracy file")
    items = data if isinstance(data, list) else [data]
    for i, it in enumerate(items):
        if not isinstance(it, dict) or "model" not in it or "top1" not in it:
            raise UserError(f"accuracy file {path}: item {i} needs 'model' and 'top1' (an `edgevit eval --json` "
                             "result)")
        top1 = it["top1"]
        if isinstance(top1, bool) or not isinstance(top1, (int, float)) or not 0 <= top1 <= 100:
            raise UserError(f"accuracy file {path}: item {i} ({it.get('model')}): top1 {top1!r} is not a "
                            "percentage in [0, 100]")
    return items


# --------------------------------------------------------------------------------------------------
# Joining


def _is_edgevit(model: Optional[str]) -> bool:
    return bool(model) and str(model).startswith("edgevit")


def build_rows(bench: Sequence[dict] = (), energy: Sequence[dict] = (),
               accuracy: Sequence[Tuple[str, dict]] = (), paper: Optional[dict] = None
               ) -> Tuple[List[dict], List[str]]:
    """Rows (one per measured model/runtime, plus accuracy-only ones) and warnings.

    bench: loaded bench files; energy: energy results; accuracy: (file, eval result) pairs; paper: the
    paper data (accuracy for the models it knows). A user's eval top-1 wins over the paper's."""
    warnings: List[str] = []
    paper_by_model = published_top1(paper) if paper else {}
    # top-1, where it comes from, and what it was measured on: accuracies on different data sets (ImageNet's 1000
    # classes vs a 10-class set) never meet in one Pareto set
    acc: Dict[str, Tuple[float, str, str]] = {m: (float(r["top1"]), r["kind"], PAPER_DATA)
                                              for m, r in paper_by_model.items()}
    for file, item in accuracy:
        acc[item["model"]] = (float(item["top1"]), f"eval ({Path(file).name})", accuracy_data(item))

    rows: List[dict] = []
    by_key: Dict[tuple, dict] = {}
    for b in bench:
        for r in b["results"]:
            row = {"name": r.get("label") or r["model"], "model": r["model"], "runtime": r["runtime"],
                   "precision": r.get("precision") or "fp32",
                   "fused": r.get("fused"), "img_size": r.get("img_size"), "params_m": r.get("params_m"),
                   "gmacs": r.get("gmacs"), "latency_ms": float(r.get("median_ms", r.get("mean_ms"))),
                   "peak_rss_mb": r.get("peak_rss_mb"), "load_ms": r.get("load_ms"), "bytes": r.get("bytes"),
                   "latency_std_ms": r.get("std_ms"), "latency_ci_ms": [r["ci_lo_ms"], r["ci_hi_ms"]]
                   if "ci_lo_ms" in r else None,
                   "machine": (b.get("meta") or {}).get("machine")}
            rows.append(row)
            by_key[(row["name"], row["runtime"])] = row
            by_key.setdefault((row["model"], row["runtime"]), row)
            published = paper_by_model.get(r["model"])
            size = r.get("img_size")
            if published and published.get("img_size") and size and published["img_size"] != size:
                warnings.append(f"{row['name']} ({row['runtime']}): timed at {size} px, its published top-1 is at "
                                f"{published['img_size']} px")
    for e in energy:
        model, runtime = e.get("model"), e.get("runtime")
        name = e.get("label") or model or f"trace {Path(str(e.get('source', {}).get('trace', '?'))).name}"
        row = by_key.get((name, runtime)) or (by_key.get((model, runtime)) if model else None)
        if row is None:
            row = {"name": name, "model": model, "runtime": runtime, "params_m": None, "gmacs": None,
                   "latency_ms": None, "latency_std_ms": None}
            rows.append(row)
            by_key[(name, runtime)] = row
        row.update({"energy_mj": float(e["energy_mj_mean"]), "energy_std_mj": e.get("energy_mj_std"),
                    "power_w": e.get("power_w_mean"), "idle_power_w": e.get("idle_power_w"),
                    "energy_method": e.get("method")})
    measured_models = {r["model"] for r in rows if r.get("model")}
    for file, item in accuracy:
        m = item["model"]
        if m not in measured_models:
            known = m in paper_by_model
            warnings.append(f"accuracy file {file}: model {m!r} has no latency or energy result"
                            + ("" if known else " and is not a model the paper data knows")
                            + "; listed in the table without them")
            rows.append({"name": m, "model": m, "runtime": None, "params_m": None, "gmacs": None,
                         "latency_ms": None, "latency_std_ms": None})
            measured_models.add(m)
    evaluated_params = {item["model"]: item.get("params_m") for _, item in accuracy}
    for row in rows:
        a = acc.get(row.get("model"))
        p_eval, p_bench = evaluated_params.get(row.get("model")), row.get("params_m")
        if a and a[1].startswith("eval") and p_eval and p_bench and abs(p_eval - p_bench) > 0.01 * p_bench:
            warnings.append(f"{row['name']}: the accuracy file's {row['model']} has {p_eval:g} M parameters, the "
                            f"measured one {p_bench:g} M (another configuration): its top-1 is not attached")
            a = None
        row["top1"], row["top1_source"], row["top1_data"] = (a if a else (None, None, None))
        row["distilled"] = bool(a and not a[1].startswith("eval")
                                and paper_by_model.get(row.get("model"), {}).get("distilled"))
        row["edgevit"] = _is_edgevit(row.get("model"))
        row["group"] = _group_label(row)
    seen: Dict[str, set] = defaultdict(set)
    for row in rows:
        seen[row["name"]].add(_size_label(row.get("img_size")))
    for row in rows:  # the same model at two input sizes: labels that say which is which
        if len(seen[row["name"]]) > 1 and row.get("img_size") is not None:
            row["name"] = f"{row['name']} @{_size_label(row['img_size'])}"
    no_acc = sorted({r["name"] for r in rows if r["top1"] is None})
    if no_acc:
        warnings.append(f"no top-1 accuracy for {', '.join(no_acc)} (not in the paper data; pass "
                        "an `edgevit eval --json` result as an accuracy file): left out of the Pareto plots")
    return add_efficiency(rows), warnings


PAPER_DATA = "ImageNet-1K (1000 classes)"


def accuracy_data(item: dict) -> str:
    """What an `edgevit eval --json` accuracy was measured on: ImageNet-1K like the paper's top-1 (1000 classes),
    else the data, its class count and input size (an older file without them: 'unknown data')."""
    if _imagenet_like(item):
        return PAPER_DATA
    data = Path(str(item.get("data") or ""))
    name = (f"{data.parent.name}/{data.name}" if data.name in ("val", "validation", "test", "train")
            and data.parent.name else data.name) or "unknown data"
    bits = [f"{item['num_classes']} classes"] if item.get("num_classes") else []
    if item.get("img_size") is not None:
        bits.append(_size_label(item["img_size"]).replace("px", " px"))
    return f"{name} ({', '.join(bits)})" if bits else name


def _size_label(size) -> str:
    if size is None:
        return "?"
    h, w = (size if isinstance(size, (list, tuple)) else (size, size))
    return f"{h}x{w}px"


def _default_size(model: Optional[str]) -> Optional[tuple]:
    """(H, W) a timm model is made for (its pretrained config's input size: 224 for the EdgeViTs, 256 for
    MobileViT and FastViT, as the paper measured them), or None."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(model) if model else None  # (None for a name timm does not know)
    size = getattr(cfg, "input_size", None)
    return tuple(size[-2:]) if size else None


def _group_label(row: dict) -> str:
    """The Pareto group of a row: one runtime; every model at the input size it is made for (as the paper
    compares them: 224 px, MobileViT 256), or one other input size; accuracies on one data set."""
    parts = [str(row.get("runtime") or row.get("energy_method") or "-")
             + (f" {row['precision']}" if row.get("runtime") and row.get("precision") else "")]
    if row.get("img_size") is not None:
        size = row["img_size"]
        hw = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
        parts.append("default input sizes" if _default_size(row.get("model")) == hw else _size_label(size))
    if row.get("top1_data"):
        parts.append(f"top-1 on {row['top1_data']}")
    return ", ".join(parts)


def _groups(rows: Iterable[dict], key: str, by: str) -> Dict[str, List[dict]]:
    g: Dict[str, List[dict]] = defaultdict(list)
    for r in rows:
        if r.get(key) is not None and r.get("top1") is not None:
            g[f"{r.get(by) or '-'}; {r['group']}" if by != "runtime" else r["group"]].append(r)
    return dict(g)


def mark_pareto(rows: List[dict]) -> Dict[str, Dict[str, List[str]]]:
    """Set row['pareto_latency'] / row['pareto_energy'] (within each runtime / energy method) to True, False,
    or "uncertain" where the latencies' confidence intervals leave the membership open; return the Pareto
    sets by group (from the medians) and, under "uncertain_*", the members the intervals cannot settle."""
    sets: Dict[str, Dict[str, List[str]]] = {"accuracy_latency": {}, "accuracy_energy": {},
                                             "uncertain_latency": {}, "uncertain_energy": {}}
    for key, flag, by, tag, ci in (("latency_ms", "pareto_latency", "runtime", "accuracy_latency", "latency_ci_ms"),
                                   ("energy_mj", "pareto_energy", "energy_method", "accuracy_energy", None)):
        for r in rows:
            r[flag] = None if r.get(key) is None or r.get("top1") is None else False
        for group, rs in _groups(rows, key, by).items():
            idx = pareto_front([r[key] for r in rs], [r["top1"] for r in rs])
            for i in idx:
                rs[i][flag] = True
            sets[tag][group] = [rs[i]["name"] for i in idx]
            if ci and all(r.get(ci) for r in rs):
                member = pareto_membership([r[ci][0] for r in rs], [r[ci][1] for r in rs], [r["top1"] for r in rs])
                open_ = [r for r, m in zip(rs, member) if m is None]
                for r in open_:
                    r[flag] = "uncertain"
                if open_:
                    sets[f"uncertain_{tag.split('_')[1]}"][group] = [r["name"] for r in open_]
    return sets


# --------------------------------------------------------------------------------------------------
# Markdown


def _fmt(v, std=None, digits=1) -> str:
    if v is None:
        return "—"
    s = f"{v:.{digits}f}"
    if std:
        s += f" ± {std:.{digits}f}"
    return s


def _table(rows: Sequence[dict]) -> List[str]:
    out = ["| model | runtime | input | top-1 % | top-1 measured on | params (M) | GMACs | latency (ms) | energy (mJ) "
           "| top-1 %/mJ | Pareto lat. | Pareto energy |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        name = (f"**{r['name']}**" if r["edgevit"] else r["name"]) + (" †" if r.get("distilled") else "")
        src = f" ({r['top1_source']})" if r.get("top1_source") else ""
        mark = {True: "✔", False: "", None: "—", "uncertain": "? (intervals overlap)"}
        size = _size_label(r.get("img_size")) if r.get("img_size") is not None else "—"
        runtime = f"{r['runtime']} {r.get('precision') or ''}".strip() if r.get("runtime") else "—"
        out.append(f"| {name} | {runtime} | {size} | {_fmt(r.get('top1'))}{src} | "
                   f"{r.get('top1_data') or '—'} | "
                   f"{_fmt(r.get('params_m'), digits=2)} | {_fmt(r.get('gmacs'), digits=3)} | "
                   f"{_fmt(r.get('latency_ms'), r.get('latency_std_ms'), 2)} | "
                   f"{_fmt(r.get('energy_mj'), r.get('energy_std_mj'), 2)} | {_fmt(r.get('efficiency'), digits=2)} | "
                   f"{mark[r.get('pareto_latency')]} | {mark[r.get('pareto_energy')]} |")
    return out


def _meta_lines(bench: Sequence[dict], bench_files: Sequence[str]) -> List[str]:
    lines = []
    for f, b in zip(bench_files, bench):
        m = b.get("meta") or {}
        bits = [f"{k}: {m[k]}" for k in ("machine", "cpu", "torch", "threads", "runs", "dtype", "created")
                if m.get(k) is not None]
        if m.get("cpu_flags"):  # (int8 / bf16 speed depends on them)
            bits.insert(2, "ISA: " + " ".join(m["cpu_flags"]))
        lines.append(f"- `{f}` — " + ("; ".join(bits) if bits else "no meta"))
    return lines


@dataclasses.dataclass
class ReportData:
    """What a report is drawn from: the files read and joined into rows (one per model, runtime and size), the
    Pareto sets, and the warnings met on the way."""

    bench: List[dict]
    bench_files: List[str]
    energy: List[dict]
    accuracy: List[Tuple[str, dict]]
    paper: Optional[dict]
    rows: List[dict]
    sets: Dict[str, Dict[str, List[str]]]
    warnings: List[str]


def load_report_data(bench: Sequence[str] = (), energy: Sequence[str] = (), accuracy: Sequence[str] = (),
                     paper: bool | str = True) -> ReportData:
    """Read the bench / energy / accuracy files and the paper data, join them into rows and mark the Pareto sets."""
    bench_data = [load_bench_json(f) for f in bench]
    energy_data = [e for f in energy for e in load_energy_json(f)]
    acc_data = [(str(f), it) for f in accuracy for it in load_accuracy_json(f)]
    paper_data = load_paper(None if paper is True else paper) if paper else None
    rows, warnings = build_rows(bench_data, energy_data, acc_data, paper_data)
    for e in energy_data:
        for w in e.get("warnings") or []:
            warnings.append(f"energy ({e.get('label') or e.get('model') or e.get('method')}): {w}")
    return ReportData(bench_data, [str(f) for f in bench], energy_data, acc_data, paper_data, rows,
                      mark_pareto(rows), warnings)


def _tradeoff_plots(rows: Sequence[dict], out: Path) -> List[Path]:
    """One accuracy-latency plot per runtime group and one accuracy-energy plot per measurement method."""
    plots: List[Path] = []
    latency_groups = sorted(_groups(rows, "latency_ms", "runtime").items())
    for i, (group, rs) in enumerate(latency_groups):
        machine = next((r.get("machine") for r in rs if r.get("machine")), None)
        ci = all(r.get("latency_ci_ms") for r in rs)
        stem = f"pareto_latency_{rs[0]['runtime']}" + (f"_{i + 1}" if len(latency_groups) > 1 else "")
        plots += plot_tradeoff(rs, "latency_ms", "median latency per image, batch 1 (ms)" + (", 95% CI" if ci else ""),
                               f"Accuracy vs latency — {group}" + (f" on {machine}" if machine else ""),
                               out / stem, err_key="latency_ci_ms" if ci else "latency_std_ms",
                               flag_key="pareto_latency")
    energy_groups = sorted(_groups(rows, "energy_mj", "energy_method").items())
    for i, (group, rs) in enumerate(energy_groups):
        stem = f"pareto_energy_{rs[0].get('energy_method')}" + (f"_{i + 1}" if len(energy_groups) > 1 else "")
        plots += plot_tradeoff(rs, "energy_mj", "energy per inference (mJ)", f"Accuracy vs energy ({group})",
                               out / stem, err_key="energy_std_mj")
    return plots


def _results_md(data: ReportData, plots: Sequence[Path]) -> List[str]:
    """The measured part of report.md: how it was measured, the table, the Pareto sets, the plots."""
    if not data.rows:
        return []
    md: List[str] = []
    if data.bench:
        md += ["Latency measured with `edgevit bench` (batch 1, fp32; median over interleaved rounds with its "
               "95% confidence interval where the file has one):", ""] + _meta_lines(data.bench, data.bench_files) \
            + [""]
    if data.energy:
        md += ["Energy measured with `edgevit energy` (" +
               ", ".join(sorted({str(e.get("method")) for e in data.energy})) + "); net of idle power.", ""]
    md += ["Top-1 accuracy: `eval` = measured here with `edgevit eval`; `paper` = published ImageNet-1K top-1 "
           "(224 px) from the shipped paper data; `published` = the model's own paper (the shipped peer and "
           "paper data cite each; † = trained with distillation, which EdgeViT's top-1 is not; a reduced-precision "
           "row carries the model's published fp32 top-1: its own is not measured here). Pareto sets are "
           "within one group: one runtime and precision (latency) or "
           "measurement method (energy), at one input size, with accuracies measured on one data set (a "
           "10-class accuracy and ImageNet top-1s are never compared); — means the numbers needed are "
           "missing; ? means the latencies' confidence intervals leave the membership open (the front drawn "
           "is the medians').", ""]
    md += _table(data.rows) + [""]
    for tag, title_ in (("accuracy_latency", "Accuracy–latency"), ("accuracy_energy", "Accuracy–energy")):
        for group, names in data.sets[tag].items():
            md.append(f"- {title_} Pareto set ({group}): {', '.join(names)}")
            unsure = data.sets[f"uncertain_{tag.split('_')[1]}"].get(group)
            if unsure:
                md.append(f"  - not settled by this measurement (intervals overlap): {', '.join(unsure)}; "
                          "measure again with more runs on a quieter machine before drawing conclusions")
    md.append("")
    words = front_words(data.rows)
    if words:
        md += ["Where each EdgeViT stands (accuracy–latency, per runtime and precision):", ""] + words + [""]
    for p in plots:
        md += [f"![{p.stem}]({p.name})", ""]
    return md


def front_words(rows: Sequence[dict]) -> List[str]:
    """In words, per latency group (one runtime and precision, at the models' own sizes): which EdgeViTs are on
    the accuracy-latency front, which are not and which models dominate each (no slower and at least as accurate,
    fastest first), and which the timing intervals leave open."""
    from .pareto import dominated_by

    out = []
    for group, rs in sorted(_groups(rows, "latency_ms", "runtime").items()):
        evs = [r for r in rs if r["edgevit"]]
        if not evs:
            continue
        bits = []
        for r in sorted(evs, key=lambda r: r["latency_ms"]):
            if r["pareto_latency"] is True:
                bits.append(f"**{r['name']}** is on the front ({r['latency_ms']:.2f} ms, {r['top1']:.1f}%)")
            elif r["pareto_latency"] == "uncertain":
                bits.append(f"**{r['name']}**: the intervals leave it open ({r['latency_ms']:.2f} ms)")
            else:
                by = {x["name"]: x for x in rs}
                doms = sorted((by[n] for n in dominated_by(rs, r["name"], "latency_ms") or ()),
                              key=lambda x: x["latency_ms"])
                bits.append(f"**{r['name']}** ({r['latency_ms']:.2f} ms, {r['top1']:.1f}%) is dominated by "
                            + ", ".join(f"{d['name']} ({d['latency_ms']:.2f} ms, {d['top1']:.1f}%)" for d in doms))
        out.append(f"- {group}: " + "; ".join(bits) + ".")
    return out


def _vs_paper(data: ReportData) -> Tuple[dict, List[str]]:
    """The bench latencies beside the paper's phone (Table 2), ImageNet-1K accuracies measured here replacing
    the paper's."""
    if not data.bench:
        raise UserError("the comparison with the paper's phone needs bench results")
    acc_over = {it["model"]: float(it["top1"]) for _, it in data.accuracy if _imagenet_like(it)}
    for f, it in data.accuracy:
        if not _imagenet_like(it):
            data.warnings.append(f"accuracy file {f}: {it['model']} top-1 on {accuracy_data(it)} is not an "
                                 "ImageNet-1K top-1: the comparison with the paper's phone keeps the paper's top-1")
    cmp = compare_latency(data.bench, acc_over, data.paper)
    return cmp, _vs_paper_md(cmp)


def _paper_data_md(paper: dict) -> List[str]:
    md = ["## Paper data", "", paper["citation"], "", paper.get("note", ""), ""]
    md += [f"- `{k}`: {t.get('description', '')} — source: {t['source']}" for k, t in paper["tables"].items()]
    return md + [""]


def make_report(out_dir: os.PathLike | str, bench: Sequence[str] = (), energy: Sequence[str] = (),
                accuracy: Sequence[str] = (), paper: bool | str = True, title: str = "EdgeViT efficiency report",
                publish_as: os.PathLike | str | None = None, paper_figures: bool = False,
                vs_paper: bool = False) -> dict:
    """Write report.md, report.json and the plots (PNG + SVG) into `out_dir`; return the summary.

    bench / energy / accuracy: files from `edgevit bench --json`, `edgevit energy -o`, `edgevit eval --json`.
    paper: True for the shipped paper data (`edgevit.paper`), a path for another file of its format, False for
    none. paper_figures: the paper's Fig. 1 / Fig. 5 and efficiency plot redrawn from its tables, with its
    Pareto sets and claims checked. vs_paper: the bench latencies beside the paper's phone (Table 2).
    publish_as: where `out_dir` will be moved once written (`edgevit.utils.writes.replace_dir`)."""
    if (paper_figures or vs_paper) and not paper:
        raise UserError("the paper's figures and the comparison with its phone need the paper data")
    data = load_report_data(bench, energy, accuracy, paper)
    out = Path(out_dir)
    shown = Path(publish_as) if publish_as is not None else out
    out.mkdir(parents=True, exist_ok=True)
    plots = _tradeoff_plots(data.rows, out)
    md = [f"# {title}", ""] + _results_md(data, plots)
    summary: dict = {"out_dir": str(shown), "report": str(shown / "report.md"), "pareto": data.sets}
    if vs_paper:
        summary["vs_paper"], more = _vs_paper(data)
        md += more
    if paper_figures:
        fig_plots, fig_md, summary["paper"] = _paper_section(data.paper, out)
        plots += fig_plots
        md += fig_md
    if data.paper:
        md += _paper_data_md(data.paper)
    if data.warnings:
        md += ["## Warnings", ""] + [f"- {w}" for w in data.warnings] + [""]
    write_text_atomic(out / "report.md", "\n".join(md))
    summary.update({"plots": [str(shown / p.name) for p in plots], "warnings": data.warnings,
                    "rows": [dict(r) for r in data.rows]})
    write_json_atomic(out / "report.json", summary)
    return summary


def _imagenet_like(item: dict) -> bool:
    """An eval result that can stand beside the paper's ImageNet top-1s: 1000 classes (its input size is a
    grouping of its own)."""
    return item.get("num_classes") == 1000


def _vs_paper_md(cmp: dict) -> List[str]:
    md = ["## This machine vs the paper's phone", "", cmp["note"], "",
          f"Runtime here: {cmp['runtime']}. Latency ratios are to MobileNet-v2 on each side. Kendall's τ of the "
          f"latencies (the same order = 1): **{cmp['kendall_tau']:.2f}** over {len(cmp['rows'])} models. Input: each "
          "model's size in the paper (224 px; MobileViT 256) here and on the phone; top-1: ImageNet-1K (the "
          "paper's unless an eval file gives one).", "",
          "| model | here (ms) | here / MobileNet-v2 | S21 (ms) | S21 / MobileNet-v2 | top-1 % |",
          "|---|---|---|---|---|---|"]
    for r in sorted(cmp["rows"], key=lambda r: r["paper_latency_ms"]):
        md.append(f"| {r['name']} | {r['latency_ms']:.2f} | {r['ratio']:.2f} | {r['paper_latency_ms']:.1f} | "
                  f"{r['paper_ratio']:.2f} | {r['top1']:.1f} |")
    p = cmp["pareto"]
    md += ["", f"- Accuracy–latency Pareto set on the S21 (these models): {', '.join(p['paper'])}",
           f"- ... with the latencies measured here: {', '.join(p['yours'])}"]
    md.append("- Memberships that change: " + (", ".join(
        f"{c['name']} ({'joins' if c['yours'] else 'leaves'})" for c in p["changes"]) if p["changes"] else "none"))
    return md + [""]


def _paper_section(paper: dict, out: Path) -> Tuple[List[Path], List[str], dict]:
    """The paper's Fig. 1 / Fig. 5 (and accuracy vs efficiency) redrawn from its Tables 2 and 3, the Pareto
    sets by the paper's names, Table 3's efficiency recomputed, and its claims checked."""
    sets = paper_pareto(paper)
    figures = {  # stem: (tradeoff, x label, title)
        "paper_fig1_accuracy_latency": ("accuracy_latency", "latency on a Galaxy S21 CPU (ms, ± std)",
                                        "Pan et al. 2022, Fig. 1: accuracy vs latency (Table 2)"),
        "paper_fig5a_accuracy_latency": ("accuracy_latency", "latency on a Galaxy S21 CPU (ms, ± std)",
                                         "Fig. 5 (a): accuracy vs latency (Table 2)"),
        "paper_fig5b_accuracy_energy": ("accuracy_energy", "energy per inference, Snapdragon 888 HDK (mJ, ± std)",
                                        "Fig. 5 (b): accuracy vs energy (Table 3)"),
        "paper_accuracy_efficiency": ("accuracy_efficiency", "efficiency: top-1 % per mJ (recomputed)",
                                      "Accuracy vs energy efficiency (Table 3, top-1 / energy)"),
    }
    plots: List[Path] = []
    for stem, (t, xlabel, title) in figures.items():
        rs = [{"name": r["name"], "cost": r["cost"], "cost_std": r["cost_std"], "top1": r["top1"],
               "edgevit": r["family"] == "EdgeViT"} for r in tradeoff_rows(t, paper)]
        plots += plot_tradeoff(rs, "cost", xlabel, title, out / stem, err_key="cost_std",
                               higher_is_better=TRADEOFFS[t][3])
    eff = efficiency_rows(paper)
    checked = claims(paper)
    md = ["## The paper's own numbers", "", RUNTIME_NOTE.split(";")[0] + ".", "",
          "Figures redrawn from the paper's tables: " + ", ".join(f"`{p.name}`" for p in plots if p.suffix == ".png"),
          ""]
    for p in plots:
        if p.suffix == ".png":
            md += [f"![{p.stem}]({p.name})", ""]
    md += ["| model | family | top-1 % | S21 latency (ms) | energy (mJ) | efficiency printed | recomputed | "
           "agrees | Pareto: latency | energy | efficiency |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in eff:
        mark = ["✔" if r["model"] in sets[t] else "" for t in TRADEOFFS]
        md.append(f"| {r['model']} | {r['family']} | {r['top1']:.1f} | {r['latency_ms']:.1f} | "
                  f"{r['energy_mj']:.1f} ± {r['energy_std_mj']:.1f} | {r['efficiency_printed']:.3f} | "
                  f"{r['efficiency']:.4f} | {'yes' if r['efficiency_agrees'] else 'NO'} | " + " | ".join(mark) + " |")
    md += ["", "Pareto sets (the paper's names):"]
    md += [f"- {t.replace('_', ' ')}: {', '.join(names)}" for t, names in sets.items()]
    md += ["", "The paper's claims, checked against its own tables:"]
    md += [f"- {'✔' if c['holds'] else '✘'} {c['claim']} {c['finding']}" for c in checked]
    md.append("")
    summary = {"pareto": sets, "claims": checked,
               "efficiency": [{k: r[k] for k in ("model", "top1", "energy_mj", "efficiency", "efficiency_printed",
                                                 "efficiency_agrees")} for r in eff]}
    return plots, md, summary
