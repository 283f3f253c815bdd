"""compare.png: the score against epoch time (with 95% intervals) and one mean validation curve per group.

At most 8 groups are coloured, labelled in the legend and numbered by rank beside their points (each
rank label moved until it overlaps nothing); the rest are grey. Axes are clipped around outliers so one
slow configuration does not squash the others, and say so.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from bilstm_exp.analysis.formatting import cut, number
from bilstm_exp.analysis.groups import Group

MAX_LINES = 8  # labelled lines in the plot; the rest are grey
# where a rank label may go, relative to its point (offset points), nearest first
OFFSETS = [(5, 5), (5, -13), (-13, 5), (-13, -13), (9, -4), (-17, -4), (-4, 9), (-4, -17)]
OFFSETS += [(dx * k, dy * k) for k in (2, 3, 4) for dx, dy in OFFSETS]


def robust_limits(values: list[float], floor: float | None = None) -> tuple[float, float, float, bool]:
    """(low, high, edge, clipped): axis limits around the 10-90% quantile range widened by 1.5 times
    itself, so that one outlier does not squash everything else (from ``floor`` when given: a cost
    axis starts at 0); clipped says whether a value lies outside, edge is where to draw such a value."""
    values = sorted(v for v in values if math.isfinite(v))
    lo, hi = values[0], values[-1]
    if len(values) >= 4:
        q10, q90 = statistics.quantiles(values, n=10, method="inclusive")[0::8]
        span = q90 - q10
        if span > 0:
            lo, hi = max(lo, q10 - 1.5 * span), min(hi, q90 + 1.5 * span)
    pad = (hi - (lo if floor is None else floor)) * 0.08 or abs(hi) * 0.05 or 1.0
    low = lo - pad if floor is None else floor
    clipped = values[0] < lo or values[-1] > hi
    return low, hi + pad, hi + pad / 2, clipped


def place_labels(ax, points: list[tuple[float, float, str]], colours: list) -> list:
    """Rank numbers next to their points, each moved until it overlaps no other label or point."""
    renderer = ax.figure.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    taken = []
    for x, y, _ in points:
        px, py = ax.transData.transform((x, y))
        taken.append(_box(px - 4, py - 4, px + 4, py + 4))
    texts = []
    for (x, y, label), colour in zip(points, colours, strict=True):
        for dx, dy in OFFSETS:
            text = ax.annotate(label, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=8,
                               color=colour, fontweight="bold", zorder=5,
                               bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85},
                               arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.5} if abs(dx) > 20 else None)
            box = text.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in taken) and inside.contains(box.x0, box.y0) \
                    and inside.contains(box.x1, box.y1):
                break
            text.remove()
        else:
            text = ax.annotate(label, (x, y), xytext=(5, 5), textcoords="offset points", fontsize=8, color=colour)
            box = text.get_window_extent(renderer)
        taken.append(box)
        texts.append(text)
    return texts


def _box(x0, y0, x1, y1):
    from matplotlib.transforms import Bbox

    return Bbox([[x0, y0], [x1, y1]])


def plot(rows: list[Group], metric: str, curve_metric: str, path: Path, max_lines: int = MAX_LINES):
    """compare.png; returns the figure (closed), whose legend labels the coloured lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 5.8), layout="constrained")
    palette = plt.get_cmap("tab10").colors
    colour = {id(g): (palette[i % 10] if i < max_lines else "0.72") for i, g in enumerate(rows)}
    _curves(ax2, rows, colour, curve_metric, max_lines)
    points = _scatter(ax1, rows, colour, metric, max_lines)
    handles = _legend(rows, colour, max_lines)
    fig.legend(handles=handles, loc="outside lower center", ncol=min(2, len(handles)), fontsize=8, frameon=False)
    fig.canvas.draw()  # the final layout, so that label boxes are measured where they will be drawn
    fig.set_layout_engine("none")
    labelled = [(x, y, str(rows.index(g) + 1) + (f" ({number(beyond, 3)} s)" if beyond else ""), colour[id(g)])
                for x, y, g, beyond in points if rows.index(g) < max_lines]
    place_labels(ax1, [point[:3] for point in labelled], [point[3] for point in labelled])
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return fig


def _legend(rows: list[Group], colour: dict, max_lines: int) -> list:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colour[id(g)], marker="o", markersize=4, linewidth=1.6,
                      label=cut(g.label, 64)) for g in rows[:max_lines]]
    if rows[max_lines:]:
        rest = f"{len(rows) - max_lines} more groups, #{max_lines + 1}-#{len(rows)} (grey; see table)"
        handles.append(Line2D([], [], color="0.72", linewidth=1.0, label=rest))
    return handles


def _curves(ax, rows: list[Group], colour: dict, curve_metric: str, max_lines: int) -> None:
    """Validation curves: one line per group, the mean over its runs, the best on top."""
    values = []
    for g in reversed(rows):
        curve = g.curve()
        if curve:
            top = rows.index(g) < max_lines
            ax.plot(range(1, len(curve) + 1), curve, color=colour[id(g)], linewidth=1.6 if top else 0.8,
                    marker="o" if top else None, markersize=3, zorder=3 if top else 1)
            values += curve
    if values:
        low, high, _, clipped = robust_limits(values)
        ax.set_ylim(low, high)
        ax.set_ylabel(f"{curve_metric} (mean over runs)" + (" (clipped)" if clipped else ""))
    else:
        ax.set_ylabel(curve_metric)
    ax.set_xlabel("epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_title("validation curves, one line per group")
    ax.grid(alpha=0.3)


def _scatter(ax, rows: list[Group], colour: dict, metric: str, max_lines: int) -> list[tuple]:
    """The metric against epoch time with the 95% interval of each group; returns the points drawn as
    (x, y, group, the true x of a point drawn at the clipped edge or None)."""
    pts = [(g.median("epoch_s"), g.mean("score"), g) for g in rows
           if g.median("epoch_s") is not None and g.mean("score") is not None]
    clipped = False
    if pts:
        low, high, edge, clipped = robust_limits([x for x, _, _ in pts], floor=0.0)
        ax.set_xlim(low, high)
        pts = [(min(x, edge), y, g, x if x > edge else None) for x, y, g in pts]
        for x, y, g, beyond in reversed(pts):
            top = rows.index(g) < max_lines
            ci = g.ci("score")
            ax.errorbar([x], [y], yerr=[[ci or 0.0], [ci or 0.0]], color=colour[id(g)],
                        marker=">" if beyond is not None else ("o" if g.pareto else "s"), markersize=7 if top else 4,
                        capsize=3 if ci else 0, linewidth=1, zorder=3 if top else 1)
        front = sorted((x, y) for x, y, g, _ in pts if g.pareto)
        if len(front) > 1:
            ax.plot(*zip(*front, strict=True), "k--", linewidth=0.8, zorder=0)
    ax.set_xlabel("time/epoch_s, median per group" + (" (clipped: > at the edge is slower)" if clipped else ""))
    ax.set_ylabel(f"{metric} (mean ± 95% CI)")
    ax.set_title("metric vs cost (numbers: rank; dashed: Pareto front)")
    ax.grid(alpha=0.3)
    return pts
