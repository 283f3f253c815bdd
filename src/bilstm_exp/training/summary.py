"""What a run tells its user on stdout: where it is recorded (its first line), why training stopped,
and at its end a short summary (run, test metrics, champion decision, where to look); a sweep ends
with a table of its jobs and the best one.

Everything in the end-of-run summary is read back from the tracking store (the record is the truth):
the run's name and test metrics, the registered version's ``champion.decision`` and
``champion.reason`` tags. No TensorFlow here (the sweep callback uses it).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bilstm_exp.config.schema import ExperimentConfig
from bilstm_exp.tracking import store

PREFIX = "[bilstm-exp]"
UI = "http://127.0.0.1:5000"  # where `mlflow ui` (and `make ui`) serve by default


def say(line: str = "") -> None:
    print(store.redact_text(line), flush=True)  # names can come from the environment: never print a secret


# --------------------------------------------------------------------------- where


def announce(config: ExperimentConfig, root: Path) -> str:
    """The run's first line: the store it will be recorded in (explicit tracking.tracking_uri >
    MLFLOW_TRACKING_URI > ./mlflow.db), printed once the store is checked without creating anything
    (a down server, a corrupt or read-only sqlite file, a deleted experiment fail in seconds). Returns the URI."""
    uri = store.resolve_uri(config.tracking, root)
    store.preflight(uri, config.tracking.experiment_name)
    say(recording_line(config, uri))
    return uri


def recording_line(config: ExperimentConfig, uri: str) -> str:
    return f"{PREFIX} recording to {store.shown_uri(uri)} (experiment '{config.tracking.experiment_name}')"


def start(config: ExperimentConfig, root: Path):
    """Everything a run does before TensorFlow is imported, cheapest check first: the configured log
    level; the data a user handed over, read and checked without MLflow (bad data exits in about a
    second, creating nothing); the store (a down server fails in seconds); the data prepared; with
    training.resume, the checkpoint to resume (a missing, unreadable or mismatched one fails here).
    Only then the first line, where the run is recorded. Returns PreparedData."""
    from bilstm_exp import quiet
    from bilstm_exp.data import prepare as data
    from bilstm_exp.training import checkpoints

    quiet.setup(config.training.log_level)
    uri = store.resolve_uri(config.tracking, root)  # credentials in a URI, tracking=server without one
    checked = data.check(config.data)
    store.preflight(uri, config.tracking.experiment_name)
    prepared = data.prepare(config.data, checked=checked)
    if config.training.resume:  # checked again when training.run opens it (DVC stages and sweeps call that alone)
        checkpointer = checkpoints.for_config(config, root)
        store.check_resumable(checkpointer.run_id, uri)
        checkpointer.check_data(prepared.md5())
    say(recording_line(config, uri))  # the run is going to happen
    return prepared


def run_url(uri: str, experiment_id: str, run_id: str) -> str:
    base = store.redact(uri).rstrip("/") if store.is_http(uri) else UI
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


# --------------------------------------------------------------------------- early stopping


def early_stop_line(stopped_epoch: int, best_epoch: int, wait: int, monitor: str, restored: bool) -> str:
    """Keras epochs are 0-based; people count from 1."""
    kept = f"kept epoch {best_epoch + 1}" if restored else f"kept the last epoch ({stopped_epoch + 1})"
    return (f"{PREFIX} early stopping at epoch {stopped_epoch + 1}: {monitor} did not improve for {wait} "
            f"epoch{'s' if wait != 1 else ''}; {kept}")


# --------------------------------------------------------------------------- folds and trials


def duration(seconds: float) -> str:
    """42 s, 3 min 05 s, 2 h 07 min."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Countdown:
    """``fold 2/5: 1 min 10 s elapsed, about 3 min 30 s left`` as each of ``total`` items starts."""

    def __init__(self, total: int, what: str):
        self.total, self.what = total, what
        self.started = time.monotonic()

    def line(self, index: int) -> str:
        """The line for item ``index`` (0-based) starting now."""
        elapsed = time.monotonic() - self.started
        left = f", about {duration(elapsed / index * (self.total - index))} left" if index else ""
        return f"{PREFIX} {self.what} {index + 1}/{self.total}: {duration(elapsed)} elapsed{left}"

    def starting(self, index: int) -> None:
        say(self.line(index))


def sweep_size(config: Any) -> int | None:
    """How many jobs a Hydra multirun launches: an Optuna search's ``n_trials``, else the product of the
    choices of its sweep overrides and ``hydra.sweeper.params``; None when it cannot be told."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    trials = OmegaConf.select(config, "hydra.sweeper.n_trials", default=None)
    if trials is not None:
        return int(trials)
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
    overrides = [*OmegaConf.select(config, "hydra.overrides.task", default=[]),
                 *(f"{key}={value}" for key, value in params.items())]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        return math.prod(len(list(o.sweep_string_iterator())) for o in parsed if o.is_sweep_override())
    except Exception:  # an override Hydra itself will explain
        return None


# --------------------------------------------------------------------------- one run


def _number(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    return f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"


def test_metrics(metrics: dict[str, float]) -> str:
    order = ("test/accuracy", "test/auc", "test/macro_f1", "test/f1", "test/loss")
    keys = [k for k in order if k in metrics] + sorted(
        k for k in metrics if k.startswith("test/") and k not in order and "length_" not in k
        and k != "test/examples")
    return "  ".join(f"{k.removeprefix('test/')} {_number(metrics[k])}" for k in keys) or "none logged"


def champion(client, run, config: ExperimentConfig) -> str:
    """The registry decision for the run's model version, from its tags."""
    from bilstm_exp.tracking import offline
    from bilstm_exp.tracking.model_registry import FAILED_TAG, SKIPPED_TAG, register_command

    if run.data.tags.get(SKIPPED_TAG):
        return f"not registered: {run.data.tags[SKIPPED_TAG]}"
    if run.data.tags.get(FAILED_TAG):
        return (f"not registered: the store refused it ({run.data.tags[FAILED_TAG]}); register it later: "
                f"{register_command(run.info.run_id, client.tracking_uri)}")
    if config.tracking.register_model is False:
        return "not registered: tracking.register_model=false"
    try:
        versions = client.search_model_versions(f"run_id='{run.info.run_id}'")
    except Exception as error:  # a store without a registry, or one that went away
        return f"not known: the registry could not be read ({type(error).__name__})"
    if not versions:
        if run.data.tags.get(offline.REGISTER_TAG):
            return "not registered yet: the run is kept offline; `bilstm-exp sync` registers it"
        if run.info.status != "FINISHED":
            return f"not registered: the run ended {run.info.status}"
        return "not registered: no model version was created for this run"
    version = max(versions, key=lambda v: int(v.version))
    tags = version.tags or {}
    decision, reason = tags.get("champion.decision", "?"), tags.get("champion.reason", "")
    alias = "now @champion" if decision == "promoted" else "champion unchanged"
    return (f"{decision} ({reason}): {version.name} version {version.version}, {alias}" if reason
            else f"{decision}: {version.name} version {version.version}, {alias}")


def run_lines(uri: str, run_id: str, config: ExperimentConfig) -> list[str]:
    """The end-of-run summary, read from the store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    run = client.get_run(run_id)
    experiment_id = run.info.experiment_id
    lines = [f"{PREFIX} run {run.info.status.lower()}: {run.info.run_name} ({run_id})",
             f"  test       {test_metrics(run.data.metrics)}"]
    if "data/skipped_rows" in run.data.metrics:
        lines.append(f"  data       {bad_rows(int(run.data.metrics['data/skipped_rows']), config)}")
    lines.append(f"  champion   {champion(client, run, config)}")
    return lines + where_lines(uri, experiment_id, run_id, config.tracking.experiment_name)


def where_lines(uri: str, experiment_id: str, run_id: str, experiment_name: str) -> list[str]:
    """Where a run is recorded and how to open it (a run's and a cross-validation's summary end with them)."""
    shown = store.shown_uri(uri)
    lines = [f"  recorded   {shown}, experiment '{experiment_name}' (id {experiment_id})"]
    if store.is_http(uri):
        return lines + [f"  open       {run_url(uri, experiment_id, run_id)}"]
    return lines + [f"  open       mlflow ui --backend-store-uri {shown}",
                    f"             then {run_url(uri, experiment_id, run_id)}"]


def bad_rows(skipped: int, config: ExperimentConfig) -> str:
    """What became of a data file's bad rows, in the terms of data.on_bad_rows."""
    if getattr(config.data, "on_bad_rows", "error") == "skip":
        return f"{skipped} bad rows skipped (data.on_bad_rows=skip)"
    return "no bad rows (data.on_bad_rows=error stops at the first one)"


def report_run(config: ExperimentConfig, root: Path, run_id: str,
               kept_offline: tuple[str, str] | None = None) -> None:
    """Print the end-of-run summary; a store that cannot be read back costs a warning, not the run.
    ``kept_offline``: (URI, run id) of the offline store a run went to while its server was down: the
    summary is read from there (asking the down server would wait out MLflow's retries, minutes)."""
    uri = store.resolve_uri(config.tracking, root)
    if kept_offline is not None:
        uri, run_id = kept_offline
    try:
        if not store.reachable(uri):
            raise ConnectionError(f"{uri} does not answer")
        lines = run_lines(uri, run_id, config)
    except Exception as error:  # e.g. the server went down after the run was kept offline
        print(f"bilstm-exp: warning: run {run_id} finished, but its summary could not be read from "
              f"{store.shown_uri(uri)} ({type(error).__name__})", file=sys.stderr, flush=True)
        return
    say()
    for line in lines:
        say(line)


# --------------------------------------------------------------------------- a sweep


def _overrides(text: str) -> dict[str, str]:
    return dict(o.partition("=")[::2] for o in text.split() if "=" in o)


def sweep_lines(client, children: list, metric: str, mode: str, best_run_id: str | None,
                score: Callable[[Any], float | None] | None = None) -> list[str]:
    """A table of a sweep's jobs: job number, status, the overrides that vary between jobs, the
    ``metric`` (``score(run)``, default its best epoch); the best job is marked ``*``."""
    score = score or (lambda run: store.best_value(client, run, metric, mode))
    jobs = []
    for run in children:
        value = score(run) if run.info.status == "FINISHED" else None
        jobs.append((run, _overrides(run.data.tags.get("hydra_overrides", "")), value))
    keys = sorted({k for _, o, _ in jobs for k in o})
    varying = [k for k in keys if len({o.get(k) for _, o, _ in jobs}) > 1] or keys
    jobs.sort(key=lambda job: int(job[0].data.tags.get("sweep_job", "0") or 0))
    rows = [(("*" if run.info.run_id == best_run_id else " ") + run.data.tags.get("sweep_job", "?"),
             run.info.status, " ".join(f"{k}={o[k]}" for k in varying if k in o) or "-",
             "-" if value is None else _number(value)) for run, o, value in jobs]
    header = ("job", "status", "overrides", metric)
    widths = [min(60, max(len(str(r[i])) for r in [header, *rows])) for i in range(4)]
    fmt = lambda cells: "  ".join(str(c)[:w].ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()  # noqa: E731
    return [fmt(header), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)]


def report_sweep(client, parent_run_id: str, children: list, metric: str, mode: str, best: Any | None,
                 score: Callable[[Any], float | None] | None = None) -> None:
    try:
        lines = sweep_lines(client, children, metric, mode, best.info.run_id if best is not None else None, score)
    except Exception as error:  # the table is a courtesy: the sweep's record is already complete
        print(f"bilstm-exp: warning: sweep {parent_run_id}: no jobs table ({type(error).__name__}: {error})",
              file=sys.stderr, flush=True)
        return
    say()
    say(f"{PREFIX} sweep {parent_run_id}: {len(children)} job(s), best {metric} ({mode}) marked *")
    for line in lines:
        say("  " + line)
    if best is not None:
        say(f"  best: {best.info.run_name} ({best.info.run_id}) {best.data.tags.get('hydra_overrides', '')}")
