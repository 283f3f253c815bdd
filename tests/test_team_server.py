"""The team tracking server (bilstm_exp.team) and distributed search, all real and on localhost.

One module-scoped server is started the way a user starts it (`python -m bilstm_exp.team.cli start`):
a PostgreSQL cluster initialised in a temporary folder on a free port (run as the `postgres` system user
when the tests run as root) and `mlflow server --app-name basic-auth` on it with proxied artifacts. It
is stopped with Ctrl-C (SIGINT) at the end, and the last test checks that it stopped both services.

* 16 client processes at once: every run recorded with its params and metrics, 16 distinct registry
  versions, each pointing at its own run (sqlite can hand out duplicate versions here).
* One real `python -m bilstm_exp tracking=server` run: recorded, artifacts through the HTTP proxy, the
  `champion` alias set and resolvable, no credential in its output, params, tags or artifacts.
* A user without permission on an experiment cannot write to it; the training CLI says so in one line.
* Two Optuna workers at once share one study in PostgreSQL (hparams_search=optuna_shared): no trial
  number twice, each trial one child run; one worker launches its jobs with hydra/launcher=submitit_local.
* `bilstm-exp server`'s bad input (no server needed): one line with a fix, exit 2, nothing half-made.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tests import team_server, warm
from tests.conftest import TINY, run_module

pytestmark = [pytest.mark.services, pytest.mark.slow]

ADMIN_ENV_KEYS = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    from bilstm_exp.team.common import ServerError
    from bilstm_exp.team.postgres import pg_bindir

    try:
        pg_bindir()
    except ServerError as error:
        if os.environ.get("CI"):
            raise  # .ci/run installs PostgreSQL: missing there is a failure
        pytest.skip(f"no PostgreSQL server programs here: {error}")
    state_dir = tmp_path_factory.mktemp("team") / "server"
    server = team_server.start(state_dir)
    saved = {key: os.environ.get(key) for key in ADMIN_ENV_KEYS}
    os.environ.update({k: v for k, v in server.env().items() if k in ADMIN_ENV_KEYS})  # this process is admin
    try:
        yield server
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
        team_server.stop(server)
        from bilstm_exp.team.server import stop_dir

        stop_dir(state_dir)  # in case the command was killed: nothing may outlive the tests


def admin_client(team) -> MlflowClient:
    return MlflowClient(team.tracking_uri)


def assert_no_secret(team, text: str, where: str) -> None:
    for secret in team.all_secrets():
        assert secret not in text, f"a secret of the team server appears in {where}"


# --------------------------------------------------------------------------- the server itself


def test_server_keeps_its_secrets_in_private_files(team):
    for name in ("credentials.env", "pgpass", "secrets.json", "auth.ini"):
        mode = stat.S_IMODE((team.state_dir / name).stat().st_mode)
        assert mode == 0o600, f"{name} has mode {oct(mode)}"
    printed = team.printed()
    assert team.tracking_uri in printed and str(team.state_dir / "credentials.env") in printed
    assert_no_secret(team, printed, "the output of `bilstm-exp server start`")
    assert_no_secret(team, (team.state_dir / "mlflow-server.log").read_text(errors="replace"), "the server log")
    # The database refuses a client without the password file, and accepts one with it.
    import sqlalchemy

    engine = sqlalchemy.create_engine(team.db_url("mlflow"))
    try:
        with pytest.raises(sqlalchemy.exc.OperationalError, match="password"):
            with engine.connect():
                pass
    finally:
        engine.dispose()
    # Basic auth: no credentials, no access.
    import requests

    url = f"{team.tracking_uri}/api/2.0/mlflow/experiments/search"
    assert requests.post(url, json={"max_results": 1}, timeout=30).status_code == 401
    assert requests.post(url, json={"max_results": 1}, auth=("admin", team.admin_password), timeout=30).ok


def client_run(tracking_uri: str, experiment_id: str, model_name: str, index: int, start) -> tuple[str, str]:
    """What one training client does on the server, minus the training: a run with params, 10 epochs of
    metrics, a model file through the artifact proxy and a registry version of it."""
    from mlflow.entities import Metric, Param

    client = MlflowClient(tracking_uri)
    start.wait()  # all 16 begin together
    run = client.create_run(experiment_id, run_name=f"client-{index}", tags={"worker": str(index)})
    run_id = run.info.run_id
    client.log_batch(run_id, params=[Param("worker", str(index)), Param("model.lstm_units", "8")],
                     metrics=[Metric(key, 0.5 + index / 100 + step / 1000, 0, step)
                              for step in range(10) for key in ("train/loss", "val/accuracy")])
    client.log_text(run_id, json.dumps({"weights": [index]}), "model/weights.json")
    version = client.create_model_version(model_name, source=f"{run.info.artifact_uri}/model", run_id=run_id)
    client.set_terminated(run_id, "FINISHED")
    return run_id, version.version


def test_sixteen_concurrent_runs_all_recorded_with_distinct_registry_versions(team):
    """16 clients at once (threads of this process, each its own client and HTTP connections)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    client = admin_client(team)
    name = f"concurrent-{uuid.uuid4().hex[:8]}"
    experiment_id = client.create_experiment(name)
    client.create_registered_model(name)
    start = threading.Barrier(16)
    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(client_run, team.tracking_uri, experiment_id, name, i, start) for i in range(16)]
        results = dict(future.result(timeout=240) for future in futures)
    runs = client.search_runs([experiment_id], max_results=100)
    assert len(runs) == 16 and {r.info.status for r in runs} == {"FINISHED"}
    assert sorted(int(r.data.params["worker"]) for r in runs) == list(range(16))
    for run in runs:
        history = client.get_metric_history(run.info.run_id, "val/accuracy")
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(10))
    versions = client.search_model_versions(f"name='{name}'")
    assert sorted(int(v.version) for v in versions) == list(range(1, 17)), "duplicate or missing versions"
    assert {v.run_id: v.version for v in versions} == results
    assert {r.info.run_id for r in runs} == set(results)


# --------------------------------------------------------------------------- the training CLI on it


@pytest.fixture(scope="module")
def cli_run(team, tmp_path_factory):
    """One real `python -m bilstm_exp tracking=server` run as the admin, credentials in the environment."""
    name = f"team-cli-{uuid.uuid4().hex[:8]}"
    cwd = tmp_path_factory.mktemp("team-cli")
    out = run_module(["model=basic", *TINY, "model.lstm_units=8", "profiling.latency_samples=0", "tracking=server",
                      f"tracking.experiment_name={name}", f"tracking.registered_model_name={name}"],
                     cwd=cwd, env=team.env())
    assert out.returncode == 0, f"exit {out.returncode}\n{out.stdout[-1500:]}\n{out.stderr[-3000:]}"
    return {"name": name, "out": out, "cwd": cwd}


def test_training_run_lands_with_proxied_artifacts_and_the_champion_alias(team, cli_run):
    import mlflow

    client = admin_client(team)
    name = cli_run["name"]
    experiment = client.get_experiment_by_name(name)
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["model.lstm_units"] == "8"
    assert 0 <= run.data.metrics["val/accuracy"] <= 1
    # Artifacts went over HTTP into the server's artifact folder, not into the client's working directory.
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    stored = team.state_dir / "artifacts" / experiment.experiment_id / run.info.run_id / "artifacts"
    assert (stored / "config.yaml").is_file()
    left = ("mlflow.db", "mlartifacts", "mlruns", "outputs/mlruns-offline")
    assert not [p for p in left if (cli_run["cwd"] / p).exists()]
    champion = client.get_model_version_by_alias(name, "champion")
    assert champion.run_id == run.info.run_id
    model_dir = Path(mlflow.artifacts.download_artifacts(f"models:/{name}@champion", tracking_uri=team.tracking_uri))
    assert (model_dir / "MLmodel").is_file()


def test_no_credential_in_output_record_or_artifacts(team, cli_run):
    client = admin_client(team)
    out = cli_run["out"]
    assert_no_secret(team, out.stdout + out.stderr, "the training command's output")
    (run,) = client.search_runs([client.get_experiment_by_name(cli_run["name"]).experiment_id])
    record = json.dumps({"params": run.data.params, "tags": run.data.tags})
    assert_no_secret(team, record, "the run's params or tags")
    words = ("password", "secret", "credential")
    secret_like = [k for k in {**run.data.params, **run.data.tags}
                   if any(word in k.lower() for word in words) or k.lower().endswith("token")]
    assert not secret_like
    stored = team.state_dir / "artifacts"
    for path in stored.rglob("*"):
        if path.is_file() and path.stat().st_size < 5_000_000:
            assert_no_secret(team, path.read_bytes().decode("utf-8", "replace"), f"artifact {path.name}")


# --------------------------------------------------------------------------- permissions


def test_user_without_permission_cannot_write_and_gets_one_clear_line(team, tmp_path):
    from bilstm_exp.team import server as team_module
    from bilstm_exp.team import users

    admin = admin_client(team)
    name = f"locked-{uuid.uuid4().hex[:8]}"
    experiment_id = admin.create_experiment(name)
    bob = f"bob-{uuid.uuid4().hex[:6]}"
    made = subprocess.run([sys.executable, "-m", "bilstm_exp.team.cli", "user", bob, "--dir", str(team.state_dir)],
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr[-2000:]
    credentials = team.state_dir / "users" / f"{bob}.env"
    assert str(credentials) in made.stdout and stat.S_IMODE(credentials.stat().st_mode) == 0o600
    bob_password = dict(line.split("=", 1) for line in credentials.read_text().split())["MLFLOW_TRACKING_PASSWORD"]
    assert bob_password not in made.stdout + made.stderr
    handle = team_module.attach(team.state_dir)  # admin calls on the running server

    saved = {k: os.environ.get(k) for k in ADMIN_ENV_KEYS}
    os.environ.update({"MLFLOW_TRACKING_USERNAME": bob, "MLFLOW_TRACKING_PASSWORD": bob_password})
    try:
        bob_client = MlflowClient(team.tracking_uri)
        assert bob_client.get_experiment(experiment_id).name == name  # default permission: READ
        with pytest.raises(MlflowException) as denied:
            bob_client.create_run(experiment_id)
        assert denied.value.get_http_status_code() == 403
        users.grant(handle, bob, experiment_id, "EDIT")
        run = bob_client.create_run(experiment_id)  # with EDIT he can
        bob_client.set_terminated(run.info.run_id)
    finally:
        os.environ.update({k: v for k, v in saved.items() if v is not None})

    other = admin.create_experiment(f"locked-cli-{uuid.uuid4().hex[:8]}")
    out = run_module(["model=basic", *TINY, "model.lstm_units=8", "profiling.latency_samples=0", "tracking=server",
                      f"tracking.experiment_name={admin.get_experiment(other).name}",
                      "tracking.register_model=false"], cwd=tmp_path, env=team.env(bob, bob_password), timeout=240)
    assert out.returncode != 0
    assert_no_secret(team, out.stdout + out.stderr, "the denied command's output")
    assert bob_password not in out.stdout + out.stderr
    assert not admin.search_runs([other]), "a denied user's run reached the experiment"
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    assert out.returncode == 2
    assert f"user {bob} may not write to experiment {other}" in out.stderr, out.stderr[-1500:]
    assert "EDIT permission" in out.stderr and "HTTP 403" in out.stderr


# --------------------------------------------------------------------------- distributed search


def test_two_optuna_workers_share_one_study_and_submitit_launches_jobs(team, tmp_path):
    import optuna

    from bilstm_exp.team.optuna_storage import optuna_storage

    client = admin_client(team)
    study = f"study-{uuid.uuid4().hex[:8]}"
    experiment_id = client.create_experiment(study)  # created once, before the workers fan out
    common = ["-m", "hparams_search=optuna_shared", "model=basic", *TINY, "model.lstm_units=8",
              "profiling.latency_samples=0", "tracking=server", f"tracking.experiment_name={study}",
              "tracking.register_model=false", f"hydra.sweeper.storage.url={team.db_url('optuna')}",
              f"hydra.sweeper.study_name={study}", "hydra.sweeper.n_trials=2"]
    workers = {
        "basic": [*common, f"hydra.sweep.dir={tmp_path / 'basic'}"],
        "submitit": [*common, "hydra/launcher=submitit_local", "hydra.sweeper.n_jobs=2",
                     "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={tmp_path / 'submitit'}"],
    }
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **team.env()}
    processes = {name: warm.popen("bilstm_exp", args, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE) for name, args in workers.items()}
    outputs = {name: process.communicate(timeout=400) for name, process in processes.items()}
    for name, process in processes.items():
        assert process.returncode == 0, f"{name} worker exit {process.returncode}: {outputs[name][0][-1500:]}\n" \
                                        f"{outputs[name][1][-3000:]}"
        assert_no_secret(team, "".join(outputs[name]), f"the {name} worker's output")

    os.environ["PGPASSFILE"] = str(team.pgpass)
    try:
        trials = optuna.load_study(study_name=study, storage=optuna_storage(team.db_url("optuna"))).trials
    finally:
        os.environ.pop("PGPASSFILE", None)
    assert sorted(t.number for t in trials) == [0, 1, 2, 3], "duplicate or missing trial numbers"
    assert {t.state.name for t in trials} == {"COMPLETE"}

    # One parent run per worker, grouped by the experiment (named after the study); one child per trial.
    runs = client.search_runs([experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("bilstm_exp.training.sweep") == "parent"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(parents) == 2 and {p.data.tags["hparams_search"] for p in parents} == {"optuna_shared"}
    assert {p.data.tags["launcher"] for p in parents} == {"BasicLauncher", "LocalLauncher"}  # submitit_local
    assert len(children) == 4 and {c.info.status for c in children} == {"FINISHED"}
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {p.info.run_id for p in parents}
    # Each trial is exactly one child run: its sampled value appears in that run's overrides.
    dropouts = sorted(float(c.data.params["model.dropout"]) for c in children)
    assert dropouts == pytest.approx(sorted(t.params["model.dropout"] for t in trials))
    # The submitit worker ran its two jobs through submitit's local executor.
    job_folders = [p for p in (tmp_path / "submitit" / ".submitit").iterdir() if p.name.isdigit()]  # %j = job id
    assert len(job_folders) == 2, job_folders
    hydra_yaml = next((tmp_path / "basic").rglob(".hydra/hydra.yaml")).read_text()
    assert team.db_url("optuna") in hydra_yaml
    assert_no_secret(team, hydra_yaml, "the sweep's hydra.yaml")


# --------------------------------------------------------------------------- the command's bad input (no server)


def test_server_command_bad_input_is_one_line_with_a_fix_and_exit_2(tmp_path):
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        bilstm_exp = [str(Path(sys.executable).parent / "bilstm-exp"), "server"]
        module = [sys.executable, "-m", "bilstm_exp.team.cli"]
        cases = [
            (bilstm_exp + ["start", "--port", str(port), "--dir", str(tmp_path / "a")],
             f"port {port} on 127.0.0.1 is in use"),
            (module + ["user", "--dir", str(tmp_path)], "`user` needs a name"),
            (module + ["user", "../escape", "--dir", str(tmp_path)], "is not a plain name"),
            (module + ["user", "alice", "--experiment", "3:OWN", "--dir", str(tmp_path)], "is not ID[:PERMISSION]"),
            (bilstm_exp + ["user", "alice", "--dir", str(tmp_path / "none")], "no team server state in"),
        ]
        for args, problem in cases:
            out = subprocess.run(args, capture_output=True, text=True, timeout=120)
            lines = out.stderr.strip().splitlines()
            assert (out.returncode, len(lines)) == (2, 1), f"{args[2:]}: exit {out.returncode}\n{out.stderr[-2000:]}"
            assert lines[0].startswith("bilstm-exp: error: ") and problem in lines[0] and "Fix:" in lines[0], lines[0]
    assert not (tmp_path / "a").exists() and not (tmp_path / "users").exists()  # nothing half-made
    stopped = subprocess.run(module + ["stop", "--dir", str(tmp_path / "none")], capture_output=True, text=True,
                             timeout=120)
    assert stopped.returncode == 0 and "nothing was running" in stopped.stdout, stopped.stderr[-2000:]


# --------------------------------------------------------------------------- shutdown (runs last)


def test_ctrl_c_stops_mlflow_and_postgres(team):
    from bilstm_exp.team.postgres import Postgres, pg_bindir
    from bilstm_exp.team.run_as import RunAs

    info = json.loads((team.state_dir / "server.json").read_text())
    assert team_server.stop(team) == 0, team.printed()[-2000:]
    said = team.printed().split("bilstm-exp server: stopping", 1)[-1]
    assert "MLflow server stopped" in said and "PostgreSQL stopped" in said, said  # each service, cleanly
    assert said.rstrip().endswith("bilstm-exp server: stopped"), said
    postgres = Postgres(Path(info["postgres_folder"]), team.db_port, RunAs.for_postgres(), pg_bindir())
    assert not postgres.running()
    assert json.loads((team.state_dir / "server.json").read_text())["mlflow_pid"] is None
    import requests

    with pytest.raises(requests.ConnectionError):  # nothing answers on the tracking port any more
        requests.get(f"{team.tracking_uri}/health", timeout=30)
