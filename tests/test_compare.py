"""`bilstm-exp compare`: groups of repeated runs, one data set, K-fold runs, a verdict in words, output
that fits 120 columns and a readable plot.

Most tests write runs straight into a real sqlite MLflow store with MlflowClient: the params of a real
composed config, per-epoch metrics and the tags a training run sets (no training needed). One test
compares the session's real trained runs, in a subprocess that must not import TensorFlow.
"""

from __future__ import annotations

import csv
import functools
import itertools
import subprocess
import sys
import uuid

import pytest

from bilstm_exp.analysis import compare as compare_mod
from tests.conftest import SUBPROCESS_S, run_module

FP_A, FP_B = "a1" * 16, "b2" * 16  # two data fingerprints (md5 hex)


# --------------------------------------------------------------------------- a store of realistic runs


@functools.cache
def config_params(architecture: str) -> dict[str, str]:
    """The params a run of this architecture logs: the flattened composed config."""
    from bilstm_exp.config.compose import compose
    from bilstm_exp.config.plain import flatten, to_dict
    from bilstm_exp.config.schema import validate

    return {k: str(v) for k, v in flatten(to_dict(validate(compose([f"model={architecture}"])))).items()}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}")


@pytest.fixture
def experiment(client):
    """(name, id) of a fresh experiment in the module's store."""
    name = f"compare-{uuid.uuid4().hex[:8]}"
    return name, client.create_experiment(name)


def log_run(client, experiment_id: str, architecture: str = "basic", seed: int = 1, loss: float = 0.5,
            accuracy: float = 0.8, epoch_s: float = 2.0, fingerprint: str = FP_A, params: dict | None = None,
            tags: dict | None = None, status: str = "FINISHED", name: str | None = None, epochs: int = 4) -> str:
    """A finished run as training logs it: config params, per-epoch curves whose best epoch (the one
    before the last: early stopping) has val/loss ``loss``, the kept weights' val/* one step past the
    last epoch with best/epoch, test and cost metrics."""
    from mlflow.entities import Metric, Param, RunTag

    all_params = {**config_params(architecture), "seed": str(seed), **{k: str(v) for k, v in (params or {}).items()}}
    all_tags = {"architecture": architecture, "data_md5": "c3" * 16, "data.fingerprint": fingerprint,
                "hydra_overrides": f"model={architecture} seed={seed}", **(tags or {})}
    run = client.create_run(experiment_id, run_name=name or f"{architecture}-adam-clip_none", tags=all_tags)
    run_id = run.info.run_id
    curve = [loss + 0.3 / (epoch + 1) for epoch in range(epochs - 2)] + [loss, loss + 0.02]
    metrics = [Metric("val/loss", v, 0, step) for step, v in enumerate([*curve, loss])]
    metrics += [Metric("val/accuracy", accuracy - 0.05 * abs(epochs - 2 - step), 0, step) for step in range(epochs)]
    metrics += [Metric("val/accuracy", accuracy, 0, epochs)]
    metrics += [Metric("time/epoch_s", epoch_s * (1.5 if step == 0 else 1.0), 0, step) for step in range(epochs)]
    metrics += [Metric("throughput/train_tokens_per_s", 40_000 / epoch_s, 0, step) for step in range(epochs)]
    metrics += [Metric(key, value, 0, epochs) for key, value in {
        "best/epoch": epochs - 2, "test/accuracy": accuracy - 0.01, "latency/predict_p50_ms": 3.21,
        "model/params": 1_342_017}.items()]
    client.log_batch(run_id, metrics=metrics, params=[Param(k, v) for k, v in all_params.items()],
                     tags=[RunTag(k, v) for k, v in all_tags.items()])
    client.set_terminated(run_id, status)
    return run_id


def log_kfold(client, experiment_id: str, architecture: str, losses: list[float], parent_id: str | None = None,
              fingerprint: str = FP_A) -> str:
    """A K-fold run: a parent with cv/ metrics and one child per fold (tag ``fold``)."""
    from mlflow.entities import Param

    tags = {"architecture": architecture, "data.fingerprint": fingerprint}
    if parent_id:
        tags["mlflow.parentRunId"] = parent_id
    parent = client.create_run(experiment_id, run_name=f"{architecture}-cv{len(losses)}", tags=tags).info.run_id
    params = {**config_params(architecture), "seed": "1", "data.folds": str(len(losses))}
    client.log_batch(parent, params=[Param(k, v) for k, v in params.items()])
    for fold, loss in enumerate(losses):
        log_run(client, experiment_id, architecture, seed=1, loss=loss, fingerprint=fingerprint,
                params={"data.folds": len(losses)}, tags={"mlflow.parentRunId": parent, "fold": str(fold)},
                name=f"{architecture}-fold{fold}")
    client.log_metric(parent, "cv/test/accuracy_mean", 0.8)
    client.log_metric(parent, "val/loss", sum(losses) / len(losses))
    client.set_terminated(parent, "FINISHED")
    return parent


def run_compare(client, capsys, *args: str):
    """`bilstm-exp compare ARGS` in this process: (report, stdout)."""
    import argparse

    parser = argparse.ArgumentParser()
    compare_mod.add_arguments(parser)
    report = compare_mod.report(parser.parse_args(["--tracking-uri", client.tracking_uri, *args]))
    return report, capsys.readouterr().out


def rows_of(report) -> list[dict]:
    return list(csv.DictReader((report.folder / "compare.csv").open()))


def header_of(out: str) -> list[str]:
    """The table's column names."""
    return next(line for line in out.splitlines() if line.startswith("#  ")).split()


def check_width(text: str) -> None:
    too_long = [line for line in text.splitlines() if len(line) > 120]
    assert not too_long, f"{len(too_long)} lines over 120 characters, e.g. {too_long[0]!r}"


# --------------------------------------------------------------------------- grouping and statistics


def test_repeated_seeds_are_one_group_with_mean_ci_and_n(client, experiment, capsys, tmp_path):
    name, exp_id = experiment
    for seed, loss in zip((1, 2, 3), (0.50, 0.52, 0.54), strict=True):
        log_run(client, exp_id, "basic", seed, loss, params={"training.verbose": "2"})
    for seed, loss in zip((1, 2, 3), (0.60, 0.63, 0.61), strict=True):
        log_run(client, exp_id, "attention", seed, loss)
    log_run(client, exp_id, "attention", 3, 0.99, status="FAILED")  # not a sample
    repeat = log_run(client, exp_id, "basic", 1, 0.50)  # the same config and seed again: counted once
    report, out = run_compare(client, capsys, "--experiment", name, "--output", str(tmp_path / "out"))
    rows = rows_of(report)
    assert [(r["architecture"], r["n"]) for r in rows] == [("basic", "3"), ("attention", "3")]
    assert report.metric == "val/loss" and report.mode == "min"  # training.monitor of the runs
    assert float(rows[0]["score_mean"]) == pytest.approx(0.52)
    assert float(rows[0]["score_ci95"]) == pytest.approx(4.303 * 0.02 / 3 ** 0.5, rel=1e-3)  # t(2) * s / sqrt(n)
    assert repeat in rows[0]["run_ids"]  # the newest of the two seed-1 runs
    assert "0.52 ±0.05" in out
    assert "counted once: 1 repeat(s)" in out and "not compared: 1 unfinished run(s) (1 FAILED)" in out
    assert ("#1 basic beats #2 attention by 0.093 val/loss (95% CI 0.042 to 0.15, paired t-test over 3 seeds, "
            "p=0.016): a real difference") in " ".join(out.split())
    assert report.verdict.real is True


def test_one_data_set_unless_asked(client, experiment, capsys, tmp_path):
    name, exp_id = experiment
    for (arch, seed), loss in zip(itertools.product(("basic", "attention"), (1, 2)), (0.5, 0.52, 0.51, 0.55),
                                  strict=True):
        log_run(client, exp_id, arch, seed, loss, fingerprint=FP_A)
    for seed in (1, 2, 3):  # the same config on other data: never pooled with the runs above
        log_run(client, exp_id, "basic", seed, 0.2, fingerprint=FP_B)
    out_dir = str(tmp_path / "out")
    report, out = run_compare(client, capsys, "--experiment", name, "--output", out_dir)
    # the data set with the most runs (A: 4 runs) is kept; B's 3 runs are left out and counted
    assert [(r["architecture"], r["n"], r["data"]) for r in rows_of(report)] == [("basic", "2", FP_A),
                                                                               ("attention", "2", FP_A)]
    assert "left out 3 run(s) on other data (b2b2b2b2: 3)" in " ".join(out.split())
    report, out = run_compare(client, capsys, "--experiment", name, "--data", "b2b2", "--output", out_dir)
    assert [(r["architecture"], r["n"], r["data"]) for r in rows_of(report)] == [("basic", "3", FP_B)]
    assert "left out 4 run(s) on other data (a1a1a1a1: 4)" in " ".join(out.split())
    report, out = run_compare(client, capsys, "--experiment", name, "--all-data", "--output", out_dir)
    assert sorted((r["architecture"], r["n"], r["data"]) for r in rows_of(report)) == [
        ("attention", "2", FP_A), ("basic", "2", FP_A), ("basic", "3", FP_B)]
    assert header_of(out)[:3] == ["#", "data", "arch"] and "left out" not in out
    with pytest.raises(compare_mod.CompareError, match="--data ff matches 0 data sets"):
        run_compare(client, capsys, "--experiment", name, "--data", "ff", "--output", out_dir)


def test_split_seeds_of_one_config_are_one_data_set(client, experiment, capsys, tmp_path):
    """data.split_seed changes the fingerprint (another split), yet repeats over split seeds are one group."""
    name, exp_id = experiment
    for split, fingerprint in ((1, "d1" * 16), (2, "d2" * 16), (3, "d3" * 16)):
        for arch, loss in (("basic", 0.5 + split / 100), ("attention", 0.5 + split / 50)):
            log_run(client, exp_id, arch, seed=7, loss=loss, fingerprint=fingerprint,
                    params={"data.split_seed": split})
    report, out = run_compare(client, capsys, "--experiment", name, "--output", str(tmp_path / "out"))
    assert [(r["architecture"], r["n"]) for r in rows_of(report)] == [("basic", "3"), ("attention", "3")]
    assert "left out" not in out and "paired t-test over 3 seeds" in " ".join(out.split())


def test_kfold_runs_of_a_sweep_are_groups_of_k_folds(client, experiment, capsys, tmp_path):
    """A sweep over two K-fold runs: each K-fold parent is one group of its 5 fold children (n=5, not 6),
    the verdict pairs the folds, and the report is logged to the sweep's parent run."""
    name, exp_id = experiment
    sweep = client.create_run(exp_id, run_name="sweep", tags={"bilstm_exp.training.sweep": "parent"}).info.run_id
    log_kfold(client, exp_id, "basic", [0.40, 0.45, 0.42, 0.50, 0.47], parent_id=sweep)
    log_kfold(client, exp_id, "attention", [0.43, 0.47, 0.45, 0.52, 0.49], parent_id=sweep)
    client.set_terminated(sweep, "FINISHED")
    report, out = run_compare(client, capsys, "--parent", sweep, "--output", str(tmp_path / "sweep"))
    assert [(r["architecture"], r["n"]) for r in rows_of(report)] == [("basic", "5"), ("attention", "5")]
    assert "#1 basic beats #2 attention by 0.024 val/loss" in " ".join(out.split())
    assert "paired t-test over 5 folds" in report.verdict.text and report.verdict.real is True
    logged = {a.path for a in client.list_artifacts(sweep, "compare")}
    assert logged == {"compare/compare.png", "compare/compare.md", "compare/compare.csv"}
    # the whole experiment: the same two groups (neither the sweep nor the K-fold parents are samples)
    report, _ = run_compare(client, capsys, "--experiment", name, "--output", str(tmp_path / "all"))
    assert [(r["architecture"], r["n"]) for r in rows_of(report)] == [("basic", "5"), ("attention", "5")]


def test_verdict_says_within_the_noise_or_cannot_tell(client, experiment, capsys, tmp_path):
    name, exp_id = experiment
    for seed, loss in zip((1, 2, 3), (0.50, 0.58, 0.46), strict=True):
        log_run(client, exp_id, "basic", seed, loss)
    for seed, loss in zip((4, 5, 6), (0.55, 0.47, 0.53), strict=True):  # other seeds: unpaired
        log_run(client, exp_id, "attention", seed, loss)
    report, out = run_compare(client, capsys, "--experiment", name, "--output", str(tmp_path / "noise"))
    assert report.verdict.real is False
    assert "Welch's t-test, n=3 vs 3" in report.verdict.text and report.verdict.text.endswith("within the noise")
    assert "#1 basic leads #2 attention by 0.0033 val/loss" in " ".join(out.split())
    # one run per configuration: no verdict, and how to get one
    name, exp_id = f"single-{uuid.uuid4().hex[:6]}", None
    exp_id = client.create_experiment(name)
    log_run(client, exp_id, "basic", 1, 0.4)
    log_run(client, exp_id, "attention", 1, 0.6)
    report, out = run_compare(client, capsys, "--experiment", name, "--output", str(tmp_path / "one"))
    assert report.verdict.real is None
    assert "cannot tell: one run each; repeat with -m seed=1,2,3 or data.folds=5" in " ".join(out.split())


# --------------------------------------------------------------------------- against a baseline


def baseline_lines(out: str) -> dict[str, str]:
    """The verdicts under 'Against the baseline ...', by architecture: {arch: sentence}."""
    text = " ".join(out.split())
    section = text.split("Against the baseline ", 1)[1].split(" wrote ", 1)[0]
    parts = section.split(" #")[1:]  # "#1 stacked: beats the baseline by ..."
    return {part.split()[1].rstrip(":"): part.split(": ", 1)[1] for part in parts}


def test_baseline_named_by_group_run_or_kfold_parent_gives_every_configuration_a_paired_verdict(
        client, experiment, capsys, tmp_path):
    """K-fold runs of four architectures on the same folds; basic is the baseline. stacked is better on
    every fold, attention worse on every fold, unidirectional up on some folds and down on others."""
    name, exp_id = experiment
    base = log_kfold(client, exp_id, "basic", [0.40, 0.45, 0.42, 0.50, 0.47])
    log_kfold(client, exp_id, "stacked", [0.30, 0.36, 0.31, 0.41, 0.37])
    log_kfold(client, exp_id, "attention", [0.43, 0.47, 0.45, 0.52, 0.49])
    log_kfold(client, exp_id, "unidirectional", [0.45, 0.40, 0.47, 0.45, 0.46])
    report, out = run_compare(client, capsys, "--experiment", name, "--baseline", base,
                              "--output", str(tmp_path / "parent"))
    check_width(out)
    assert "Against the baseline #3 basic" in out and "on val/loss (training.monitor, lower is better" in out
    verdicts = baseline_lines(out)
    # stacked - basic per fold: -0.10 -0.09 -0.11 -0.09 -0.10: mean 0.098 lower, t(4) interval
    assert verdicts["stacked"].startswith("beats the baseline by 0.098 val/loss (95% CI 0.088 to 0.11, "
                                          "paired t-test over 5 folds, p<0.001)")
    assert verdicts["attention"].startswith("worse than the baseline by 0.024 val/loss (95% CI")
    assert verdicts["unidirectional"].startswith("within the noise: 0.002 val/loss better (95% CI -0.06 to 0.064")
    assert "basic" not in verdicts  # the baseline itself is named in the heading, not judged
    assert [(v.group.architecture, v.word) for v in report.baseline] == [
        ("stacked", "better"), ("unidirectional", "within the noise"), ("basic", "baseline"), ("attention", "worse")]
    rows = rows_of(report)
    assert [r["vs_baseline_verdict"] for r in rows] == ["better", "within the noise", "baseline", "worse"]
    assert float(rows[0]["vs_baseline"]) == pytest.approx(0.098)  # positive: better than the baseline
    markdown = (report.folder / "compare.md").read_text()
    assert "**Against the baseline #3 basic" in markdown and "- #1 stacked: beats the baseline by 0.098" in markdown
    # the same baseline named by its group (as compare.md and compare.csv show it) or by one of its fold runs
    group = next(r["group"] for r in rows if r["architecture"] == "basic")
    assert f"| basic | {group} |" in markdown
    fold_run = next(r["run_ids"] for r in rows if r["architecture"] == "basic").split()[0]
    for wanted in (group, group[:6], fold_run):
        again, out = run_compare(client, capsys, "--experiment", name, "--baseline", wanted,
                                 "--output", str(tmp_path / wanted))
        assert [(v.group.architecture, v.word) for v in again.baseline] == [
            (v.group.architecture, v.word) for v in report.baseline]
        assert baseline_lines(out) == verdicts


def test_baseline_from_another_sweep_is_read_from_the_store_and_accuracy_differs_in_points(
        client, experiment, capsys, tmp_path):
    """"Does anything beat my default?": the default's seeds ran in one sweep, a candidate's in another;
    comparing the candidate's sweep against the default's parent run pairs them over their seeds."""
    name, exp_id = experiment
    monitor = {"training.monitor": "val/accuracy", "training.monitor_mode": "max"}
    sweeps = {}
    for arch, accuracies in (("basic", (0.80, 0.82, 0.81)), ("attention", (0.83, 0.845, 0.84))):
        sweeps[arch] = client.create_run(exp_id, run_name=f"sweep-{arch}",
                                         tags={"bilstm_exp.training.sweep": "parent"}).info.run_id
        for seed, accuracy in enumerate(accuracies, 1):
            log_run(client, exp_id, arch, seed, accuracy=accuracy, params=monitor,
                    tags={"mlflow.parentRunId": sweeps[arch]})
        client.set_terminated(sweeps[arch], "FINISHED")
    report, out = run_compare(client, capsys, "--parent", sweeps["attention"], "--baseline", sweeps["basic"],
                              "--output", str(tmp_path / "sweeps"))
    assert [(r["architecture"], r["n"]) for r in rows_of(report)] == [("attention", "3"), ("basic", "3")]
    # attention - basic per seed: +3.0, +2.5, +3.0 points
    assert baseline_lines(out)["attention"].startswith(
        "beats the baseline by 2.8 points (95% CI 2.1 to 3.6, paired t-test over 3 seeds, p=")
    assert "higher is better" in out


def test_ranking_by_another_metric_is_said_and_the_baseline_is_judged_on_the_monitor(
        client, experiment, capsys, tmp_path):
    name, exp_id = experiment
    for seed, (loss, accuracy) in enumerate(((0.50, 0.80), (0.52, 0.81), (0.54, 0.79)), 1):
        log_run(client, exp_id, "basic", seed, loss, accuracy)
    for seed, (loss, accuracy) in enumerate(((0.60, 0.90), (0.63, 0.91), (0.61, 0.89)), 1):
        log_run(client, exp_id, "attention", seed, loss, accuracy)
    report, out = run_compare(client, capsys, "--experiment", name, "--metric", "test/accuracy",
                              "--baseline", rows_of(run_compare(client, capsys, "--experiment", name, "--output",
                                                                str(tmp_path / "plain"))[0])[0]["group"],
                              "--output", str(tmp_path / "ranked"))
    text = " ".join(out.split())
    assert [g.architecture for g in report.groups] == ["attention", "basic"]  # by test accuracy
    assert ("ranked by test/accuracy (--metric); these runs were trained and their weights kept on val/loss "
            "(training.monitor), the metric to decide on; the verdicts against the baseline use val/loss") in text
    # the baseline (basic, best on val/loss) against attention, on val/loss: attention is worse
    assert baseline_lines(out)["attention"].startswith("worse than the baseline by 0.093 val/loss")


def test_a_baseline_that_names_nothing_or_several_configurations_says_how_to_name_one(
        client, experiment, capsys, tmp_path):
    name, exp_id = experiment
    log_run(client, exp_id, "basic", 1, 0.5)
    log_run(client, exp_id, "attention", 1, 0.6)
    with pytest.raises(compare_mod.CompareError, match="--baseline 0123abcd names no configuration group.*Fix:"):
        run_compare(client, capsys, "--experiment", name, "--baseline", "0123abcd", "--output", str(tmp_path))
    with pytest.raises(compare_mod.CompareError, match="too short.*Fix:"):
        run_compare(client, capsys, "--experiment", name, "--baseline", "a", "--output", str(tmp_path))
    result = run_module(["compare", "--tracking-uri", client.tracking_uri, "--experiment", name,
                         "--baseline", "0123abcd", "--output", str(tmp_path / "cli")],
                        tmp_path, module="bilstm_exp.cli.main")
    assert result.returncode == 2 and "Fix:" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "cli").exists()  # nothing half-written


# --------------------------------------------------------------------------- readable output


def test_a_big_search_fits_120_columns_and_plots_8_labelled_lines(client, experiment, capsys, tmp_path):
    """An Optuna-like search: 12 configurations differing in 6 params with long values, long run names,
    one very slow configuration, unfinished runs."""
    name, exp_id = experiment
    settings = list(itertools.product(("basic", "attention", "stacked"), (32, 128), ("adamw", "rmsprop")))
    for i, (arch, units, optimizer) in enumerate(settings):
        params = {"model.embedding_dim": 64 + i, "model.dropout": 0.1 + i / 97, "optimizer.name": optimizer,
                  "optimizer.learning_rate": 0.00123456789 * (i + 1), "clipping.threshold": 1.0 + i / 7,
                  "data.path": f"data/raw/customer_reviews_{2023 + i % 2}_cleaned_and_deduplicated.tsv",
                  "training.batch_size": 32 * (1 + i % 3), "data.vocab_size": 20000 + 1000 * (i % 4)}
        params["model.layer_sizes" if arch == "stacked" else "model.lstm_units"] = units if arch != "stacked" \
            else f"[{units}, {units // 2}]"
        for seed in (1, 2):
            noise = (i * 7 + seed * 3) % 5 / 1000
            log_run(client, exp_id, arch, seed, loss=0.45 + 0.004 * i + noise, accuracy=0.8 - i / 100,
                    epoch_s=60.0 if i == 5 else 1.5 + i / 10, params=params,
                    name=f"{arch}-{optimizer}-clip_global_norm-units{units}-trial{i:03d}-seed{seed}")
    for i in range(3):
        log_run(client, exp_id, "attention", 9, 0.9, status="KILLED",
                name=f"attention-adamw-clip_global_norm-interrupted-by-the-user-after-epoch-{i}")
    report, out = run_compare(client, capsys, "--experiment", name, "--output", str(tmp_path / "big"))
    check_width(out)
    assert len(report.groups) == 12 and {g.n() for g in report.groups} == {2}
    header = header_of(out)
    assert "val/loss ±95%CI" in " ".join(header) and "lr" in header
    assert "0.00123456789" not in out and "0.001235" not in out  # rounded
    # what does not fit is listed below the table
    assert "vocab" not in header and "params not in the table: #1 path=…2023… vocab=20000" in out
    # the figure: 8 labelled lines and one entry for the grey rest, a clipped time axis, no overlapping ranks
    figure = report.figure
    texts = [t.get_text() for legend in figure.legends for t in legend.get_texts()]
    assert len(texts) == 9 and texts[0].startswith("#1 ") and texts[-1].startswith("4 more groups")
    scatter, curves = figure.axes
    assert len(curves.get_lines()) == 12
    assert {len(line.get_xdata()) for line in curves.get_lines()} == {4}  # 4 epochs, not the kept weights' step
    assert "clipped" in scatter.get_xlabel()
    assert scatter.get_xlim()[1] < 60
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(figure).get_renderer()  # the figure was closed after saving
    labels = scatter.texts
    assert sorted(int(t.get_text().split()[0]) for t in labels) == list(range(1, 9))
    assert "6 (60 s)" in [t.get_text() for t in labels]  # the clipped point says its value
    boxes = [t.get_window_extent(renderer) for t in labels]
    assert not [(a, b) for a, b in itertools.combinations(range(len(boxes)), 2) if boxes[a].overlaps(boxes[b])]
    legend_box = figure.legends[0].get_window_extent(renderer)
    assert all(not legend_box.overlaps(ax.get_window_extent(renderer)) for ax in figure.axes)
    png = report.folder / "compare.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (report.folder / "compare.md").read_text()
    assert "**Verdict:**" in markdown and "![metric vs epoch time" in markdown


# --------------------------------------------------------------------------- real runs, the command line


def test_compare_real_runs_in_a_subprocess_without_tensorflow(trained, tmp_path):
    code = ("import sys\nfrom bilstm_exp.cli.main import main\n"
            f"main(['compare', '--tracking-uri', {trained.uri!r}, '--output', 'report'])\n"
            "print('TF_LOADED' if 'tensorflow' in sys.modules or 'keras' in sys.modules else 'TF_ABSENT')\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                            timeout=SUBPROCESS_S)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("TF_ABSENT")
    check_width(result.stdout)
    assert "cannot tell: one run each" in " ".join(result.stdout.split())
    rows = list(csv.DictReader((tmp_path / "report" / "compare.csv").open()))
    assert sorted(r["architecture"] for r in rows) == ["attention", "basic"]
    client = trained.client()
    for row in rows:  # each number is its run's own record
        run = client.get_run(row["run_ids"])
        assert float(row["test_acc_mean"]) == pytest.approx(run.data.metrics["test/accuracy"])
        assert float(row["params_mean"]) == run.data.metrics["model/params"]


def test_errors_name_the_problem_and_the_fix(client, experiment, capsys, tmp_path):
    name, exp_id = experiment
    child_parent = log_run(client, exp_id)
    with pytest.raises(compare_mod.CompareError, match="'val/nothing'.*Fix:"):
        run_compare(client, capsys, "--experiment", name, "--metric", "val/nothing")
    with pytest.raises(compare_mod.CompareError, match="not found.*Fix:"):
        run_compare(client, capsys, "--parent", "0123456789abcdef0123456789abcdef")
    with pytest.raises(compare_mod.CompareError, match="has no child runs"):
        run_compare(client, capsys, "--parent", child_parent)
    # on the command line: exit 2, the message, no traceback
    result = run_module(["compare", "--tracking-uri", client.tracking_uri, "--experiment", "no-such-experiment"],
                        tmp_path, module="bilstm_exp.cli.main")
    assert result.returncode == 2
    assert "experiment 'no-such-experiment' not found" in result.stderr and name in result.stderr
    assert "Fix:" in result.stderr and "Traceback" not in result.stderr


def test_compare_without_a_store_says_where_to_run(tmp_path):
    result = run_module(["compare"], tmp_path, module="bilstm_exp.cli.main")
    assert result.returncode == 2
    assert "mlflow.db" in result.stderr and "Fix:" in result.stderr
    assert not (tmp_path / "mlflow.db").exists()  # it did not create an empty store


def test_unknown_experiment_preset_lists_the_presets(tmp_path):
    result = run_module(["-m", "experiment=no_such_preset"], tmp_path)
    assert result.returncode != 0
    assert "experiment/no_such_preset" in result.stderr
    for name in ("compare_architectures", "clipping_study", "length_batch_study"):
        assert name in result.stderr
