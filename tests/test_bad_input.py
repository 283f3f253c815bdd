"""Bad input, table-driven: config overrides, data files, CLI arguments and tracking URIs.

Every case runs the real CLI (`python -m bilstm_exp` or `bilstm-exp`) in a subprocess in a fresh
folder and must: exit with the expected code, print a message that names the problem and the fix,
and leave nothing behind: no run in any store, no registered model version, no checkpoint, no
offline store, no params.yaml. A case may first build a state with real components (``setup``: a
store with a deleted experiment or run, a checkpoint); then what it built is all that is left
(``runs``: statuses of the runs left in ./mlflow.db, ``keeps``: files that must survive unchanged).
The setups run one after another (Hydra's composition is process-global), the cases in parallel
threads; each test then checks one case's outcome.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests import warm
from tests.conftest import ROOT, migrated_store, tiny
from tests.servers import HOST, free_port
from tests.test_store_states import damage_a_page

CSV_OK = "text,label\na fine film,positive\na dull film,negative\n"
ROWS = "text,label\n" + "".join(f"great film number {i},positive\nawful film number {i},negative\n" for i in range(40))


@dataclass
class Case:
    id: str
    args: list[str]  # after `python -m MODULE`
    problem: str  # a substring of stderr naming the problem
    fix: str  # a substring of stderr naming the fix
    code: int = 2
    module: str = "bilstm_exp"
    files: dict[str, str | bytes] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    setup: Callable[[Path], None] | None = None  # builds a state in the case's folder before it runs
    runs: tuple[str, ...] = ()  # statuses of the (active) runs left in ./mlflow.db afterwards
    keeps: tuple[str, ...] = ()  # files under the folder that must be left as they were


def data(path: str) -> list[str]:
    return ["data=file", f"data.path={path}", "model.lstm_units=8", "model.embedding_dim=8", "training.epochs=1",
            "profiling.latency_samples=0"]


DAMAGED = "is damaged (sqlite's quick_check:"
DOWN = f"http://{HOST}:{free_port()}"  # nothing listens there
WITH_PASSWORD = f"http://user:hunter2@{DOWN.split('//')[1]}"
RUN_ID = "0123456789abcdef0123456789abcdef"
TINY = tiny("basic")


# ---------------------------------------------------------------- setups: states built with real components


def _client(folder: Path):
    return MlflowClient(f"sqlite:///{folder / 'mlflow.db'}" if (folder / "mlflow.db").exists() else
                        migrated_store(folder))


def _experiment(folder: Path) -> str:
    return _client(folder).create_experiment("bilstm-exp", artifact_location=(folder / "mlartifacts").as_uri())


def deleted_experiment(folder: Path) -> None:
    _client(folder).delete_experiment(_experiment(folder))


def _run(folder: Path, status: str) -> str:
    client = _client(folder)
    run = client.create_run(_experiment(folder), run_name="interrupted")
    client.set_tag(run.info.run_id, "failure_reason", "terminated")
    client.set_terminated(run.info.run_id, status)
    return run.info.run_id


def _checkpoint(folder: Path, run_id: str, args: list[str], weights: bytes | None = None, **changes) -> None:
    """checkpoints/<run_id>/ as an interrupted run of ``args`` leaves it (config made as training.run does),
    with ``changes`` in its config and ``weights`` (default: a readable HDF5 file) as its weights."""
    import h5py

    from bilstm_exp.config.compose import compose
    from bilstm_exp.config.schema import validate
    from bilstm_exp.training import checkpoints

    config = checkpoints.Checkpointer.open(folder, checkpoints.identity(validate(compose(args))), False, None).config
    target = folder / "checkpoints" / run_id
    target.mkdir(parents=True)
    if weights is None:
        with h5py.File(target / "epoch-0000.weights.h5", "w") as handle:
            handle.create_group("layers")
    else:
        (target / "epoch-0000.weights.h5").write_bytes(weights)
    state = {"run_id": run_id, "epoch": 0, "fit_done": False, "weights": "epoch-0000.weights.h5",
             "saved_at": time.time(), "config": {**config, **changes}, "data_md5": None,
             "history": {"loss": [0.69]}, "early_stopping": None}
    (target / "state.json").write_text(json.dumps(state))


def deleted_run_with_checkpoint(folder: Path) -> None:
    run_id = _run(folder, "KILLED")
    _client(folder).delete_run(run_id)
    _checkpoint(folder, run_id, [*TINY, "training.resume=true", f"training.resume_run_id={run_id}"])
    (folder / "run_id").write_text(run_id)


def killed_run_with_corrupt_checkpoint(folder: Path) -> None:
    _checkpoint(folder, _run(folder, "KILLED"), [*TINY, "training.resume=true"], weights=b"\x89HDF\r\n truncated")


def checkpoint_of_another_config(folder: Path) -> None:
    _checkpoint(folder, RUN_ID, [*TINY, "training.resume=true"], **{"model.lstm_units": 16, "training.epochs": 5})


def project_conf(folder: Path) -> None:
    shutil.copytree(ROOT / "src/bilstm_exp/conf", folder / "conf")


def store_with_a_run(folder: Path) -> None:
    _run(folder, "FINISHED")


def offline_run(folder: Path) -> None:
    (folder / "offline").mkdir()
    _run(folder / "offline", "FINISHED")


def damaged_store(folder: Path) -> None:
    """A store with a run, then garbage over one page in the middle of mlflow.db (its header still valid)."""
    _run(folder, "FINISHED")
    damage_a_page(folder / "mlflow.db")


CASES = [
    # ---------------------------------------------------------------- config overrides (python -m bilstm_exp)
    Case("unknown-model", ["model=transformer"], "Could not find 'model/transformer' (available: attention", "Fix:"),
    Case("zero-units", tiny("basic", "model.lstm_units=0"), "model.lstm_units: must be > 0", "Fix:"),
    Case("dropout-range", tiny("basic", "model.dropout=1.5"), "model.dropout: must be in [0, 1)", "Fix:"),
    Case("label-smoothing-range", tiny("basic", "training.label_smoothing=1.5"),
         "training.label_smoothing: must be in [0, 1), got 1.5", "Fix: e.g. training.label_smoothing=0.1"),
    Case("label-smoothing-negative", tiny("basic", "training.label_smoothing=-0.1"),
         "training.label_smoothing: must be in [0, 1), got -0.1", "Fix:"),
    Case("vectors-file-missing", tiny("basic", "model.pretrained_embeddings=v.txt", "model.embedding_dim=4"),
         "model.pretrained_embeddings: 'v.txt': no such file", "Fix:"),
    Case("negative-threshold", tiny("basic", "clipping=norm", "clipping.threshold=-1"),
         "clipping.threshold: must be > 0", "Fix:"),
    Case("zero-batch", tiny("basic", "training.batch_size=0"), "training.batch_size: must be > 0", "Fix:"),
    Case("negative-epochs", tiny("basic", "training.epochs=-1"), "training.epochs: must be > 0", "Fix:"),
    Case("zero-max-length", tiny("basic", "data.max_length=0"), "data.max_length: must be > 0", "Fix:"),
    Case("unknown-key", tiny("basic", "+model.lstm_unit=4"), "model.lstm_unit: unknown key", "Fix:"),
    Case("wrong-type", tiny("basic", "training.epochs=three"), "training.epochs", "Fix:"),
    Case("zero-learning-rate", tiny("basic", "optimizer.learning_rate=0"), "optimizer.learning_rate", "Fix:"),
    Case("val-fraction", tiny("basic", "data.val_fraction=0.7"), "data.val_fraction: must be in (0, 0.5)", "Fix:"),
    Case("negative-seed", tiny("basic", "seed=-3"), "seed: must be a non-negative integer", "Fix:"),
    Case("verbose-choice", tiny("basic", "training.verbose=7"), "training.verbose: '7' is not one of", "Fix:"),
    Case("model-name-slash", tiny("basic", "tracking.registered_model_name=a/b"),
         "tracking.registered_model_name", "Fix:"),
    Case("monitor-choice", tiny("basic", "training.monitor=accuracy"), "training.monitor", "Fix:"),
    Case("resume-id-without-resume", tiny("basic", "training.resume_run_id=0123456789abcdef0123456789abcdef"),
         "training.resume is false", "add training.resume=true"),
    Case("resume-id-malformed", tiny("basic", "training.resume=true", "training.resume_run_id=run-7"),
         "is not an MLflow run id", "Fix:"),
    Case("resume-nothing-to-resume", tiny("basic", "training.resume=true"),
         "no checkpoint of this config in checkpoints/", "drop training.resume"),
    Case("resume-unknown-run", tiny("basic", "training.resume=true",
                                    "training.resume_run_id=0123456789abcdef0123456789abcdef"),
         "no checkpoint in checkpoints/0123456789abcdef0123456789abcdef", "Fix:"),
    # ---------------------------------------------------------------- data files (data=file)
    Case("file-missing", data("missing.csv"), "missing.csv: no such file", "Fix:"),
    Case("file-empty", data("empty.csv"), "empty.csv: the file is empty", "Fix:", files={"empty.csv": ""}),
    Case("file-wrong-encoding", data("latin.csv"), "not valid UTF-8", "Fix:",
         files={"latin.csv": ("text,label\n" + "caf\xe9 cr\xe8me,positive\n" * 20).encode("latin-1")}),
    Case("file-missing-column", data("cols.csv"), "missing column", "Fix:",
         files={"cols.csv": "review,label\nfine,positive\n"}),
    Case("file-empty-text", data("blank.csv"), "empty text", "Fix:",
         files={"blank.csv": ROWS + ",positive\n"}),
    Case("file-bad-label", data("labels.csv"), "label 0.5 cannot be parsed", "Fix:",
         files={"labels.csv": ROWS.replace("positive", "1").replace("negative", "0") + "so-so film,0.5\n"}),
    Case("file-single-class", data("one.csv"), "only one class", "Fix:",
         files={"one.csv": "text,label\n" + "fine film,positive\n" * 30}),
    Case("file-no-rows", data("header.csv"), "no rows", "Fix:", files={"header.csv": "text,label\n"}),
    Case("file-unknown-suffix", data("data.xyz"), "cannot tell the format", "Fix:", files={"data.xyz": CSV_OK}),
    Case("file-no-path", data("")[:1], "data.path: is required", "Fix:"),
    # ---------------------------------------------------------------- CLI arguments (bilstm-exp)
    Case("cli-no-command", [], "required: command", "usage: bilstm-exp", module="bilstm_exp.cli.main"),
    Case("cli-unknown-command", ["frobnicate"], "invalid choice: 'frobnicate'", "usage: bilstm-exp",
         module="bilstm_exp.cli.main"),
    Case("predict-no-texts", ["predict"], "no texts given", "Fix:", module="bilstm_exp.cli.main"),
    Case("predict-missing-file", ["predict", "--file", "nope.txt"], "nope.txt: no such file", "Fix:",
         module="bilstm_exp.cli.main"),
    Case("train-bad-override", ["train", "model.lstm_units=-4"], "model.lstm_units: must be > 0", "Fix:",
         module="bilstm_exp.cli.main"),
    Case("sync-missing-folder", ["sync", "--from", "mlruns-offline/nope", "--to", DOWN], "no such folder",
         "Fix:", module="bilstm_exp.cli.main"),
    Case("sync-no-offline-run", ["sync", "--from", "empty-folder", "--to", DOWN], "no offline run", "Fix:",
         module="bilstm_exp.cli.main", files={"empty-folder/readme.txt": "nothing"}),
    Case("sync-without-from", ["sync", "--to", DOWN], "the following arguments are required: --from",
         "usage: bilstm-exp sync", module="bilstm_exp.cli.main"),
    # ---------------------------------------------------------------- tracking URIs
    Case("server-unreachable", tiny("basic", "tracking=server", f"tracking.tracking_uri={DOWN}"),
         f"{DOWN} is unreachable", "Fix:"),
    Case("server-unreachable-env", tiny("basic", "tracking=server"), f"{DOWN} is unreachable", "Fix:",
         env={"MLFLOW_TRACKING_URI": DOWN}),
    Case("server-no-uri", tiny("basic", "tracking=server"), "tracking=server needs a server URI", "Fix:"),
    Case("credentials-in-uri", tiny("basic", "tracking=server",
                                    f"tracking.tracking_uri=http://user:hunter2@{DOWN.split('//')[1]}"),
         "holds credentials", "MLFLOW_TRACKING_PASSWORD"),
    Case("sqlite-folder-missing", tiny("basic", "tracking.tracking_uri=sqlite:///no/such/folder/mlflow.db"),
         "folder no/such/folder does not exist", "Fix:"),
    # ---------------------------------------------------------------- issue 12: named cases
    Case("split-leaves-little-to-train", tiny("basic", "data.val_fraction=0.49", "data.test_fraction=0.49"),
         "leave 0.02 of the examples for training", "keep the train share the largest"),
    Case("split-too-few-examples", tiny("basic", "data.num_samples=12", "data.val_fraction=0.25",
                                        "data.test_fraction=0.25"), "the train split is too small", "fewer than 10"),
    Case("champion-metric-never-logged", tiny("basic", "tracking.champion_metric=val/nope"),
         "tracking.champion_metric", "Fix:"),
    Case("file-blank-label", data("blank-label.csv"), "row 81: empty label", "Fix: fill in every label",
         files={"blank-label.csv": ROWS + "an unlabelled film,\n"}),
    Case("file-nan-label", data("nan.jsonl"), "row 3: empty label", "Fix:",
         files={"nan.jsonl": '{"text": "fine", "label": "positive"}\n{"text": "dull", "label": "negative"}\n'
                             '{"text": "so-so", "label": null}\n'}),
    Case("file-numeric-text-column", data("numbers.csv"), "column 'text' holds a number", "data.text_column",
         files={"numbers.csv": "text,label\n" + "".join(f"{i},{'positive' if i % 2 else 'negative'}\n"
                                                          for i in range(40))}),
    Case("file-path-is-a-folder", data("raw"), "raw: is a folder, not a data file", "Fix: point data.path at a file",
         files={"raw/reviews.csv": CSV_OK}),
    Case("predict-empty-text", ["predict", ""], "text 1 of 1 is empty", "Fix: pass non-empty texts",
         module="bilstm_exp.cli.main"),
    Case("predict-whitespace-text", ["predict", "fine", "   "], "text 2 of 2 is empty or only whitespace",
         "Fix:", module="bilstm_exp.cli.main"),
    Case("credentials-in-env-uri", tiny("basic", "tracking=server"), "holds credentials", "MLFLOW_TRACKING_PASSWORD",
         env={"MLFLOW_TRACKING_URI": WITH_PASSWORD}),
    Case("predict-server-down", ["predict", "--tracking-uri", DOWN, "fine"], f"{DOWN} is unreachable", "Fix:",
         module="bilstm_exp.cli.main"),
    Case("compare-server-down", ["compare", "--tracking-uri", DOWN], f"{DOWN} is unreachable", "Fix:",
         module="bilstm_exp.cli.main"),
    Case("store-corrupt", TINY, "is not a usable sqlite database", "mlflow.db.broken) and start a new store",
         files={"mlflow.db": b"this is not a database" * 50}, keeps=("mlflow.db",)),
    Case("experiment-soft-deleted", TINY, "experiment 'bilstm-exp' (id 1) is deleted",
         "mlflow experiments restore --experiment-id 1", setup=deleted_experiment),
    Case("experiment-name-rejected", tiny("basic", "tracking.experiment_name=" + "x" * 501),
         "501 characters, and MLflow refuses names over 500", "Fix: pick a shorter plain name"),
    Case("resume-deleted-run", [*TINY, "training.resume=true"], "is deleted in the tracking store",
         "mlflow runs restore --run-id", setup=deleted_run_with_checkpoint, keeps=("checkpoints",)),
    Case("resume-corrupt-checkpoint", [*TINY, "training.resume=true"], "epoch-0000.weights.h5 of run",
         "cannot be read", setup=killed_run_with_corrupt_checkpoint, runs=("KILLED",), keeps=("checkpoints",)),
    Case("resume-changed-config", [*TINY, "training.resume=true"],
         f"the newest, run {RUN_ID}, differs in 2 key(s): model.lstm_units=16 (now 8); training.epochs=5 (now 1)",
         "Fix: repeat the interrupted run's overrides", setup=checkpoint_of_another_config, keeps=("checkpoints",)),
    # ---------------------------------------------------------------- issue 12: our own cases
    Case("split-val-test-sum", tiny("basic", "data.val_fraction=0.4", "data.test_fraction=0.4"),
         "data.val_fraction + data.test_fraction", "Fix:"),
    Case("file-whitespace-label", data("spaces.csv"), "row 81: empty label", "Fix:",
         files={"spaces.csv": ROWS + "a film,   \n"}),
    Case("file-numeric-text-jsonl", data("n.jsonl"), "holds a number (3.5)", "data.text_column",
         files={"n.jsonl": '{"text": 3.5, "label": "a"}\n{"text": "x", "label": "b"}\n'}),
    Case("credentials-token-query", tiny("basic", "tracking=server", f"tracking.tracking_uri='{DOWN}/?token=hunter2'"),
         "holds credentials", "MLFLOW_TRACKING_TOKEN"),
    Case("credentials-https-env-uri", tiny("basic", "tracking=server"), "holds credentials", "Fix:",
         env={"MLFLOW_TRACKING_URI": f"https://user:hunter2@{DOWN.split('//')[1]}"}),
    Case("predict-credentials", ["predict", "--tracking-uri", WITH_PASSWORD, "fine"], "holds credentials",
         "MLFLOW_TRACKING_USERNAME", module="bilstm_exp.cli.main"),
    Case("compare-credentials", ["compare", "--tracking-uri", WITH_PASSWORD], "holds credentials",
         "MLFLOW_TRACKING_USERNAME", module="bilstm_exp.cli.main"),
    Case("runs-credentials", ["runs", "--tracking-uri", WITH_PASSWORD], "holds credentials",
         "MLFLOW_TRACKING_USERNAME", module="bilstm_exp.cli.main"),
    Case("runs-server-down", ["runs", "--stale", "--tracking-uri", DOWN], f"{DOWN} is unreachable", "Fix:",
         module="bilstm_exp.cli.main"),
    Case("runs-no-store", ["runs", "--stale"], "no MLflow store at mlflow.db", "Fix: run in the folder",
         module="bilstm_exp.cli.main"),
    Case("runs-close-without-stale", ["runs", "--close"], "--close ends stale runs only", "Fix: add --stale",
         module="bilstm_exp.cli.main"),
    Case("runs-negative-age", ["runs", "--stale", "--older-than", "-5"], "--older-than -5: must be >= 0", "Fix:",
         module="bilstm_exp.cli.main"),
    Case("predict-no-store", ["predict", "--model", "models:/bilstm-sentiment@champion", "fine"],
         "no MLflow store at mlflow.db", "Fix:", module="bilstm_exp.cli.main"),
    Case("predict-corrupt-store", ["predict", "fine"], "is not a usable sqlite database", "Fix: move mlflow.db aside",
         module="bilstm_exp.cli.main", files={"mlflow.db": b"\x00garbage" * 100}, keeps=("mlflow.db",)),
    Case("compare-corrupt-store", ["compare"], "is not a usable sqlite database", "Fix:",
         module="bilstm_exp.cli.main", files={"mlflow.db": b"SQLite format 3\x00" + b"\xff" * 200},
         keeps=("mlflow.db",)),
    Case("sqlite-uri-is-a-folder", tiny("basic", "tracking.tracking_uri=sqlite:///stores"), "is a folder, not a sqlite",
         "Fix:", files={"stores/readme.txt": "a folder"}),
    Case("compose-params-credentials", ["compose-params", f"tracking.tracking_uri={WITH_PASSWORD}"],
         "tracking.tracking_uri: holds credentials, and params.yaml is tracked by git", "MLFLOW_TRACKING_PASSWORD",
         module="bilstm_exp.cli.main", setup=project_conf),
    Case("sync-credentials", ["sync", "--from", "offline", "--to", WITH_PASSWORD], "holds credentials", "Fix:",
         module="bilstm_exp.cli.main", setup=offline_run, runs=("FINISHED",)),
    Case("resume-finished-run", [*TINY, "training.resume=true"], "has already FINISHED", "Fix:",
         setup=lambda folder: _checkpoint(folder, _run(folder, "FINISHED"), [*TINY, "training.resume=true"]),
         runs=("FINISHED",), keeps=("checkpoints",)),
    Case("file-nan-label-csv", data("nan.csv"), "row 81: empty label", "Fix:",
         files={"nan.csv": ROWS + "a film,NaN\n"}),
    Case("predict-only-blank-lines", ["predict", "--file", "blank.txt"], "no texts given", "Fix:",
         module="bilstm_exp.cli.main", files={"blank.txt": "\n   \n\t\n"}),
    Case("runs-unknown-experiment", ["runs", "--experiment", "nope"], "experiment 'nope' not found", "Fix:",
         module="bilstm_exp.cli.main", setup=store_with_a_run, runs=("FINISHED",)),
    # ---------------------------------------------------------------- python -m bilstm_exp: Hydra's composition, names
    Case("mistyped-key", ["model.lstm_unit=3"], "model.lstm_unit: unknown key", "did you mean model.lstm_units"),
    Case("unknown-option-in-a-sweep", ["-m", "seed=1,2", "model=transformer"], "Could not find 'model/transformer'",
         "Fix:"),
    Case("override-syntax", ["model=[unclosed"], "cannot parse the overrides", "Fix:"),
    Case("project-option-misspelt", ["model=wdie"], "available: attention, basic, stacked, unidirectional, wide",
         "Fix:", files={"conf/model/wide.yaml": "defaults:\n  - /schema/model/basic@_here_\n"}),
    Case("env-in-experiment-name", ["tracking.experiment_name=exp-${oc.env:API_TOKEN}"],
         "tracking.experiment_name: 'exp-${oc.env:API_TOKEN}' takes its value from the environment",
         "Fix: write the name itself", env={"API_TOKEN": "hunter2-token"}),
    Case("env-in-model-name-sweep", ["-m", "seed=1,2", "tracking.registered_model_name=${oc.env:API_TOKEN}"],
         "tracking.registered_model_name: '${oc.env:API_TOKEN}' takes its value from the environment",
         "Fix: write the name itself", env={"API_TOKEN": "hunter2-token"}),
    Case("env-in-name-compose-params", ["compose-params", "tracking.experiment_name=${oc.env:API_TOKEN}"],
         "takes its value from the environment", "Fix: write the name itself", module="bilstm_exp.cli.main",
         env={"API_TOKEN": "hunter2-token"}),
    # ---------------------------------------------------------------- issues 22 (7, 9) and 26: files as handed over
    Case("file-utf16", data("u16.csv"), "u16.csv: is UTF-16 text", "Fix: data.encoding=utf-16",
         files={"u16.csv": ROWS.encode("utf-16")}),
    Case("file-binary", data("bin.csv"), "bin.csv: is a binary file, not text", "Fix: point data.path at a text file",
         files={"bin.csv": b"PK\x03\x04\x14\x00\x00\x00" + bytes(range(256))}),
    Case("file-unclosed-quote", data("quote.csv"), "quote.csv, line 82: a quote opened there is never closed",
         "Fix: close the quote", files={"quote.csv": ROWS + '"an open quote,positive\n'}),
    Case("file-wrong-encoding-names-line", data("late.csv"), "late.csv: not valid UTF-8 (line 82, byte",
         "data.encoding=latin-1", files={"late.csv": (ROWS + "caf\xe9 cr\xe8me,positive\n").encode("latin-1")}),
    Case("file-field-count", data("fields.csv"), "fields.csv, line 82: 3 fields where the lines before have 2",
         "Fix: put a text that holds a comma in double quotes", files={"fields.csv": ROWS + "a, b film,positive\n"}),
    Case("file-two-rows", data("two.csv"), "the val split is empty (2 examples", "Fix: add labelled rows to two.csv",
         files={"two.csv": CSV_OK}),
    Case("file-missing-with-a-store", data("missing.csv"), "missing.csv: no such file", "Fix:",
         setup=store_with_a_run, keeps=("mlflow.db",)),  # the store, byte for byte: no experiment, no run
    Case("predict-latin1-text", ["predict", "--file", "latin.txt"], "latin.txt: not valid UTF-8 (line 2, byte",
         "--encoding latin-1", module="bilstm_exp.cli.main", files={"latin.txt": "fine\ncaf\xe9\n".encode("latin-1")}),
    Case("predict-utf16-csv", ["predict", "--file", "u16.csv"], "u16.csv: is UTF-16 text", "Fix: --encoding utf-16",
         module="bilstm_exp.cli.main", files={"u16.csv": "text\nfine\n".encode("utf-16")}),
    Case("predict-binary-csv", ["predict", "--file", "bin.csv"], "bin.csv: is a binary file, not text",
         "Fix: point --file at a text file", module="bilstm_exp.cli.main",
         files={"bin.csv": b"\x1f\x8b\x08\x00" + bytes(range(256))}),
    Case("predict-unclosed-quote", ["predict", "--file", "quote.csv"], "quote.csv, line 3: a quote opened there is "
         "never closed", "Fix: close the quote", module="bilstm_exp.cli.main",
         files={"quote.csv": 'text\nfine\n"an open quote\n'}),
    Case("predict-empty-csv", ["predict", "--file", "empty.csv"], "empty.csv: the file is empty", "Fix: add texts",
         module="bilstm_exp.cli.main", files={"empty.csv": ""}),
    Case("predict-unknown-encoding", ["predict", "--file", "t.txt", "--encoding", "klingon"],
         "--encoding klingon: unknown encoding", "Fix:", module="bilstm_exp.cli.main", files={"t.txt": "fine\n"}),
    Case("predict-file-is-a-folder", ["predict", "--file", "texts"], "texts: is a folder, not a data file",
         "Fix: point --file at a file", module="bilstm_exp.cli.main", files={"texts/a.txt": "fine\n"}),
    Case("predict-csv-without-text-column", ["predict", "--file", "r.csv"], "r.csv: no 'text' column",
         "Fix: name the column 'text'", module="bilstm_exp.cli.main", files={"r.csv": "review\nfine\n"}),
    # ---------------------------------------------------------------- issue 22 (5): names MLflow cannot load back
    Case("model-name-not-loadable", tiny("basic", "tracking.registered_model_name='my model #1 ?%&é'"),
         "'my model #1 ?%&é' would be registered but never loaded back", "Fix: use letters, digits"),
    # ---------------------------------------------------------------- issue 22 (3, 9): damaged stores, a folder
    Case("store-damaged-page", TINY, DAMAGED, ".recover | sqlite3", setup=damaged_store, keeps=("mlflow.db",)),
    Case("runs-damaged-store", ["runs"], DAMAGED, "Fix: restore it from a backup", module="bilstm_exp.cli.main",
         setup=damaged_store, keeps=("mlflow.db",)),
    Case("compare-damaged-store", ["compare"], DAMAGED, "start a new store", module="bilstm_exp.cli.main",
         setup=damaged_store, keeps=("mlflow.db",)),
    Case("predict-damaged-store", ["predict", "--model", "models:/bilstm-sentiment@champion", "fine"], DAMAGED,
         ".recover", module="bilstm_exp.cli.main", setup=damaged_store, keeps=("mlflow.db",)),
    Case("promote-damaged-store", ["promote", "--model", "bilstm-sentiment", "--version", "1", "--reason", "why"],
         DAMAGED, ".recover", module="bilstm_exp.cli.main", setup=damaged_store, keeps=("mlflow.db",)),
    Case("runs-store-is-a-folder", ["runs"], "mlflow.db is a folder, not a sqlite file", "Fix: point the URI at a file",
         module="bilstm_exp.cli.main", files={"mlflow.db/readme.txt": "a folder"}, keeps=("mlflow.db",)),
    Case("compare-store-is-a-folder", ["compare"], "mlflow.db is a folder, not a sqlite file", "Fix:",
         module="bilstm_exp.cli.main", files={"mlflow.db/readme.txt": "a folder"}, keeps=("mlflow.db",)),
    Case("predict-store-is-a-folder", ["predict", "--model", "models:/bilstm-sentiment@champion", "fine"],
         "mlflow.db is a folder, not a sqlite file", "Fix:", module="bilstm_exp.cli.main",
         files={"mlflow.db/readme.txt": "a folder"}, keeps=("mlflow.db",)),
    Case("runs-limit-zero", ["runs", "--limit", "0"], "--limit 0: must be >= 1", "Fix:", module="bilstm_exp.cli.main"),
]


def prepare_case(case: Case) -> Path:
    folder = Path(tempfile.mkdtemp(prefix=f"bad-{case.id}-"))
    for name, content in case.files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    if case.setup is not None:
        case.setup(folder)
    return folder


def snapshot(folder: Path, paths: tuple[str, ...]) -> dict[str, bytes]:
    found = {}
    for name in paths:
        for path in [folder / name] if (folder / name).is_file() else sorted((folder / name).rglob("*")):
            if path.is_file():
                found[str(path.relative_to(folder))] = path.read_bytes()
    return found


def run_case(case: Case, folder: Path) -> tuple[subprocess.CompletedProcess, Path]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update({"TF_CPP_MIN_LOG_LEVEL": "2", **case.env})
    out = warm.run(case.module, case.args, cwd=folder, timeout=240, env=env)
    return out, folder


@pytest.fixture(scope="module")
def outcomes():
    """All cases, four at a time (most fail within seconds, before TensorFlow is imported)."""
    folders = [prepare_case(c) for c in CASES]  # one after another: Hydra's composition is process-global
    before = {c.id: snapshot(f, c.keeps) for c, f in zip(CASES, folders, strict=True)}
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(zip([c.id for c in CASES], pool.map(run_case, CASES, folders), strict=True))
    results = {key: (*value, before[key]) for key, value in results.items()}
    yield results
    for _, folder, _ in results.values():
        shutil.rmtree(folder, ignore_errors=True)


def test_the_table_has_at_least_eighty_distinct_cases_and_five_of_each_kind():
    assert len(CASES) >= 80 and len({c.id for c in CASES}) == len(CASES)
    data_files = [c for c in CASES if "data=file" in c.args]
    cli = [c for c in CASES if c.module == "bilstm_exp.cli.main"]
    uris = [c for c in CASES if any(a.startswith("tracking") for a in c.args) or c.env]
    config = [c for c in CASES if c not in data_files + cli + uris]
    assert min(len(data_files), len(cli), len(uris), len(config)) >= 5


@pytest.mark.slow  # one CLI subprocess per case (most answer in about a second; some start a server or DVC)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_fails_clearly_and_leaves_nothing_behind(outcomes, case):
    out, folder, before = outcomes[case.id]
    assert out.returncode == case.code, out.stderr[-2000:]
    assert case.problem in out.stderr, out.stderr[-2000:]
    assert case.fix in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    assert "] epoch 1/" not in out.stdout + out.stderr  # no training started
    assert "hunter2" not in out.stdout + out.stderr
    statuses = []
    for db in folder.rglob("*.db"):  # a store may exist (created by the check), but holds no new run or version
        if str(db.relative_to(folder)) in case.keeps:
            continue
        client = MlflowClient(f"sqlite:///{db}")
        statuses += [r.info.status for r in client.search_runs([e.experiment_id for e in client.search_experiments()])]
        assert client.search_model_versions() == [], db
    assert sorted(statuses) == sorted(case.runs)  # only the runs the setup made, in the status it left them
    assert snapshot(folder, case.keeps) == before  # what the case started with is left as it was
    if "checkpoints" not in case.keeps:
        assert not (folder / "checkpoints").exists()
    assert not (folder / "outputs" / "mlruns-offline").exists() and not (folder / "params.yaml").exists()
