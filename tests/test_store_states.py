"""Stores between fine and gone: a damaged page, a read-only file system, a disk that fills during a
run; and sweeps that start in the same second.

Real sqlite files, real MLflow, the real CLI in subprocesses. The read-only and full-disk cases need
root (a read-only bind mount or ``chattr +i``; a small tmpfs); elsewhere they skip, saying why. The
bad-input table (tests/test_bad_input.py) holds the one-line refusals of a damaged store and of a
folder named mlflow.db for every reading command.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests import warm
from tests.conftest import migrated_store, run_module, tiny

CLI = "bilstm_exp.cli.main"


# --------------------------------------------------------------------------- states built for real


def damage_a_page(db: Path) -> int:
    """Write garbage over one page in the middle of the sqlite file ``db`` (the header stays valid);
    returns the page number. Pages are tried from the middle outwards until sqlite's own integrity
    check sees the damage (a free page holds nothing to damage)."""
    with contextlib.closing(sqlite3.connect(db)) as connection:
        size, count = (connection.execute(f"PRAGMA {name}").fetchone()[0] for name in ("page_size", "page_count"))
    data = bytearray(db.read_bytes())
    for page in sorted(range(2, count + 1), key=lambda p: abs(p - count // 2)):
        start = (page - 1) * size
        original = bytes(data[start:start + size])
        data[start:start + size] = b"\xa5" * size
        db.write_bytes(bytes(data))
        with contextlib.closing(sqlite3.connect(db)) as connection:
            try:
                damaged = connection.execute("PRAGMA quick_check").fetchall() != [("ok",)]
            except sqlite3.DatabaseError:
                damaged = True
        if damaged:
            return page
        data[start:start + size] = original
    raise AssertionError(f"no page of {db} could be damaged")


def _root(command: list[str]) -> tuple[bool, str]:
    out = subprocess.run(command, capture_output=True, text=True)
    return out.returncode == 0, out.stderr.strip()


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[Path]:
    """``folder`` seen read-only: a read-only bind mount of it (yields the mount), else ``chattr +i`` on
    it and its files (yields the folder). As root, chmod does not stop writes, so it is no test."""
    view = Path(tempfile.mkdtemp(prefix="read-only-"))
    bound, why = _root(["mount", "--bind", str(folder), str(view)])
    if bound:
        remounted, why_ro = _root(["mount", "-o", "remount,ro,bind", str(view)])
        try:
            if remounted:
                yield view
                return
        finally:
            _root(["umount", str(view)])
        why = why_ro
    view.rmdir()
    paths = [folder, *sorted(p for p in folder.iterdir() if p.is_file())]
    frozen, why_chattr = _root(["chattr", "+i", *map(str, paths)])
    if not frozen:
        pytest.skip(f"no read-only store possible here: mount --bind: {why}; chattr +i: {why_chattr}")
    try:
        yield folder
    finally:
        _root(["chattr", "-i", *map(str, paths)])


@contextlib.contextmanager
def small_disk(size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (e.g. 32m): a disk that can be filled in a test."""
    folder = Path(tempfile.mkdtemp(prefix="small-disk-"))
    mounted, why = _root(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)])
    if not mounted:
        folder.rmdir()
        pytest.skip(f"no small disk to fill: mount -t tmpfs: {why} (needs root)")
    try:
        yield folder
    finally:
        _root(["umount", "-l", str(folder)])
        folder.rmdir()


def fill(folder: Path) -> Path:
    """Fill the disk holding ``folder`` to the last byte; returns the filler file."""
    filler = folder / "filler"
    with open(filler, "wb") as out:
        try:
            while True:
                out.write(b"\0" * (1 << 20))
                out.flush()
        except OSError:
            pass
    with contextlib.suppress(OSError), open(filler, "ab") as out:  # the last partial block
        while True:
            out.write(b"\0" * 512)
            out.flush()
    return filler


def one_run(folder: Path, status: str = "FINISHED") -> str:
    """FOLDER/mlflow.db holding one run with a metric; its id."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(migrated_store(folder))
    run = client.create_run(client.create_experiment("bilstm-exp"), run_name="basic-adam")
    client.log_metric(run.info.run_id, "val/loss", 0.5)
    client.set_terminated(run.info.run_id, status)
    return run.info.run_id


# --------------------------------------------------------------------------- a damaged store


def test_a_damaged_page_is_named_before_a_run_and_by_every_read(tmp_path):
    from bilstm_exp.errors import TrackingError
    from bilstm_exp.tracking import store

    one_run(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    store.check_store(uri, write=False)  # undamaged: fine
    damage_a_page(tmp_path / "mlflow.db")
    for check in (lambda: store.check_store(uri, write=False), lambda: store.preflight(uri, "bilstm-exp")):
        with pytest.raises(TrackingError) as refused:
            check()
        message = str(refused.value)
        assert "is damaged (sqlite's quick_check:" in message and "\n" not in message
        assert "restore it from a backup" in message and ".recover" in message and "start a new store" in message


# --------------------------------------------------------------------------- a read-only store


@pytest.fixture(scope="module")
def read_only_trained(trained):
    """The trained project folder (two FINISHED runs, a champion), seen through a read-only file system."""
    with read_only(trained.folder) as view:
        yield trained, view


READ_ONLY = [  # (arguments, run inside the read-only folder?, exit code, what stdout or stderr must say)
    (["runs"], True, 0, "FINISHED"),
    (["runs"], False, 0, "FINISHED"),
    (["compare"], False, 0, "basic"),
    (["compare"], True, 2, "cannot write compare.png/md/csv"),  # the table printed, then one line: no traceback
    (["predict", "--model", "models:/bilstm-sentiment@champion", "a fine film"], True, 0, "a fine film"),
    (["predict", "--model", "models:/bilstm-sentiment@champion", "a fine film"], False, 0, "a fine film"),
    (["promote", "--model", "bilstm-sentiment", "--version", "1", "--reason", "by hand"], False, 2,
     "is read-only, and this command writes to it"),
]


@pytest.mark.slow
@pytest.mark.parametrize("args,inside,code,says", READ_ONLY,
                         ids=[f"{a[0]}-{'inside' if i else 'by-uri'}" for a, i, _, _ in READ_ONLY])
def test_a_read_only_store_is_readable_and_only_writers_are_refused(read_only_trained, tmp_path, args, inside,
                                                                     code, says):
    """Inside: the store is ./mlflow.db of a read-only working folder; by URI: --tracking-uri names it
    from a writable folder (compare writes its report there)."""
    trained, view = read_only_trained
    uri = [] if inside else ["--tracking-uri", f"sqlite:///{view / 'mlflow.db'}"]
    out = run_module([*args, *uri], cwd=view if inside else tmp_path, module=CLI)
    assert out.returncode == code, out.stderr[-2000:]
    assert says in out.stdout + out.stderr
    assert "Traceback" not in out.stderr and "mlflow.db.lock" not in out.stderr
    if args == ["runs"]:  # one line per run: start, status, name, key metrics, id
        lines = out.stdout.splitlines()
        assert lines[0].split() == ["STARTED", "(UTC)", "STATUS", "NAME", "KEY", "METRICS", "RUN", "ID"]
        for result in (trained.basic, trained.attention):
            (line,) = [line for line in lines if result.run_id in line]
            assert "FINISHED" in line and f"test/accuracy {result.metrics['test/accuracy']:.4f}" in line
    if code == 2:
        assert "Fix: remount" in out.stderr or "Fix: make it" in out.stderr, out.stderr


@pytest.mark.slow
def test_training_on_a_read_only_store_is_refused_with_a_fix_for_writing(tmp_path):
    (tmp_path / "store").mkdir()
    one_run(tmp_path / "store")
    with read_only(tmp_path / "store") as view:
        out = run_module(tiny("basic", f"tracking.tracking_uri=sqlite:///{view / 'mlflow.db'}"), cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "is read-only, and this command writes to it" in out.stderr and "Fix:" in out.stderr
    assert "Traceback" not in out.stderr and "] epoch 1/" not in out.stdout


@pytest.mark.slow
def test_a_run_in_a_read_only_working_folder_is_refused_in_one_line(tmp_path):
    """Hydra writes outputs/ before the project's code runs: the folder is checked first."""
    (tmp_path / "project").mkdir()
    with read_only(tmp_path / "project") as view:
        out = run_module(tiny("basic"), cwd=view)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "is not writable" in out.stderr and "Fix: run from a writable folder" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------- a full disk


def test_a_checkpoint_that_does_not_fit_leaves_the_last_good_one():
    import keras

    from bilstm_exp.disk import DiskFull
    from bilstm_exp.training.checkpoints import STATE, Checkpointer

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(64), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    model.optimizer.build(model.trainable_variables)
    with small_disk("2m") as root:
        checkpointer = Checkpointer(root, {"model.lstm_units": 8})
        checkpointer.bind("0123456789abcdef0123456789abcdef")
        checkpointer.save(model, 0, None)
        filler = fill(root)
        with pytest.raises(DiskFull) as full:
            checkpointer.save(model, 1, None)
        message = str(full.value)
        assert "no space left on device for the checkpoint of epoch 2" in message
        assert "(epoch 1) is intact" in message and "training.resume=true" in message
        folder = checkpointer.folder
        state = json.loads((folder / STATE).read_text())
        assert state["epoch"] == 0 and sorted(p.name for p in folder.iterdir()) == sorted([STATE, state["weights"]])
        before = [w.copy() for w in model.get_weights()]
        model.set_weights([np.zeros_like(w) for w in before])
        Checkpointer.open(root, {"model.lstm_units": 8}, True, checkpointer.run_id).restore(model)  # it loads
        assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), before, strict=True))
        filler.unlink()
        checkpointer.save(model, 1, None)  # space again: the next checkpoint replaces it
        assert json.loads((folder / STATE).read_text())["epoch"] == 1


def _first_epoch_logged(db: Path) -> bool:
    try:
        with contextlib.closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=1)) as connection:
            return connection.execute("SELECT count(*) FROM metrics WHERE key = 'train/loss'").fetchone()[0] > 0
    except sqlite3.Error:
        return False


@pytest.mark.slow
def test_a_run_whose_disk_fills_ends_in_one_line_and_an_honest_state():
    """Store, artifacts and checkpoints on one small disk, filled once the first epoch is logged."""
    from mlflow.tracking import MlflowClient

    with small_disk("64m") as root:
        migrated_store(root)
        args = tiny("basic", "training.epochs=400", "training.early_stopping.enabled=false")
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        process = warm.popen("bilstm_exp", args, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 300
        while not _first_epoch_logged(root / "mlflow.db") and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        filler = fill(root)
        stdout, stderr = process.communicate(timeout=300)
        errors = [line for line in stderr.splitlines() if line.startswith("bilstm-exp: error:")]
        assert process.returncode == 2, stderr[-3000:]
        assert len(errors) == 1 and ("disk is full" in errors[0] or "no space left on device" in errors[0]), stderr
        assert "Traceback" not in stderr and "Segmentation" not in stderr, stderr[-3000:]
        client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
        (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
        if run.info.status == "RUNNING":  # the store itself could not be written: the line says how to close it
            assert "bilstm-exp runs --stale --close" in errors[0]
        else:
            assert run.info.status == "FAILED" and run.data.tags["failure_reason"] == "disk_full"
        state_file = root / "checkpoints" / run.info.run_id / "state.json"
        if state_file.exists():  # the last good checkpoint: complete, no half-written file beside it
            state = json.loads(state_file.read_text())
            with np.load(state_file.parent / state["weights"]) as weights:
                assert [name for name in weights.files if name.startswith("model_")]
            assert not [p.name for p in state_file.parent.iterdir() if p.name.startswith("tmp-")]
        filler.unlink()
        closed = run_module(["runs", "--stale", "--close"], cwd=root, module=CLI)
        assert closed.returncode == 0, closed.stderr[-2000:]
        assert client.get_run(run.info.run_id).info.status in ("FAILED", "KILLED")


# --------------------------------------------------------------------------- sweeps


def test_two_sweeps_started_in_the_same_second_get_their_own_folders():
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module("bilstm_exp.conf", version_base=None):
        folders = [OmegaConf.select(compose("config", return_hydra_config=True), "hydra.sweep.dir") for _ in range(2)]
    assert folders[0] != folders[1], folders


# --------------------------------------------------------------------------- where a run says it records


def test_a_store_in_the_working_folder_is_printed_as_a_uri_that_works_from_anywhere(tmp_path, monkeypatch):
    from bilstm_exp.config.compose import compose
    from bilstm_exp.config.schema import validate
    from bilstm_exp.training import summary

    monkeypatch.chdir(tmp_path)
    config = validate(compose(["tracking.tracking_uri=sqlite:///eval.db"]))
    line = summary.recording_line(config, f"sqlite:///{tmp_path / 'eval.db'}")
    assert f"recording to sqlite:///{tmp_path.resolve() / 'eval.db'} " in line  # sqlite:////abs/.../eval.db
    assert f"sqlite:///{tmp_path.resolve() / 'eval.db'}".startswith("sqlite:////")
