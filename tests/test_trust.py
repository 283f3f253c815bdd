"""Trustworthy records: one selection criterion, comparable champions, separate seeds, cross-validation.

Real sqlite stores in temporary folders, real training of tiny models: the final val/* of a run are a
fresh evaluation of its registered model; the champion refuses runs on other data until promoted by
hand; smoke runs and sweep jobs do not register (a sweep registers its best job); a 3-fold run is one
parent with three fold children and the confidence intervals.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from bilstm_exp.config.compose import compose
from bilstm_exp.config.schema import validate
from bilstm_exp.tracking import model_registry as registry
from bilstm_exp.training import crossval
from bilstm_exp.training import runner as training
from tests.conftest import migrated_store, run_module, tiny

NAME = "bilstm-sentiment"


def train(folder, *overrides: str):
    args = tiny("basic", *overrides)
    return training.run(validate(compose(args)), root=folder, overrides=args)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One store (a copy of a migrated one: how a run creates its store is tested in test_first_hour.py),
    four runs: ``a`` (3 epochs without early stopping: version 1, the champion), ``b`` (another
    data.split_seed), ``c`` (more examples: data.num_samples), ``d`` (a smoke run)."""
    folder = tmp_path_factory.mktemp("trust")
    uri = migrated_store(folder)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        try:
            a = train(folder, "training.epochs=3", "training.early_stopping.enabled=false")
            b = train(folder, "data.split_seed=7")
            c = train(folder, "data.num_samples=200")
            d = train(folder, "data.max_samples=120")
        finally:
            if mlflow.active_run():
                mlflow.end_run()
            mlflow.set_tracking_uri(None)
    return SimpleNamespace(folder=folder, uri=uri, client=MlflowClient(uri), a=a, b=b, c=c, d=d)


def versions_by_run(client) -> dict:
    return {v.run_id: v for v in client.search_model_versions(f"name='{NAME}'")}


# --------------------------------------------------------------------------- one selection criterion


def test_defaults_follow_one_monitored_metric():
    config = validate(compose([]))
    assert (config.training.monitor, config.training.monitor_mode) == ("val/loss", "min")
    assert (config.tracking.champion_metric, config.tracking.champion_greater_is_better) == ("val/loss", False)
    config = validate(compose(["training.monitor=val/accuracy"]))
    assert (config.training.monitor_mode, config.tracking.champion_metric) == ("max", "val/accuracy")
    assert config.tracking.champion_greater_is_better is True
    assert (config.data.split_seed, config.data.folds, config.tracking.register_model) == (42, None, "auto")
    assert validate(compose(["tracking.register_model=false"])).tracking.register_model is False


def test_final_val_metrics_are_a_fresh_evaluation_of_the_registered_model(runs):
    from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

    run = runs.client.get_run(runs.a.run_id)
    version = versions_by_run(runs.client)[runs.a.run_id]
    assert str(version.version) == "1"
    mlflow.set_tracking_uri(runs.uri)
    try:
        model = mlflow.pyfunc.load_model(f"models:/{NAME}/{version.version}")
    finally:
        mlflow.set_tracking_uri(None)
    prepared = runs.a.prepared
    out = model.predict(prepared.texts["val"])
    y = prepared.labels["val"]
    positive = np.clip(out["probability"].to_numpy(), 1e-7, 1 - 1e-7)
    fresh = {"val/loss": log_loss(y, positive, labels=[0, 1]),
             "val/accuracy": accuracy_score(y, [prepared.class_names.index(label) for label in out["label"]]),
             "val/auc": roc_auc_score(y, positive)}
    for key, value in fresh.items():
        assert run.data.metrics[key] == pytest.approx(value, abs=1e-5), key  # the latest value: the model's
        assert float(version.tags[f"metric.{key}"]) == pytest.approx(value, abs=1e-5), key
    # the final values are one step past the last epoch, and belong to the best epoch's weights
    history = runs.client.get_metric_history(runs.a.run_id, "val/loss")
    epochs = sorted((m.step, m.value) for m in history)
    assert [step for step, _ in epochs] == [0, 1, 2, 3]
    per_epoch = [value for _, value in epochs[:3]]
    assert run.data.metrics["best/epoch"] == int(np.argmin(per_epoch))
    assert epochs[3][1] == pytest.approx(min(per_epoch), abs=1e-3)


# --------------------------------------------------------------------------- comparable runs only


def test_champion_refuses_runs_on_other_data_until_promoted_by_hand(runs):
    client = runs.client
    fingerprints = {key: client.get_run(getattr(runs, key).run_id).data.tags["data.fingerprint"] for key in "abc"}
    assert len(set(fingerprints.values())) == 3  # split seed and data size change what is evaluated
    versions = versions_by_run(client)
    for key in "bc":
        tags = versions[getattr(runs, key).run_id].tags
        assert tags["champion.decision"] == "incomparable", tags
        assert "other data" in tags["champion.reason"] and "bilstm-exp promote" in tags["champion.reason"]
        assert tags["data.fingerprint"] == fingerprints[key]
    assert client.get_model_version_by_alias(NAME, "champion").run_id == runs.a.run_id

    # by hand, with who and why recorded
    b_version = versions[runs.b.run_id].version
    reason = "split seed 7 is the new data"
    done = run_module(["promote", "--model", NAME, "--version", str(b_version), "--reason", reason], runs.folder,
                      module="bilstm_exp.cli.main", env={"MLFLOW_TRACKING_USERNAME": "alice"}, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    champion = client.get_model_version_by_alias(NAME, "champion")
    assert champion.run_id == runs.b.run_id
    assert champion.tags["champion.promoted_by"] == "alice" and champion.tags["champion.promoted_at"]
    assert "split seed 7 is the new data" in champion.tags["champion.reason"]
    assert champion.tags["champion.previous_version"] == "1"

    for args, message in ((["--model", NAME, "--version", "99"], "no version 99"),
                          (["--model", "no-such-model", "--version", "1"], "no registered model 'no-such-model'")):
        refused = run_module(["promote", *args, "--reason", "x"], runs.folder, module="bilstm_exp.cli.main",
                             timeout=120)
        assert refused.returncode == 2 and message in refused.stderr and "Fix:" in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
    assert client.get_model_version_by_alias(NAME, "champion").run_id == runs.b.run_id


def test_smoke_runs_do_not_register_and_say_why(runs):
    assert runs.d.run_id not in versions_by_run(runs.client)
    reason = runs.client.get_run(runs.d.run_id).data.tags["registry.skipped"]
    assert "data.max_samples=120" in reason and "tracking.register_model=true" in reason
    assert registry.skip_reason(True, 120) is None  # asked for explicitly: it registers
    assert registry.skip_reason("auto", None) is None


def test_a_run_has_at_most_one_version(runs):
    before = len(runs.client.search_model_versions(f"name='{NAME}'"))
    again = registry.register(runs.client, runs.a.model_uri, NAME, runs.a.run_id, runs.a.metrics, "val/loss", False)
    assert str(again.version) == "1"
    assert len(runs.client.search_model_versions(f"name='{NAME}'")) == before


# --------------------------------------------------------------------------- separate seeds, repeated evaluation


def test_three_fold_cross_validation_is_one_parent_with_three_fold_children(cross_validated):
    """The session's 3-fold run (3 classes): its store holds nothing else."""
    from scipy import stats

    result = cross_validated.result
    client = cross_validated.client()
    runs = client.search_runs([client.get_experiment_by_name("bilstm-exp").experiment_id])
    [parent] = [r for r in runs if r.data.tags.get("cv.role") == "parent"]
    children = sorted((r for r in runs if r is not parent), key=lambda r: int(r.data.tags["fold"]))
    assert parent.info.run_id == result.run_id and parent.info.status == "FINISHED"
    assert [c.data.tags["fold"] for c in children] == ["0", "1", "2"]
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert {c.info.status for c in children} == {"FINISHED"}
    # one fold set: one fingerprint; each fold tests on its own examples
    assert {c.data.tags["data.fingerprint"] for c in children} == {parent.data.tags["data.fingerprint"]}
    assert len({c.data.tags["data.fold_fingerprint"] for c in children}) == 3
    assert sum(len(f.prepared.texts["test"]) for f in result.folds) == 160
    metrics = parent.data.metrics
    for key in ("test/accuracy", "test/loss", "val/loss"):
        values = [c.data.metrics[key] for c in children]
        std = np.std(values, ddof=1)
        assert metrics[f"cv/{key}_mean"] == pytest.approx(np.mean(values))
        assert metrics[f"cv/{key}_std"] == pytest.approx(std)
        assert metrics[f"cv/{key}_ci95"] == pytest.approx(stats.t.ppf(0.975, 2) * std / math.sqrt(3))
    assert metrics["cv/folds"] == 3
    assert result.objective("val/loss") == pytest.approx(metrics["cv/val/loss_mean"])
    assert client.search_model_versions(f"name='{NAME}'") == []  # folds estimate, they do not register
    # a fold records metrics and small reports, not a model nobody registers (tracking.fold_artifacts=small)
    assert [registry.logged_model_uri(client, c) for c in children] == [None] * 3
    assert all("reports" in {a.path for a in client.list_artifacts(c.info.run_id)} for c in children)
    assert {r.model_uri for r in result.folds} == {None}
    # nor does it time serving that model; it still times its training
    assert not [k for c in children for k in c.data.metrics if k.startswith(("latency/", "throughput/predict"))]
    assert all(c.data.metrics["time/train_s"] > 0 for c in children)


@pytest.mark.slow  # trains two folds
def test_folds_log_their_model_and_heatmap_when_asked(workdir):
    """tracking.fold_artifacts=full: each fold logs its model (still unregistered) and the attention heatmap."""
    crossval.run(validate(compose(tiny("attention", "data.folds=2", "tracking.fold_artifacts=full"))), root=workdir)
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("bilstm-exp").experiment_id])
    children = [r for r in runs if r.data.tags.get("cv.role") == "fold"]
    assert len(children) == 2 and all(registry.logged_model_uri(client, c) for c in children)
    assert all({"latency/predict_p50_ms", "throughput/predict_samples_per_s"} <= set(c.data.metrics) for c in children)
    assert all("attention" in {a.path for a in client.list_artifacts(c.info.run_id)} for c in children)
    assert client.search_model_versions(f"name='{NAME}'") == []


def test_runs_differing_only_in_seed_share_a_config_group():
    """`-m seed=1,2,3` repeats one configuration: one `config.group` tag, which compare groups by;
    another learning rate is another group."""
    from bilstm_exp.training.recording import config_group

    variants = (["seed=1"], ["seed=2", "data.split_seed=7", "tracking.experiment_name=other"],
                ["optimizer.learning_rate=0.01"])
    groups = [config_group(validate(compose(tiny("basic", *extra)))) for extra in variants]
    assert groups[0] == groups[1] != groups[2]
