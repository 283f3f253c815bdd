"""Configurations as table rows: the samples of one configuration (on one data set), ranked and labelled.

A :class:`Group` summarises its samples per column (mean, median, standard deviation, 95% interval);
``build_groups`` ranks the groups best first, finds the params that differ between them (with short
names), labels each ``#rank arch k=v ...`` and marks the Pareto front of the score against epoch time.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field

from bilstm_exp.analysis.formatting import abbreviate, cut, param_value
from bilstm_exp.analysis.samples import Sample, ignored
from bilstm_exp.analysis.statistics import ci95

# Short column names for parameters: a whole key, else its last part.
SHORT_KEYS = {"optimizer.name": "opt", "clipping.name": "clip", "clipping.threshold": "clip_thr",
              "optimizer.schedule.name": "sched", "data.name": "data", "model.cell": "cell",
              "training.early_stopping.patience": "patience", "training.early_stopping.monitor": "es_monitor"}
SHORT_WORDS = {"learning_rate": "lr", "embedding_dim": "emb", "lstm_units": "units", "attention_units": "att_units",
               "recurrent_dropout": "rec_drop", "dropout": "drop", "batch_size": "batch", "layer_sizes": "layers",
               "max_length": "max_len", "num_samples": "samples", "weight_decay": "wd", "merge_mode": "merge",
               "vocab_size": "vocab", "warmup_epochs": "warmup", "steps_per_execution": "steps_exec",
               "mixed_precision": "mixed", "min_frequency": "min_freq", "embedding_dropout": "emb_drop"}


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

    def by_pair(self, column: str) -> dict:
        """Each sample's value keyed by what pairs it with another group's sample (fold, seed)."""
        return {s.key: s.values[column] for s in self.samples if column in s.values}

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
    extra = " ".join(f"{short}={group.shown.get(k) or param_value(group.params[k])}" for k, short in shorts.items()
                     if k in group.params)
    return cut(f"#{rank} {group.architecture}" + (f" {extra}" if extra else ""), width)


def pair_labels(rank_a: int, a: Group, rank_b: int, b: Group) -> tuple[str, str]:
    """Short names of two groups for a sentence: rank and architecture, plus the params in which
    they differ when there are at most three."""
    shorts = differing([a, b])
    shorts = shorts if len(shorts) <= 3 else {}
    return label(rank_a, a, shorts, 60), label(rank_b, b, shorts, 60)


def differing(groups: list[Group]) -> dict[str, str]:
    """Params (full key -> short name) whose value differs between groups where they are set
    (an architecture's own keys do not count as differing), the architecture excepted."""
    keys = sorted({k for g in groups for k in g.params if k != "model.name"}, key=_param_order)
    varying = [k for k in keys if len({g.params[k] for g in groups if k in g.params}) > 1]
    shorts = {k: SHORT_KEYS.get(k) or SHORT_WORDS.get(k.rsplit(".", 1)[-1], k.rsplit(".", 1)[-1]) for k in varying}
    clashes = {s for s, c in Counter(shorts.values()).items() if c > 1}
    return {k: cut(".".join(k.split(".")[-2:]) if shorts[k] in clashes else shorts[k], 12) for k in varying}


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
