"""A nested search (hparams_search=optuna_nested): the best trial's config re-evaluated on a held-out part
of the data that the search never saw, reported on the sweep's parent run beside the selected value.

The test runs `python -m bilstm_exp -m ...` in a fresh folder as a user would, then checks what the runs
recorded: the parent's search/* metrics and tags, and the digests of every split each run logged as its
datasets, which pin the exact texts each run trained, validated and was tested on.
"""

from __future__ import annotations

import pytest

from bilstm_exp.config.compose import compose
from bilstm_exp.config.schema import validate
from tests.conftest import TINY, migrated_store, run_module

DATA = [o for o in TINY if o.startswith("data.")] + ["data.folds=2", "data.heldout_fraction=0.25"]  # 160 texts
SMALL = ["training.epochs=1", "training.batch_size=16", "model.kernel=keras", "model.lstm_units=8",
         "model.embedding_dim=8", "profiling.latency_samples=0"]


def recorded_splits(client, run_id: str) -> dict[str, str]:
    """context (training, validation, testing) -> the digest of the dataset the run logged for it."""
    from bilstm_exp.tracking.datasets import context_of

    return {context_of(entry): entry.dataset.digest for entry in client.get_run(run_id).inputs.dataset_inputs}


def texts_by_digest(overrides: list[str]) -> dict[str, set[str]]:
    """digest -> texts of every split the data config with ``overrides`` makes (each fold's, or the one split's)."""
    from bilstm_exp.data.prepare import prepare, prepare_folds
    from bilstm_exp.tracking.datasets import digest

    cfg = validate(compose(overrides)).data
    parts = prepare_folds(cfg) if cfg.folds else [prepare(cfg)]
    return {digest(part, split): set(part.texts[split]) for part in parts for split in ("train", "val", "test")}


@pytest.mark.slow
def test_a_nested_search_reports_a_heldout_estimate_on_texts_no_trial_saw(tmp_path):
    from mlflow.tracking import MlflowClient

    migrated_store(tmp_path)  # how a sweep creates its store: tests/test_sweep.py
    result = run_module(["-m", "hparams_search=optuna_nested", "hydra.sweeper.n_trials=2", *DATA, *SMALL],
                        tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("bilstm-exp").experiment_id])
    [parent] = [r for r in runs if r.data.tags.get("bilstm_exp.training.sweep") == "parent"]
    jobs = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    trials = [r for r in jobs if r.data.tags.get("cv.role") == "parent"]
    [heldout] = [r for r in jobs if r.data.params["data.heldout_as_test"] == "True"]
    assert len(trials) == 2 and parent.info.status == "FINISHED" and heldout.info.status == "FINISHED"

    # the parent: the selected trial's own CV value beside the held-out run's test metrics
    metrics, tags = parent.data.metrics, parent.data.tags
    assert tags["best_run_id"] in {t.info.run_id for t in trials}  # the held-out run is no candidate
    assert metrics["search/selected_value"] == pytest.approx(metrics["best/val/loss"])
    assert metrics["search/selected_value"] == pytest.approx(
        client.get_run(tags["best_run_id"]).data.metrics["cv/val/loss_mean"])
    for name in ("loss", "accuracy", "auc"):
        assert metrics[f"search/heldout_{name}"] == pytest.approx(heldout.data.metrics[f"test/{name}"])
    assert tags["search.heldout_run_id"] == heldout.info.run_id
    assert metrics["search/heldout_examples"] == 40
    assert "held-out 25% of the data (40 texts" in tags["search.heldout_data"]
    assert "its own 2-fold CV" in tags["search.selected_on"]
    # the held-out run trained the best trial's config (its sampled values) on one split, no folds
    best_overrides = client.get_run(tags["best_run_id"]).data.tags["hydra_overrides"].split()
    assert set(best_overrides) - {"data.folds=2"} <= set(heldout.data.tags["hydra_overrides"].split())

    # the texts: the digests every run recorded name its splits; no trial's fold holds a held-out text
    folds = texts_by_digest(DATA)
    final = texts_by_digest([*DATA, "data.folds=null", "data.heldout_as_test=true"])
    fold_runs = [r for r in runs if r.data.tags.get("cv.parent_run_id") in {t.info.run_id for t in trials}]
    assert len(fold_runs) == 4
    seen = set()
    for run in fold_runs:
        for digest in recorded_splits(client, run.info.run_id).values():
            seen |= folds[digest]  # a KeyError: a fold trained on other texts than the selection data's folds
    recorded = recorded_splits(client, heldout.info.run_id)
    held_out = final[recorded["testing"]]
    assert len(held_out) == 40 and not held_out & seen
    assert final[recorded["training"]] | final[recorded["validation"]] == seen  # trained on the selection data

    # the end summary prints both
    out = result.stdout
    assert "nested estimate: the best trial's config tested on 40 held-out texts no trial saw" in out
    assert f"accuracy         selected: {metrics['search/selected_accuracy']:.4f} (its own 2-fold CV), " \
           f"held out: {metrics['search/heldout_accuracy']:.4f}" in out
    assert "held-out run: the best trial's config" in out and "trial 3/2" not in out


def test_heldout_settings_that_cannot_work_are_refused_in_one_line():
    from bilstm_exp.errors import ConfigError

    for overrides, problem in ((["data.heldout_fraction=0.6"], "data.heldout_fraction: must be in [0, 0.5)"),
                               (["data.heldout_as_test=true"], "data.heldout_as_test: needs a held-out part"),
                               (["data.heldout_fraction=0.2", "data.heldout_as_test=true", "data.folds=3"],
                                "data.heldout_as_test: tests on the held-out part once, but data.folds=3")):
        with pytest.raises(ConfigError, match=problem.replace("[", r"\[").replace(")", r"\)")):
            validate(compose(overrides))


def test_the_heldout_part_is_one_set_whatever_the_folds_and_no_split_of_a_trial_holds_it():
    """The same texts are held out for a 2-fold, a 3-fold and a one-split trial; none of their splits holds
    one, and the held-out run tests on exactly them while training and validating on everything else."""
    base = [o for o in TINY if o.startswith("data.")] + ["data.heldout_fraction=0.25"]
    final = texts_by_digest([*base, "data.heldout_as_test=true"])
    [held_out] = [texts for digest, texts in final.items() if len(texts) == 40]
    everything = set().union(*final.values())
    assert len(everything) == 160
    for trial in (["data.folds=2"], ["data.folds=3"], ["data.val_fraction=0.2"]):
        seen = set().union(*texts_by_digest([*base, *trial]).values())
        assert seen == everything - held_out
