"""The runtime x precision matrix (`edgevit bench --runtime all`): every runtime installed here, every precision
its record writes (fp32, int8, fp16, bf16), each model exported through that runtime's flow and checked in it.

Per cell (runtime, precision) and model: the file's size and export time, its max |diff| and logits SQNR against
the model in PyTorch fp32 (on images of `data` when given, else on seeded random inputs), its top-1 on `data` run
in its runtime (models with a checkpoint), and its latency: median with a 95% interval, all the cells of one
runtime timed in the same interleaved rounds, so that the ratio to the baseline (MobileNetV2, exported through
the same flow) and the speed-up over the model's own fp32 file are each taken in one run. A cell that cannot be
made says why in one line and the others go on (Ultralytics' `benchmark()` does the same, without intervals).
"""
from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from ..deploy import runtimes
from ..deploy.export import FileRejected
from ..errors import MissingDependencyError, UserError
from .bench import _RUN_ERRORS, FILE_KEYS, check_models, expand_models, file_cells, median_ci, meta, time_runners
from .runners import build_runner, file_measures

MATRIX_MODELS = ("edgevit_xxs", "mobilenetv2_100")
BASELINE = "mobilenetv2_100"
ALL = "all"
ROW_KEYS = ("status", "runtime", "precision", "model", "label", "export_s", "max_abs_diff", "sqnr_db",
            "top1_agreement", "top1", "median_ms", "ci_lo_ms", "ci_hi_ms", "runs", "ratio_to_baseline",
            "speedup_vs_fp32", *FILE_KEYS)


def plan_cells(runtime_names: Sequence[str] = (ALL,), precisions: Sequence[str] = (ALL,)) -> List[dict]:
    """[{runtime, precisions: [...], skipped: {precision: why}}] for the file runtimes asked (all: every one),
    in the registry's order. A runtime whose packages are missing has every cell skipped, saying which; a
    precision this CPU cannot run in the runtime (its record's `cpu_lacks`) is skipped saying why."""
    names = [r.name for r in runtimes.RUNTIMES.values() if r.format] if ALL in runtime_names else \
        list(dict.fromkeys(runtime_names))
    plan = []
    for name in names:
        rt = runtimes.get(name)
        if rt.format is None:
            raise UserError(f"{name} runs the PyTorch module itself, no file: not a matrix runtime", option="runtime")
        asked = list(rt.precisions) if ALL in precisions else list(dict.fromkeys(precisions))
        cell = {"runtime": name, "precisions": [], "skipped": {}}
        try:
            rt.require(writing=True)
        except MissingDependencyError as e:
            cell["skipped"] = {p: str(e) for p in asked}
            plan.append(cell)
            continue
        for p in asked:
            if p not in rt.precisions:
                cell["skipped"][p] = f"{name} writes no {p} files (its precisions: {', '.join(rt.precisions)})"
            elif why := rt.cpu_lacks(p):
                cell["skipped"][p] = why
            else:
                cell["precisions"].append(p)
        plan.append(cell)
    return plan


class BelowFloor(UserError):
    """A file whose top-1 is under the run's floor: a failed cell, not timed."""


def _check_batch(net, data: Optional[str], count: int, size: int) -> tuple:
    """(images, what they are) a file is compared with PyTorch on: `count` of `data` through the model's eval
    transform, or seeded random inputs."""
    from ..deploy.quantize import model_calibration, random_calibration

    if data:
        return model_calibration(net, data, count, size), f"{count} images of {data}"
    return random_calibration(count, size, seed=1), f"{count} seeded random inputs"


def run_matrix(models: Sequence[str] = MATRIX_MODELS, runtime_names: Sequence[str] = (ALL,),
               precisions: Sequence[str] = (ALL,), checkpoint: Optional[str] = None, data: Optional[str] = None,
               calib: Optional[str] = None, calib_images: int = 64, check_images: int = 16, runs: int = 30,
               warmup: int = 5, threads: int = 2, img_size: Optional[int] = None, show_progress: bool = True,
               seed: int = 0, top1: bool = True, min_top1: Optional[float] = None) -> dict:
    """The matrix document: {"meta", "results": rows, "skipped": [{runtime, precision, model?, why}]}.
    `checkpoint`: the EdgeViT models' weights (the baselines keep random weights: their top-1 is not given);
    without `img_size`, every model runs at the size it was trained at.
    `calib`: int8 calibration images (a folder; default random inputs, labelled timing-only). `top1` False: no
    top-1 on `data` (its images still check each file), e.g. when the cells run at another size than the
    checkpoint was trained at. `min_top1`: a floor on that top-1 (%, Ultralytics' metric floor): a file below it is a
    failed cell with its reason, not timed."""
    from tqdm import tqdm

    from ..deploy.quantize import RANDOM
    from ..models import VARIANTS
    from ..train.evaluate import evaluate_exported

    models = expand_models(models)
    check_models(models)
    if min_top1 is not None and not (checkpoint and data and top1):
        raise UserError("a top-1 floor needs the files' top-1: a checkpoint and a data split", option="min_top1")
    plan = plan_cells(runtime_names, precisions)
    calib = calib or RANDOM
    if checkpoint and img_size is None:  # every model of every cell at the size the checkpoint was trained at
        from ..models.checkpoint import read_state_dict

        img_size = (read_state_dict(checkpoint).get("config") or {}).get("img_size")
    rows: List[dict] = []
    skipped = [{"runtime": c["runtime"], "precision": p, "why": why} for c in plan for p, why in c["skipped"].items()]
    cells = sum(len(c["precisions"]) for c in plan) * len(models)
    bar = tqdm(total=cells, desc="matrix: export and check", unit="file", file=sys.stderr, disable=not show_progress)
    for cell in plan:
        built = []
        for precision in cell["precisions"]:
            for model in models:
                bar.set_postfix_str(f"{cell['runtime']} {precision} {model}")
                ck = checkpoint if model in VARIANTS else None
                try:  # the checked writer: a file below its precision's rule is a failed cell, never timed
                    runner = build_runner(model, cell["runtime"], img_size=img_size, threads=threads, fused=True,
                                          checkpoint=ck, precision=precision, calib=calib,
                                          calib_images=calib_images, trained=bool(ck and data),
                                          check=lambda net, size: _check_batch(net, data, check_images, size))
                    row = {"runtime": cell["runtime"], "precision": precision, "model": model, "status": "ok",
                           "label": runner.label, "img_size": runner.img_size,
                           "export_s": runner.export_s, "weights": "checkpoint" if ck else "random",
                           "rule": runner.info["rule"],
                           **{k: runner.info[k] for k in ("max_abs_diff", "sqnr_db", "top1_agreement")}}
                    if data and ck and top1:
                        row["top1"] = evaluate_exported(data, runner.path, checkpoint=ck, workers=0,
                                                        threads=threads, progress=False)["top1"]
                        if min_top1 is not None and row["top1"] < min_top1:
                            raise BelowFloor(f"top-1 {row['top1']:.2f}% on {data} is below the floor {min_top1:g}%")
                    row.update(file_measures(runner))
                    built.append((row, runner))
                except (*_RUN_ERRORS, UserError) as e:
                    why = " ".join(str(e).split())[:300] or type(e).__name__
                    skipped.append({"runtime": cell["runtime"], "precision": precision, "model": model,
                                    "why": why, "status": "rejected" if isinstance(e, (FileRejected, BelowFloor))
                                    else "not made"})
                    print(f"edgevit bench: {cell['runtime']} {precision} {model}: {why}", file=sys.stderr)
                bar.update(1)
        if not built:
            continue
        timing = tqdm(total=len(built) * runs, desc=f"matrix: {cell['runtime']} rounds", unit="run",
                      file=sys.stderr, disable=not show_progress, leave=False)
        times = time_runners([r for _, r in built], runs, warmup, timing, seed=seed)
        timing.close()
        for (row, _), ts in zip(built, times):
            lo, hi = median_ci(ts)
            row.update(median_ms=statistics.median(ts), ci_lo_ms=lo, ci_hi_ms=hi, runs=runs)
            rows.append(row)
        del built
    bar.close()
    _add_ratios(rows)
    doc = {"meta": {**meta(threads, runs), "timing": "per runtime, every cell's files in the same interleaved "
                    "rounds; median with a 95% distribution-free confidence interval",
                    "baseline": BASELINE, "check_images": check_images,
                    "checked_on": f"{check_images} images of {data}" if data else
                    f"{check_images} seeded random inputs",
                    "int8_calibration": "random inputs (timing only: int8 accuracy meaningless)" if calib == RANDOM
                    else f"{calib_images} images of {calib}", "checkpoint": checkpoint, "data": data},
           "results": rows, "skipped": skipped}
    doc["meta"]["dtype"] = "per cell"
    return doc


def _add_ratios(rows: List[dict]) -> None:
    """ratio_to_baseline: the model's median over the baseline's in the same cell; speedup_vs_fp32: the model's
    own fp32 median (same runtime, same rounds) over this one."""
    by = {(r["runtime"], r["precision"], r["model"]): r for r in rows}
    for r in rows:
        base = by.get((r["runtime"], r["precision"], BASELINE))
        r["ratio_to_baseline"] = r["median_ms"] / base["median_ms"] if base and r["model"] != BASELINE else None
        fp32 = by.get((r["runtime"], "fp32", r["model"]))
        r["speedup_vs_fp32"] = fp32["median_ms"] / r["median_ms"] if fp32 and r["precision"] != "fp32" else None


def _num(v, fmt: str) -> str:
    return "–" if v is None else format(v, fmt)


def format_matrix(doc: dict) -> str:
    """The matrix as a markdown table, its machine header first, the cells that could not be made after it."""
    m = doc["meta"]
    lines = [f"Runtime x precision on {m['cpu']} ({' '.join(m['cpu_flags']) or 'no AVX2/AVX-512/VNNI/BF16/AMX'}), "
             f"{m['threads']} threads, batch 1, {m['runs']} interleaved rounds per runtime; checked against "
             f"PyTorch fp32 on {m['checked_on']}; int8 calibrated on {m['int8_calibration']}.", "",
             f"| | runtime | precision | model | export s | max \\|diff\\| | SQNR dB | top-1 agree % | top-1 % "
             f"| median ms [95% CI] | x {m['baseline']} | vs own fp32 | file MB | load ms | 1st ms | RSS MB "
             "| +load MB | planned MB | delegate partitions (ops outside) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc["results"]:
        lines.append(f"| ✅ | {r['runtime']} | {r['precision']} | {r['label']} | "
                     f"{_num(r['export_s'], '.1f')} | {r['max_abs_diff']:.2g} | {_num(r['sqnr_db'], '.1f')} | "
                     f"{r['top1_agreement']:.1f} | {_num(r.get('top1'), '.2f')} | {r['median_ms']:.2f} "
                     f"[{r['ci_lo_ms']:.2f}, {r['ci_hi_ms']:.2f}] | {_num(r['ratio_to_baseline'], '.2f')} | "
                     f"{_num(r['speedup_vs_fp32'], '.2f')} | {file_cells(r)} |")
    rejected = [s for s in doc["skipped"] if s.get("status") == "rejected"]
    if rejected:  # (Ultralytics' benchmark() marks these ❌)
        lines += ["", "❌ Made but refused by their precision's rule or the top-1 floor (not timed):"]
        lines += [f"- {s['runtime']} {s['precision']} {s['model']}: {s['why']}" for s in rejected]
    others = [s for s in doc["skipped"] if s.get("status") != "rejected"]
    if others:
        lines += ["", "❌ Not made:"]
        lines += [f"- {s['runtime']} {s['precision']}{' ' + s['model'] if s.get('model') else ''}: {s['why']}"
                  for s in others]
    versions = ", ".join(f"{k} {v}" for k, v in m["runtime_versions"].items())
    lines += ["", "✅ made, checked against its precision's rule and timed. load ms / 1st ms / RSS MB: a fresh process "
              "(numpy and the runtime's package only; ExecuTorch and TorchScript also import torch, which an app "
              "linking their C++ runtimes does not) loading the file and running it once; +load MB: that process's "
              "peak resident memory over the one after its imports (what the file costs).",
              "", f"{versions}. fp16/bf16 and int8 speeds depend on the CPU's instructions "
              "(the flags above): an x86 figure does not carry to an ARM phone (fp16 arithmetic from ARMv8.2, int8 "
              "dot products); the files' accuracy does."]
    return "\n".join(lines)


def plot_matrix(doc: dict, path: Path) -> Path:
    """Latency by cell (runtime, precision), each model's bar with its 95% interval, and beside it the memory of a
    fresh process that loads the file and runs it once (peak resident, the file's rise over the imports hatched)
    (png or svg by suffix)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..utils.writes import atomic_path

    rows = doc["results"]
    cells = list(dict.fromkeys((r["runtime"], r["precision"]) for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    by = {(r["runtime"], r["precision"], r["model"]): r for r in rows}
    fig, (ax, mem) = plt.subplots(1, 2, figsize=(12, 0.45 * len(cells) * len(models) + 1.5), sharey=True,
                                  gridspec_kw={"width_ratios": [3, 2]})
    height = 0.8 / max(len(models), 1)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, model in enumerate(models):
        ys, xs, lo, hi, peak, load = [], [], [], [], [], []
        for i, cell in enumerate(cells):
            r = by.get((*cell, model))
            if r:
                ys.append(i + j * height)
                xs.append(r["median_ms"])
                lo.append(r["median_ms"] - r["ci_lo_ms"])
                hi.append(r["ci_hi_ms"] - r["median_ms"])
                peak.append(r.get("peak_rss_mb") or 0.0)
                load.append(r.get("load_rss_mb") or 0.0)
        color = colors[j % len(colors)]
        ax.barh(ys, xs, height=height, xerr=[lo, hi], label=model, capsize=2, color=color)
        mem.barh(ys, peak, height=height, color=color, alpha=0.45)
        mem.barh(ys, load, height=height, color=color, hatch="//", edgecolor="black", linewidth=0.3)
    ax.set_yticks([i + 0.4 - height / 2 for i in range(len(cells))], [f"{rt} {p}" for rt, p in cells])
    ax.invert_yaxis()
    ax.set_xlabel("latency, batch 1 (ms; median, 95% interval)")
    mem.set_xlabel("fresh process: peak resident MB (hatched: the file's rise over the imports)")
    fig.suptitle(f"{doc['meta']['cpu']}, {doc['meta']['threads']} threads", fontsize=9)
    ax.legend(fontsize=8)
    for a in (ax, mem):
        a.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".").lower() or "png")
    plt.close(fig)
    return path
