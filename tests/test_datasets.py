"""What a run's record says about its data and its machine in MLflow's own terms: the three splits as
dataset inputs (name, digest, source, schema, profile), the logged model's metrics with the dataset
each was computed on, the champion's same-data rule on the dataset digests, and MLflow's system metrics."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from bilstm_exp.config.compose import compose
from bilstm_exp.config.data_schema import FileDataConfig
from bilstm_exp.config.schema import validate
from bilstm_exp.data.prepare import prepare, prepare_folds
from bilstm_exp.tracking import datasets
from bilstm_exp.tracking import model_registry as registry
from bilstm_exp.tracking.system_metrics import sampling
from bilstm_exp.training import runner as training
from tests.conftest import migrated_store, tiny

SYSTEM = ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes")


@pytest.fixture
def default_run(trained):
    """The session's basic run (`trained`): default data and tracking, registered, system metrics sampled every
    second."""
    client = trained.client()
    return trained.basic, client, client.get_run(trained.basic.run_id)


@pytest.mark.slow
def test_a_default_run_records_its_three_splits_as_datasets_with_digest_source_schema_and_profile(default_run):
    result, _, run = default_run
    by_context = {datasets.context_of(d): d.dataset for d in run.inputs.dataset_inputs}
    assert set(by_context) == {"training", "validation", "testing"}
    for split, context in datasets.CONTEXTS.items():
        dataset = by_context[context]
        assert dataset.name == f"synthetic-{split}"
        assert dataset.digest == datasets.digest(result.prepared, split) and len(dataset.digest) == 32
        assert (dataset.source_type, json.loads(dataset.source)) == ("bilstm_exp", {"uri": "bilstm_exp:synthetic"})
        assert [c["name"] for c in json.loads(dataset.schema)["mlflow_colspec"]] == ["text", "label"]
        profile = json.loads(dataset.profile)
        assert profile["rows"] == len(result.prepared.labels[split]) == sum(profile["classes"].values())
        assert set(profile["classes"]) == set(result.prepared.class_names)
        assert 0 < profile["length_tokens"]["p50"] <= profile["length_tokens"]["max"]
    assert len({d.digest for d in by_context.values()}) == 3


@pytest.mark.slow
def test_a_default_run_starts_its_embedding_from_word2vec_trained_on_its_training_split_only(default_run):
    result, _, run = default_run
    texts = len(result.prepared.texts["train"])
    assert run.data.params["model.self_trained_vectors"] == "True"  # the default
    trained_on = f"the training split: {texts:,} texts, none of its val or test texts"
    assert run.data.tags["embedding.trained_on"] == trained_on
    assert run.data.metrics["embedding/self_trained_texts"] == texts
    assert 0 < run.data.metrics["embedding/self_trained_words"] <= len(result.prepared.vocab.words)


@pytest.mark.slow
def test_the_logged_models_metrics_name_the_dataset_they_were_computed_on(default_run):
    result, client, run = default_run
    [model] = client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id='{run.info.run_id}'")
    metrics = {m.key: m for m in model.metrics}
    digests = {split: datasets.digest(result.prepared, split) for split in ("val", "test")}
    for key in ("test/accuracy", "test/loss"):
        assert (metrics[key].dataset_name, metrics[key].dataset_digest) == ("synthetic-test", digests["test"])
        assert metrics[key].value == pytest.approx(run.data.metrics[key])
    assert (metrics["val/accuracy"].dataset_name, metrics["val/accuracy"].dataset_digest) == ("synthetic-val",
                                                                                              digests["val"])
    assert metrics["val/accuracy"].value == pytest.approx(run.data.metrics["val/accuracy"])  # the kept weights'
    assert metrics["model/params"].dataset_name is None
    assert [m.step for m in client.get_metric_history(run.info.run_id, "test/accuracy")] == [0]  # logged once
    version = client.get_model_version(*run.data.tags[registry.VERSION_TAG].split("/"))
    assert version.tags[registry.DIGESTS_TAG] == f"val:{digests['val']} test:{digests['test']}"


@pytest.mark.slow
def test_a_training_run_carries_mlflows_system_metrics(default_run):
    _, client, run = default_run
    assert set(SYSTEM) <= set(run.data.metrics), sorted(run.data.metrics)
    assert run.data.params["tracking.system_metrics"] == "True"
    assert all(m.value > 0 for m in client.get_metric_history(run.info.run_id, SYSTEM[1]))


def test_system_metrics_are_sampled_only_when_switched_on(tmp_path):
    uri = migrated_store(tmp_path)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    try:
        started = time.monotonic()
        with sampling(True, 0.2), mlflow.start_run() as on:
            assert poll(lambda: set(SYSTEM) <= set(client.get_run(on.info.run_id).data.metrics), deadline_s=120)
        waited = max(2.0, 3 * (time.monotonic() - started))
        with sampling(False, 0.2), mlflow.start_run() as off:
            assert not poll(lambda: any(k.startswith("system/") for k in client.get_run(off.info.run_id).data.metrics),
                            deadline_s=waited)
    finally:
        mlflow.set_tracking_uri(None)


def poll(condition, deadline_s: float) -> bool:
    """True as soon as ``condition()`` holds, False when the deadline passes first."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def test_cross_validation_folds_name_their_fold_in_the_dataset_name():
    cfg = validate(compose(tiny("basic", "data.folds=3"))).data
    folds = prepare_folds(cfg)
    names = [{d.dataset.name for d in datasets.inputs(cfg, fold)} for fold in folds]
    assert names[1] == {"synthetic-fold1-train", "synthetic-fold1-val", "synthetic-fold1-test"}
    assert len({d.dataset.digest for fold in folds for d in datasets.inputs(cfg, fold)}) == 9


def test_a_dvc_tracked_file_is_named_with_its_dvc_path_and_md5(tmp_path):
    raw = tmp_path / "data" / "raw"
    raw.mkdir(parents=True)
    (raw / "reviews.csv").write_text("text,label\n" + "".join(f"good film {i},pos\nbad film {i},neg\n"
                                                              for i in range(40)))
    dvc = [str(Path(sys.executable).with_name("dvc"))]
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*dvc, "add", "-q", "data/raw/reviews.csv"], cwd=tmp_path, check=True)
    md5 = next(line.split(":")[1].strip() for line in (raw / "reviews.csv.dvc").read_text().splitlines()
               if "md5" in line)
    cfg = FileDataConfig(path="data/raw/reviews.csv")
    kind, source = datasets.source(cfg, tmp_path)
    assert (kind, source) == ("local", {"uri": "data/raw/reviews.csv", "dvc_path": "data/raw/reviews.csv",
                                        "dvc_md5": md5})
    (raw / "reviews.csv.dvc").unlink()
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages:\n  prepare:\n    cmd: bilstm-exp prepare\n"
                                       "    deps:\n    - path: data/raw\n      md5: abc.dir\n")
    assert datasets.source(cfg, tmp_path)[1] == {"uri": "data/raw/reviews.csv", "dvc_path": "data/raw",
                                                 "dvc_md5": "abc.dir"}
    prepared = prepare(validate(compose(["data=file", f"data.path={raw / 'reviews.csv'}"])).data)
    assert datasets.dataset(cfg, prepared, "test", tmp_path).name == "reviews-test"


@pytest.mark.slow
def test_the_champion_compares_runs_on_their_evaluation_dataset_digests(default_run, tmp_path):
    """The same data.fingerprint tag on all three: the digests decide. Another split is incomparable; a
    champion recorded before datasets is compared by its tag."""
    result, _, _ = default_run
    uri = migrated_store(tmp_path)
    mlflow.set_tracking_uri(uri)
    cfg = validate(compose(tiny("basic"))).data
    other = prepare(validate(compose(tiny("basic", "data.split_seed=7"))).data)
    decisions = []
    try:
        for value, prepared in ((0.7, None), (0.8, result.prepared), (0.9, other), (0.95, result.prepared)):
            with mlflow.start_run() as run:
                mlflow.log_metric("val/accuracy", value)
                mlflow.set_tag(registry.FINGERPRINT_TAG, "one-data-set")
                if prepared is not None:  # the first run is recorded as before datasets
                    MlflowClient(uri).log_inputs(run.info.run_id, datasets.inputs(cfg, prepared))
                info = registry.log_model(training.serving.TextClassifier(),
                                          artifacts=result.classifier.save(tmp_path / f"model-{value}"),
                                          signature=None, input_example=None)
                version = registry.register(MlflowClient(uri), info.model_uri, "digest-test", run.info.run_id,
                                            {"val/accuracy": value}, "val/accuracy")
                decisions.append(MlflowClient(uri).get_model_version("digest-test", version.version).tags)
    finally:
        mlflow.set_tracking_uri(None)
    assert [d["champion.decision"] for d in decisions] == ["promoted", "promoted", "incomparable", "promoted"]
    assert "dataset digests" in decisions[2]["champion.reason"], decisions[2]["champion.reason"]
