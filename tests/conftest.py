"""Shared fixtures: tiny configs, a temporary MLflow store, runs trained once per session, and the
CLI as a subprocess.

Everything is real: Hydra composes conf/, MLflow writes a sqlite store in a temporary folder,
TensorFlow trains tiny models on a few hundred synthetic examples. Tests that only read what a run
recorded use :func:`trained` (one basic and one attention run, trained once for the whole session)
instead of training their own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.pop("MLFLOW_TRACKING_URI", None)
# Caches (the matmul peak) go to a temporary folder, never into the user's home.
os.environ["BILSTM_EXP_CACHE_DIR"] = tempfile.mkdtemp(prefix="bilstm-exp-test-cache-")

# Small enough that one epoch of any architecture takes a second or two on a CPU.
TINY = [
    "data.num_samples=160", "data.median_length=24", "data.max_length=48", "data.num_buckets=3",
    "training.epochs=1", "training.batch_size=16", "model.embedding_dim=8",
    "profiling.latency_samples=5",
]


def epoch_steps(key: str, epochs: int) -> list[int]:
    """The steps a metric is logged at: one per epoch, and for ``val/*`` one more, one past the last
    epoch: the evaluation of the weights the run keeps (the best epoch's)."""
    return list(range(epochs + 1 if key.startswith("val/") else epochs))


def tiny(architecture: str = "basic", *extra: str) -> list[str]:
    """Overrides for a tiny run of one architecture (unit sizes per architecture's keys)."""
    sizes = {"stacked": ["model.layer_sizes=[8,4]"], "attention": ["model.lstm_units=8", "model.attention_units=8"]}
    return [f"model={architecture}", *TINY, *sizes.get(architecture, ["model.lstm_units=8"]), *extra]


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """A fresh working directory: the default store (mlflow.db, mlartifacts/) lands here."""
    monkeypatch.chdir(tmp_path)
    import mlflow

    yield tmp_path
    if mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


@dataclass
class Trained:
    """A project folder whose default store (mlflow.db, mlartifacts/) holds two finished runs:
    ``basic`` (registered as version 1 of bilstm-sentiment, profiling=trace) and ``attention``
    (version 2), each trained for 2 epochs without early stopping. Read it, never write to it."""

    folder: Path
    uri: str
    basic: Any  # training.RunResult
    attention: Any
    basic_overrides: list[str]
    attention_overrides: list[str]

    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.uri)


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Trained:
    import mlflow

    from bilstm_exp import training
    from bilstm_exp.compose import compose
    from bilstm_exp.config import validate

    folder = tmp_path_factory.mktemp("trained")
    common = ["training.epochs=2", "training.early_stopping.enabled=false"]
    basic = tiny("basic", *common, "profiling=trace", "profiling.trace_start_step=1", "profiling.trace_steps=2")
    attention = tiny("attention", *common)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        try:
            results = [training.run(validate(compose(o)), root=folder, overrides=o) for o in (basic, attention)]
        finally:
            if mlflow.active_run():
                mlflow.end_run()
            mlflow.set_tracking_uri(None)
    return Trained(folder, f"sqlite:///{folder / 'mlflow.db'}", *results, basic, attention)


def run_module(args: list[str], cwd: Path, timeout: float = 300, env: dict | None = None,
               module: str = "bilstm_exp") -> subprocess.CompletedProcess:
    """`python -m bilstm_exp ARGS` (or another module) as a user would run it."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    full_env.pop("MLFLOW_TRACKING_URI", None) if "MLFLOW_TRACKING_URI" not in (env or {}) else None
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


# --------------------------------------------------------------------------- a real MLflow server


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> str:
    """URI of a real `mlflow server` (sqlite backend, proxied artifacts in a temporary folder) on a
    free localhost port, shared by the session and stopped at its end. Tests use unique names."""
    from tests.servers import mlflow_server as start

    with start(tmp_path_factory.mktemp("mlflow-server")) as uri:
        yield uri


@pytest.fixture
def unique_name(request) -> str:
    """An experiment / registered-model name no other test uses on the shared server."""
    import uuid

    return f"{request.node.name.split('[')[0].replace('_', '-')}-{uuid.uuid4().hex[:8]}"


def pytest_collection_modifyitems(config, items):
    """Tests that read runs trained by a shared fixture (the session's `trained`, test_trust's `runs`)
    count as slow: `make test-fast` skips them (the full `make test` runs them)."""
    for item in items:
        if {"trained", "runs"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
