"""Hydra multiruns as MLflow parent and child runs: parallel workers, Optuna, failures, single runs.

Every test runs `python -m bilstm_exp -m ...` in a fresh folder, as a user would, and reads the
resulting ./mlflow.db with MlflowClient. The 2x2 grid sweep and its comparison are in
test_compare.py.
"""

from __future__ import annotations

import pytest

from bilstm_exp.cli import compose
from bilstm_exp.config import validate
from tests.conftest import TINY, run_module

ALL_METRICS = ["train/loss", "train/accuracy", "val/loss", "val/accuracy", "val/auc", "test/accuracy",
               "test/auc", "time/epoch_s", "throughput/train_tokens_per_s", "latency/predict_p50_ms",
               "model/params"]


def store(folder):
    """(client, parent runs, other runs) of the folder's default store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("bilstm-exp").experiment_id])
    parents = [r for r in runs if r.data.tags.get("bilstm_exp.sweep") == "parent"]
    return client, parents, [r for r in runs if r not in parents]


@pytest.mark.slow
def test_parallel_sweep_with_two_workers_loses_no_run(tmp_path):
    """Four jobs on the joblib launcher (2 worker processes) into one fresh sqlite store; every job
    registers (tracking.sweep_registers=all), in parallel."""
    result = run_module(["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "tracking.sweep_registers=all",
                         "model=basic,unidirectional", "seed=1,2", *TINY, "model.lstm_units=8"], tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "database is locked" not in result.stdout + result.stderr
    client, parents, children = store(tmp_path)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.tags["launcher"] == "JoblibLauncher"
    # the workers are separate processes: they found the parent id in their environment
    assert len(children) == 4
    assert {c.data.tags.get("mlflow.parentRunId") for c in children} == {parents[0].info.run_id}
    assert {c.info.status for c in children} == {"FINISHED"}
    assert {(c.data.params["model.name"], c.data.params["seed"]) for c in children} == {
        (m, s) for m in ("basic", "unidirectional") for s in ("1", "2")}
    for child in children:
        missing = [m for m in ALL_METRICS if m not in child.data.metrics]
        assert not missing, f"{child.info.run_name} lacks {missing}"
    # the registry: one version per run, version numbers 1..4 without gaps or duplicates
    versions = client.search_model_versions("name = 'bilstm-sentiment'")
    assert sorted(int(v.version) for v in versions) == [1, 2, 3, 4]
    assert sorted(v.run_id for v in versions) == sorted(c.info.run_id for c in children)


@pytest.mark.slow
def test_optuna_search_three_trials_reports_the_best_on_the_parent(tmp_path):
    tiny = [o for o in TINY if not o.startswith("model.embedding_dim")]
    result = run_module(["-m", "hparams_search=optuna", "hydra.sweeper.n_trials=3", *tiny,
                         "profiling.latency_samples=0", "tracking.register_model=false"], tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    client, parents, children = store(tmp_path)
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["sweeper"] == "OptunaSweeper"
    assert parent.data.tags["hparams_search"] == "optuna"
    assert "interval" in parent.data.params["sweep.params.optimizer.learning_rate"]  # the search space
    assert len(children) == 3 and {c.info.status for c in children} == {"FINISHED"}
    trials = set()
    for child in children:  # each trial is a child run with its sampled values as overrides
        overrides = dict(o.split("=", 1) for o in child.data.tags["hydra_overrides"].split())
        for key in ("model.lstm_units", "model.embedding_dim", "model.dropout", "optimizer.learning_rate",
                    "clipping.threshold"):
            assert float(overrides[key]) == pytest.approx(float(child.data.params[key]))
        assert child.data.params["clipping.name"] == "global_norm"
        trials.add(child.data.tags["hydra_overrides"])
    assert len(trials) == 3
    # the best trial: the child with the lowest val/loss (training.monitor) of its kept weights, reported and logged
    scores = {c.info.run_id: c.data.metrics["val/loss"] for c in children}
    assert scores[parent.data.tags["best_run_id"]] == min(scores.values())
    assert parent.data.metrics["best/val/loss"] == pytest.approx(min(scores.values()))
    best = client.get_run(parent.data.tags["best_run_id"])
    assert parent.data.params["best.optimizer.learning_rate"] == dict(
        o.split("=", 1) for o in best.data.tags["hydra_overrides"].split())["optimizer.learning_rate"]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "best")}
    assert artifacts == {"best/config.yaml", "best/optimization_results.yaml"}
    assert "best val/loss=" in result.stdout


def test_a_failing_job_ends_the_parent_failed_not_running(tmp_path):
    """stacked has no lstm_units: the first job stops the sweep; the parent must not stay RUNNING."""
    result = run_module(["-m", "model=stacked,basic", *TINY, "model.lstm_units=8"], tmp_path, timeout=300)
    assert result.returncode != 0
    assert "model.lstm_units" in result.stderr
    _, parents, children = store(tmp_path)
    assert len(parents) == 1 and parents[0].info.status == "FAILED"
    assert children == []


@pytest.mark.slow
def test_single_run_is_not_a_sweep(tmp_path):
    result = run_module([*TINY, "model.lstm_units=8", "profiling.latency_samples=0"], tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    _, parents, runs = store(tmp_path)
    assert parents == [] and len(runs) == 1
    assert "mlflow.parentRunId" not in runs[0].data.tags and "sweep_job" not in runs[0].data.tags


def test_default_composition_is_unchanged_by_the_preset_groups():
    cfg = compose([])
    assert "experiment" not in cfg and "hparams_search" not in cfg
    config = validate(cfg)
    assert (config.model.name, config.clipping.name) == ("basic", "none")


@pytest.mark.parametrize("preset", ["compare_architectures", "clipping_study", "length_batch_study"])
def test_experiment_presets_compose_and_validate(preset):
    config = validate(compose([f"experiment={preset}"]))
    assert config.model.name == "basic"


def test_clipping_study_settings_are_valid_clipping_configs():
    cfg = compose(["experiment=clipping_study"])
    settings = cfg.experiment.clip_settings
    for name in settings:
        config = validate(compose(["experiment=clipping_study", f"experiment.clip={name}"]))
        assert config.clipping.name == settings[name].name
        assert config.optimizer.name == "sgd"
    names = {settings[name].name for name in settings}
    assert names == {"none", "norm", "value", "global_norm"}


def test_optuna_search_space_composes():
    config = validate(compose(["hparams_search=optuna"]))
    assert config.clipping.name == "global_norm"
