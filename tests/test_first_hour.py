"""The first hour of a new user (issue 14): a run says where it is recorded and ends with a summary
that matches the store, stderr is free of library noise, MLFLOW_TRACKING_URI is honoured, data
files load with their options, and bad data stops in the light path (no TensorFlow, no experiment).

One real training subprocess (tiny, on a CSV written here) covers the summary, the noise, the
tracking URI and the skipped-rows metric; everything else runs without training.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

NOISE = ["absl::InitializeLog", "oneDNN custom operations", "oneDNN supports DT_BOOL", "UserWarning",
         "Add type hints", "CloudPickle", "Downloading artifacts", "Successfully registered model",
         "Created version", "retracing", "INFO mlflow", "XLA service", "cpu_feature_guard"]

GOOD = "".join(f"a great and moving film number {i},positive\na dull and tedious film number {i},negative\n"
               for i in range(80))
REVIEWS = "text,label\n" + GOOD + ",positive\n"  # one row with an empty text


def python_m(args: list[str], cwd: Path, env: dict[str, str] | None = None, flags: tuple[str, ...] = (),
             timeout: float = 300) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "BILSTM_EXP_LOG_LEVEL")}
    full.update({"TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})})  # what users export: quiet must still be quiet
    return subprocess.run([sys.executable, *flags, "-m", "bilstm_exp", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=full)


def tiny_file(path: str, *extra: str) -> list[str]:
    return ["data=file", f"data.path={path}", "data.max_length=48", "data.num_buckets=3", "training.epochs=1",
            "training.batch_size=16", "model.embedding_dim=8", "model.lstm_units=8", "profiling.latency_samples=5",
            *extra]


# --------------------------------------------------------------------------- one real run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny run on a CSV with one bad row (skipped), recorded through MLFLOW_TRACKING_URI in a
    store outside the working directory."""
    work = tmp_path_factory.mktemp("first-hour")
    elsewhere = tmp_path_factory.mktemp("store")
    (work / "reviews.csv").write_text(REVIEWS)
    uri = f"sqlite:///{elsewhere / 'team.db'}"
    out = python_m(tiny_file("reviews.csv", "data.on_bad_rows=skip"), work, env={"MLFLOW_TRACKING_URI": uri})
    return work, uri, out


@pytest.mark.slow
def test_run_says_where_it_records_first_and_ends_with_a_summary_that_matches_the_store(run):
    from mlflow.tracking import MlflowClient

    work, uri, out = run
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    # the data is read first (its note on the skipped row), then where the run records, before any epoch
    assert lines[:2] == ["[bilstm-exp] data: skipped 1 of 161 rows of reviews.csv (data.on_bad_rows=skip): "
                         "1 empty text(s)", f"[bilstm-exp] recording to {uri} (experiment 'bilstm-exp')"], lines[:3]

    client = MlflowClient(uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "bilstm-exp"]
    (record,) = client.search_runs([experiment.experiment_id])
    run_id = record.info.run_id
    text = out.stdout
    # then the word vectors it trains before the first epoch (the default start), counted as the record has it
    texts = int(record.data.metrics["embedding/self_trained_texts"])
    assert lines[2] == f"[bilstm-exp] word vectors: word2vec on the {texts:,} training texts " \
                       "(model.self_trained_vectors)", lines[:4]
    assert f"[bilstm-exp] run finished: {record.info.run_name} ({run_id})" in text
    test_line = next(line for line in lines if line.startswith("  test "))
    for name in ("accuracy", "auc", "loss"):
        shown = float(re.search(rf"\b{name} ([0-9.]+)", test_line).group(1))
        assert shown == pytest.approx(record.data.metrics[f"test/{name}"], abs=5e-5), test_line
    (version,) = client.search_model_versions(f"run_id='{run_id}'")
    champion = next(line for line in lines if line.startswith("  champion "))
    assert version.tags["champion.decision"] in champion and version.tags["champion.reason"] in champion
    assert f"bilstm-sentiment version {version.version}" in champion
    assert f"  recorded   {uri}, experiment 'bilstm-exp' (id {experiment.experiment_id})" in lines
    assert f"  open       mlflow ui --backend-store-uri {uri}" in lines
    assert f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs/{run_id}" in text
    # the bad row was skipped, said so, and logged
    assert record.data.metrics["data/skipped_rows"] == 1
    assert "  data       1 bad rows skipped" in text


@pytest.mark.slow
def test_mlflow_tracking_uri_is_honoured_by_the_default_tracking_local(run):
    work, uri, out = run
    assert out.returncode == 0, out.stderr[-3000:]
    assert not (work / "mlflow.db").exists() and not (work / "mlartifacts").exists()


@pytest.mark.slow
def test_stderr_of_a_run_holds_none_of_the_library_noise(run):
    _, _, out = run
    assert out.returncode == 0, out.stderr[-3000:]
    found = [noise for noise in NOISE if noise in out.stderr]
    assert not found, out.stderr[-3000:]
    # progress stays: one short line per epoch when not a terminal (training.progress)
    assert re.search(r"^\[bilstm-exp\] epoch 1/\d+  train/loss \S+  val/loss ", out.stdout, re.M), out.stdout[:2000]


# --------------------------------------------------------------------------- tracking URI precedence


def test_tracking_uri_precedence_explicit_then_environment_then_default(tmp_path, monkeypatch):
    from bilstm_exp.config.run_schema import TrackingConfig
    from bilstm_exp.errors import TrackingError
    from bilstm_exp.tracking.store import resolve_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_uri(TrackingConfig(), tmp_path) == f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"
    with pytest.raises(TrackingError, match="needs a server URI"):
        resolve_uri(TrackingConfig(name="server"), tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert resolve_uri(TrackingConfig(), tmp_path) == "http://127.0.0.1:5999"
    assert resolve_uri(TrackingConfig(name="server"), tmp_path) == "http://127.0.0.1:5999"
    explicit = "sqlite:///elsewhere.db"
    assert resolve_uri(TrackingConfig(tracking_uri=explicit), tmp_path) == explicit


# --------------------------------------------------------------------------- data options, no training


def prepare(tmp_path: Path, name: str, content: str | bytes, *overrides: str):
    from bilstm_exp.config.compose import compose
    from bilstm_exp.config.schema import validate
    from bilstm_exp.data.prepare import prepare as prepare_data

    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    config = validate(compose(["data=file", f"data.path={path}", *overrides]))
    return prepare_data(config.data)


def test_headerless_tsv_with_columns_by_position(tmp_path):
    rows = "".join(f"{i}\tpositive\ta great film {i}\n{i}\tnegative\ta dull film {i}\n" for i in range(30))
    prepared = prepare(tmp_path, "reviews.tsv", rows, "data.header=false", "data.text_column=2",
                       "data.label_column=1")
    assert prepared.class_names == ["negative", "positive"]
    assert sum(prepared.stats["num_examples"].values()) == 60
    assert all(text.startswith("a ") for text in prepared.texts["train"])


def test_columns_by_position_with_a_header(tmp_path):
    prepared = prepare(tmp_path, "r.csv", "label,review\n" + "".join(
        f"1,fine film {i}\n0,poor film {i}\n" for i in range(30)), "data.text_column=1", "data.label_column=0")
    assert prepared.class_names == ["0", "1"] and prepared.texts["train"][0].endswith(tuple("0123456789"))


def test_encoding_option_and_a_decode_error_that_names_it(tmp_path):
    from bilstm_exp.errors import DataError

    latin = ("text,label\n" + "".join(f"caf\xe9 cr\xe8me {i},positive\nna\xefve plot {i},negative\n"
                                      for i in range(30))).encode("latin-1")
    with pytest.raises(DataError, match=r"not valid UTF-8 .*data\.encoding=latin-1"):
        prepare(tmp_path, "latin.csv", latin)
    prepared = prepare(tmp_path, "latin.csv", latin, "data.encoding=latin-1")
    assert any("café" in text for text in prepared.texts["train"])


def test_bad_rows_error_by_default_and_are_skipped_and_counted_on_request(tmp_path, capsys):
    from bilstm_exp.errors import DataError

    content = REVIEWS + "so-so film,\nx,y,z\n"  # empty text, empty label, a line with too many fields
    with pytest.raises(DataError, match="data.on_bad_rows=skip"):
        prepare(tmp_path, "bad.csv", content)
    prepared = prepare(tmp_path, "bad.csv", content, "data.on_bad_rows=skip")
    assert prepared.stats["skipped_rows"] == 3
    assert sum(prepared.stats["num_examples"].values()) == 160
    assert "skipped 3 of 163 rows of bad.csv" in capsys.readouterr().out


@pytest.mark.parametrize("overrides, message", [
    (["data.encoding=klingon"], "data.encoding: unknown encoding 'klingon'"),
    (["data.header=false"], "data.text_column: 'text' is a column name, but data.header=false"),
    (["data.on_bad_rows=ignore"], "data.on_bad_rows: 'ignore' is not one of error, skip"),
    (["training.log_level=loud"], "training.log_level: 'loud' is not one of quiet, verbose"),
])
def test_bad_data_options_are_config_errors(overrides, message):
    from bilstm_exp.config.compose import compose
    from bilstm_exp.config.schema import validate
    from bilstm_exp.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(compose(["data=file", "data.path=reviews.csv", *overrides]))


# --------------------------------------------------------------------------- the light path


LIGHT_RUN = """
import runpy, sys
sys.argv = ["bilstm_exp", *sys.argv[1:]]
code = 0
try:
    runpy.run_module("bilstm_exp", run_name="__main__", alter_sys=True)
except SystemExit as exit:
    code = exit.code
print("IMPORTED", sorted(m for m in ("mlflow", "tensorflow", "keras", "sqlalchemy") if m in sys.modules))
sys.exit(code)
"""


@pytest.mark.parametrize("store", ["no store yet", "an existing mlflow.db"])
@pytest.mark.parametrize("args, problem, fix", [
    (tiny_file("reviews.csv"), "row 161: empty text in column 'text'", "data.on_bad_rows=skip"),
    (tiny_file("missing.csv"), "missing.csv: no such file", "Fix: point data.path at an existing file"),
    (tiny_file("quote.csv"), "quote.csv, line 3: a quote opened there is never closed", "Fix: close the quote"),
    (["data.path=reviews.csv"], "data.path: the data option 'synthetic' has no key 'path'", "add data=file"),
], ids=["bad-row", "missing-file", "unclosed-quote", "path-without-data-file"])
def test_data_errors_exit_2_without_mlflow_or_tensorflow_and_touch_no_store(tmp_path, args, problem, fix, store):
    """Issue 26: everything a user handed over is checked before the store is opened, so a bad data file
    is refused in the light path whether or not the folder already holds a store: neither MLflow nor
    TensorFlow is imported, one line on stderr, nothing on stdout (no "recording to"), no store created
    and an existing one left byte for byte as it was (no experiment, no run)."""
    from tests.conftest import SUBPROCESS_S, migrated_store

    (tmp_path / "reviews.csv").write_text(REVIEWS)
    (tmp_path / "quote.csv").write_text('text,label\na fine film,positive\n"a dull film,negative\n')
    if store == "an existing mlflow.db":
        migrated_store(tmp_path)
    before = (tmp_path / "mlflow.db").read_bytes() if store == "an existing mlflow.db" else None
    full = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "BILSTM_EXP_LOG_LEVEL")}
    out = subprocess.run([sys.executable, "-c", LIGHT_RUN, *args], cwd=tmp_path, capture_output=True, text=True,
                         timeout=SUBPROCESS_S, env=full)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stdout.splitlines() == ["IMPORTED []"], out.stdout[-2000:]
    (line,) = out.stderr.splitlines()
    assert problem in line and fix in line, line
    if before is None:
        assert not (tmp_path / "mlflow.db").exists()
    else:
        assert (tmp_path / "mlflow.db").read_bytes() == before
    assert not (tmp_path / "mlartifacts").exists()


def test_the_summary_names_skipped_rows_only_when_rows_are_skipped():
    from bilstm_exp.config.compose import compose
    from bilstm_exp.config.schema import validate
    from bilstm_exp.training.summary import bad_rows

    skip = validate(compose(["data=file", "data.path=r.csv", "data.on_bad_rows=skip"]))
    error = validate(compose(["data=file", "data.path=r.csv"]))
    assert bad_rows(3, skip) == "3 bad rows skipped (data.on_bad_rows=skip)"
    assert "skipped" not in bad_rows(0, error) and "data.on_bad_rows=error" in bad_rows(0, error)


def test_early_stop_line_counts_epochs_from_one():
    from bilstm_exp.training.summary import early_stop_line

    assert early_stop_line(5, 2, 3, "val/loss", True) == (
        "[bilstm-exp] early stopping at epoch 6: val/loss did not improve for 3 epochs; kept epoch 3")


def test_sweep_table_lists_every_job_with_its_varying_overrides_and_marks_the_best(trained):
    from bilstm_exp.training.summary import sweep_lines

    client = trained.client()
    runs = [client.get_run(trained.basic.run_id), client.get_run(trained.attention.run_id)]
    best = max(runs, key=lambda run: run.data.metrics["val/accuracy"])
    lines = sweep_lines(client, runs, "val/accuracy", "max", best.info.run_id,
                        score=lambda run: run.data.metrics["val/accuracy"])
    assert lines[0].split()[:4] == ["job", "status", "overrides", "val/accuracy"]
    rows = lines[2:]
    assert len(rows) == 2 and all("FINISHED" in row for row in rows)
    assert {("model=basic" in row, "model=attention" in row) for row in rows} == {(True, False), (False, True)}
    (marked,) = [row for row in rows if row.startswith("*")]
    assert f"{best.data.metrics['val/accuracy']:.4f}" in marked
    assert f"model={best.data.params['model.name']}" in marked
