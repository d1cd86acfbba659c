"""Accuracy-vs-cost plots with the Pareto front drawn (the paper's Fig. 1 / Fig. 5 style) and labels placed so
they do not overlap: what `edgevit report` draws (PNG and SVG)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

from ..utils.writes import atomic_path
from .pareto import pareto_front

__all__ = ["plot_tradeoff", "place_labels", "text_extent"]


def text_extent(annotation, renderer):
    """The window box of an annotation's text alone (matplotlib's includes the arrow)."""
    from matplotlib.text import Text
    annotation.update_positions(renderer)
    return Text.get_window_extent(annotation, renderer)


def place_labels(ax, xs: Sequence[float], ys: Sequence[float], labels: Sequence[str],
                 bold: Sequence[bool] = (), fontsize: float = 8) -> list:
    """Annotate each point with a label placed so that no two labels (nor a label and a marker) overlap.

    Greedy: points in order, each label tries offsets around its point at growing distances and takes
    the first whose box overlaps nothing placed so far and stays inside the axes (else the least bad).
    Written here because adjustText is not a dependency and matplotlib has no label placer."""
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax_box = ax.get_window_extent(renderer)
    pts = ax.transData.transform(list(zip(xs, ys)))
    r = 4.0 * fig.dpi / 72.0  # marker half-size in pixels
    occupied = [(px - r, py - r, px + r, py + r) for px, py in pts]

    def overlap(a, b):
        return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))

    dirs = [(1, 1, "left", "bottom"), (1, -1, "left", "top"), (-1, 1, "right", "bottom"),
            (-1, -1, "right", "top"), (0, 1, "center", "bottom"), (0, -1, "center", "top"),
            (1, 0, "left", "center"), (-1, 0, "right", "center")]
    texts: list = [None] * len(labels)
    order = sorted(range(len(labels)), key=lambda i: (not (bold[i] if bold else False), i))
    for i in order:
        best = None
        for dist in (5, 12, 20, 30, 42, 56, 72):
            for dx, dy, ha, va in dirs:
                t = ax.annotate(labels[i], (xs[i], ys[i]), xytext=(dx * dist, dy * dist),
                                textcoords="offset points", ha=ha, va=va, fontsize=fontsize,
                                fontweight="bold" if bold and bold[i] else "normal",
                                arrowprops=dict(arrowstyle="-", lw=0.5, color="0.5") if dist > 12 else None)
                bb = text_extent(t, renderer)
                box = (bb.x0, bb.y0, bb.x1, bb.y1)
                outside = (box[0] < ax_box.x0) or (box[2] > ax_box.x1) or (box[1] < ax_box.y0) \
                    or (box[3] > ax_box.y1)
                own = occupied[i]
                score = sum(overlap(box, o) for j, o in enumerate(occupied) if o is not own) + \
                    (1e6 if outside else 0.0)
                if best is None or score < best[0]:
                    if best is not None:
                        best[1].remove()
                    best = (score, t, box)
                else:
                    t.remove()
                if score == 0:
                    break
            if best[0] == 0:
                break
        occupied.append(best[2])
        texts[i] = best[1]
    return texts


def plot_tradeoff(rows: Sequence[dict], cost_key: str, xlabel: str, title: str, out_stem: Path,
                  err_key: Optional[str] = None, higher_is_better: bool = False,
                  flag_key: Optional[str] = None) -> List[Path]:
    """Accuracy vs cost scatter with the Pareto front (EdgeViTs highlighted) -> out_stem.png and .svg.

    err_key: a +- value or a [lo, hi] interval per row (error bars); higher_is_better: the cost axis is a
    benefit (efficiency); flag_key: rows whose flag is "uncertain" get a ring saying their place on the
    front is not settled by the measurement."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get(cost_key) is not None and r.get("top1") is not None]
    if not rows:
        return []
    xs = [float(r[cost_key]) for r in rows]
    ys = [float(r["top1"]) for r in rows]
    front = pareto_front([-x for x in xs] if higher_is_better else xs, ys)
    fig, ax = plt.subplots(figsize=(7.0, 4.8), dpi=110)
    others = [i for i, r in enumerate(rows) if not r["edgevit"]]
    edge = [i for i, r in enumerate(rows) if r["edgevit"]]
    if err_key:
        for i in range(len(rows)):
            e = rows[i].get(err_key)
            if isinstance(e, (list, tuple)):
                ax.errorbar(xs[i], ys[i], xerr=[[max(0.0, xs[i] - e[0])], [max(0.0, e[1] - xs[i])]], fmt="none",
                            ecolor="0.6", lw=0.8, zorder=1)
            elif e:
                ax.errorbar(xs[i], ys[i], xerr=float(e), fmt="none", ecolor="0.6", lw=0.8, zorder=1)
    ax.scatter([xs[i] for i in others], [ys[i] for i in others], s=36, c="#6b7b8c", label="other models",
               zorder=3)
    ax.scatter([xs[i] for i in edge], [ys[i] for i in edge], s=110, marker="*", c="#d62728", label="EdgeViT",
               zorder=4)
    fx, fy = [xs[i] for i in front], [ys[i] for i in front]
    ax.step(fx, fy, where="post", color="#d62728", lw=1.0, ls="--", alpha=0.7, label="Pareto front", zorder=2)
    ax.scatter(fx, fy, s=140, facecolors="none", edgecolors="#d62728", lw=0.8, zorder=2)
    unsure = [i for i, r in enumerate(rows) if flag_key and r.get(flag_key) == "uncertain"]
    if unsure:
        ax.scatter([xs[i] for i in unsure], [ys[i] for i in unsure], s=260, facecolors="none",
                   edgecolors="#ff7f0e", lw=1.2, ls="--", label="on/off front: not settled", zorder=2)
    span_x = (max(xs) - min(xs)) or max(xs) or 1.0
    span_y = (max(ys) - min(ys)) or 1.0
    ax.set_xlim(min(xs) - 0.12 * span_x, max(xs) + 0.25 * span_x)
    ax.set_ylim(min(ys) - 0.15 * span_y, max(ys) + 0.2 * span_y)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("ImageNet top-1 (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    place_labels(ax, xs, ys, [r["name"] for r in rows], bold=[r["edgevit"] for r in rows])
    paths = []
    for ext in ("png", "svg"):
        path = out_stem.with_suffix(f".{ext}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext)
        paths.append(path)
    plt.close(fig)
    return paths
