"""Bad input, table-driven: config overrides, data files, CLI arguments and tracking URIs.

Every case runs the real CLI (`python -m bilstm_exp` or `bilstm-exp`) in a subprocess in a fresh
folder and must: exit with the expected code, print a message that names the problem and the fix,
and leave nothing behind: no run in any store, no registered model version, no checkpoint, no
offline store. The cases run in parallel threads; each test then checks one case's outcome.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import tiny
from tests.servers import HOST, free_port

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


def data(path: str) -> list[str]:
    return ["data=file", f"data.path={path}", "model.lstm_units=8", "model.embedding_dim=8", "training.epochs=1",
            "profiling.latency_samples=0"]


DOWN = f"http://{HOST}:{free_port()}"  # nothing listens there

CASES = [
    # ---------------------------------------------------------------- config overrides (python -m bilstm_exp)
    Case("unknown-model", ["model=transformer"], "transformer", "Available options", code=1),
    Case("zero-units", tiny("basic", "model.lstm_units=0"), "model.lstm_units: must be > 0", "Fix:"),
    Case("dropout-range", tiny("basic", "model.dropout=1.5"), "model.dropout: must be in [0, 1)", "Fix:"),
    Case("negative-threshold", tiny("basic", "clipping=norm", "clipping.threshold=-1"),
         "clipping.threshold: must be > 0", "Fix:"),
    Case("zero-batch", tiny("basic", "training.batch_size=0"), "training.batch_size: must be > 0", "Fix:"),
    Case("negative-epochs", tiny("basic", "training.epochs=-1"), "training.epochs: must be > 0", "Fix:"),
    Case("unknown-key", tiny("basic", "+model.lstm_unit=4"), "model.lstm_unit: unknown key", "Fix:"),
    Case("wrong-type", tiny("basic", "training.epochs=three"), "training.epochs", "Fix:"),
    Case("zero-learning-rate", tiny("basic", "optimizer.learning_rate=0"), "optimizer.learning_rate", "Fix:"),
    Case("val-fraction", tiny("basic", "data.val_fraction=0.7"), "data.val_fraction: must be in (0, 0.5)", "Fix:"),
    Case("negative-seed", tiny("basic", "seed=-3"), "seed: must be a non-negative integer", "Fix:"),
    Case("verbose-choice", tiny("basic", "training.verbose=7"), "training.verbose: '7' is not one of", "Fix:"),
    Case("model-name-slash", tiny("basic", "tracking.registered_model_name=a/b"),
         "tracking.registered_model_name", "Fix:"),
    Case("monitor-choice", tiny("basic", "training.early_stopping.monitor=accuracy"),
         "training.early_stopping.monitor", "Fix:"),
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
    Case("cli-no-command", [], "required: command", "usage: bilstm-exp", module="bilstm_exp.cli"),
    Case("cli-unknown-command", ["frobnicate"], "invalid choice: 'frobnicate'", "usage: bilstm-exp",
         module="bilstm_exp.cli"),
    Case("predict-no-texts", ["predict"], "no texts given", "Fix:", module="bilstm_exp.cli"),
    Case("predict-missing-file", ["predict", "--file", "nope.txt"], "nope.txt: no such file", "Fix:",
         module="bilstm_exp.cli"),
    Case("train-bad-override", ["train", "model.lstm_units=-4"], "model.lstm_units: must be > 0", "Fix:",
         module="bilstm_exp.cli"),
    Case("sync-missing-folder", ["sync", "--from", "mlruns-offline/nope", "--to", DOWN], "no such folder",
         "Fix:", module="bilstm_exp.cli"),
    Case("sync-no-offline-run", ["sync", "--from", "empty-folder", "--to", DOWN], "no offline run", "Fix:",
         module="bilstm_exp.cli", files={"empty-folder/readme.txt": "nothing"}),
    Case("sync-without-from", ["sync", "--to", DOWN], "the following arguments are required: --from",
         "usage: bilstm-exp sync", module="bilstm_exp.cli"),
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
]


def run_case(case: Case) -> tuple[subprocess.CompletedProcess, Path]:
    folder = Path(tempfile.mkdtemp(prefix=f"bad-{case.id}-"))
    for name, content in case.files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update({"TF_CPP_MIN_LOG_LEVEL": "2", **case.env})
    out = subprocess.run([sys.executable, "-m", case.module, *case.args], cwd=folder, capture_output=True,
                         text=True, timeout=240, env=env)
    return out, folder


@pytest.fixture(scope="module")
def outcomes():
    """All cases, four at a time (most fail within seconds, before TensorFlow is imported)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(zip([c.id for c in CASES], pool.map(run_case, CASES), strict=True))
    yield results
    import shutil

    for _, folder in results.values():
        shutil.rmtree(folder, ignore_errors=True)


def test_there_are_at_least_thirty_cases_across_the_four_kinds():
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)
    data_files = [c for c in CASES if "data=file" in c.args]
    cli = [c for c in CASES if c.module == "bilstm_exp.cli"]
    uris = [c for c in CASES if any(a.startswith("tracking") for a in c.args) or c.env]
    config = [c for c in CASES if c not in data_files + cli + uris]
    assert min(len(data_files), len(cli), len(uris), len(config)) >= 5


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_fails_clearly_and_leaves_nothing_behind(outcomes, case):
    out, folder = outcomes[case.id]
    assert out.returncode == case.code, out.stderr[-2000:]
    assert case.problem in out.stderr, out.stderr[-2000:]
    assert case.fix in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    assert "Epoch 1/" not in out.stdout + out.stderr  # no training started
    assert "hunter2" not in out.stdout + out.stderr
    for db in folder.rglob("*.db"):  # a store may exist (created by the check), but holds no run or version
        client = MlflowClient(f"sqlite:///{db}")
        assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == [], db
        assert client.search_model_versions() == [], db
    assert not (folder / "checkpoints").exists() and not (folder / "mlruns-offline").exists()
