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
* ``compare.png`` (metric vs epoch time with confidence intervals, and one validation curve per
  group, at most 8 coloured and labelled, the rest grey), ``compare.md`` and ``compare.csv``;
  logged to the parent run (under ``compare/``) when ``--parent`` is given.

It imports MLflow, matplotlib and (when a group has two runs or more) scipy, never TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import textwrap
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bilstm_exp.errors import UserError
from bilstm_exp.tracking.store import child_runs, history

DEFAULT_EXPERIMENT = "bilstm-exp"
DEFAULT_METRIC = "val/loss"
SWEEP_TAG = "bilstm_exp.training.sweep"
GROUP_TAG = "config.group"  # hash of the config without seed, fold and runtime keys (set by training)
FINGERPRINT_TAGS = ("data.fingerprint", "data_md5")  # the evaluation data; the first one present wins
FOLD_TAG = "fold"  # on the child runs of a K-fold run
CV_ROLE_TAG = "cv.role"  # "parent" on a K-fold run's parent (crossval.py)
WIDTH = 120  # every printed line fits
MAX_LINES = 8  # labelled lines in the plot; the rest are grey
# Params that do not make a configuration: repetition (seeds, folds) and runtime keys.
IGNORED_KEYS = ("seed", "data.split_seed", "data.fold", "training.verbose")
IGNORED_PREFIXES = ("training.resume", "tracking.", "profiling.", "derived.")
# (column, metric, how a per-epoch history becomes one number)
COLUMNS = [
    ("test_acc", "test/accuracy", "last"),
    ("epoch_s", "time/epoch_s", "median"),
    ("tokens_per_s", "throughput/train_tokens_per_s", "median"),
    ("p50_ms", "latency/predict_p50_ms", "last"),
    ("params", "model/params", "last"),
]
# Short column names for parameters: a whole key, else its last part.
SHORT_KEYS = {"optimizer.name": "opt", "clipping.name": "clip", "clipping.threshold": "clip_thr",
              "optimizer.schedule.name": "sched", "data.name": "data", "model.cell": "cell",
              "training.early_stopping.patience": "patience", "training.early_stopping.monitor": "es_monitor"}
SHORT_WORDS = {"learning_rate": "lr", "embedding_dim": "emb", "lstm_units": "units", "attention_units": "att_units",
               "recurrent_dropout": "rec_drop", "dropout": "drop", "batch_size": "batch", "layer_sizes": "layers",
               "max_length": "max_len", "num_samples": "samples", "weight_decay": "wd", "merge_mode": "merge",
               "vocab_size": "vocab", "warmup_epochs": "warmup", "steps_per_execution": "steps_exec",
               "mixed_precision": "mixed", "min_frequency": "min_freq", "embedding_dropout": "emb_drop"}


class CompareError(UserError):
    """Nothing to compare, or the store, experiment or parent run cannot be found."""


# --------------------------------------------------------------------------- reading runs


def default_mode(metric: str) -> str:
    """min for losses, times and latencies; max for accuracies, AUCs and throughputs."""
    name = metric.lower()
    if "per_s" in name or name.startswith("throughput/"):
        return "max"
    lower_is_better = ("loss" in name or name.startswith(("time/", "latency/", "memory/"))
                       or name.endswith(("_ms", "_s", "_mb")))
    return "min" if lower_is_better else "max"


def mlflow_metric(name: str) -> str:
    """A Keras log key (val_loss) as the run's MLflow metric name (val/loss)."""
    for split in ("val", "train", "test"):
        if name.startswith(split + "_"):
            return f"{split}/{name[len(split) + 1:]}"
    return name


def open_store(tracking_uri: str | None):
    """(MlflowClient, URI) on the given URI, MLFLOW_TRACKING_URI, or ./mlflow.db (which must exist):
    credentials refused, a corrupt store named, a down server failing in seconds with the URI."""
    from bilstm_exp.tracking import store

    uri = store.existing_store(tracking_uri)
    return store.open_store(uri), uri


def load_runs(client, experiment: str | None, parent: str | None) -> tuple[list, Any, Any]:
    """(runs, experiment, parent run or None): a sweep's children, or the experiment's runs
    without sweep parents."""
    from mlflow.exceptions import MlflowException

    if parent:
        try:
            parent_run = client.get_run(parent)
        except MlflowException:
            raise CompareError(f"run '{parent}' not found in this store. Fix: copy the parent run id the "
                               "sweep printed ('sweep parent run ...'), or list sweeps in `mlflow ui`") from None
        exp = client.get_experiment(parent_run.info.experiment_id)
        if experiment and experiment != exp.name:
            raise CompareError(f"run '{parent}' belongs to experiment '{exp.name}', not '{experiment}'. "
                               "Fix: drop --experiment or pass the matching one")
        runs = child_runs(client, parent)
        if not runs:
            raise CompareError(f"run '{parent}' has no child runs. Fix: pass the parent run of a sweep "
                               "(python -m bilstm_exp -m ...), or drop --parent to compare all runs")
        return runs, exp, parent_run
    name = experiment or DEFAULT_EXPERIMENT
    exp = client.get_experiment_by_name(name)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise CompareError(f"experiment '{name}' not found (this store has: {', '.join(names) or 'none'}). "
                           "Fix: pass one of those with --experiment NAME")
    runs = [run for run in client.search_runs([exp.experiment_id], max_results=10000)
            if run.data.tags.get(SWEEP_TAG) != "parent"]
    if not runs:
        raise CompareError(f"experiment '{name}' has no runs. Fix: train first, e.g. "
                           "python -m bilstm_exp training.epochs=1")
    return runs, exp, None


def expand_folds(client, runs: list) -> tuple[list, dict[str, Any]]:
    """Replace each K-fold parent (tag ``cv.role=parent``, ``cv/...`` metrics, or children with a ``fold``
    tag) by its fold runs: one evaluation, K samples. Returns (runs, each fold run's id -> its K-fold parent), each
    run once."""
    by_id = {run.info.run_id: run for run in runs}
    folds: dict[str, list] = defaultdict(list)
    for run in runs:
        parent_id = run.data.tags.get("mlflow.parentRunId")
        if FOLD_TAG in run.data.tags and parent_id:
            folds[parent_id].append(run)
    out = []
    for run in runs:
        run_id = run.info.run_id
        kfold = run.data.tags.get(CV_ROLE_TAG) == "parent" or any(key.startswith("cv/") for key in run.data.metrics)
        if run_id not in folds and not kfold:
            out.append(run)
            continue
        if run_id not in folds:  # the folds are not in the list (a sweep of K-fold runs): fetch them
            found = [c for c in child_runs(client, run_id) if FOLD_TAG in c.data.tags]
            folds[run_id] = found
            out.extend(found)
        if not folds[run_id]:
            out.append(run)  # a K-fold parent whose folds are gone: one sample of its own
    parents: dict[str, Any] = {}
    for parent_id, children in folds.items():
        parent = by_id.get(parent_id) or client.get_run(parent_id)
        for child in children:
            parents[child.info.run_id] = parent
    unique = list({run.info.run_id: run for run in out}.values())
    return unique, parents


def monitored(runs: list) -> tuple[str, str | None]:
    """(metric, mode or None) the runs were trained to optimise: ``training.monitor`` (the most
    common value), else the early-stopping monitor, else val/loss."""
    for key in ("training.monitor", "training.early_stopping.monitor"):
        values = Counter(run.data.params[key] for run in runs if run.data.params.get(key))
        if values:
            metric = mlflow_metric(values.most_common(1)[0][0])
            modes = Counter(run.data.params.get(key + "_mode") or run.data.params.get("training.monitor_mode")
                            for run in runs)
            mode = next((m for m, _ in modes.most_common() if m in ("min", "max")), None)
            return metric, mode
    return DEFAULT_METRIC, None


# --------------------------------------------------------------------------- groups and data sets


def ignored(key: str) -> bool:
    return key in IGNORED_KEYS or key.startswith(IGNORED_PREFIXES)


def config_key(run) -> str:
    """A hash of the run's params without seeds, folds and runtime keys."""
    items = sorted((k, v) for k, v in run.data.params.items() if not ignored(k))
    return hashlib.md5(json.dumps(items).encode()).hexdigest()[:12]


def fingerprint(run) -> str:
    return next((run.data.tags[t] for t in FINGERPRINT_TAGS if run.data.tags.get(t)), "unknown")


@dataclass
class Sample:
    """One evaluation: a run, or one fold of a K-fold run."""

    run: Any
    group: str  # configuration key
    data: str  # data-set key (fingerprint)
    pair: tuple | None  # what pairs it with a sample of another group: (kind, split seed, seed[, fold])
    values: dict[str, float] = field(default_factory=dict)
    curve: list[float] = field(default_factory=list)

    @property
    def start(self) -> int:
        return self.run.info.start_time or 0


def make_samples(runs: list, parents: dict[str, Any]) -> list[Sample]:
    """Samples with their configuration, data set and pairing keys."""
    use_tag = all(run.data.tags.get(GROUP_TAG) for run in runs)  # else one rule for all: the params
    unit_data: dict[str, str] = {}
    for parent in parents.values():  # a K-fold run's data: the parent's tag, else all its folds'
        if parent.info.run_id not in unit_data:
            own = fingerprint(parent)
            if own == "unknown":
                kids = sorted(fingerprint(r) for r in runs if parents.get(r.info.run_id) is parent)
                own = hashlib.md5(" ".join(kids).encode()).hexdigest()[:12] if kids else "unknown"
            unit_data[parent.info.run_id] = own
    samples = []
    for run in runs:
        params, tags = run.data.params, run.data.tags
        parent = parents.get(run.info.run_id)
        group = tags[GROUP_TAG] if use_tag else config_key(run)
        data = unit_data[parent.info.run_id] if parent is not None else fingerprint(run)
        split, seed = params.get("data.split_seed"), params.get("seed")
        if FOLD_TAG in tags:
            pair = ("fold", split, seed, tags[FOLD_TAG])
        elif seed is not None:
            pair = ("seed", split, seed)
        else:
            pair = None
        samples.append(Sample(run, group, data, pair))
    return samples


def data_sets(samples: list[Sample]) -> dict[str, str]:
    """Data key -> data-set key. Fingerprints differ between split seeds of the same data: the
    fingerprints of one configuration's runs that differ only in ``data.split_seed`` (one fingerprint
    per split seed) are one data set."""
    root = {s.data: s.data for s in samples}

    def find(key: str) -> str:
        while root[key] != key:
            root[key] = root[root[key]]
            key = root[key]
        return key

    by_group: dict[str, dict[Any, set]] = defaultdict(lambda: defaultdict(set))
    for s in samples:
        if s.data != "unknown":
            by_group[s.group][s.run.data.params.get("data.split_seed")].add(s.data)
    for seeds in by_group.values():
        if len(seeds) > 1 and all(len(fps) == 1 for fps in seeds.values()):
            first, *rest = [next(iter(fps)) for fps in seeds.values()]
            for other in rest:
                root[find(other)] = find(first)
    return {key: find(key) for key in root}


def choose_data(samples: list[Sample], wanted: str | None) -> str:
    """The data set to compare on: the one matching --data, else the one with the most runs
    (ties: the newest run's)."""
    keys = sorted({s.data for s in samples})
    if wanted:
        matches = sorted({s.data for s in samples if s.data.startswith(wanted)
                          or any(s.run.data.tags.get(t, "").startswith(wanted) for t in FINGERPRINT_TAGS)})
        if len(matches) != 1:
            raise CompareError(f"--data {wanted} matches {len(matches)} data sets (these runs have: "
                               f"{', '.join(k[:8] for k in keys)}). Fix: pass a longer prefix of one of those")
        return matches[0]
    count = Counter(s.data for s in samples)
    newest = {k: max(s.start for s in samples if s.data == k) for k in count}
    return max(count, key=lambda k: (count[k], newest[k]))


def dedupe(samples: list[Sample]) -> tuple[list[Sample], list[Sample]]:
    """(kept, repeats): a repeat of the same configuration, data, seed and fold counts once (the
    newest run is kept): it is not an independent sample."""
    newest: dict[tuple, Sample] = {}
    kept, repeats = [], []
    for s in samples:
        if s.pair is None:
            kept.append(s)
            continue
        key = (s.group, s.data, s.pair)
        if key in newest:
            old = newest[key]
            if s.start > old.start:
                newest[key] = s
                repeats.append(old)
            else:
                repeats.append(s)
        else:
            newest[key] = s
    kept += list(newest.values())
    return kept, repeats


# --------------------------------------------------------------------------- statistics


def t_quantile(df: float) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom."""
    from scipy import stats

    return float(stats.t.ppf(0.975, df))


def ci95(values: list[float]) -> float | None:
    """Half-width of the 95% confidence interval of the mean (t distribution); None below n=2."""
    if len(values) < 2:
        return None
    return t_quantile(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


@dataclass
class Group:
    """One configuration (on one data set) and its samples."""

    key: str
    data: str
    architecture: str
    params: dict[str, str]
    samples: list[Sample]
    label: str = ""
    pareto: bool = False
    shown: dict[str, str] = field(default_factory=dict)  # differing param -> its value, abbreviated

    def values(self, column: str) -> list[float]:
        return [s.values[column] for s in self.samples if column in s.values]

    def mean(self, column: str) -> float | None:
        vals = self.values(column)
        return statistics.fmean(vals) if vals else None

    def median(self, column: str) -> float | None:
        vals = self.values(column)
        return statistics.median(vals) if vals else None

    def std(self, column: str) -> float | None:
        vals = self.values(column)
        return statistics.stdev(vals) if len(vals) > 1 else None

    def ci(self, column: str) -> float | None:
        return ci95(self.values(column))

    def n(self, column: str = "score") -> int:
        return len(self.values(column))

    def curve(self) -> list[float]:
        """The mean validation curve over the group's runs (per epoch, over the runs that reached it)."""
        curves = [s.curve for s in self.samples if s.curve]
        length = max((len(c) for c in curves), default=0)
        return [statistics.fmean(c[i] for c in curves if len(c) > i) for i in range(length)]


@dataclass
class Verdict:
    text: str
    real: bool | None  # None: cannot tell
    test: str = ""
    p: float | None = None
    difference: float | None = None
    low: float | None = None
    high: float | None = None


def verdict(groups: list[Group], metric: str, mode: str) -> Verdict:
    """Does the best group beat the runner-up by more than the noise? In words."""
    scored = [g for g in groups if g.n()]
    if len(scored) < 2:
        return Verdict("only one configuration: nothing to compare it with. Fix: train another, "
                       "e.g. -m model=basic,attention seed=1,2,3", None)
    best, second = scored[0], scored[1]
    sign = 1 if mode == "max" else -1
    first, runner_up = pair_labels(groups.index(best) + 1, best, groups.index(second) + 1, second)
    names = f"{first} vs {runner_up}"
    if best.n() == 1 or second.n() == 1:
        who = "one run each" if best.n() == second.n() == 1 else (
            f"one run of {first if best.n() == 1 else runner_up}")
        return Verdict(f"{names}: cannot tell: {who}; repeat with -m seed=1,2,3 or data.folds=5", None)
    from scipy import stats

    a = {s.pair: s.values["score"] for s in best.samples if "score" in s.values and s.pair is not None}
    b = {s.pair: s.values["score"] for s in second.samples if "score" in s.values and s.pair is not None}
    shared = sorted(set(a) & set(b), key=str)
    if len(shared) >= 2:
        diffs = [sign * (a[k] - b[k]) for k in shared]
        n = len(diffs)
        kinds = {k[0] for k in shared}
        test = f"paired t-test over {n} {'folds' if kinds == {'fold'} else 'seeds' if kinds == {'seed'} else 'pairs'}"
        mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
        if sd == 0:
            p, half = (0.0 if mean else 1.0), 0.0
        else:
            p = float(stats.ttest_rel([a[k] for k in shared], [b[k] for k in shared]).pvalue)
            half = t_quantile(n - 1) * sd / math.sqrt(n)
    else:
        x, y = best.values("score"), second.values("score")
        mean = sign * (statistics.fmean(x) - statistics.fmean(y))
        vx, vy = statistics.variance(x) / len(x), statistics.variance(y) / len(y)
        test = f"Welch's t-test, n={len(x)} vs {len(y)}"
        if vx + vy == 0:
            p, half = (0.0 if mean else 1.0), 0.0
        else:
            p = float(stats.ttest_ind(x, y, equal_var=False).pvalue)
            df = (vx + vy) ** 2 / (vx ** 2 / (len(x) - 1) + vy ** 2 / (len(y) - 1))
            half = t_quantile(df) * math.sqrt(vx + vy)
    real = p < 0.05
    low, high = mean - half, mean + half
    verb = "beats" if real else "leads"
    text = (f"{first} {verb} {runner_up} by {_num(mean, 2)} {metric} (95% CI {_num(low, 2)} to "
            f"{_num(high, 2)}, {test}, {_p(p)}): {'a real difference' if real else 'within the noise'}")
    return Verdict(text, real, test, p, mean, low, high)


def pair_labels(rank_a: int, a: Group, rank_b: int, b: Group) -> tuple[str, str]:
    """Short names of two groups for a sentence: rank and architecture, plus the params in which
    they differ when there are at most three."""
    shorts = differing([a, b])
    shorts = shorts if len(shorts) <= 3 else {}
    return label(rank_a, a, shorts, 60), label(rank_b, b, shorts, 60)


def _p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.2g}"


# --------------------------------------------------------------------------- summarising


def _reduce(values: list[float], how: str) -> float | None:
    if not values:
        return None
    if how == "median":
        return statistics.median(values)
    return values[-1]


def epochs(client, run, metric: str, kept_step: int | None) -> list[float]:
    """The metric per epoch in step order (finite values), without the kept weights' extra step."""
    points = sorted(client.get_metric_history(run.info.run_id, metric), key=lambda m: (m.step, m.timestamp))
    return [m.value for m in points if math.isfinite(m.value) and (kept_step is None or m.step < kept_step)]


def measure(client, sample: Sample, metric: str, mode: str, curve_metric: str) -> None:
    """The sample's numbers: the monitored metric of the weights the run kept (its final value when
    it logged ``best/epoch``, else the best epoch's), cost metrics and its validation curve."""
    run = sample.run
    metrics = run.data.metrics
    kept_step = None  # training logs the kept weights' val/* one step past the last epoch, with best/epoch
    if "best/epoch" in metrics:
        kept_step = max((m.step for m in client.get_metric_history(run.info.run_id, "best/epoch")), default=None)
    curve = epochs(client, run, curve_metric, kept_step)
    hist = curve if curve_metric == metric else epochs(client, run, metric, kept_step)
    if "best/epoch" in metrics and metric in metrics and math.isfinite(metrics[metric]):
        score = metrics[metric]
    elif hist:
        score = max(hist) if mode == "max" else min(hist)
    else:
        score = None
    if score is not None:
        sample.values["score"] = float(score)
    for column, name, how in COLUMNS:
        value = _reduce(history(client, run, name), how) if how == "median" else metrics.get(name)
        if value is not None and math.isfinite(value):
            sample.values[column] = float(value)
    sample.curve = curve


def build_groups(samples: list[Sample], mode: str, by_data: bool) -> tuple[list[Group], list[str]]:
    """Groups (best first, labelled) and the params that differ between them."""
    groups: dict[tuple, Group] = {}
    for s in samples:
        key = (s.data, s.group) if by_data else (s.group,)
        if key not in groups:
            params = {k: v for k, v in s.run.data.params.items() if not ignored(k)}
            arch = s.run.data.tags.get("architecture") or params.get("model.name", "?")
            groups[key] = Group(s.group, s.data, arch, params, [])
        groups[key].samples.append(s)
    rows = list(groups.values())
    sign = -1 if mode == "max" else 1
    rows.sort(key=lambda g: (g.mean("score") is None, sign * (g.mean("score") or 0.0), g.median("epoch_s") or 0.0))
    varying = differing(rows)
    for key in varying:
        values = abbreviate([g.params.get(key) for g in rows])
        for g, value in zip(rows, values, strict=True):
            g.shown[key] = value
    for rank, g in enumerate(rows, 1):
        g.label = label(rank, g, varying)
    mark_pareto(rows, mode)
    return rows, list(varying)


def label(rank: int, group: Group, shorts: dict[str, str], width: int = 64) -> str:
    """``#rank arch k=v ...`` with the group's differing params (cut to ``width``)."""
    extra = " ".join(f"{short}={group.shown.get(k) or _value(group.params[k])}" for k, short in shorts.items()
                     if k in group.params)
    return _cut(f"#{rank} {group.architecture}" + (f" {extra}" if extra else ""), width)


def differing(groups: list[Group]) -> dict[str, str]:
    """Params (full key -> short name) whose value differs between groups where they are set
    (an architecture's own keys do not count as differing), the architecture excepted."""
    keys = sorted({k for g in groups for k in g.params if k != "model.name"}, key=_param_order)
    varying = [k for k in keys if len({g.params[k] for g in groups if k in g.params}) > 1]
    shorts = {k: SHORT_KEYS.get(k) or SHORT_WORDS.get(k.rsplit(".", 1)[-1], k.rsplit(".", 1)[-1]) for k in varying}
    clashes = {s for s, c in Counter(shorts.values()).items() if c > 1}
    return {k: _cut(".".join(k.split(".")[-2:]) if shorts[k] in clashes else shorts[k], 12) for k in varying}


def _param_order(key: str) -> tuple:
    order = ("model.", "optimizer.", "clipping.", "training.", "data.")
    return next((i for i, p in enumerate(order) if key.startswith(p)), len(order)), key


def mark_pareto(rows: list[Group], mode: str) -> None:
    """Pareto front of the score (mode) against epoch time (lower is better)."""
    points = [(r, r.mean("score"), r.median("epoch_s")) for r in rows]
    points = [(r, s if mode == "max" else -s, t) for r, s, t in points if s is not None and t is not None]
    for row, score, seconds in points:
        row.pareto = not any((s >= score and t <= seconds) and (s > score or t < seconds)
                             for other, s, t in points if other is not row)


# --------------------------------------------------------------------------- output


def _num(value: float | None, digits: int = 4) -> str:
    """A number rounded to ``digits`` significant digits, thousands with separators."""
    if value is None or not math.isfinite(value):
        return "-"
    for suffix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= 10 * scale or (scale > 1e3 and abs(value) >= scale):
            return f"{value / scale:.3g}{suffix}"
    if abs(value) >= 1000:
        return f"{value:.0f}"
    text = f"{value:.{digits}g}"
    return text.replace("e-0", "e-").replace("e+0", "e")


def _value(value: Any, cut: bool = True) -> str:
    """A param value, short: numbers rounded to 3 significant digits, long text cut."""
    if value is None:
        return "-"
    text = str(value).replace(" ", "")
    if "/" in text and "://" not in text:  # a path: its file name says more than its folders
        text = text.rstrip("/").rsplit("/", 1)[-1]
    try:
        number = float(text)
    except ValueError:
        return _cut(text, 14) if cut else text
    if number.is_integer() and "e" not in text.lower() and abs(number) < 1e6:
        return str(int(number))
    return _num(number, 3)


def abbreviate(values: list[Any], width: int = 14) -> list[str]:
    """Each value short (:func:`_value`); long texts lose the start and end they all share, so that
    what tells them apart stays: data/raw/reviews_2023_clean.tsv -> …2023…"""
    shown = [_value(v, cut=False) for v in values]
    texts = sorted({t for t in shown if t != "-"})
    if len(texts) < 2 or all(len(t) <= width for t in texts):
        return [_cut(t, width) for t in shown]
    prefix = _whole_words(_common(texts))
    suffix = _whole_words(_common([t[::-1] for t in texts]))
    shortest = min(len(t) for t in texts)
    if prefix + suffix > shortest:  # one value is a prefix of another
        suffix = max(0, shortest - prefix)
    out = []
    for text in shown:
        if text == "-" or len(text) <= width:
            out.append(text)
            continue
        middle = text[prefix: len(text) - suffix] if suffix else text[prefix:]
        out.append(_cut(("…" if prefix else "") + middle + ("…" if suffix else ""), width))
    return out


def _common(texts: list[str]) -> str:
    import os.path

    return os.path.commonprefix(texts)


def _whole_words(common: str) -> int:
    """The length of ``common`` up to its last separator (so no word is cut), or all of it if none."""
    cut = max(common.rfind(sep) for sep in "_-./:=,")
    return cut + 1 if cut >= 0 else len(common)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _with_ci(mean: float | None, ci: float | None) -> str:
    return _num(mean) + (f" ±{_num(ci, 2)}" if ci is not None else "")


def table(rows: list[Group], varying: list[str], metric: str, by_data: bool,
          width: int = WIDTH) -> tuple[list[str], list[list[str]], list[str]]:
    """(header, body, params left out of the table): the columns that fit ``width``, cost columns
    dropped first, then the rightmost params (listed per group below the table instead)."""
    shorts = differing(rows) if varying else {}
    fixed = [("#", [f"{i}{'*' if r.pareto else ''}" for i, r in enumerate(rows, 1)])]
    if by_data:
        fixed.append(("data", [r.data[:8] for r in rows]))
    fixed.append(("arch", [_cut(r.architecture, 14) for r in rows]))
    params = [(shorts[k], [r.shown.get(k) or _value(r.params.get(k)) for r in rows]) for k in varying]
    stats = [(f"{metric} ±95%CI", [_with_ci(r.mean("score"), r.ci("score")) for r in rows]),
             ("n", [str(r.n()) for r in rows])]
    if metric != "test/accuracy":
        stats.append(("test acc", [_with_ci(r.mean("test_acc"), r.ci("test_acc")) for r in rows]))
    cost = [("epoch s", [_num(r.median("epoch_s"), 3) for r in rows]),
            ("tok/s", [_num(r.median("tokens_per_s"), 3) for r in rows]),
            ("p50 ms", [_num(r.median("p50_ms"), 3) for r in rows]),
            ("params", [_num(r.mean("params"), 3) for r in rows])]

    def total(columns) -> int:
        return sum(max(len(h), *(len(c) for c in cells)) for h, cells in columns) + 2 * (len(columns) - 1)

    drop_order = ["p50 ms", "tok/s", "params"]
    while total(fixed + params + stats + cost) > width and (drop_order or params):
        if drop_order:
            name = drop_order.pop(0)
            cost = [c for c in cost if c[0] != name]
        else:
            params.pop()
    columns = fixed + params + stats + cost
    left_out = varying[len(params):]
    return [h for h, _ in columns], [list(cells) for cells in zip(*(c for _, c in columns), strict=True)], left_out


def render_text(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *body, strict=True)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, body)])


def render_markdown(header: list[str], body: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in body]
    return "\n".join(out)


def wrap(text: str, width: int = WIDTH, indent: str = "  ") -> str:
    return "\n".join(textwrap.fill(part, width, subsequent_indent=indent, break_on_hyphens=False,
                                   break_long_words=True) for part in text.split("\n"))


def write_csv(rows: list[Group], varying: list[str], path: Path) -> None:
    """One line per group, best first, with the run ids: for scripts and spreadsheets."""
    import csv

    columns = ["score", *[column for column, _, _ in COLUMNS]]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["rank", "pareto", "architecture", "data", "group", *varying,
                         *[f"{c}_{stat}" for c in columns for stat in ("mean", "std", "ci95")], "n", "run_ids"])
        for rank, row in enumerate(rows, 1):
            stats = [v for c in columns for v in (row.mean(c), row.std(c), row.ci(c))]
            writer.writerow([rank, int(row.pareto), row.architecture, row.data, row.key,
                             *[row.params.get(k, "") for k in varying], *stats, row.n(),
                             " ".join(s.run.info.run_id for s in row.samples)])


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
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    to_display = ax.transData.transform
    inside = ax.get_window_extent(renderer)
    taken = []
    for x, y, _ in points:
        px, py = to_display((x, y))
        taken.append(_box(px - 4, py - 4, px + 4, py + 4))
    offsets = [(5, 5), (5, -13), (-13, 5), (-13, -13), (9, -4), (-17, -4), (-4, 9), (-4, -17)]
    offsets += [(dx * k, dy * k) for k in (2, 3, 4) for dx, dy in offsets]
    texts = []
    for (x, y, label), colour in zip(points, colours, strict=True):
        for dx, dy in offsets:
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
    from matplotlib.lines import Line2D

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 5.8), layout="constrained")
    palette = plt.get_cmap("tab10").colors
    colour = {id(g): (palette[i % 10] if i < max_lines else "0.72") for i, g in enumerate(rows)}
    handles = [Line2D([], [], color=colour[id(g)], marker="o", markersize=4, linewidth=1.6,
                      label=_cut(g.label, 64)) for g in rows[:max_lines]]
    rest = rows[max_lines:]
    if rest:
        handles.append(Line2D([], [], color="0.72", linewidth=1.0,
                              label=f"{len(rest)} more groups, #{max_lines + 1}-#{len(rows)} (grey; see table)"))

    # validation curves: one line per group, the mean over its runs
    values = []
    for g in reversed(rows):  # the best on top
        curve = g.curve()
        if curve:
            top = rows.index(g) < max_lines
            ax2.plot(range(1, len(curve) + 1), curve, color=colour[id(g)], linewidth=1.6 if top else 0.8,
                     marker="o" if top else None, markersize=3, zorder=3 if top else 1)
            values += curve
    if values:
        low, high, _, clipped = robust_limits(values)
        ax2.set_ylim(low, high)
        ax2.set_ylabel(f"{curve_metric} (mean over runs)" + (" (clipped)" if clipped else ""))
    else:
        ax2.set_ylabel(curve_metric)
    ax2.set_xlabel("epoch")
    ax2.xaxis.get_major_locator().set_params(integer=True)
    ax2.set_title("validation curves, one line per group")
    ax2.grid(alpha=0.3)

    # the metric against epoch time, with the 95% CI of each group
    pts = [(g.median("epoch_s"), g.mean("score"), g) for g in rows
           if g.median("epoch_s") is not None and g.mean("score") is not None]
    clipped = False
    if pts:
        low, high, edge, clipped = robust_limits([x for x, _, _ in pts], floor=0.0)
        ax1.set_xlim(low, high)
        pts = [(min(x, edge), y, g, x if x > edge else None) for x, y, g in pts]
        for x, y, g, beyond in reversed(pts):
            top = rows.index(g) < max_lines
            ci = g.ci("score")
            ax1.errorbar([x], [y], yerr=[[ci or 0.0], [ci or 0.0]], color=colour[id(g)],
                         marker=">" if beyond is not None else ("o" if g.pareto else "s"), markersize=7 if top else 4,
                         capsize=3 if ci else 0, linewidth=1, zorder=3 if top else 1)
        front = sorted((x, y) for x, y, g, _ in pts if g.pareto)
        if len(front) > 1:
            ax1.plot(*zip(*front, strict=True), "k--", linewidth=0.8, zorder=0)
    ax1.set_xlabel("time/epoch_s, median per group" + (" (clipped: > at the edge is slower)" if clipped else ""))
    ax1.set_ylabel(f"{metric} (mean ± 95% CI)")
    ax1.set_title("metric vs cost (numbers: rank; dashed: Pareto front)")
    ax1.grid(alpha=0.3)
    fig.legend(handles=handles, loc="outside lower center", ncol=min(2, len(handles)), fontsize=8, frameon=False)
    fig.canvas.draw()  # the final layout, so that label boxes are measured where they will be drawn
    fig.set_layout_engine("none")
    labelled = [(x, y, str(rows.index(g) + 1) + (f" ({_num(beyond, 3)} s)" if beyond else ""), colour[id(g)])
                for x, y, g, beyond in pts if rows.index(g) < max_lines]
    place_labels(ax1, [point[:3] for point in labelled], [point[3] for point in labelled])
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return fig


# --------------------------------------------------------------------------- the command


@dataclass
class Report:
    folder: Path
    groups: list[Group]
    verdict: Verdict
    metric: str
    mode: str
    figure: Any
    lines: list[str]


def report(args) -> Report:
    """Run the comparison: print the table and the verdict, write compare.png/md/csv, log them."""
    client, _ = open_store(args.tracking_uri)
    runs, exp, parent = load_runs(client, args.experiment, args.parent)
    runs, fold_parents = expand_folds(client, runs)
    finished = [run for run in runs if run.info.status == "FINISHED"]
    others = [run for run in runs if run.info.status != "FINISHED"]
    if not finished:
        statuses = ", ".join(sorted({r.info.status for r in runs}))
        raise CompareError(f"none of the {len(runs)} runs finished ({statuses}). Fix: read the runs' "
                           "'error' tag in mlflow ui, fix the cause and run again")
    trained_for, trained_mode = monitored(finished)
    metric = args.metric or trained_for
    mode = args.mode or (trained_mode if metric == trained_for and trained_mode else default_mode(metric))
    if not any(metric in run.data.metrics for run in finished):
        raise CompareError(f"no run logged the metric '{metric}'. Fix: pick a logged metric, e.g. "
                           "--metric val/accuracy or --metric test/accuracy")
    curve_metric = metric if metric.startswith(("val/", "train/")) else "val/loss"

    samples = make_samples(finished, fold_parents)
    merged = data_sets(samples)
    for s in samples:
        s.data = merged[s.data]
    by_data = bool(args.all_data)
    chosen = None if by_data else choose_data(samples, args.data)
    other_data = [s for s in samples if chosen is not None and s.data != chosen]
    samples = [s for s in samples if chosen is None or s.data == chosen]
    samples, repeats = dedupe(samples)
    for s in samples:
        measure(client, s, metric, mode, curve_metric)
    rows, varying = build_groups(samples, mode, by_data)
    if all(g.n() == 0 for g in rows):
        raise CompareError(f"no run on this data logged the metric '{metric}'. Fix: pick a logged metric, "
                           "e.g. --metric val/accuracy, or another data set with --data or --all-data")
    result = verdict(rows, metric, mode)
    header, body, left_out = table(rows, varying, metric, by_data)

    scope = f"sweep {parent.info.run_id[:8]} ({parent.info.run_name})" if parent else f"experiment '{exp.name}'"
    on = "all data sets" if by_data else f"data {chosen[:8]}"
    how = "kept weights" if any("best/epoch" in s.run.data.metrics for s in samples) else "best epoch"
    intro = (f"{len(samples)} runs in {len(rows)} groups of {scope} on {on}, ranked by {metric} ({mode}, {how}); "
             f"±95%CI: t interval over the n runs of a group; * = Pareto front (metric vs epoch time)")
    notes = []
    if left_out:
        shorts = differing(rows)
        notes.append("params not in the table: " + "; ".join(
            f"#{i} " + " ".join(f"{shorts[k]}={g.shown.get(k, '-')}" for k in left_out) for i, g in enumerate(rows, 1)))
    if other_data:
        counts = Counter(s.data for s in other_data)
        notes.append(f"left out {len(other_data)} run(s) on other data ("
                     + ", ".join(f"{k[:8]}: {c}" for k, c in counts.most_common()) + "); compare them with "
                     "--data PREFIX, or all with --all-data (one group per data set)")
    if repeats:
        notes.append(f"counted once: {len(repeats)} repeat(s) of a configuration with the same seed (and fold); "
                     "the newest run is kept")
    if others:
        statuses = Counter(r.info.status for r in others)
        names = ", ".join(r.info.run_name or r.info.run_id[:8] for r in others[:3])
        notes.append(f"not compared: {len(others)} unfinished run(s) ("
                     + ", ".join(f"{c} {s}" for s, c in statuses.items()) + f"): {names}"
                     + (", ..." if len(others) > 3 else ""))
    lines = [wrap(intro), render_text(header, body), "", wrap("Verdict: " + result.text), *map(wrap, notes)]
    print("\n".join(lines))

    out = Path(args.output or f"reports/compare-{parent.info.run_id[:8] if parent else exp.name}")
    out.mkdir(parents=True, exist_ok=True)
    png, md, table_csv = out / "compare.png", out / "compare.md", out / "compare.csv"
    figure = plot(rows, metric, curve_metric, png)
    write_csv(rows, varying, table_csv)
    full_header, full_body, _ = table(rows, varying, metric, by_data, width=10 ** 6)  # a page scrolls: all columns
    document = [f"# Comparison: {scope}", "", intro + ".", "", render_markdown(full_header, full_body), "",
                f"**Verdict:** {result.text}.", "", *[f"- {n}" for n in notes], "",
                "![metric vs epoch time, and validation curves](compare.png)", ""]
    md.write_text("\n".join(document), encoding="utf-8")
    if parent:
        for file in (png, md, table_csv):
            client.log_artifact(parent.info.run_id, str(file), "compare")
    logged = f"; logged to run {parent.info.run_id[:8]} under compare/" if parent else ""
    print(wrap(f"\nwrote {png}, {md} and {table_csv}{logged}"))
    return Report(out, rows, result, metric, mode, figure, "\n".join(lines).splitlines())


def add_arguments(parser) -> None:
    parser.add_argument("--experiment", default=None, help=f"MLflow experiment name (default: {DEFAULT_EXPERIMENT})")
    parser.add_argument("--parent", default=None, help="compare the child runs of this sweep (or K-fold) parent run")
    parser.add_argument("--metric", default=None,
                        help="ranking metric (default: the runs' training.monitor, else val/loss)")
    parser.add_argument("--mode", choices=("max", "min"), default=None,
                        help="max or min of --metric is best (default: min for loss/time, else max)")
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
