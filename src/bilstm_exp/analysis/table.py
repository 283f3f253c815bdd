"""The comparison as a table: the columns that fit 120 characters, as text, Markdown and CSV.

One row per group, best first: rank (``*`` on the Pareto front), architecture, the params that differ
(short names, abbreviated values), the score as mean ± 95% interval, n, test accuracy and cost columns.
When the row is too wide the cost columns go first, then the rightmost params (listed below the table).
"""

from __future__ import annotations

import csv
from pathlib import Path

from bilstm_exp.analysis.formatting import WIDTH, cut, number, param_value, with_ci
from bilstm_exp.analysis.groups import Group, differing
from bilstm_exp.analysis.query import COLUMNS

Columns = list[tuple[str, list[str]]]  # (header, one cell per row)


def table(rows: list[Group], varying: list[str], metric: str, by_data: bool, width: int = WIDTH,
          with_group: bool = False) -> tuple[list[str], list[list[str]], list[str]]:
    """(header, body, params left out of the table): the columns that fit ``width``, cost columns
    dropped first, then the rightmost params (listed per group below the table instead).
    ``with_group``: a column with each group's key (what ``--baseline`` accepts)."""
    shorts = differing(rows) if varying else {}
    fixed = [("#", [f"{i}{'*' if r.pareto else ''}" for i, r in enumerate(rows, 1)])]
    if by_data:
        fixed.append(("data", [r.data[:8] for r in rows]))
    fixed.append(("arch", [cut(r.architecture, 14) for r in rows]))
    if with_group:
        fixed.append(("group", [r.key for r in rows]))
    params = [(shorts[k], [r.shown.get(k) or param_value(r.params.get(k)) for r in rows]) for k in varying]
    stats = [(f"{metric} ±95%CI", [with_ci(r.mean("score"), r.ci("score")) for r in rows]),
             ("n", [str(r.n()) for r in rows])]
    if metric != "test/accuracy":
        stats.append(("test acc", [with_ci(r.mean("test_acc"), r.ci("test_acc")) for r in rows]))
    cost = [("epoch s", [number(r.median("epoch_s"), 3) for r in rows]),
            ("tok/s", [number(r.median("tokens_per_s"), 3) for r in rows]),
            ("p50 ms", [number(r.median("p50_ms"), 3) for r in rows]),
            ("params", [number(r.mean("params"), 3) for r in rows])]
    drop_order = ["p50 ms", "tok/s", "params"]
    while _width(fixed + params + stats + cost) > width and (drop_order or params):
        if drop_order:
            name = drop_order.pop(0)
            cost = [c for c in cost if c[0] != name]
        else:
            params.pop()
    columns = fixed + params + stats + cost
    left_out = varying[len(params):]
    return [h for h, _ in columns], [list(cells) for cells in zip(*(c for _, c in columns), strict=True)], left_out


def _width(columns: Columns) -> int:
    return sum(max(len(h), *(len(c) for c in cells)) for h, cells in columns) + 2 * (len(columns) - 1)


def render_text(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *body, strict=True)]

    def line(cells: list[str]) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, body)])


def render_markdown(header: list[str], body: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in body]
    return "\n".join(out)


def write_csv(rows: list[Group], varying: list[str], path: Path, baseline: list | None = None) -> None:
    """One line per group, best first, with the run ids: for scripts and spreadsheets. With
    ``baseline`` (one :class:`~bilstm_exp.analysis.baseline.BaselineVerdict` per row) also each
    group's difference to the baseline (positive: better), its 95% interval, p and verdict."""
    columns = ["score", *[column for column, _, _ in COLUMNS]]
    extra = ["vs_baseline", "vs_baseline_ci_low", "vs_baseline_ci_high", "vs_baseline_p", "vs_baseline_verdict"]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["rank", "pareto", "architecture", "data", "group", *varying,
                         *[f"{c}_{stat}" for c in columns for stat in ("mean", "std", "ci95")], "n", "run_ids",
                         *(extra if baseline else [])])
        for rank, row in enumerate(rows, 1):
            stats = [v for c in columns for v in (row.mean(c), row.std(c), row.ci(c))]
            writer.writerow([rank, int(row.pareto), row.architecture, row.data, row.key,
                             *[row.params.get(k, "") for k in varying], *stats, row.n(),
                             " ".join(s.run.info.run_id for s in row.samples),
                             *(_baseline_cells(baseline[rank - 1]) if baseline else [])])


def _baseline_cells(verdict) -> list:
    diff = verdict.difference
    if diff is None:
        return ["", "", "", "", verdict.word]
    return [diff.mean, diff.low, diff.high, diff.p, verdict.word]
