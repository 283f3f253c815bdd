"""What every run records in MLflow, the champion alias, lifecycle states and the lineage plugin."""

from __future__ import annotations

import json
import subprocess

import keras
import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from bilstm_exp.config.compose import compose
from bilstm_exp.config.schema import validate
from bilstm_exp.tracking import lineage as context
from bilstm_exp.tracking import model_registry as registry
from bilstm_exp.tracking import store
from bilstm_exp.tracking.callback import MLflowLogger, metric_name
from bilstm_exp.tracking.session import Session
from bilstm_exp.training import runner as training
from tests.conftest import ROOT, epoch_steps, tiny

slow = pytest.mark.slow


def client_for(workdir) -> MlflowClient:
    return MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")


def artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def test_attention_run_records_params_tags_metrics_and_artifacts(trained):
    result = trained.attention
    client = trained.client()
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"

    params = run.data.params
    assert params["model.attention_units"] == "8" and params["model.name"] == "attention"
    assert params["training.epochs"] == "2" and params["optimizer.learning_rate"] == "0.001"
    assert int(params["derived.vocab_size"]) > 10 and int(params["derived.trainable_params"]) > 100
    assert int(params["derived.max_length"]) <= 48

    tags = run.data.tags
    assert tags["architecture"] == "attention"
    assert tags["hydra_overrides"] == " ".join(trained.attention_overrides)
    assert tags["data_md5"] == result.prepared.md5()
    assert "attention" in tags["mlflow.note.content"]

    for key in ("train/loss", "train/accuracy", "val/loss", "val/accuracy", "val/auc", "lr", "attention/entropy",
                "grad/global_norm_mean", "time/epoch_s"):
        assert [m.step for m in client.get_metric_history(result.run_id, key)] == epoch_steps(key, 2), key
    for key in ("test/loss", "test/accuracy", "test/auc"):
        assert 0 <= run.data.metrics[key] <= (1 if key != "test/loss" else 100)
    entropy = client.get_metric_history(result.run_id, "attention/entropy")[-1].value
    assert 0 < entropy <= np.log(48)  # nats over at most 48 tokens
    files = artifact_paths(client, result.run_id)
    assert {"config.yaml", "overrides.yaml", "reports/training_curves.png", "reports/confusion_matrix.png",
            "reports/classification_report.txt", "reports/vocab.json", "attention/attention.png",
            "attention/attention.json"} <= files
    heatmap = json.loads(open(client.download_artifacts(result.run_id, "attention/attention.json",
                                                        str(trained.folder / "downloads"))).read())
    assert len(heatmap) == 4
    for example in heatmap:
        assert len(example["tokens"]) == len(example["weights"])
        assert sum(example["weights"]) == pytest.approx(1.0, abs=1e-3)


def test_basic_run_has_no_attention_artifacts(trained):
    files = artifact_paths(trained.client(), trained.basic.run_id)
    assert "reports/confusion_matrix.png" in files and not any(f.startswith("attention/") for f in files)


def test_champion_moves_only_to_a_better_version(workdir, trained):
    """Three runs: better, worse, better. The alias and the version tags tell the story. Each logs the
    session's basic model (`trained`) as its artifacts."""
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = mlflow.set_experiment("registry-test")
    versions = []
    for value in (0.7, 0.6, 0.8):
        with mlflow.start_run(experiment_id=experiment.experiment_id) as run:
            mlflow.log_metric("val/accuracy", value)
            mlflow.set_tag("data.fingerprint", "one-data-set")  # comparable: evaluated on the same data
            info = registry.log_model(training.serving.TextClassifier(),
                                      artifacts=trained.basic.classifier.save(workdir / f"model-{value}"),
                                      signature=None, input_example=None)
            versions.append(registry.register(MlflowClient(), info.model_uri, "sentiment-test", run.info.run_id,
                                              {"val/accuracy": value}, "val/accuracy"))
    client = client_for(workdir)
    decisions = [client.get_model_version("sentiment-test", v.version).tags for v in versions]
    assert [d["champion.decision"] for d in decisions] == ["promoted", "kept", "promoted"]
    assert decisions[1]["champion.delta"] == "-0.1" and decisions[2]["champion.delta"] == "+0.1"
    assert decisions[2]["champion.previous_version"] == str(versions[0].version)
    assert decisions[0]["metric.val/accuracy"] == "0.7"
    assert str(client.get_model_version_by_alias("sentiment-test", "champion").version) == str(versions[2].version)
    assert all(d["run_id"] for d in decisions)


def test_every_run_registers_a_version_and_the_first_becomes_champion(trained):
    client = trained.client()
    versions = {v.run_id: v for v in client.search_model_versions("name='bilstm-sentiment'")}
    assert set(versions) == {trained.basic.run_id, trained.attention.run_id}
    first = versions[trained.basic.run_id]
    assert str(first.version) == "1" and first.tags["champion.decision"] == "promoted"
    assert versions[trained.attention.run_id].tags["champion.decision"] in ("promoted", "kept")
    champion = client.get_model_version_by_alias("bilstm-sentiment", "champion")
    mlflow.set_tracking_uri(trained.uri)
    try:
        loaded = mlflow.pyfunc.load_model("models:/bilstm-sentiment@champion")
    finally:
        mlflow.set_tracking_uri(None)
    out = loaded.predict(["great superb brilliant", "awful dull boring"])
    assert len(out) == 2 and set(out["label"]) <= {"negative", "positive"}
    assert champion.run_id in versions


@slow
def test_non_finite_loss_ends_failed_and_registers_nothing(workdir):
    config = validate(compose(tiny("basic", "optimizer=sgd", "optimizer.learning_rate=3e38", "training.epochs=3")))
    with pytest.raises(training.NonFiniteLoss):
        training.run(config, root=workdir)
    client = client_for(workdir)
    [run] = client.search_runs([client.get_experiment_by_name("bilstm-exp").experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.tags["failure_reason"] == "non_finite_loss"
    assert "NonFiniteLoss" in run.data.tags["error"]
    assert client.get_metric_history(run.info.run_id, "train/loss")  # the history up to the failure stays
    assert client.search_model_versions("name='bilstm-sentiment'") == []


def test_mlflow_logger_works_with_any_keras_fit(workdir):
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    mlflow.set_experiment("plain-keras")
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(inputs))
    model.compile("sgd", "binary_crossentropy", metrics=["accuracy"])
    x, y = np.random.default_rng(0).normal(size=(32, 4)), np.arange(32) % 2
    with mlflow.start_run() as run:
        model.fit(x, y, validation_split=0.25, epochs=3, verbose=0, callbacks=[MLflowLogger()])
    client = client_for(workdir)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [0, 1, 2]
    assert len(client.get_metric_history(run.info.run_id, "val/accuracy")) == 3
    assert client.get_metric_history(run.info.run_id, "lr")[0].value == pytest.approx(0.01)


def test_a_parent_run_ends_by_the_rule_of_every_run_failed_with_its_error_masked_or_killed(workdir):
    """A cross-validation or sweep parent (a session without the fluent API, its children being this
    process's runs) ends FAILED with its error masked, or KILLED when an interrupt was wrapped on the way."""
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    experiment = MlflowClient(uri).create_experiment("parents")
    with pytest.raises(RuntimeError, match="could not reach"):
        with Session.start(experiment, run_name="cv-parent", fluent=False) as failed:
            raise RuntimeError("could not reach http://alice:s3cret@db.example:5000/api")
    with pytest.raises(KeyboardInterrupt):
        with Session.start(experiment, run_name="sweep-parent", fluent=False) as killed:
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt as interrupt:
                raise RuntimeError("a library's wrapper") from interrupt
    client = client_for(workdir)
    failed_run, killed_run = client.get_run(failed.run_id), client.get_run(killed.run_id)
    assert failed_run.info.status == "FAILED" and failed_run.data.tags["failure_reason"] == "exception"
    assert "db.example" in failed_run.data.tags["error"] and "s3cret" not in failed_run.data.tags["error"]
    assert killed_run.info.status == "KILLED" and killed_run.data.tags["failure_reason"] == "interrupted"
    assert mlflow.active_run() is None  # a parent is never MLflow's active run: its children are


def test_metric_names_are_stable():
    assert [metric_name(k) for k in ("loss", "val_auc", "grad_norm_max", "grad_clip_fraction",
                                              "time/epoch_s")] == [
        "train/loss", "val/auc", "grad/global_norm_max", "grad/clip_fraction", "time/epoch_s"]


def test_long_params_follow_one_rule_and_secrets_are_dropped(workdir):
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    mlflow.set_experiment("params")
    with Session.start(mlflow.get_experiment_by_name("params").experiment_id) as session:
        session.log_params({"data.path": "x" * 400, "tracking.tracking_uri": "http://u:hunter2@host:5000",
                            "db_password": "hunter2", "model.lstm_units": 64})
        run = mlflow.active_run()
    params = client_for(workdir).get_run(run.info.run_id).data.params
    assert len(params["data.path"]) == 250 and params["data.path"].endswith("...[cut]")
    assert params["model.lstm_units"] == "64"
    assert "hunter2" not in json.dumps(params)


def test_redact_removes_credentials():
    assert store.redact("http://alice:s3cret@mlflow.example:5000/x?token=abc&a=1") == \
        "http://mlflow.example:5000/x?token=%2A%2A%2A&a=1"
    assert store.redact("sqlite:///mlflow.db") == "sqlite:///mlflow.db"


def test_lineage_tags_come_from_the_run_context_provider(tmp_path, monkeypatch):
    """Any mlflow.start_run inside a bilstm-exp checkout gets git lineage tags (entry-point plugin)."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    subprocess.run([*git, "add", "pyproject.toml"], cwd=project, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=project, check=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True).stdout.strip()
    monkeypatch.chdir(project)
    monkeypatch.setenv("DVC_STAGE", "train")
    context.project_root.cache_clear()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        with mlflow.start_run(experiment_id=mlflow.set_experiment("lineage").experiment_id) as run:
            pass
        tags = MlflowClient().get_run(run.info.run_id).data.tags
        assert tags["git_commit"] == commit and tags["git_dirty"] == "false" and tags["dvc_stage"] == "train"
        (project / "pyproject.toml").write_text("changed")
        assert context.lineage_tags(project)["git_dirty"] == "true"
        monkeypatch.chdir(tmp_path)
        assert not context.LineageContextProvider().in_context()
    finally:
        mlflow.set_tracking_uri(None)
