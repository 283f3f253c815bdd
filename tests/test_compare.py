"""`bilstm-exp compare` on a real 2x2 sweep: the grouping, the ranking, the files, the errors.

One Hydra multirun (python -m bilstm_exp -m ...) trains four tiny models into ./mlflow.db of a
temporary folder; the tests then check the store and run `bilstm-exp compare` on it.
"""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest

from tests.conftest import TINY, run_module

SWEEP = ["model=basic,unidirectional", "clipping=none,norm", *TINY, "model.lstm_units=8",
         "profiling.latency_samples=3"]


def compare(cwd, *args: str) -> subprocess.CompletedProcess:
    return run_module(["compare", *args], cwd, module="bilstm_exp.cli", timeout=120)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """(folder, client, parent run, children) of one finished 2x2 sweep."""
    from mlflow.tracking import MlflowClient

    folder = tmp_path_factory.mktemp("sweep")
    result = run_module(["-m", *SWEEP], folder, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("bilstm-exp")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("bilstm_exp.sweep") == "parent"]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    yield folder, client, parents[0], children


def best_val_accuracy(client, run) -> float:
    return max(m.value for m in client.get_metric_history(run.info.run_id, "val/accuracy"))


@pytest.mark.slow
def test_sweep_is_one_parent_with_four_finished_children(sweep):
    folder, client, parent, children = sweep
    assert parent.info.status == "FINISHED"
    assert len(children) == 4
    assert {c.info.status for c in children} == {"FINISHED"}
    combos = {(c.data.params["model.name"], c.data.params["clipping.name"]) for c in children}
    assert combos == {(m, k) for m in ("basic", "unidirectional") for k in ("none", "norm")}
    for child in children:  # each child carries its own job's overrides
        overrides = child.data.tags["hydra_overrides"].split()
        assert f"model={child.data.params['model.name']}" in overrides
        assert f"clipping={child.data.params['clipping.name']}" in overrides
    assert parent.data.tags["sweeper"] == "BasicSweeper"
    assert "model=basic,unidirectional" in parent.data.tags["sweep_overrides"]
    # the best job, logged on the parent: its run id, value, swept choices and config
    best = max(children, key=lambda c: best_val_accuracy(client, c))
    top = max(best_val_accuracy(client, c) for c in children)
    best_ids = {c.info.run_id for c in children if best_val_accuracy(client, c) == top}
    assert parent.data.tags["best_run_id"] in best_ids
    assert parent.data.metrics["best/val/accuracy"] == pytest.approx(top)
    chosen = client.get_run(parent.data.tags["best_run_id"])
    assert parent.data.params["best.model"] == chosen.data.params["model.name"]
    assert parent.data.params["best.clipping"] == chosen.data.params["clipping.name"]
    assert "best.training.epochs" not in parent.data.params  # not swept, so not a "best" choice
    assert best.info.run_id in {c.info.run_id for c in children}
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "best")] == ["best/config.yaml"]


@pytest.mark.slow
def test_compare_ranks_the_sweep_and_writes_its_report(sweep):
    folder, client, parent, children = sweep
    result = compare(folder, "--parent", parent.info.run_id, "--output", "report")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Pareto front" in result.stdout
    report = folder / "report"
    for name in ("compare.png", "compare.md", "compare.csv"):
        assert (report / name).stat().st_size > 0
    assert (report / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader((report / "compare.csv").open()))
    assert len(rows) == 4
    by_id = {c.info.run_id: c for c in children}
    scores = []
    for row in rows:  # every row's numbers are its run's own metrics
        run = by_id[row["run_ids"]]
        assert float(row["score_mean"]) == pytest.approx(best_val_accuracy(client, run))
        assert float(row["test_acc_mean"]) == pytest.approx(run.data.metrics["test/accuracy"])
        assert float(row["params_mean"]) == run.data.metrics["model/params"]
        assert row["architecture"] == run.data.tags["architecture"]
        scores.append(float(row["score_mean"]))
    assert scores == sorted(scores, reverse=True)  # ranked best first
    # the Pareto front: no row beats a front row on both accuracy and epoch time
    points = [(float(r["score_mean"]), float(r["epoch_s_mean"]), r["pareto"] == "1") for r in rows]
    for score, seconds, front in points:
        dominated = any(s >= score and t <= seconds and (s > score or t < seconds) for s, t, _ in points)
        assert front == (not dominated)
    assert points[0][2]  # the most accurate (fastest among ties) is always on the front
    markdown = (report / "compare.md").read_text()
    assert "![accuracy vs epoch time" in markdown and markdown.count("\n| ") >= 5
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "compare")}
    assert logged == {"compare/compare.png", "compare/compare.md", "compare/compare.csv"}


@pytest.mark.slow
def test_compare_whole_experiment_by_another_metric(sweep):
    folder, client, parent, children = sweep
    result = compare(folder, "--metric", "test/accuracy", "--output", "all")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = list(csv.DictReader((folder / "all" / "compare.csv").open()))
    assert sum(int(r["n"]) for r in rows) == 4  # the sweep's parent is not a row
    assert "test/accuracy (best)" in result.stdout
    scores = [float(r["score_mean"]) for r in rows]
    assert scores == sorted(scores, reverse=True)


def test_compare_repeated_seeds_become_one_row_with_mean_and_spread(tmp_path):
    """Runs that differ only in `seed` are one row (n=2, mean, standard deviation)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("seeds")
    runs = [("basic", 1, 0.80, 2.0), ("basic", 2, 0.90, 4.0), ("attention", 1, 0.70, 1.0)]
    for arch, seed, accuracy, seconds in runs:
        run = client.create_run(experiment, tags={"architecture": arch})
        for key, value in {"model.name": arch, "seed": seed, "optimizer.name": "adam"}.items():
            client.log_param(run.info.run_id, key, value)
        client.log_metric(run.info.run_id, "val/accuracy", accuracy - 0.1, step=0)
        client.log_metric(run.info.run_id, "val/accuracy", accuracy, step=1)
        client.log_metric(run.info.run_id, "time/epoch_s", seconds, step=0)
        client.set_terminated(run.info.run_id, "FINISHED")
    result = compare(tmp_path, "--experiment", "seeds", "--output", "out")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = list(csv.DictReader((tmp_path / "out" / "compare.csv").open()))
    assert [(r["architecture"], r["n"]) for r in rows] == [("basic", "2"), ("attention", "1")]
    assert float(rows[0]["score_mean"]) == pytest.approx(0.85)
    assert float(rows[0]["score_std"]) == pytest.approx(0.0707, abs=1e-3)
    assert float(rows[0]["epoch_s_mean"]) == pytest.approx(3.0)
    assert [r["pareto"] for r in rows] == ["1", "1"]  # more accurate vs faster: both on the front
    assert "0.85 ± 0.071" in result.stdout


@pytest.mark.slow
def test_compare_does_not_import_tensorflow(sweep):
    folder, _, parent, _ = sweep
    code = ("import sys\nfrom bilstm_exp.cli import main\n"
            f"main(['compare', '--parent', '{parent.info.run_id}', '--output', 'quick'])\n"
            "print('TF_LOADED' if 'tensorflow' in sys.modules or 'keras' in sys.modules else 'TF_ABSENT')\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=folder, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("TF_ABSENT")


@pytest.mark.slow
def test_compare_errors_name_the_problem_and_the_fix(sweep):
    folder, _, parent, children = sweep
    result = compare(folder, "--experiment", "no-such-experiment")
    assert result.returncode != 0
    assert "experiment 'no-such-experiment' not found" in result.stderr and "bilstm-exp" in result.stderr
    assert "Fix:" in result.stderr
    result = compare(folder, "--parent", "0123456789abcdef0123456789abcdef")
    assert result.returncode != 0 and "not found" in result.stderr and "Fix:" in result.stderr
    result = compare(folder, "--parent", children[0].info.run_id)  # a child is no sweep parent
    assert result.returncode != 0 and "has no child runs" in result.stderr
    result = compare(folder, "--metric", "val/nothing")
    assert result.returncode != 0 and "val/nothing" in result.stderr and "Fix:" in result.stderr
    assert "Traceback" not in result.stderr


def test_compare_without_a_store_says_where_to_run(tmp_path):
    result = compare(tmp_path)
    assert result.returncode != 0
    assert "mlflow.db" in result.stderr and "Fix:" in result.stderr
    assert not (tmp_path / "mlflow.db").exists()  # it did not create an empty store


def test_unknown_experiment_preset_lists_the_presets(tmp_path):
    result = run_module(["-m", "experiment=no_such_preset"], tmp_path, timeout=120)
    assert result.returncode != 0
    assert "experiment/no_such_preset" in result.stderr
    for name in ("compare_architectures", "clipping_study", "length_batch_study"):
        assert name in result.stderr
