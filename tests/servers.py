"""Real servers for the tests: an `mlflow server` and an `mlflow models serve` as subprocesses.

Each listens on a free localhost port, is awaited on its health endpoint with a bounded wait, and is
always stopped (SIGTERM to its process group, then SIGKILL) however the test ends. Their logs go to a
file next to their data, so a failing test can show the tail.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

HOST = "127.0.0.1"
MLFLOW = [sys.executable, "-m", "mlflow"]


def free_port() -> int:
    """A localhost port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def log_tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def stop(process: subprocess.Popen, timeout_s: float = 20) -> None:
    """SIGTERM the process group (uvicorn workers included), then SIGKILL after a bounded wait."""
    from bilstm_exp.team.mlflow_server import stop_process

    stop_process(process, timeout_s)


@contextmanager
def background(args: list[str], url: str, log: Path, *, env: dict[str, str] | None = None,
               cwd: Path | None = None, timeout_s: float = 120) -> Iterator[subprocess.Popen]:
    """Start ARGS in its own process group, wait until GET URL answers 200, and stop it at exit."""
    from bilstm_exp.team.mlflow_server import WITHOUT_JOB_RUNNER  # as `make server` starts it

    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **WITHOUT_JOB_RUNNER, **(env or {})}
    # As in an activated virtualenv: `mlflow models serve` starts `uvicorn` found on PATH.
    full_env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), full_env.get("PATH", "")])
    with open(log, "ab") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=full_env,
                                   start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{' '.join(args[2:4])} exited with {process.returncode}:\n{log_tail(log)}")
            try:
                if requests.get(url, timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer within {timeout_s:.0f} s:\n{log_tail(log)}")
            time.sleep(0.5)
        yield process
    finally:
        stop(process)


@contextmanager
def mlflow_server(folder: Path) -> Iterator[str]:
    """`mlflow server` with a sqlite backend and proxied artifacts, both in FOLDER; yields its URI."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    args = [*MLFLOW, "server", "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
            "--serve-artifacts", "--artifacts-destination", (folder / "artifacts").as_uri(),
            "--host", HOST, "--port", str(port), "--workers", "1"]
    uri = f"http://{HOST}:{port}"
    with background(args, f"{uri}/health", folder / "server.log", cwd=folder):
        yield uri


@contextmanager
def model_server(model_uri: str, tracking_uri: str, folder: Path) -> Iterator[str]:
    """`mlflow models serve -m MODEL_URI --env-manager local`; yields its base URL."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    args = [*MLFLOW, "models", "serve", "-m", model_uri, "--env-manager", "local",
            "--host", HOST, "-p", str(port)]
    url = f"http://{HOST}:{port}"
    with background(args, f"{url}/ping", folder / "model-server.log", cwd=folder,
                    env={"MLFLOW_TRACKING_URI": tracking_uri}, timeout_s=180):
        yield url
