"""Shared fixtures: tiny configs, a temporary MLflow store, and the CLI as a subprocess.

Everything is real: Hydra composes conf/, MLflow writes a sqlite store in a temporary folder,
TensorFlow trains tiny models on a few hundred synthetic examples.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.pop("MLFLOW_TRACKING_URI", None)

# Small enough that one epoch of any architecture takes a second or two on a CPU.
TINY = [
    "data.num_samples=160", "data.median_length=24", "data.max_length=48", "data.num_buckets=3",
    "training.epochs=1", "training.batch_size=16", "model.embedding_dim=8",
    "profiling.latency_samples=5",
]


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
