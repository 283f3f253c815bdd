"""Full tiny runs: each architecture leaves a FINISHED MLflow run with params, metrics and a model.
(Bad command-line input: tests/test_bad_input.py.)"""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from bilstm_exp.config.compose import compose
from bilstm_exp.config.schema import validate
from bilstm_exp.training import runner as training
from tests.conftest import epoch_steps, run_module, tiny

pytestmark = pytest.mark.slow

PER_EPOCH = ["train/loss", "train/accuracy", "val/loss", "val/accuracy"]


@pytest.mark.parametrize("architecture", ["stacked", "unidirectional"])  # basic, attention: the `trained` fixture
def test_full_tiny_run_is_recorded(workdir, architecture):
    config = validate(compose(tiny(architecture, "training.epochs=2", "training.early_stopping.enabled=false")))
    result = training.run(config, root=workdir, overrides=[f"model={architecture}"])

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "bilstm-exp"
    assert run.data.tags["architecture"] == architecture
    assert run.data.params["model.name"] == architecture
    assert run.data.params["training.epochs"] == "2"
    assert run.data.params["optimizer.learning_rate"] == "0.001"
    for key in PER_EPOCH:
        history = client.get_metric_history(result.run_id, key)
        assert [m.step for m in history] == epoch_steps(key, 2), key
    for key in ("test/loss", "test/accuracy", "test/auc"):
        assert 0 <= run.data.metrics[key] <= (1 if key != "test/loss" else 100)
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"config.yaml", "overrides.yaml"} <= artifacts

    versions = client.search_model_versions("name='bilstm-sentiment'")
    assert [v.run_id for v in versions] == [result.run_id]
    model = mlflow.pyfunc.load_model(f"models:/bilstm-sentiment/{versions[0].version}")
    out = model.predict(pd.DataFrame({"text": ["great superb film", "awful dull"]}))
    assert list(out.columns) == ["probability", "label"] and len(out) == 2
    assert set(out["label"]) <= {"negative", "positive"}


def test_multiclass_run_reports_macro_f1(cross_validated):
    """The session's 3-class cross-validation: each fold is a training run of its own."""
    for result in cross_validated.result.folds:
        assert "test/macro_f1" in result.metrics and "test/auc" not in result.metrics
    assert "cv/test/macro_f1_mean" in cross_validated.result.metrics
    assert "cv/test/auc_mean" not in cross_validated.result.metrics
    assert cross_validated.client().search_registered_models() == []


def test_default_data_is_learned_well_above_chance(workdir):
    """Two epochs on the default synthetic data (smaller sample) beat chance clearly. Keras's kernel:
    the same function as the default fast kernel (tests/test_fast_lstm.py), without its XLA compile for
    each of the eight buckets' batch shapes (17 of this run's 30 seconds)."""
    config = validate(compose(["data.num_samples=800", "training.epochs=2", "profiling.latency_samples=0",
                               "tracking.register_model=false", "model.kernel=keras"]))
    result = training.run(config, root=workdir)
    assert result.metrics["test/accuracy"] >= 0.75


def test_cli_smoke_run_and_overrides_is_one_run_not_a_sweep(workdir):
    out = run_module(tiny("attention", "tracking.experiment_name=smoke", "training.batch_size=8"), cwd=workdir)
    assert out.returncode == 0, out.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.params["training.batch_size"] == "8"
    assert "model=attention" in runs[0].data.tags["hydra_overrides"]
    assert (workdir / "mlartifacts").is_dir()
    # a single run is not a sweep: no parent run anywhere in the store, no job tags
    assert len(client.search_runs([e.experiment_id for e in client.search_experiments()])) == 1
    assert "mlflow.parentRunId" not in runs[0].data.tags and "sweep_job" not in runs[0].data.tags
