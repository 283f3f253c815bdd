"""``bilstm-exp compare --baseline X``: does anything beat my default, by more than the noise?

X names the baseline configuration: its group (the ``group`` column of compare.md and compare.csv,
the ``config.group`` tag; a prefix will do), one of its runs, or a parent run (a sweep or K-fold run
whose runs are all of that configuration). A run id that is not among the compared runs is read from
the store and added. Every other configuration gets its difference to the baseline on the metric the
runs were trained and selected on (``training.monitor``), paired over the folds or seeds both have,
else Welch's t-test, with its 95% interval and a verdict in words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bilstm_exp.analysis.groups import Group
from bilstm_exp.analysis.query import PARENT_TAG, SWEEP_TAG, CompareError
from bilstm_exp.analysis.samples import Sample
from bilstm_exp.analysis.statistics import Difference, difference
from bilstm_exp.analysis.verdicts import amount, interval, one_run
from bilstm_exp.tracking.store import child_runs

RUN_ID = re.compile(r"[0-9a-f]{32}")
FIX = ("Fix: pass a group from the 'group' column of compare.md or compare.csv, a run id, or the parent run "
       "id of a sweep or K-fold run of one configuration")


@dataclass
class BaselineVerdict:
    """One configuration against the baseline; ``word``: baseline, better, worse, within the noise,
    cannot tell or no value."""

    group: Group
    word: str
    text: str
    difference: Difference | None = None


def with_baseline_runs(client, runs: list, wanted: str) -> list:
    """``runs`` plus the baseline's own runs when ``wanted`` is a run id the list does not hold (nor
    names as a parent): that run, or its child runs when it has some."""
    known = {run.info.run_id for run in runs} | {run.data.tags.get(PARENT_TAG) for run in runs}
    if not RUN_ID.fullmatch(wanted) or wanted in known:
        return runs
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(wanted)
    except MlflowException:
        return runs  # not a run: maybe a group; find_baseline says what matched
    children = [c for c in child_runs(client, wanted) if c.data.tags.get(SWEEP_TAG) != "parent"]
    return runs + (children or [run])


def _ids(sample: Sample) -> set[str]:
    """The run ids that name this sample: its run, its parent run, its K-fold run and that one's parent."""
    runs = [sample.run] + ([sample.kfold] if sample.kfold is not None else [])
    parents = {run.data.tags[PARENT_TAG] for run in runs if PARENT_TAG in run.data.tags}
    return {run.info.run_id for run in runs} | parents


def find_baseline(samples: list[Sample], wanted: str) -> tuple[str, set[str]]:
    """(configuration key, its data sets) that ``wanted`` names among the samples."""
    if len(wanted) < 4:
        raise CompareError(f"--baseline {wanted!r} is too short to name a group or run. {FIX}")
    hits = [s for s in samples if s.group.startswith(wanted) or any(i.startswith(wanted) for i in _ids(s))]
    groups = sorted({s.group for s in hits})
    if not hits:
        raise CompareError(f"--baseline {wanted} names no configuration group, run or parent run among the "
                           f"{len(samples)} finished runs compared here. {FIX}")
    if len(groups) > 1:
        raise CompareError(f"--baseline {wanted} names {len(groups)} configurations ({', '.join(groups[:6])}). "
                           "Fix: pass one configuration's group, or one of its runs")
    return groups[0], {s.data for s in hits}


def against_baseline(rows: list[Group], key: str, column: str, metric: str, mode: str) -> list[BaselineVerdict]:
    """Every row against the baseline row on its data set (``column`` holds ``metric``)."""
    bases = {g.data: g for g in rows if g.key == key}
    return [judge(g, bases.get(g.data), column, metric, mode) for g in rows]


def judge(group: Group, base: Group | None, column: str, metric: str, mode: str) -> BaselineVerdict:
    """One configuration against the baseline, in words."""
    if group is base:
        return BaselineVerdict(group, "baseline", "the baseline")
    if base is None:
        return BaselineVerdict(group, "cannot tell", "cannot tell: no baseline run on this data set")
    if not group.n(column) or not base.n(column):
        side = "this configuration" if not group.n(column) else "the baseline"
        return BaselineVerdict(group, "no value", f"cannot tell: {side} logged no {metric}")
    cannot = one_run(group, base, column, "this configuration", "the baseline")
    if cannot:
        return BaselineVerdict(group, "cannot tell", cannot)
    diff = difference(group.by_pair(column), base.by_pair(column), higher_is_better=mode == "max")
    if not diff.real:
        worse = diff.mean < 0  # say how much better or worse, its interval in the same direction
        text = (f"within the noise: {amount(metric, abs(diff.mean))} {'worse' if worse else 'better'} "
                f"({interval(metric, diff, worse)})")
        return BaselineVerdict(group, "within the noise", text, diff)
    if diff.mean > 0:
        text = f"beats the baseline by {amount(metric, diff.mean)} ({interval(metric, diff)})"
        return BaselineVerdict(group, "better", text, diff)
    text = f"worse than the baseline by {amount(metric, -diff.mean)} ({interval(metric, diff, worse=True)})"
    return BaselineVerdict(group, "worse", text, diff)
