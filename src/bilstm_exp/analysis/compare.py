"""`bilstm-exp compare`: which configuration is best, by more than the noise, and at what cost.

Reads the runs of an experiment (or the child runs of one sweep with ``--parent``) with
``MlflowClient`` and reports, best first:

* **groups, not runs**: runs whose configurations differ only in ``seed``, ``data.split_seed``,
  the fold or runtime keys (verbose, resume, tracking, profiling) are one group; each distinct
  evaluation counts once (a K-fold parent is replaced by its fold children; a repeat of the same
  configuration and seed counts once, the newest kept);
* **one data set**: runs are compared only with runs evaluated on the same data (the
  ``data.fingerprint`` tag, else ``data_md5``); the others are left out and counted, unless
  ``--all-data`` (then the data set is part of the group) or ``--data PREFIX`` picks another;
* a table that fits 120 columns: the monitored metric (``training.monitor``, default
  ``val/loss``) as mean ± 95% confidence interval (t distribution) and ``n``, test accuracy,
  epoch time, tokens/s, p50 latency, parameters, and only the parameters that differ between
  groups (short names; what does not fit is listed below the table); ``*`` marks the Pareto front
  of the metric against epoch time;
* **a verdict in words**: whether the best group beats the runner-up by more than the noise
  (paired t-test over shared folds or seeds, else Welch's t-test; with one run on a side it says
  it cannot tell and how to repeat);
* with ``--baseline X`` (a configuration group, a run or a parent run): every configuration's
  difference to the baseline on ``training.monitor``, its 95% CI and a verdict in words
  (:mod:`bilstm_exp.analysis.baseline`); ranking by another ``--metric`` is said on the report;
* ``compare.png`` (metric vs epoch time with confidence intervals, and one validation curve per
  group, at most 8 coloured and labelled, the rest grey), ``compare.md`` and ``compare.csv``;
  logged to the parent run (under ``compare/``) when ``--parent`` is given.

The jobs live in their own modules: query (reading runs), samples (which evaluations count, on which
data), groups, statistics, verdicts, baseline, table and plots; this module ties them into the report.
It imports MLflow, matplotlib and (when a group has two runs or more) scipy, never TensorFlow.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from bilstm_exp.analysis.baseline import BaselineVerdict, against_baseline, find_baseline, with_baseline_runs
from bilstm_exp.analysis.formatting import wrap
from bilstm_exp.analysis.groups import Group, build_groups, differing
from bilstm_exp.analysis.plots import plot
from bilstm_exp.analysis.query import (
    DEFAULT_EXPERIMENT,
    CompareError,
    default_mode,
    expand_folds,
    load_runs,
    measure,
    monitored,
    open_store,
)
from bilstm_exp.analysis.samples import Sample, choose_data, data_sets, dedupe, make_samples
from bilstm_exp.analysis.table import render_markdown, render_text, table, write_csv
from bilstm_exp.analysis.verdicts import Verdict, verdict

__all__ = ["CompareError", "Report", "add_arguments", "command", "report"]


@dataclass
class Report:
    folder: Path
    groups: list[Group]
    verdict: Verdict
    metric: str
    mode: str
    figure: Any
    lines: list[str]
    monitor: str = ""  # training.monitor: what the runs were selected on, and what decides against the baseline
    baseline: list[BaselineVerdict] = field(default_factory=list)  # one per group, with --baseline


@dataclass
class Metrics:
    """What ranks the groups (``metric``) and what the runs were trained and selected on (``monitor``)."""

    metric: str
    mode: str
    monitor: str
    monitor_mode: str

    @property
    def curve(self) -> str:
        return self.metric if self.metric.startswith(("val/", "train/")) else "val/loss"

    @property
    def decision(self) -> str:
        """The column of the samples that holds the monitored metric."""
        return "score" if (self.metric, self.mode) == (self.monitor, self.monitor_mode) else "decision"


@dataclass
class Selection:
    """The samples compared, and what was left out."""

    samples: list[Sample]
    chosen: str | None  # the data set; None with --all-data
    other_data: list[Sample]
    repeats: list[Sample]
    baseline: str | None  # the baseline's configuration key


def choose_metrics(finished: list, metric: str | None, mode: str | None) -> Metrics:
    trained_for, trained_mode = monitored(finished)
    metric = metric or trained_for
    mode = mode or (trained_mode if metric == trained_for and trained_mode else default_mode(metric))
    if not any(metric in run.data.metrics for run in finished):
        raise CompareError(f"no run logged the metric '{metric}'. Fix: pick a logged metric, e.g. "
                           "--metric val/accuracy or --metric test/accuracy")
    return Metrics(metric, mode, trained_for, trained_mode or default_mode(trained_for))


def select(finished: list, fold_parents: dict[str, Any], args) -> Selection:
    """The samples on one data set (the one --data names, else the baseline's, else the one with the
    most runs), repeats counted once."""
    samples = make_samples(finished, fold_parents)
    merged = data_sets(samples)
    for s in samples:
        s.data = merged[s.data]
    key, base_data = find_baseline(samples, args.baseline) if args.baseline else (None, set())
    if args.all_data:
        chosen = None
    elif base_data and not args.data:
        chosen = choose_data([s for s in samples if s.data in base_data], None)
    else:
        chosen = choose_data(samples, args.data)
    other_data = [s for s in samples if chosen is not None and s.data != chosen]
    samples, repeats = dedupe([s for s in samples if chosen is None or s.data == chosen])
    if key and not any(s.group == key for s in samples):
        raise CompareError(f"--baseline {args.baseline} has no run on data {chosen[:8]} (its runs are on "
                           f"{', '.join(sorted(d[:8] for d in base_data))}). Fix: drop --data, or pass one of those")
    return Selection(samples, chosen, other_data, repeats, key)


def report(args) -> Report:
    """Run the comparison: print the table and the verdicts, write compare.png/md/csv, log them."""
    client, uri = open_store(args.tracking_uri)
    runs, exp, parent = load_runs(client, args.experiment, args.parent)
    if args.baseline:
        runs = with_baseline_runs(client, runs, args.baseline)
    runs, fold_parents = expand_folds(client, runs)
    finished = [run for run in runs if run.info.status == "FINISHED"]
    others = [run for run in runs if run.info.status != "FINISHED"]
    if not finished:
        statuses = ", ".join(sorted({r.info.status for r in runs}))
        raise CompareError(f"none of the {len(runs)} runs finished ({statuses}). Fix: read the runs' "
                           "'error' tag in mlflow ui, fix the cause and run again")
    metrics = choose_metrics(finished, args.metric, args.mode)
    chosen = select(finished, fold_parents, args)
    scores = {"score": (metrics.metric, metrics.mode), "decision": (metrics.monitor, metrics.monitor_mode)}
    if not chosen.baseline or metrics.decision == "score":
        del scores["decision"]
    for s in chosen.samples:
        s.values, s.curve = measure(client, s.run, scores, metrics.curve)
    rows, varying = build_groups(chosen.samples, metrics.mode, chosen.chosen is None)
    if all(g.n() == 0 for g in rows):
        raise CompareError(f"no run on this data logged the metric '{metrics.metric}'. Fix: pick a logged metric, "
                           "e.g. --metric val/accuracy, or another data set with --data or --all-data")
    baseline = (against_baseline(rows, chosen.baseline, metrics.decision, metrics.monitor, metrics.monitor_mode)
                if chosen.baseline else [])
    scope = f"sweep {parent.info.run_id[:8]} ({parent.info.run_name})" if parent else f"experiment '{exp.name}'"
    page = Page(scope, rows, varying, metrics, chosen, verdict(rows, metrics.metric, metrics.mode), baseline, others)
    lines = page.lines()
    print("\n".join(lines))
    out = Path(args.output or f"reports/compare-{parent.info.run_id[:8] if parent else exp.name}")
    try:
        figure = page.write(out)
    except OSError as error:  # a read-only folder, a full disk: the table above is the answer; say so, once
        raise CompareError(f"{out}: cannot write compare.png/md/csv ({error.strerror}); the table above is "
                           "complete. Fix: make it writable, or pass --output DIR on a writable disk") from None
    if parent:  # written through a session attached to the sweep's parent, as every write of a run
        from bilstm_exp.tracking.session import Session

        session = Session.attach(uri, parent.info.run_id)
        for name in ("compare.png", "compare.md", "compare.csv"):
            session.log_artifacts(out / name, "compare")
    logged = f"; logged to run {parent.info.run_id[:8]} under compare/" if parent else ""
    print(wrap(f"\nwrote {out / 'compare.png'}, {out / 'compare.md'} and {out / 'compare.csv'}{logged}"))
    return Report(out, rows, page.verdict, metrics.metric, metrics.mode, figure, "\n".join(lines).splitlines(),
                  metrics.monitor, baseline)


@dataclass
class Page:
    """The report's words: the introduction, the table, the verdicts and the notes, printed and written."""

    scope: str
    rows: list[Group]
    varying: list[str]
    metrics: Metrics
    selection: Selection
    verdict: Verdict
    baseline: list[BaselineVerdict]
    others: list  # runs not finished

    @property
    def by_data(self) -> bool:
        return self.selection.chosen is None

    def intro(self) -> str:
        samples, m = self.selection.samples, self.metrics
        on = "all data sets" if self.by_data else f"data {self.selection.chosen[:8]}"
        how = "kept weights" if any("best/epoch" in s.run.data.metrics for s in samples) else "best epoch"
        return (f"{len(samples)} runs in {len(self.rows)} groups of {self.scope} on {on}, ranked by {m.metric} "
                f"({m.mode}, {how}); ±95%CI: t interval over the n runs of a group; * = Pareto front (metric vs "
                "epoch time)")

    @cached_property
    def narrow(self) -> tuple[list[str], list[list[str]], list[str]]:
        """The table as printed: (header, body, params left out of it)."""
        return table(self.rows, self.varying, self.metrics.metric, self.by_data)

    def lines(self) -> list[str]:
        header, body, _ = self.narrow
        baseline = self.baseline_lines()
        return [wrap(self.intro()), render_text(header, body), "", wrap("Verdict: " + self.verdict.text),
                *([wrap(baseline[0])] + [wrap("  " + line, indent="      ") for line in baseline[1:]]
                  if baseline else []),
                *map(wrap, self.notes())]

    def baseline_lines(self) -> list[str]:
        """The baseline's name, then one line per other configuration; none without --baseline."""
        base = next((v.group for v in self.baseline if v.word == "baseline"), None)
        if base is None:
            return []
        m = self.metrics
        better = "higher" if m.monitor_mode == "max" else "lower"
        head = (f"Against the baseline {base.label} (group {base.key}), on {m.monitor} (training.monitor, "
                f"{better} is better; paired over shared folds or seeds, else Welch's t-test):")
        return [head, *[f"{v.group.label}: {v.text}" for v in self.baseline if v.word != "baseline"]]

    def notes(self) -> list[str]:
        rows, selection, m, left_out = self.rows, self.selection, self.metrics, self.narrow[2]
        notes = []
        if m.metric != m.monitor:
            notes.append(f"ranked by {m.metric} (--metric); these runs were trained and their weights kept on "
                         f"{m.monitor} (training.monitor), the metric to decide on"
                         + (f"; the verdicts against the baseline use {m.monitor}" if self.baseline else ""))
        if left_out:
            shorts = differing(rows)
            notes.append("params not in the table: " + "; ".join(
                f"#{i} " + " ".join(f"{shorts[k]}={g.shown.get(k, '-')}" for k in left_out)
                for i, g in enumerate(rows, 1)))
        if selection.other_data:
            counts = Counter(s.data for s in selection.other_data)
            notes.append(f"left out {len(selection.other_data)} run(s) on other data ("
                         + ", ".join(f"{k[:8]}: {c}" for k, c in counts.most_common()) + "); compare them with "
                         "--data PREFIX, or all with --all-data (one group per data set)")
        if selection.repeats:
            notes.append(f"counted once: {len(selection.repeats)} repeat(s) of a configuration with the same seed "
                         "(and fold); the newest run is kept")
        if self.others:
            statuses = Counter(r.info.status for r in self.others)
            names = ", ".join(r.info.run_name or r.info.run_id[:8] for r in self.others[:3])
            notes.append(f"not compared: {len(self.others)} unfinished run(s) ("
                         + ", ".join(f"{c} {s}" for s, c in statuses.items()) + f"): {names}"
                         + (", ..." if len(self.others) > 3 else ""))
        return notes

    def write(self, out: Path):
        """compare.png, compare.md (every column, and each group's key) and compare.csv; returns the figure."""
        out.mkdir(parents=True, exist_ok=True)
        figure = plot(self.rows, self.metrics.metric, self.metrics.curve, out / "compare.png")
        write_csv(self.rows, self.varying, out / "compare.csv", self.baseline or None)
        header, body, _ = table(self.rows, self.varying, self.metrics.metric, self.by_data, width=10 ** 6,
                                with_group=True)  # a page scrolls: all columns, and the group --baseline takes
        baseline = self.baseline_lines()
        document = [f"# Comparison: {self.scope}", "", self.intro() + ".", "", render_markdown(header, body), "",
                    f"**Verdict:** {self.verdict.text}.", "",
                    *([f"**{baseline[0]}**", "", *[f"- {line}" for line in baseline[1:]], ""] if baseline else []),
                    *[f"- {n}" for n in self.notes()], "",
                    "![metric vs epoch time, and validation curves](compare.png)", ""]
        (out / "compare.md").write_text("\n".join(document), encoding="utf-8")
        return figure


def add_arguments(parser) -> None:
    parser.add_argument("--experiment", default=None, help=f"MLflow experiment name (default: {DEFAULT_EXPERIMENT})")
    parser.add_argument("--parent", default=None, help="compare the child runs of this sweep (or K-fold) parent run")
    parser.add_argument("--metric", default=None,
                        help="ranking metric (default: the runs' training.monitor, else val/loss)")
    parser.add_argument("--mode", choices=("max", "min"), default=None,
                        help="max or min of --metric is best (default: min for loss/time, else max)")
    parser.add_argument("--baseline", default=None, metavar="GROUP|RUN_ID",
                        help="compare every configuration with this one, on training.monitor: a group (compare.csv's "
                             "group column), a run id, or the parent run id of its sweep or K-fold run")
    parser.add_argument("--data", default=None, metavar="PREFIX",
                        help="compare the runs on this data fingerprint (default: the one with the most runs)")
    parser.add_argument("--all-data", action="store_true",
                        help="compare runs on every data set (the data set becomes part of each group)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else ./mlflow.db)")
    parser.add_argument("--output", default=None,
                        help="folder for compare.png/md/csv (default: reports/compare-<parent|experiment>)")


def command(args) -> None:
    report(args)
