"""Which evaluations count, and on which data: runs (or folds) as samples of a configuration.

A sample is one evaluation: a run, or one fold of a K-fold run. It belongs to a configuration (the
``config.group`` tag, else a hash of the params without seeds, folds and runtime keys), to a data set
(the ``data.fingerprint`` tag, split seeds of one configuration merged), and pairs with the samples of
other configurations that share its split seed, seed and fold. A repeat of the same configuration, data,
seed and fold counts once.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from bilstm_exp.analysis.query import FOLD_TAG, CompareError

GROUP_TAG = "config.group"  # hash of the config without seed, fold and runtime keys (set by training)
FINGERPRINT_TAGS = ("data.fingerprint", "data_md5")  # the evaluation data; the first one present wins
# Params that do not make a configuration: repetition (seeds, folds) and runtime keys.
IGNORED_KEYS = ("seed", "data.split_seed", "data.fold", "training.verbose")
IGNORED_PREFIXES = ("training.resume", "tracking.", "profiling.", "derived.")


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
    kfold: Any = None  # the K-fold parent run of a fold
    values: dict[str, float] = field(default_factory=dict)
    curve: list[float] = field(default_factory=list)

    @property
    def start(self) -> int:
        return self.run.info.start_time or 0

    @property
    def key(self) -> Any:
        """What pairs it with another configuration's sample; a sample without one pairs with none."""
        return self.pair if self.pair is not None else ("run", self.run.info.run_id)


def make_samples(runs: list, parents: dict[str, Any]) -> list[Sample]:
    """Samples with their configuration, data set and pairing keys (``parents``: fold run id -> its
    K-fold parent run)."""
    use_tag = all(run.data.tags.get(GROUP_TAG) for run in runs)  # else one rule for all: the params
    unit_data = _kfold_data(runs, parents)
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
        samples.append(Sample(run, group, data, pair, parent))
    return samples


def _kfold_data(runs: list, parents: dict[str, Any]) -> dict[str, str]:
    """K-fold parent run id -> its data key: the parent's tag, else one made of all its folds' tags."""
    unit_data: dict[str, str] = {}
    for parent in parents.values():
        if parent.info.run_id not in unit_data:
            own = fingerprint(parent)
            if own == "unknown":
                kids = sorted(fingerprint(r) for r in runs if parents.get(r.info.run_id) is parent)
                own = hashlib.md5(" ".join(kids).encode()).hexdigest()[:12] if kids else "unknown"
            unit_data[parent.info.run_id] = own
    return unit_data


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
