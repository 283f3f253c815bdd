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

CHAMPION = "champion"


def log_model(python_model, artifacts: dict[str, str], signature, input_example) -> Any:
    """Log the pyfunc model in the active run, with the package as code (portable: no install of
    bilstm-exp needed where it is served)."""
    import bilstm_exp

    package = Path(bilstm_exp.__file__).parent
    requirements = [f"{name}=={version}" for name, version in _versions(
        "mlflow", "tensorflow-cpu", "keras", "numpy", "pandas").items()]
    return mlflow.pyfunc.log_model(
        name="model", python_model=python_model, artifacts=artifacts, signature=signature,
        input_example=input_example, code_paths=[str(package)], pip_requirements=requirements)


@contextmanager
def registry_lock(uri: str) -> Iterator[None]:
    """Serialise registry writes of parallel local runs (a sqlite store next to a lock file).

    Concurrent ``register_model`` calls can otherwise hand out duplicate version numbers and
    race on the champion alias. A server store is left to the server.
    """
    if not uri.startswith("sqlite:///"):
        yield
        return
    from filelock import FileLock

    with FileLock(uri[len("sqlite:///"):] + ".registry.lock", timeout=300):
        yield


def register(client: MlflowClient, model_uri: str, name: str, run_id: str, metrics: dict[str, float],
             champion_metric: str, greater_is_better: bool = True) -> Any:
    """Register a model version, tag it, and move the ``champion`` alias to it only if it beats the
    current champion on ``champion_metric``. The decision and the delta become version tags, so
    the alias history is auditable in the registry."""
    with registry_lock(client.tracking_uri):
        version = mlflow.register_model(model_uri, name, tags={"run_id": run_id})
        value = metrics.get(champion_metric)
        tags = {f"metric.{k}": f"{v:.6g}" for k, v in metrics.items()
                if k.startswith(("val/", "test/")) and isinstance(v, float)}
        try:
            current = client.get_model_version_by_alias(name, CHAMPION)
        except MlflowException:
            current = None
        best = None if current is None else _version_metric(client, current, champion_metric)
        if value is None:
            decision, reason = "kept", f"run has no {champion_metric}"
        elif best is None:
            decision, reason = "promoted", "first version with this metric"
        else:
            better = value > best if greater_is_better else value < best
            decision = "promoted" if better else "kept"
            reason = f"{champion_metric} {value:.6g} vs champion v{current.version} {best:.6g}"
            tags["champion.delta"] = f"{value - best:+.6g}"
            tags["champion.previous_version"] = str(current.version)
        tags.update({"champion.decision": decision, "champion.reason": reason, "champion.metric": champion_metric})
        for key, text in tags.items():
            client.set_model_version_tag(name, version.version, key, text)
        if decision == "promoted":
            client.set_registered_model_alias(name, CHAMPION, version.version)
    return version


def _version_metric(client: MlflowClient, version, metric: str) -> float | None:
    try:
        return client.get_run(version.run_id).data.metrics.get(metric)
    except MlflowException:
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
