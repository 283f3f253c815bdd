"""Stratified K-fold cross-validation (``data.folds=K``): one parent MLflow run, one child run per fold.

    python -m bilstm_exp data.folds=5                       # one configuration, 5 folds
    python -m bilstm_exp -m data.folds=5 model=basic,attention   # a sweep of CV runs; best by cv/<monitor>_mean

The folds cover all examples (:func:`bilstm_exp.data.splits.fold_splits`): fold k tests on the k-th stratified
part, so every example is tested exactly once; its validation split (``data.val_fraction`` of all
examples) is carved from the other K-1 parts, and the rest trains. ``data.test_fraction`` is not used.
Folds depend on ``data.split_seed`` only, so two configurations run with the same split seed and K see
the same folds (a paired comparison over folds is possible).

Each fold is a normal training run (:func:`bilstm_exp.training.runner.run`) nested under the parent, tagged
``fold`` (0-based), ``cv.role=fold`` and ``cv.parent_run_id``; folds never register a model. The next fold's
self-trained word vectors train in a thread while a fold's model trains (:class:`VectorsAhead`), and a fold
trains the previous fold's compiled model from its own fresh start where the two match
(:mod:`bilstm_exp.models.reuse`: the same run, without tracing Keras's steps again). The parent
(tag ``cv.role=parent``) logs, for every ``test/*`` and ``val/*`` metric of the folds (``val/*``: the kept
weights' evaluation), ``cv/<metric>_mean``, ``_std`` (sample standard deviation) and ``_ci95`` (half-width
of the 95% confidence interval of the mean, Student's t with K-1 degrees of freedom), plus
``cv/folds``, and a ``cv/summary.json`` artifact with each fold's run id and metrics. The sweep objective
of a CV run is ``cv/<training.monitor>_mean``. Where the model fails (:mod:`bilstm_exp.training.breakdown`):
``cv/test/accuracy/class/<class>_mean`` and ``cv/test/accuracy/length/<lo>-<hi>_mean`` (``_std``, ``_ci95``),
the table ``reports/cv_breakdown.md`` with the counts, and the weakest class and bucket in the end summary.
"""

from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from bilstm_exp.analysis.statistics import ci95
from bilstm_exp.config.plain import flatten
from bilstm_exp.config.schema import ExperimentConfig
from bilstm_exp.data import prepare as data
from bilstm_exp.models import embeddings, reuse
from bilstm_exp.tracking import model_registry as registry
from bilstm_exp.tracking import store
from bilstm_exp.tracking.session import Session
from bilstm_exp.training import breakdown, recording
from bilstm_exp.training import runner as training
from bilstm_exp.training.summary import Countdown, where_lines

ROLE_TAG = "cv.role"  # parent or fold
FOLD_TAG = "fold"  # the fold index (0-based) of a fold run
PARENT_TAG = "cv.parent_run_id"


@dataclass
class CVResult:
    run_id: str  # the parent run
    metrics: dict[str, float]  # cv/<metric>_mean, _std, _ci95 and cv/folds
    folds: list[training.RunResult]  # without their classifiers: one model object trained every fold in turn

    def objective(self, monitor: str) -> float:
        return self.metrics.get(f"cv/{monitor}_mean", float("nan"))


def summary(values: list[float]) -> dict[str, float]:
    """mean, sample std and the 95% CI half-width of the mean (Student's t, n-1 degrees of freedom)."""
    array = np.asarray(values, dtype=float)
    n = len(array)
    std = float(array.std(ddof=1)) if n > 1 else float("nan")
    ci = ci95(values) if n > 1 else float("nan")  # a logged metric: NaN, not None, for a single fold
    return {"mean": float(array.mean()), "std": std, "ci95": ci}


def aggregate(fold_metrics: list[dict[str, float]]) -> dict[str, float]:
    """``cv/<metric>_{mean,std,ci95}`` for every ``test/*`` and ``val/*`` metric all folds logged."""
    keys = sorted(set.intersection(*(set(m) for m in fold_metrics)))
    out: dict[str, float] = {"cv/folds": len(fold_metrics)}
    for key in keys:
        if key.startswith(("test/", "val/")):
            for name, value in summary([m[key] for m in fold_metrics]).items():
                out[f"cv/{key}_{name}"] = value
    return out


class VectorsAhead:
    """Each fold's self-trained word2vec vectors (model.self_trained_vectors), the next fold's trained in a
    thread while this fold's model trains. gensim's training loop and TensorFlow's ops run without the GIL,
    so where TensorFlow leaves a core idle the next fold's vectors cost no wall time. They are the same
    vectors as trained in turn (one gensim worker, the same texts and seed). ``take`` gives None where a
    run makes its own start (a vector file, or a random start)."""

    def __init__(self, config: ExperimentConfig, folds: list[data.PreparedData]):
        self.config, self.folds = config, folds
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fold-vectors", initializer=_yielding) \
            if embeddings.trains_its_own(config.model) else None
        self.upcoming = self._submit(0)

    def _submit(self, k: int) -> Future | None:
        if self.pool is None or k >= len(self.folds):
            return None
        return self.pool.submit(embeddings.for_run, self.config.model, self.folds[k], seed=self.config.seed)

    def take(self, k: int) -> embeddings.Vectors | None:
        """Fold ``k``'s vectors (waiting for them if still training), and fold k+1's started."""
        if self.upcoming is None:
            return None
        vectors = self.upcoming.result()  # an error training them is raised here, in the fold that needs them
        self.upcoming = self._submit(k + 1)
        return vectors

    def close(self) -> None:
        """Not waiting for vectors no fold will take (a failed or interrupted CV); the interpreter still
        lets a running gensim call finish before the process exits."""
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)


def _yielding() -> None:
    """The vectors' thread (and gensim's threads, which inherit it) at the lowest CPU priority: the fold's
    training keeps the cores it uses, and the next fold's vectors take what it leaves idle (Linux: a
    thread's own nice value; elsewhere nothing changes)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):
        pass


def run(config: ExperimentConfig, *, root: Path, overrides: list[str] | None = None,
        parent_run_id: str | None = None, extra_tags: dict[str, str] | None = None) -> CVResult:
    """Train and evaluate ``config`` on each of ``data.folds`` folds; see the module docstring.
    ``parent_run_id``/``extra_tags`` (a sweep job) apply to the CV parent run."""
    overrides = overrides or []
    checked = data.check(config.data, folds=config.data.folds)  # bad data fails here, before the store is opened
    experiment_id = store.setup(config.tracking, root)
    folds = data.prepare_folds(config.data, checked)
    name = recording.run_name(config, f"cv{len(folds)}-")
    tags = {**(extra_tags or {}), ROLE_TAG: "parent", "architecture": config.model.name,
            "hydra_overrides": " ".join(overrides), recording.FINGERPRINT_TAG: folds[0].fingerprint(),
            recording.GROUP_TAG: recording.config_group(config),
            registry.SKIPPED_TAG: "a cross-validation run estimates performance; train one run without "
                                  "data.folds to register a model",
            "mlflow.note.content": f"{len(folds)}-fold cross-validation of {config.model.name} on "
                                   f"{config.data.name} data (split seed {config.data.split_seed})"}
    # the parent ends as any run does (FINISHED, FAILED with the error masked, KILLED on Ctrl-C or SIGTERM)
    with Session.start(experiment_id, run_name=name, tags=tags, parent_run_id=parent_run_id, fluent=False) as parent:
        print(f"[bilstm-exp] {len(folds)}-fold cross-validation: parent run {parent.run_id}", flush=True)
        parent.log_params(flatten(store.masked_config(config)))
        countdown, results, ahead = Countdown(len(folds), "fold"), [], VectorsAhead(config, folds)
        kept = reuse.KeptModel()
        try:
            for k, fold in enumerate(folds):  # "fold k/K" with the time elapsed and left
                countdown.starting(fold.fold)
                result = training.run(config, root=root, overrides=overrides, prepared=fold,
                                      parent_run_id=parent.run_id, run_name=f"{name}-fold{fold.fold}",
                                      extra_tags={FOLD_TAG: str(fold.fold), ROLE_TAG: "fold",
                                                  PARENT_TAG: parent.run_id}, vectors=ahead.take(k), kept=kept)
                results.append(replace(result, classifier=None))  # its weights become the next fold's
        finally:
            ahead.close()
        metrics = aggregate([r.metrics for r in results])
        parent.log_metrics(metrics)
        parent.log_dict({"folds": [{"fold": k, "run_id": r.run_id,
                                    **{m: v for m, v in r.metrics.items() if m.startswith(("val/", "test/"))}}
                                   for k, r in enumerate(results)], "summary": metrics}, "cv/summary.json")
        groups, by_group = _breakdown(parent, results, config.data.num_buckets)
    _print(parent, metrics, config, tags[registry.SKIPPED_TAG], groups)
    return CVResult(parent.run_id, {**metrics, **by_group}, results)


def _breakdown(parent: Session, results: list[training.RunResult],
               num_buckets: int) -> tuple[list[breakdown.Group], dict[str, float]]:
    """Test accuracy per class and per length bucket over the folds, logged on the parent as metrics
    (summarised like every cv/* metric) and as the table reports/cv_breakdown.md."""
    scored = [(r.evaluation, r.prepared) for r in results if r.evaluation is not None]
    if not scored:  # no fold scored its test split here (a multi_worker non-chief)
        return [], {}
    groups = breakdown.groups(scored, num_buckets)
    metrics = {f"cv/{g.metric}_{stat}": value for g in groups for stat, value in summary(g.per_fold).items()}
    parent.log_metrics(metrics)
    ci95 = {g.metric: metrics[f"cv/{g.metric}_ci95"] for g in groups}
    text = breakdown.table(groups, len(results), ci95)
    parent.write(lambda client, run_id: client.log_text(run_id, text, breakdown.TABLE))
    return groups, metrics


def _print(parent: Session, metrics: dict[str, float], config: ExperimentConfig, skipped: str,
           groups: list[breakdown.Group]) -> None:
    """The end summary: mean +/- 95% CI of each test metric, the weakest class and length bucket, why no
    model was registered (once, for all folds), where the run is recorded and how to open it, as a single
    run's summary says."""
    n, monitor = int(metrics["cv/folds"]), config.training.monitor
    lines = [f"[bilstm-exp] cross-validation run {parent.run_id}: mean +/- 95% CI over {n} folds"]
    for key in (monitor, *sorted(k[3:-5] for k in metrics if k.startswith("cv/test/") and k.endswith("_mean"))):
        if f"cv/{key}_mean" in metrics:
            lines.append(f"    {key:<16} {metrics[f'cv/{key}_mean']:.4f} +/- {metrics[f'cv/{key}_ci95']:.4f}")
    if groups:
        lines.append(breakdown.summary_line(groups))
    lines.append(f"  champion   not registered: {skipped}")
    lines += where_lines(parent.uri, parent.experiment_id, parent.run_id, config.tracking.experiment_name)
    print(store.redact_text("\n".join(lines)), file=sys.stdout, flush=True)
