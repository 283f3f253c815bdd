"""Faults never lose a result: real signals, a real `mlflow server` stopped and restarted, real files.

* SIGTERM mid-training -> the run ends KILLED with its last epoch checkpointed; `training.resume=true`
  continues it into the same run, which ends like an uninterrupted one (epochs, metric histories).
* The server goes down mid-run and stays down -> training finishes, the run is kept in
  mlruns-offline/ and the printed `bilstm-exp sync` command uploads it (twice is harmless).
* The server goes down and comes back -> the buffered logging is delivered, nothing goes offline.
* Four processes on one sqlite store (deterministic: identical metric histories) and eight on one
  server: every run, metric and model version is there, no duplicate versions.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import run_module, tiny
from tests.servers import HOST, MLFLOW, background, free_port, log_tail, stop

pytestmark = pytest.mark.slow

EPOCHS = 4
# Epochs of a few seconds, so a signal or a server stop lands while training is under way.
LONGER = ["data.num_samples=1200", "data.median_length=100", "data.max_length=200", f"training.epochs={EPOCHS}",
          "training.early_stopping.enabled=false", "profiling.latency_samples=0", "training.verbose=0"]
PER_EPOCH = ("train/loss", "train/accuracy", "val/loss", "val/accuracy", "lr", "time/epoch_s")
TIMING = ("time/", "throughput/", "latency/", "memory/", "compute/achieved_gflops", "compute/peak_fraction")
WAIT_S = 300  # bounded waits for subprocesses; generous for a loaded 2-core machine


def env() -> dict[str, str]:
    full = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    full["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return full


@contextmanager
def training(args: list[str], cwd: Path) -> Iterator[subprocess.Popen]:
    """`python -m bilstm_exp ARGS` in the background, stderr to cwd/stderr.txt; always stopped."""
    with open(cwd / "stderr.txt", "w") as err:
        process = subprocess.Popen([sys.executable, "-m", "bilstm_exp", *args], cwd=cwd, stdout=subprocess.DEVNULL,
                                   stderr=err, env=env(), start_new_session=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGCONT)
            stop(process)


def wait_for(condition, what: str, process: subprocess.Popen | None = None, timeout_s: float = WAIT_S):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process is not None and process.poll() is not None:
            raise AssertionError(f"training exited ({process.returncode}) before {what}")
        time.sleep(0.5)
    raise AssertionError(f"no {what} within {timeout_s} s")


def only_run(client: MlflowClient, experiment: str):
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id]) if found else []
    return runs[0] if len(runs) == 1 else None


def logged_epochs(client: MlflowClient, experiment: str) -> int:
    run = only_run(client, experiment)
    return len(client.get_metric_history(run.info.run_id, "train/loss")) if run else 0


def histories(client: MlflowClient, run_id: str) -> dict[str, list[tuple[int, float]]]:
    run = client.get_run(run_id)
    return {key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)] for key in run.data.metrics}


# --------------------------------------------------------------------------- SIGTERM, checkpoint, resume


def test_sigterm_checkpoints_and_resume_continues_the_same_run(tmp_path):
    interrupted, reference = tmp_path / "interrupted", tmp_path / "reference"
    for folder in (interrupted, reference):
        folder.mkdir()
        MlflowClient(f"sqlite:///{folder / 'mlflow.db'}").search_experiments()  # create the store once
    args = tiny("basic", *LONGER)
    client = MlflowClient(f"sqlite:///{interrupted / 'mlflow.db'}")
    with training(args, reference) as uninterrupted, training(args, interrupted) as process:
        state = wait_for(lambda: next((interrupted / "checkpoints").glob("*/state.json"), None),
                         "checkpoint", process)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=WAIT_S) == 143
        assert uninterrupted.wait(timeout=WAIT_S) == 0, log_tail(reference / "stderr.txt")
    stderr = (interrupted / "stderr.txt").read_text()
    assert "training.resume=true" in stderr  # the message says how to continue

    run = only_run(client, "bilstm-exp")
    assert run.info.status == "KILLED" and run.data.tags["failure_reason"] == "terminated"
    assert state.parent.name == run.info.run_id and state.is_file()  # the checkpoint survived the signal
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert steps == list(range(len(steps))) and 1 <= len(steps) < EPOCHS

    resumed = run_module([*args, "training.resume=true"], cwd=interrupted, timeout=WAIT_S)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run = only_run(client, "bilstm-exp")  # still one run: the same one, now FINISHED
    assert run.info.status == "FINISHED" and run.data.tags["resumed_from_epoch"] == str(len(steps))
    assert run.data.metrics["epochs_trained"] == EPOCHS
    assert not (interrupted / "checkpoints").exists()  # deleted after a FINISHED run
    [version] = client.search_model_versions("name='bilstm-sentiment'")
    assert version.run_id == run.info.run_id

    ref_client = MlflowClient(f"sqlite:///{reference / 'mlflow.db'}")
    expected = histories(ref_client, only_run(ref_client, "bilstm-exp").info.run_id)
    got = histories(client, run.info.run_id)
    per_process = {"time/first_epoch_overhead_s"}  # measured within one process: absent after 1 resumed epoch
    assert set(got) - per_process == set(expected) - per_process
    for key in PER_EPOCH:
        assert [step for step, _ in got[key]] == list(range(EPOCHS)), key
    assert {k: len(v) for k, v in got.items()} == {k: len(expected[k]) for k in got}


# --------------------------------------------------------------------------- the server goes down


class Server:
    """`mlflow server` on a fixed port with its store in FOLDER: stopping and starting keeps the data."""

    def __init__(self, folder: Path):
        self.folder, self.port = folder, free_port()
        self.uri = f"http://{HOST}:{self.port}"
        self.stack = ExitStack()
        folder.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        args = [*MLFLOW, "server", "--backend-store-uri", f"sqlite:///{self.folder / 'server.db'}",
                "--serve-artifacts", "--artifacts-destination", (self.folder / "artifacts").as_uri(),
                "--host", HOST, "--port", str(self.port), "--workers", "1"]
        self.stack.enter_context(background(args, f"{self.uri}/health", self.folder / "server.log", cwd=self.folder))

    def stop(self) -> None:
        self.stack.close()  # SIGTERM to the server's process group, SIGKILL after a bounded wait


@pytest.fixture
def server(tmp_path) -> Iterator[Server]:
    handle = Server(tmp_path / "server")
    handle.start()
    try:
        yield handle
    finally:
        handle.stop()


def server_args(uri: str) -> list[str]:
    return tiny("basic", *LONGER, "tracking=server", f"tracking.tracking_uri={uri}")


def assert_complete(client: MlflowClient, run_id: str) -> None:
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.name"] == "basic" and run.data.params["training.epochs"] == str(EPOCHS)
    for key in PER_EPOCH:  # every epoch exactly once
        assert [m.step for m in client.get_metric_history(run_id, key)] == list(range(EPOCHS)), key
    for key in ("test/accuracy", "test/loss", "epochs_trained"):
        assert len(client.get_metric_history(run_id, key)) == 1, key
    files = {a.path for a in client.list_artifacts(run_id)} | {a.path for a in client.list_artifacts(run_id, "reports")}
    assert {"config.yaml", "overrides.yaml", "reports/confusion_matrix.png", "reports/vocab.json"} <= files


def test_server_down_until_the_end_keeps_the_run_offline_and_sync_uploads_it(tmp_path, server):
    client = MlflowClient(server.uri)
    with training(server_args(server.uri), tmp_path) as process:
        wait_for(lambda: logged_epochs(client, "bilstm-exp") >= 1, "the first epoch on the server", process)
        run_id = only_run(client, "bilstm-exp").info.run_id
        server.stop()
        assert process.wait(timeout=WAIT_S) == 0, log_tail(tmp_path / "stderr.txt")  # training went on
    stderr = (tmp_path / "stderr.txt").read_text()
    assert "is unreachable; training continues" in stderr
    command = re.search(r"bilstm-exp sync --from (\S+) --to (\S+)", stderr)
    assert command, stderr[-3000:]
    assert command.group(1) == f"mlruns-offline/{run_id}" and command.group(2) == server.uri
    assert (tmp_path / command.group(1) / "mlflow.db").is_file()
    assert not (tmp_path / "checkpoints").exists()  # the run FINISHED (offline): nothing to resume

    server.start()
    assert client.get_run(run_id).info.status == "RUNNING"  # the server only saw the start
    assert client.search_model_versions("name='bilstm-sentiment'") == []
    for _ in range(2):  # a second sync adds nothing
        out = run_module(["sync", "--from", command.group(1), "--to", command.group(2)], cwd=tmp_path,
                         module="bilstm_exp.cli", timeout=WAIT_S)
        assert out.returncode == 0, out.stderr[-3000:]
        assert f"synced run {run_id}" in out.stdout
    assert "0 params, 0 metric values" in out.stdout
    assert_complete(client, run_id)
    assert [e.name for e in client.search_experiments()].count("bilstm-exp") == 1
    assert len(client.search_runs([client.get_experiment_by_name("bilstm-exp").experiment_id])) == 1
    [version] = client.search_model_versions("name='bilstm-sentiment'")
    assert version.run_id == run_id
    assert client.get_model_version_by_alias("bilstm-sentiment", "champion").version == version.version


def test_server_back_before_the_end_gets_the_buffered_logging(tmp_path, server):
    client = MlflowClient(server.uri)
    with training(server_args(server.uri), tmp_path) as process:
        wait_for(lambda: logged_epochs(client, "bilstm-exp") >= 1, "the first epoch on the server", process)
        run_id = only_run(client, "bilstm-exp").info.run_id
        server.stop()
        wait_for(lambda: "is unreachable" in (tmp_path / "stderr.txt").read_text(), "the buffering warning", process)
        os.killpg(process.pid, signal.SIGSTOP)  # hold training while the server restarts (no race with its end)
        try:
            server.start()
        finally:
            os.killpg(process.pid, signal.SIGCONT)
        assert process.wait(timeout=WAIT_S) == 0, log_tail(tmp_path / "stderr.txt")
    stderr = (tmp_path / "stderr.txt").read_text()
    assert "reachable again" in stderr and "bilstm-exp sync" not in stderr
    assert not (tmp_path / "mlruns-offline").exists()
    assert_complete(client, run_id)
    [version] = client.search_model_versions("name='bilstm-sentiment'")
    assert version.run_id == run_id


# --------------------------------------------------------------------------- concurrency, determinism


def run_all(arg_lists: list[list[str]], cwd: Path) -> list[subprocess.CompletedProcess]:
    processes = [subprocess.Popen([sys.executable, "-m", "bilstm_exp", *args], cwd=cwd, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=env(), start_new_session=True)
                 for args in arg_lists]
    try:
        outputs = [p.communicate(timeout=WAIT_S * 2) for p in processes]
        return [subprocess.CompletedProcess(p.args, p.returncode, *out) for p, out in zip(processes, outputs,
                                                                                         strict=True)]
    finally:
        for p in processes:
            stop(p)


def test_four_processes_on_one_sqlite_store_deterministic_runs_agree(tmp_path):
    """Four deterministic runs of one config at once: all recorded, and their metrics identical."""
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client.search_experiments()  # create and migrate the store before the processes open it
    args = tiny("basic", "training.epochs=2", "training.early_stopping.enabled=false", "training.deterministic=true",
                "model.dropout=0.2", "profiling.latency_samples=0")
    outs = run_all([args] * 4, tmp_path)
    assert [o.returncode for o in outs] == [0] * 4, [o.stderr[-2000:] for o in outs if o.returncode]
    runs = client.search_runs([client.get_experiment_by_name("bilstm-exp").experiment_id])
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    for run in runs:
        for key in PER_EPOCH:
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [0, 1], key
    versions = client.search_model_versions("name='bilstm-sentiment'")
    assert sorted(int(v.version) for v in versions) == [1, 2, 3, 4]
    assert sorted(v.run_id for v in versions) == sorted(r.info.run_id for r in runs)

    # determinism: every non-timing metric, epoch by epoch, is the same in all four runs
    values = [{k: v for k, v in histories(client, r.info.run_id).items() if not k.startswith(TIMING)} for r in runs]
    assert len(values[0]) > 15
    assert values[1:] == [values[0]] * 3


def test_eight_processes_on_one_server_all_recorded_without_duplicate_versions(tmp_path, mlflow_server,
                                                                               unique_name):
    args = tiny("basic", "tracking=server", f"tracking.tracking_uri={mlflow_server}", "training.epochs=2",
                "training.early_stopping.enabled=false", "profiling.latency_samples=0",
                f"tracking.experiment_name={unique_name}", f"tracking.registered_model_name={unique_name}")
    outs = run_all([[*args, f"seed={seed}"] for seed in range(8)], tmp_path)
    assert [o.returncode for o in outs] == [0] * 8, [o.stderr[-2000:] for o in outs if o.returncode]
    client = MlflowClient(mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name(unique_name).experiment_id])
    assert len(runs) == 8 and {r.info.status for r in runs} == {"FINISHED"}
    assert sorted(r.data.params["seed"] for r in runs) == [str(s) for s in range(8)]
    for run in runs:
        for key in PER_EPOCH:
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [0, 1], key
        assert "test/accuracy" in run.data.metrics
    versions = client.search_model_versions(f"name='{unique_name}'")
    assert sorted(int(v.version) for v in versions) == list(range(1, 9))  # no duplicates, no gaps
    assert sorted(v.run_id for v in versions) == sorted(r.info.run_id for r in runs)  # one per run
    assert not (tmp_path / "mlruns-offline").exists()
