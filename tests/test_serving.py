"""The registered model serves raw text: pyfunc in process, `mlflow models serve` over HTTP, and
`bilstm-exp predict` on arguments, a text file and a CSV. One tiny run registers the model once (the
session's `trained`), one model server answers for the session (`served_model`), and the `predict` tests
share two subprocesses: one on arguments and a text file, one on a CSV.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests

pytestmark = pytest.mark.slow

TEXTS = ["a fine film", "dull"]
MODEL = "models:/bilstm-sentiment/1"


@pytest.fixture(scope="module")
def store(trained):
    """The session's trained project folder: its mlflow.db holds version 1 (the basic run) of bilstm-sentiment."""
    expected = trained.basic.classifier.predict(None, TEXTS)  # the trained model in memory
    return {"folder": trained.folder, "uri": trained.uri, "expected": expected}


def _check(predictions: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert list(predictions.columns) == ["probability", "label"] and len(predictions) == len(TEXTS)
    assert predictions["probability"].between(0, 1).all()
    assert set(predictions["label"]) <= {"negative", "positive"}
    assert list(predictions["label"]) == list(expected["label"])
    np.testing.assert_allclose(predictions["probability"], expected["probability"], atol=1e-5)


def test_pyfunc_round_trip_on_raw_text(store):
    mlflow.set_tracking_uri(store["uri"])
    try:
        model = mlflow.pyfunc.load_model(MODEL)
    finally:
        mlflow.set_tracking_uri(None)
    _check(model.predict(pd.DataFrame({"text": TEXTS})), store["expected"])
    _check(model.predict(TEXTS), store["expected"])
    assert len(model.predict("a fine film")) == 1
    with pytest.raises(Exception, match="'text' column"):
        model.predict(pd.DataFrame({"review": TEXTS}))


def test_served_forward_pass_equals_keras_predict_for_any_batch_size_and_length(store):
    """The pyfunc's one traced inference graph (FastLSTM's loop without the backward's record) computes
    what Keras's predict_on_batch computes, for one text and for a batch of other lengths."""
    from bilstm_exp.serving.model import pad_right

    mlflow.set_tracking_uri(store["uri"])
    try:
        classifier = mlflow.pyfunc.load_model(MODEL).unwrap_python_model()
    finally:
        mlflow.set_tracking_uri(None)
    for texts in (["a fine film"], ["dull", "a fine film " * 30, "good good bad"]):
        ids = pad_right(classifier.vocab.encode_batch(texts, classifier.max_length, classifier.truncating))
        np.testing.assert_allclose(classifier.forward(ids), classifier.model.predict_on_batch(ids), atol=1e-6)


def test_mlflow_models_serve_answers_invocations(store, served_model):
    bodies = {
        "dataframe_split": {"dataframe_split": {"columns": ["text"], "data": [[t] for t in TEXTS]}},
        "dataframe_records": {"dataframe_records": [{"text": t} for t in TEXTS]},
        "inputs": {"inputs": TEXTS},
        "instances": {"instances": TEXTS},
    }
    for name, body in bodies.items():
        response = requests.post(f"{served_model}/invocations", json=body, timeout=60)
        assert response.status_code == 200, (name, response.text[:500])
        _check(pd.DataFrame(response.json()["predictions"]), store["expected"])
    bad = requests.post(f"{served_model}/invocations", timeout=60,
                        json={"dataframe_split": {"columns": ["review"], "data": [["dull"]]}})
    assert bad.status_code >= 400 and "'text' column" in bad.text


def predict(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`bilstm-exp predict ARGS` as a user runs it (the console script of this environment)."""
    script = Path(sys.executable).with_name("bilstm-exp")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "bilstm_exp.cli.main"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([*command, "predict", *args], cwd=cwd, capture_output=True, text=True, timeout=180,
                          env=env)


def _lines(out: subprocess.CompletedProcess) -> list[tuple[str, float, str]]:
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line.split("\t") for line in out.stdout.splitlines()]
    return [(label, float(prob), text) for label, prob, text in rows]


@pytest.fixture(scope="module")
def predicted_text_file(store, tmp_path_factory) -> subprocess.CompletedProcess:
    """`bilstm-exp predict` in the project folder, without flags for the store, on TEXTS as arguments and
    a latin-1 text file (a blank line, a line that is not UTF-8) read with --encoding."""
    folder = tmp_path_factory.mktemp("predict-text-file")
    (folder / "texts.txt").write_bytes("a fine film\n\ndull\ncaf\xe9 cr\xe8me, a fine film\n".encode("latin-1"))
    return predict(["--model", MODEL, *TEXTS, "--file", str(folder / "texts.txt"), "--encoding", "latin-1"],
                   cwd=store["folder"])


CSV_TEXTS = ["a fine film, really", None, "dull", "a fine\tfilm", "dull\nand long", "back\\slash \u2028 end"]


@pytest.fixture(scope="module")
def predicted_csv(store, tmp_path_factory) -> subprocess.CompletedProcess:
    """`bilstm-exp predict --tracking-uri` from another folder on a CSV with an id column, an empty cell,
    and texts holding a tab, a newline, a backslash and a line separator."""
    folder = tmp_path_factory.mktemp("predict-csv")
    pd.DataFrame({"id": range(1, len(CSV_TEXTS) + 1), "text": CSV_TEXTS}).to_csv(folder / "texts.csv", index=False)
    return predict(["--model", MODEL, "--tracking-uri", store["uri"], "--file", "texts.csv"], cwd=folder)


def test_cli_predict_prints_one_line_per_text_and_reads_a_text_file(store, predicted_text_file):
    """In the project folder the default store is found without flags; texts given as arguments come
    first, then the file's lines (blank lines skipped)."""
    rows = _lines(predicted_text_file)
    expected = store["expected"]
    assert [text for _, _, text in rows] == TEXTS + ["a fine film", "dull", "caf\xe9 cr\xe8me, a fine film"]
    assert [label for label, _, _ in rows[:len(TEXTS)]] == list(expected["label"])
    np.testing.assert_allclose([p for _, p, _ in rows[:len(TEXTS)]], expected["probability"], atol=1e-4)


def test_cli_predict_reads_a_text_file_in_the_given_encoding(predicted_text_file):
    """--encoding reads a file that is not UTF-8."""
    assert [text for _, _, text in _lines(predicted_text_file)][-1] == "caf\xe9 cr\xe8me, a fine film"


def test_cli_predict_reads_a_csv_from_the_store_named_by_tracking_uri(predicted_csv):
    rows = _lines(predicted_csv)
    assert [text for _, _, text in rows][:2] == ["a fine film, really", "dull"]  # empty cells skipped
    assert len(rows) == len(CSV_TEXTS) - 1
    assert all(label in {"negative", "positive"} and 0 <= p <= 1 for label, p, _ in rows)


def test_cli_predict_unknown_model_fails_with_a_message(store):
    out = predict(["--model", "models:/no-such-model/1", "dull"], cwd=store["folder"])
    assert out.returncode != 0 and out.stdout == ""
    assert "cannot load model models:/no-such-model/1" in out.stderr and "Traceback" not in out.stderr


def test_cli_predict_keeps_one_line_per_text_with_a_tab_a_newline_or_a_backslash(predicted_csv):
    """A tab, a newline or a backslash in a text is printed escaped, so every text is one line of three
    tab-separated fields."""
    rows = _lines(predicted_csv)
    assert [text for _, _, text in rows][2:] == ["a fine\\tfilm", "dull\\nand long", "back\\\\slash \\u2028 end"]
