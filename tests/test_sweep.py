"""Hydra multiruns as MLflow parent and child runs: parallel workers, Optuna, failures, single runs,
a sweep stopped by SIGTERM and resumed.

Every test runs `python -m bilstm_exp -m ...` in a fresh folder, as a user would, and reads the
resulting ./mlflow.db with MlflowClient; the store is made beforehand (`migrated_store`) where how a sweep
creates it is not the point.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bilstm_exp.config.compose import compose
from bilstm_exp.config.schema import validate
from tests import warm
from tests.conftest import SUBPROCESS_S, TINY, migrated_store, run_module, tiny

ALL_METRICS = ["train/loss", "train/accuracy", "val/loss", "val/accuracy", "val/auc", "test/accuracy",
               "test/auc", "time/epoch_s", "throughput/train_tokens_per_s", "latency/predict_p50_ms",
               "model/params"]


def store(folder):
    """(client, parent runs, other runs) of the folder's default store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("bilstm-exp").experiment_id])
    parents = [r for r in runs if r.data.tags.get("bilstm_exp.training.sweep") == "parent"]
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
    migrated_store(tmp_path)
    tiny = [o for o in TINY if not o.startswith("model.embedding_dim")]
    result = run_module(["-m", "hparams_search=optuna", "hydra.sweeper.n_trials=3", *tiny,
                         "profiling.latency_samples=0"], tmp_path, timeout=600)
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
    # the registry: the sweep registers its best job only (the others say why they did not), one data set
    assert all("registry.skipped" in c.data.tags for c in children)
    [version] = client.search_model_versions("name='bilstm-sentiment'")
    assert version.run_id == best.info.run_id
    assert parent.data.tags["registry.version"] == f"bilstm-sentiment/{version.version}"
    assert len({c.data.tags["data.fingerprint"] for c in children}) == 1


JOURNAL = "hydra.sweeper.storage={_target_:bilstm_exp.team.optuna_storage.journal_storage,path:study.journal}"


@pytest.mark.slow
def test_a_two_objective_search_logs_its_pareto_front_on_the_parent(tmp_path):
    """hparams_search=optuna_pareto (val/loss against latency/predict_p50_ms), its study in an Optuna journal
    file, run twice as two workers would: the parent run's front table is the study's Pareto front, each
    row naming its trial's child run (none for a trial the other sweep ran) and that run's two metrics."""
    import optuna

    from bilstm_exp.team.optuna_storage import journal_storage

    tiny = [o for o in TINY if not o.startswith("model.embedding_dim")]
    migrated_store(tmp_path)
    for trials in (2, 1):  # the second sweep continues the study in the journal
        result = run_module(["-m", "hparams_search=optuna_pareto", f"hydra.sweeper.n_trials={trials}", JOURNAL,
                             *tiny], tmp_path, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "Pareto front of" in result.stdout
    study = optuna.load_study(study_name="bilstm-exp", storage=journal_storage(str(tmp_path / "study.journal")))
    assert sorted(t.number for t in study.trials) == [0, 1, 2]
    assert all(t.state.name == "COMPLETE" and len(t.values) == 2 for t in study.trials)

    client, parents, children = store(tmp_path)
    first, second = sorted(parents, key=lambda run: run.info.start_time)
    fronts = {}
    for parent, own_trials in ((first, {0, 1}), (second, {2})):
        assert json.loads(parent.data.tags["mlflow.loggedArtifacts"]) == [  # a table to MLflow (mlflow.load_table)
            {"path": "optuna/pareto_front.json", "type": "table"}]
        table = json.loads(Path(client.download_artifacts(parent.info.run_id, "optuna/pareto_front.json",
                                                           str(tmp_path))).read_text())
        rows = [dict(zip(table["columns"], values)) for values in table["data"]]
        fronts[parent.info.run_id] = {row["trial"] for row in rows}
        assert len([c for c in children if c.data.tags["mlflow.parentRunId"] == parent.info.run_id]) == len(own_trials)
        for row in rows:
            if row["trial"] not in own_trials:  # the other sweep's trial: its run is under the other parent
                assert row["run_id"] is None
                continue
            child = client.get_run(row["run_id"])
            assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
            for name in ("val/loss", "latency/predict_p50_ms"):
                assert row[name] == pytest.approx(child.data.metrics[name])
        on_front = {row["run_id"] for row in rows if row["run_id"]}
        assert set(parent.data.tags["pareto_front_run_ids"].split()) == on_front
        assert parent.data.tags["pareto_front"].startswith(f"{len(rows)} trials: #")
    # the second sweep's front is the whole study's: trials of both sweeps, none of them beaten on both objectives
    assert fronts[second.info.run_id] == {t.number for t in study.best_trials}
    values = {t.number: t.values for t in study.trials}
    for number in fronts[second.info.run_id]:
        assert not any(all(o <= v for o, v in zip(values[other], values[number])) and values[other] != values[number]
                       for other in values)


@pytest.mark.parametrize(("overrides", "problem"), [
    (["hparams_search=optuna_shared", "hydra.sweeper.storage.url=postgresql://bilstm:s3cret@127.0.0.1:1/optuna"],
     "the Optuna storage URL carries a password"),
    (["hparams_search=optuna_pareto", "hydra.sweeper.objectives=[val/loss]"],
     "hydra.sweeper.objectives names 1 metrics for 2 directions"),
    (["hparams_search=optuna", "hydra.sweeper.direction=minimise"], "hydra.sweeper.direction: 'minimise' is not"),
    pytest.param(["hparams_search=optuna", "hydra.sweeper.storage=sqlite:///nodir/optuna.db"],
                 "cannot open the Optuna storage sqlite:///nodir/optuna.db",
                 marks=pytest.mark.slow),  # found by opening it: after the store and the parent run (5 s)
])
def test_bad_optuna_settings_stop_the_sweep_in_one_line_before_any_trial(tmp_path, overrides, problem):
    """What the settings alone show wrong stops the sweep before its store and parent run exist; a storage
    that fails to open stops it before any trial, its parent run FAILED."""
    result = run_module(["-m", *overrides], tmp_path, timeout=300)
    assert result.returncode == 2
    assert f"bilstm-exp: error: {problem}" in result.stderr and "Fix: " in result.stderr
    assert "Traceback" not in result.stderr
    assert "s3cret" not in result.stdout + result.stderr
    assert not list(tmp_path.rglob("*.journal")) and not list(tmp_path.glob("outputs/multirun/*/*/0"))
    if "cannot open" in problem:
        _, parents, children = store(tmp_path)
        assert [p.info.status for p in parents] == ["FAILED"] and children == []
    else:
        assert not (tmp_path / "mlflow.db").exists() and "parent run" not in result.stdout


@pytest.mark.slow  # subprocesses: `make test` runs it, not the inner loop
def test_a_failing_job_ends_the_parent_failed_not_running(tmp_path):
    """stacked has no lstm_units: the first job stops the sweep; the parent must not stay RUNNING."""
    migrated_store(tmp_path)
    result = run_module(["-m", "model=stacked,basic", *TINY, "model.lstm_units=8"], tmp_path, timeout=300)
    assert result.returncode != 0
    assert "model.lstm_units" in result.stderr
    _, parents, children = store(tmp_path)
    assert len(parents) == 1 and parents[0].info.status == "FAILED"
    assert children == []


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


# --------------------------------------------------------------------------- a sweep stopped and resumed

RESUME_SWEEP = ["-m", *tiny("basic", "training.epochs=2", "training.early_stopping.enabled=false"), "seed=1,2"]


@dataclass
class ResumedSweep:
    """A 2-job sweep SIGTERM'd while job 1 trained (after its first epoch was logged), then rerun
    with training.resume=true in the same folder."""

    folder: Path
    first_code: int
    first_stdout: str
    first_stderr: str
    before: dict[str, Any]  # job number -> its child run when the first attempt ended
    first_parent: Any
    checkpointed: bool  # job 1's checkpoint existed when the first attempt ended
    second: subprocess.CompletedProcess

    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(f"sqlite:///{self.folder / 'mlflow.db'}")


def jobs(client, parent_id: str) -> dict[str, Any]:
    runs = client.search_runs([client.get_experiment_by_name("bilstm-exp").experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    return {run.data.tags["sweep_job"]: run for run in runs}


@pytest.fixture(scope="module")
def resumed_sweep(tmp_path_factory) -> ResumedSweep:
    from mlflow.tracking import MlflowClient

    folder = tmp_path_factory.mktemp("sweep-resume")
    migrated_store(folder)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("MLFLOW_TRACKING_URI", None)
    out, err = folder / "first.out", folder / "first.err"
    with out.open("w") as stdout, err.open("w") as stderr:
        process = warm.popen("bilstm_exp", RESUME_SWEEP, cwd=folder, stdout=stdout, stderr=stderr, env=env)
        try:
            deadline, client, parent_id = time.monotonic() + 400, None, None
            # poll the store until job 0 FINISHED and job 1 logged its first epoch (and checkpointed it: a
            # signal is not held back between the two while TensorFlow's threads run, see the report)
            while True:
                assert process.poll() is None, f"the sweep ended before it was stopped:\n{err.read_text()[-3000:]}"
                assert time.monotonic() < deadline, "job 1 never logged an epoch"
                found = re.search(r"sweep parent run ([0-9a-f]{32})", out.read_text())
                if found and client is None:  # the store exists and is migrated: safe to open
                    client, parent_id = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}"), found.group(1)
                if client is not None:
                    children = jobs(client, parent_id)
                    if ("1" in children and children.get("0") and children["0"].info.status == "FINISHED"
                            and client.get_metric_history(children["1"].info.run_id, "train/loss")
                            and (folder / "checkpoints" / children["1"].info.run_id / "state.json").is_file()):
                        break
                time.sleep(0.2)
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=SUBPROCESS_S)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    before, first_parent = jobs(client, parent_id), client.get_run(parent_id)
    checkpointed = "1" in before and (folder / "checkpoints" / before["1"].info.run_id / "state.json").is_file()
    second = run_module([*RESUME_SWEEP, "training.resume=true"], folder, timeout=600)
    return ResumedSweep(folder, code, out.read_text(), err.read_text(), before, first_parent, checkpointed, second)


@pytest.mark.slow
def test_a_sigtermed_sweep_resumes_under_its_parent(resumed_sweep):
    """Finished jobs are skipped, the interrupted one continues in its own run, all under one parent."""
    sweep = resumed_sweep
    # the first attempt: stopped honestly, with the counts right
    assert sweep.first_code == 143, sweep.first_stderr[-3000:]
    assert sweep.first_parent.info.status == "KILLED"  # stopped by SIGTERM, as any run it stops
    assert sweep.first_parent.data.tags["failure_reason"] == "terminated"
    assert sweep.before["0"].info.status == "FINISHED" and sweep.before["1"].info.status == "KILLED"
    assert "1 of 2 jobs failed" in sweep.first_stderr
    killed = sweep.before["1"].info.run_id
    assert sweep.checkpointed

    result = sweep.second
    assert result.returncode == 0, result.stderr[-3000:]
    client = sweep.client()
    parents = [r for r in client.search_runs([sweep.first_parent.info.experiment_id])
               if r.data.tags.get("bilstm_exp.training.sweep") == "parent"]
    assert [p.info.run_id for p in parents] == [sweep.first_parent.info.run_id]  # reopened, not a new one
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep.resumed"] == "1"
    assert parent.data.metrics["sweep/jobs_finished"] == 2 and parent.data.metrics["sweep/jobs_failed"] == 0
    after = jobs(client, parent.info.run_id)
    assert set(after) == {"0", "1"}
    # job 0 was not trained again: the same run, ended at the same time
    assert after["0"].info.run_id == sweep.before["0"].info.run_id
    assert after["0"].info.end_time == sweep.before["0"].info.end_time
    assert f"job 0: finished in run {after['0'].info.run_id}, skipped" in result.stdout
    # job 1 continued in its own run: each epoch logged once, no resume flag in its record
    assert after["1"].info.run_id == killed and after["1"].info.status == "FINISHED"
    assert "resumed_from_epoch" in after["1"].data.tags and "failure_reason" not in after["1"].data.tags
    assert [m.step for m in client.get_metric_history(killed, "train/loss")] == [0, 1]
    assert "training.resume" not in after["1"].data.tags["hydra_overrides"]
    assert not (sweep.folder / "checkpoints" / killed).exists()
    # the printed table: both jobs, finished, with their seeds; nothing failed
    table = result.stdout[result.stdout.index("2 job(s)"):]
    for job, seed in (("0", "1"), ("1", "2")):
        assert re.search(rf"^\s+\*?{job}\s+FINISHED\s+seed={seed}\s+\d\.\d{{4}}$", table, re.M), table
    assert "2/2 jobs finished" in result.stdout and "jobs failed" not in result.stderr


@pytest.mark.slow
def test_a_sweep_prints_trial_k_of_k_with_elapsed_and_remaining_time(resumed_sweep):
    """The first attempt: job 0 trained, job 1 started (and was stopped while it trained)."""
    out = resumed_sweep.first_stdout + resumed_sweep.first_stderr
    assert "[bilstm-exp] trial 1/2: " in out
    assert re.search(r"\[bilstm-exp\] trial 2/2: .* elapsed, about .* left", out), out


@pytest.mark.slow
def test_a_two_job_sweep_is_one_parent_with_two_finished_children(resumed_sweep):
    """The resumed sweep's record reads as any finished sweep's: one parent, a child per job with its
    own overrides, the best job (lowest val/loss of its kept weights) on the parent."""
    client = resumed_sweep.client()
    experiment = client.get_experiment_by_name("bilstm-exp")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("bilstm_exp.training.sweep") == "parent"]
    assert len(parents) == 1
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2 == len(runs) - 1 and {c.info.status for c in children} == {"FINISHED"}
    assert sorted(c.data.params["seed"] for c in children) == ["1", "2"]
    for child in children:
        assert f"seed={child.data.params['seed']}" in child.data.tags["hydra_overrides"].split()
    assert parent.data.tags["sweeper"] == "BasicSweeper" and "seed=1,2" in parent.data.tags["sweep_overrides"]
    assert "training.resume" not in parent.data.tags["sweep_overrides"]
    best = min(children, key=lambda c: c.data.metrics["val/loss"])
    assert parent.data.tags["best_run_id"] == best.info.run_id
    assert parent.data.metrics["best/val/loss"] == pytest.approx(best.data.metrics["val/loss"])
    assert parent.data.params["best.seed"] == best.data.params["seed"]
    assert "best.training.epochs" not in parent.data.params  # not swept, so not a "best" choice
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "best")] == ["best/config.yaml"]
