"""tracking=server against a real `mlflow server` on a free localhost port (fixture `mlflow_server`).

A run lands in the server with its params, metrics, tags, artifacts and a registered model version;
a server that is down or a URI holding credentials stops the command before any training; credentials
from the environment never reach the run's record.
"""

from __future__ import annotations

import uuid
import zipfile
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import epoch_steps, run_module, tiny
from tests.servers import HOST, free_port

pytestmark = pytest.mark.slow

USERNAME = "bilstm-user-" + uuid.uuid4().hex[:6]
PASSWORD = "pw-" + uuid.uuid4().hex  # a value that can only come from the environment
STORE_FILES = ("mlflow.db", "mlruns", "mlartifacts", "outputs/mlruns-offline")


@pytest.fixture(scope="module")
def server_run(mlflow_server, tmp_path_factory):
    """One tiny CLI run (two epochs) tracked on the server, credentials in the environment."""
    name = "server-run-" + uuid.uuid4().hex[:8]
    cwd = tmp_path_factory.mktemp("server-run")
    out = run_module(tiny("basic", "tracking=server", f"tracking.tracking_uri={mlflow_server}",
                          f"tracking.experiment_name={name}", f"tracking.registered_model_name={name}",
                          "training.epochs=2", "training.early_stopping.enabled=false"), cwd=cwd,
                     env={"MLFLOW_TRACKING_USERNAME": USERNAME, "MLFLOW_TRACKING_PASSWORD": PASSWORD})
    assert out.returncode == 0, out.stderr[-3000:]
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return {"client": client, "run": runs[0], "name": name, "cwd": cwd, "out": out, "uri": mlflow_server}


def test_run_lands_in_the_server_with_its_record_and_a_model_version(server_run):
    client, run, name = server_run["client"], server_run["run"], server_run["name"]
    run_id = run.info.run_id
    assert run.info.status == "FINISHED"
    assert run.data.params["model.name"] == "basic"
    assert run.data.params["training.epochs"] == "2"
    assert run.data.params["tracking.tracking_uri"] == server_run["uri"]
    assert int(run.data.params["derived.vocab_size"]) > 2
    assert run.data.tags["architecture"] == "basic"
    assert "tracking=server" in run.data.tags["hydra_overrides"]
    assert len(run.data.tags["data_md5"]) == 32
    assert run.data.tags["mlflow.note.content"]
    for key in ("train/loss", "train/accuracy", "val/loss", "val/accuracy"):
        assert [m.step for m in client.get_metric_history(run_id, key)] == epoch_steps(key, 2), key
    assert 0 <= run.data.metrics["test/accuracy"] <= 1

    # Artifacts go through the server's artifact proxy, not into the client's working directory.
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    assert {"config.yaml", "overrides.yaml"} <= {a.path for a in client.list_artifacts(run_id)}
    config = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="config.yaml",
                                                      tracking_uri=server_run["uri"])).read_text()
    assert "lstm_units: 8" in config
    assert not [f for f in STORE_FILES if (server_run["cwd"] / f).exists()]

    versions = client.search_model_versions(f"name='{name}'")
    assert [(v.version, v.run_id) for v in versions] == [("1", run_id)]
    mlflow.set_tracking_uri(server_run["uri"])
    try:
        model = mlflow.pyfunc.load_model(f"models:/{name}/1")
    finally:
        mlflow.set_tracking_uri(None)
    out = model.predict(pd.DataFrame({"text": ["a fine film", "dull"]}))
    assert list(out.columns) == ["probability", "label"] and len(out) == 2


def _texts_in(folder: Path) -> list[tuple[str, str]]:
    """(name, text) of every file under FOLDER, zip members (the .keras model) included."""
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                found += [(f"{path}!{m}", archive.read(m).decode("latin-1")) for m in archive.namelist()]
        else:
            found.append((str(path), path.read_bytes().decode("latin-1")))
    return found


def test_environment_credentials_never_reach_the_record(server_run, tmp_path):
    client, run = server_run["client"], server_run["run"]
    record = [("run name", run.info.run_name), ("output", server_run["out"].stdout + server_run["out"].stderr)]
    record += [(f"param {k}", f"{k}={v}") for k, v in run.data.params.items()]
    record += [(f"tag {k}", f"{k}={v}") for k, v in run.data.tags.items()]
    record += [(f"metric {k}", k) for k in run.data.metrics]
    for version in client.search_model_versions(f"run_id='{run.info.run_id}'"):
        record += [(f"version tag {k}", f"{k}={v}") for k, v in version.tags.items()]
        record.append(("version description", version.description or ""))
    files = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, dst_path=str(tmp_path / "run"),
                                                tracking_uri=server_run["uri"])
    artifacts = _texts_in(Path(files))
    # MLflow 3 keeps a logged model outside the run's artifacts, with params and tags of its own.
    models = client.search_logged_models([run.info.experiment_id], f"source_run_id='{run.info.run_id}'")
    assert len(models) == 1
    for model in models:
        record += [(f"model param {k}", f"{k}={v}") for k, v in model.params.items()]
        record += [(f"model tag {k}", f"{k}={v}") for k, v in model.tags.items()]
        folder = mlflow.artifacts.download_artifacts(artifact_uri=model.artifact_location,
                                                     tracking_uri=server_run["uri"],
                                                     dst_path=str(tmp_path / model.model_id))
        artifacts += _texts_in(Path(folder))
    assert any(name.endswith("config.yaml") for name, _ in artifacts)
    assert any(name.endswith("MLmodel") for name, _ in artifacts)
    assert any(name.endswith("vocab.json") for name, _ in artifacts)
    assert [where for where, text in record + artifacts if PASSWORD in text] == []
    # The user name is no secret: MLflow records it on purpose as the run's owner, and nowhere else.
    assert {where for where, text in record + artifacts if USERNAME in text} <= {"tag mlflow.user",
                                                                                 "model tag mlflow.user"}


@pytest.mark.parametrize("source", ["config", "environment"])
def test_unreachable_server_fails_fast_naming_the_uri_before_training(tmp_path, source):
    uri = f"http://{HOST}:{free_port()}"  # nothing listens there
    overrides = tiny("basic", "tracking=server")
    env = {}
    if source == "config":
        overrides.append(f"tracking.tracking_uri={uri}")
    else:
        env["MLFLOW_TRACKING_URI"] = uri
    out = run_module(overrides, cwd=tmp_path, env=env)
    assert out.returncode != 0
    assert uri in out.stderr and "unreachable" in out.stderr, out.stderr[-2000:]
    assert "] epoch 1/" not in out.stdout + out.stderr  # no training started
    assert not [f for f in STORE_FILES if (tmp_path / f).exists()]  # no run, no fallback store


def test_tracking_uri_with_credentials_is_refused_without_echoing_them(tmp_path, mlflow_server, unique_name):
    secret = "s3cr3t-" + uuid.uuid4().hex[:8]
    uri = mlflow_server.replace("http://", f"http://bilstm-user:{secret}@")  # a live server behind it
    out = run_module(tiny("basic", "tracking=server", f"tracking.tracking_uri={uri}",
                          f"tracking.experiment_name={unique_name}"), cwd=tmp_path)
    assert out.returncode != 0
    assert "credentials" in out.stderr and "MLFLOW_TRACKING_PASSWORD" in out.stderr, out.stderr[-2000:]
    assert mlflow_server.split("//")[1] in out.stderr  # names the server, without the user info
    assert secret not in out.stdout + out.stderr
    assert MlflowClient(mlflow_server).get_experiment_by_name(unique_name) is None
    assert not [f for f in STORE_FILES if (tmp_path / f).exists()]
