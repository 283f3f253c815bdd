"""The model registry: the run's pyfunc model, its version, and the ``champion`` alias.

No Keras or TensorFlow here (the model object is built by the caller).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from bilstm_exp.tracking import retry

CHAMPION = "champion"
DECISION_TAG = "champion.decision"  # version tag, written last: a version without it is half-registered


def log_model(python_model, artifacts: dict[str, str], signature, input_example, step: int = 0) -> Any:
    """Log the pyfunc model in the active run, with the package as code (portable: no install of
    bilstm-exp needed where it is served); MLflow links the run's metrics of ``step`` to it."""
    import bilstm_exp

    package = Path(bilstm_exp.__file__).parent
    requirements = [f"{name}=={version}" for name, version in _versions(
        "mlflow", "tensorflow-cpu", "keras", "numpy", "pandas").items()]
    return mlflow.pyfunc.log_model(
        name="model", python_model=python_model, artifacts=artifacts, signature=signature,
        input_example=input_example, code_paths=[str(package)], pip_requirements=requirements, step=step)


@contextmanager
def registry_lock(uri: str) -> Iterator[None]:
    """Serialise the registry writes of this machine's runs on one store: a lock file next to a sqlite
    store, or in the temporary folder for a server (named by its URI).

    Concurrent ``register_model`` calls can otherwise hand out duplicate version numbers and race on
    the champion alias (two runs both finding no champion). Runs on other machines sharing a server
    are not serialised: their champion decisions may interleave."""
    import hashlib
    import tempfile

    from filelock import FileLock

    path = (uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else
            str(Path(tempfile.gettempdir()) / f"bilstm-exp-registry-{hashlib.md5(uri.encode()).hexdigest()[:16]}"))
    with FileLock(path + ".registry.lock", timeout=300):
        yield


FINGERPRINT_TAG = "data.fingerprint"  # run and version tag: md5 of the evaluation data (PreparedData.fingerprint)
DIGESTS_TAG = "data.digests"  # version tag: the digests of the run's validation and testing datasets
SKIPPED_TAG = "registry.skipped"  # run tag: why the run registered no version
VERSION_TAG = "registry.version"  # run tag: NAME/VERSION of the run's one registered version
FAILED_TAG = "registry.failed"  # run tag: why the store refused the registration (`bilstm-exp register` redoes it)


def register_command(run_id: str, uri: str) -> str:
    """The command that registers a run's model later (its store refused the registration)."""
    from bilstm_exp.tracking.store import redact

    return f"bilstm-exp register --run {run_id} --tracking-uri {redact(uri)}"


def configured(run, metric: str | None = None, greater: bool | None = None) -> tuple[str, str, bool]:
    """(registered model name, champion metric, greater is better) as the run was configured (its
    params); ``metric`` and ``greater`` stand in for what it left to training.monitor."""
    from bilstm_exp.config.run_schema import metric_mode

    params = {key: value for key, value in run.data.params.items() if value not in ("", "None")}
    metric = params.get("tracking.champion_metric") or metric or params.get("training.monitor", "val/loss")
    if "tracking.champion_greater_is_better" in params:
        greater = params["tracking.champion_greater_is_better"] == "True"
    elif greater is None:
        mode = params.get("training.monitor_mode") if metric == params.get("training.monitor") else None
        greater = (mode or metric_mode(metric)) == "max"
    return params.get("tracking.registered_model_name", "bilstm-sentiment"), metric, greater


def logged_model_uri(client: MlflowClient, run) -> str | None:
    """``models:/<model id>`` of the model the run logged, or None."""
    models = client.search_logged_models([run.info.experiment_id],
                                         filter_string=f"source_run_id='{run.info.run_id}'")
    return f"models:/{models[0].model_id}" if models else None


def skip_reason(register_model: Any, max_samples: Any, *, sweep_registers: str = "best", sweep_job: bool = False,
                fold: bool = False) -> str | None:
    """Why a run must not register its model, or None. Values may be config values or their params
    strings (the sweep callback reads a child's params)."""
    wish = str(register_model).lower()
    if wish == "false":
        return "tracking.register_model=false"
    if fold:
        return ("a cross-validation fold (data.folds) estimates performance; train one run without data.folds "
                "to register a model")
    if sweep_job and sweep_registers != "all":
        return ("a sweep job; the sweep registers its best job when it ends (tracking.sweep_registers=best, "
                "all: every job)" if sweep_registers == "best" else "a sweep job; tracking.sweep_registers=none")
    if wish == "auto" and str(max_samples) not in ("None", ""):
        return f"a smoke run (data.max_samples={max_samples}); add tracking.register_model=true to register it"
    return None


def register(client: MlflowClient, model_uri: str, name: str, run_id: str, metrics: dict[str, float],
             champion_metric: str, greater_is_better: bool = True) -> Any:
    """Register the run's model version (at most one per run: a resumed or re-synced run gets its
    existing version back), tag it with its metrics and data fingerprint, and decide on the
    ``champion`` alias:

    * no champion yet: the alias moves to it (``promoted``);
    * a champion evaluated on other data (another ``data.fingerprint``): ``incomparable``, the alias
      stays (start a champion for new data with a new registered-model name or ``bilstm-exp promote``);
    * otherwise it moves only if the version beats the champion on ``champion_metric`` in its
      direction (``promoted``), else ``kept``.

    The decision, its reason and the delta become version tags, so the alias history is auditable.
    Safe to repeat after a failure (:mod:`bilstm_exp.tracking.retry`): ``champion.decision`` is written
    last, and a version of this run without it is completed, not registered again."""
    with registry_lock(client.tracking_uri):
        existing = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
        version = (min(existing, key=lambda v: int(v.version)) if existing
                   else mlflow.register_model(model_uri, name, tags={"run_id": run_id}))
        if (version.tags or {}).get(DECISION_TAG):
            return version
        current = champion(client, name)
        if current is not None and current.version == version.version:
            decision = "promoted"  # an earlier attempt moved the alias here, after writing the other tags
        else:
            decision, tags = _decision(client, name, current, run_id, metrics, champion_metric, greater_is_better)
            for key, text in tags.items():
                client.set_model_version_tag(name, version.version, key, text)
            if decision == "promoted":
                client.set_registered_model_alias(name, CHAMPION, version.version)
        try:
            client.set_tag(run_id, VERSION_TAG, f"{name}/{version.version}")
        except MlflowException as error:
            if retry.transient(error):
                raise
            # otherwise the run lives elsewhere (a synced run keeps its own tags)
        client.set_model_version_tag(name, version.version, DECISION_TAG, decision)
    return client.get_model_version(name, version.version)


def _decision(client: MlflowClient, name: str, current, run_id: str, metrics: dict[str, float], metric: str,
              greater_is_better: bool) -> tuple[str, dict[str, str]]:
    """The champion decision and the version tags that explain it (all but ``champion.decision``)."""
    tags = {f"metric.{k}": f"{v:.6g}" for k, v in metrics.items()
            if k.startswith(("val/", "test/")) and isinstance(v, (int, float))}
    fingerprint = _run_tags(client, run_id).get(FINGERPRINT_TAG)
    if fingerprint:
        tags[FINGERPRINT_TAG] = fingerprint
    digests = _digests(client, run_id)
    if digests:
        tags[DIGESTS_TAG] = digests
    if current is not None:
        tags["champion.previous_version"] = str(current.version)
    decision, reason = _decide(client, name, current, metrics.get(metric), fingerprint, metric, greater_is_better,
                               tags)
    tags.update({"champion.reason": reason, "champion.metric": metric})
    return decision, tags


def _decide(client: MlflowClient, name: str, current, value: float | None, fingerprint: str | None, metric: str,
            greater_is_better: bool, tags: dict[str, str]) -> tuple[str, str]:
    if current is None:
        return ("promoted", "first version with this metric") if value is not None else (
            "kept", f"run has no {metric}")
    key, ours, theirs = _evaluation_data(client, current, tags.get(DIGESTS_TAG), fingerprint)
    if not ours or ours != theirs:
        return "incomparable", (
            f"evaluated on other data than champion v{current.version} ({key} "
            f"{(ours or 'missing')[:30]} vs {(theirs or 'missing')[:30]}); the alias stays. For new data use a "
            f"new tracking.registered_model_name, or `bilstm-exp promote --model {name} --version N --reason ...`")
    if value is None:
        return "kept", f"run has no {metric}"
    best = _version_metric(client, current, metric)
    if best is None:
        return "promoted", f"champion v{current.version} has no {metric}"
    better = value > best if greater_is_better else value < best
    tags["champion.delta"] = f"{value - best:+.6g}"
    direction = "higher" if greater_is_better else "lower"
    return ("promoted" if better else "kept"), (
        f"{metric} {value:.6g} vs champion v{current.version} {best:.6g} ({direction} is better)")


def _evaluation_data(client: MlflowClient, current, digests: str | None,
                     fingerprint: str | None) -> tuple[str, str | None, str | None]:
    """(what is compared, this run's value, the champion's): the digests of the validation and testing
    datasets when both runs logged them, else the ``data.fingerprint`` tags (runs recorded before datasets)."""
    theirs = current.tags.get(DIGESTS_TAG) or _digests(client, current.run_id)
    if digests and theirs:
        return "dataset digests", digests, theirs
    return FINGERPRINT_TAG, fingerprint, (current.tags.get(FINGERPRINT_TAG)
                                          or _run_tags(client, current.run_id).get(FINGERPRINT_TAG))


def _digests(client: MlflowClient, run_id: str | None) -> str | None:
    """The run's validation and testing dataset digests (:func:`datasets.evaluation_digests`), or None."""
    from bilstm_exp.tracking.datasets import evaluation_digests

    try:
        return evaluation_digests(client.get_run(run_id)) if run_id else None
    except MlflowException as error:
        return _absent(error)


def champion(client: MlflowClient, name: str):
    """The version the ``champion`` alias points at, or None."""
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as error:
        return _absent(error)


def promote(client: MlflowClient, name: str, version: int | str, reason: str, user: str) -> Any:
    """Move the ``champion`` alias to ``version`` by hand (e.g. the first model on new data), recording
    who, when and why as version tags. Unknown names or versions and an empty reason are refused."""
    import datetime

    from bilstm_exp.errors import TrackingError
    from bilstm_exp.tracking.store import redact

    if not reason.strip():
        raise TrackingError("promote needs a reason. Fix: add --reason \"why this version serves\"")
    where = redact(client.tracking_uri)
    with registry_lock(client.tracking_uri):
        try:
            client.get_registered_model(name)
        except MlflowException:
            known = sorted(m.name for m in client.search_registered_models())
            raise TrackingError(f"no registered model '{name}' in {where} "
                                f"(registered: {', '.join(known) or 'none'}). Fix: pass --model NAME of a registered "
                                "model, or --tracking-uri of its store") from None
        try:
            target = client.get_model_version(name, str(version))
        except MlflowException:
            known = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
            raise TrackingError(f"{name} has no version {version} (versions: {', '.join(map(str, known)) or 'none'}). "
                                "Fix: pass --version of an existing version") from None
        current = champion(client, name)
        tags = {"champion.decision": "promoted", "champion.promoted_by": user,
                "champion.promoted_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "champion.reason": f"promoted by hand: {reason.strip()}",
                "champion.previous_version": str(current.version) if current is not None else "none"}
        for key, text in tags.items():
            client.set_model_version_tag(name, target.version, key, text)
        client.set_registered_model_alias(name, CHAMPION, target.version)
    return client.get_model_version(name, target.version)


def _run_tags(client: MlflowClient, run_id: str | None) -> dict[str, str]:
    try:
        return dict(client.get_run(run_id).data.tags) if run_id else {}
    except MlflowException as error:
        return _absent(error) or {}


def _version_metric(client: MlflowClient, version, metric: str) -> float | None:
    try:
        return client.get_run(version.run_id).data.metrics.get(metric)
    except MlflowException as error:
        return _absent(error)


def _absent(error: MlflowException) -> None:
    """None for a read that found nothing; a busy store's error is raised (to be retried): "no
    champion" read from a locked store would promote the wrong version."""
    if retry.transient(error):
        raise error
    return None


def _versions(*names: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found
