"""training.strategy=multi_worker: two real worker processes (python -m bilstm_exp) on localhost ports,
MultiWorkerMirroredStrategy from TF_CONFIG; only the chief records; a dead worker fails the chief's run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests import warm
from tests.conftest import migrated_store, tiny

pytestmark = pytest.mark.services

WAIT_S = 400  # a bound for the subprocesses, far above what they need: a hang fails the test, it does not block


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_workers(tmp_path: Path, *extra: str) -> list[tuple[subprocess.Popen, Path]]:
    """Worker 0 (the chief: the cluster has no chief task) and worker 1, each in its own folder; the chief's
    holds a new, empty store (a copy of a migrated one: how a run creates its store is tested in
    test_first_hour.py), worker 1's nothing."""
    addresses = [f"127.0.0.1:{port}" for port in free_ports(2)]
    workers = []
    for index in range(2):
        folder = tmp_path / f"worker{index}"
        folder.mkdir()
        if index == 0:
            migrated_store(folder)
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_CONFIG": json.dumps(
            {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}})}
        env.pop("MLFLOW_TRACKING_URI", None)
        args = tiny("basic", "training.strategy=multi_worker", "training.verbose=2", *extra)
        process = warm.popen("bilstm_exp", args, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        workers.append((process, folder))
    return workers


def runs(folder: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiments = client.search_experiments()
    return client, client.search_runs([e.experiment_id for e in experiments])


def stop(workers) -> None:
    for process, _ in workers:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_two_workers_train_and_only_the_chief_records(tmp_path):
    workers = start_workers(tmp_path)
    try:
        outputs = [process.communicate(timeout=WAIT_S)[0] for process, _ in workers]
    finally:
        stop(workers)
    for (process, _), output in zip(workers, outputs, strict=True):
        assert process.returncode == 0, output[-3000:]
    (_, chief), (_, worker) = workers
    client, found = runs(chief)
    assert len(found) == 1, [r.info.run_id for r in found]
    run = found[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["training.strategy"] == "multi_worker"
    assert "test/accuracy" in run.data.metrics
    versions = client.search_model_versions(f"run_id='{run.info.run_id}'")
    assert len(versions) == 1
    # the non-chief trained (same epoch logs) and wrote nothing: no store, no checkpoints, no artifacts
    assert "val_loss" in outputs[1]
    assert sorted(p.name for p in worker.iterdir() if p.name != "outputs") == []


def test_a_dead_worker_fails_the_chiefs_run(tmp_path):
    workers = start_workers(tmp_path, "training.epochs=20", "training.early_stopping.enabled=false")
    (chief, chief_folder), (worker, _) = workers
    lines: list[str] = []
    epoch_done = threading.Event()

    def read() -> None:  # the chief's output; its first epoch line means training is under way
        for line in chief.stdout:
            lines.append(line)
            if "val_loss" in line:
                epoch_done.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert epoch_done.wait(WAIT_S), "".join(lines)[-3000:]
        worker.send_signal(signal.SIGKILL)  # mid-training: 19 epochs to go
        worker.wait()
        chief.wait(timeout=WAIT_S)  # bounded: the chief must not hang
        reader.join(timeout=10)
    finally:
        stop(workers)
    output = "".join(lines)
    assert chief.returncode != 0, output[-3000:]
    _, found = runs(chief_folder)
    assert len(found) == 1
    assert found[0].info.status in ("FAILED", "KILLED"), found[0].info.status
    assert found[0].data.tags.get("failure_reason") == "worker_lost", output[-3000:]


def test_multi_worker_without_tf_config_is_refused(tmp_path):
    env = {key: value for key, value in os.environ.items() if key not in ("TF_CONFIG", "MLFLOW_TRACKING_URI")}
    result = subprocess.run([sys.executable, "-m", "bilstm_exp", *tiny("basic"), "training.strategy=multi_worker"],
                            cwd=tmp_path, env={**env, "TF_CPP_MIN_LOG_LEVEL": "2"}, capture_output=True, text=True,
                            timeout=WAIT_S)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "TF_CONFIG" in result.stderr and "Fix:" in result.stderr
    assert "Traceback" not in result.stderr
