"""Epoch checkpoints, so an interrupted run can continue into the same MLflow run.

Every finished epoch is checkpointed in ``checkpoints/<run_id>/`` under the working directory:

    state.json              last finished epoch (0-based), run id, the config it was made with, the data
                            md5, every epoch's Keras logs and the early-stopping counters
    epoch-NNNN.weights.h5   model and optimizer variables (Keras ``save_weights`` with a built optimizer,
                            as ``keras.callbacks.BackupAndRestore`` does), so learning-rate schedules and
                            Adam moments continue where they stopped
    best.weights.npz        early stopping's best weights (``restore_best_weights``), when it has some

A checkpoint is written after MLflow has received the epoch's metrics, and SIGINT/SIGTERM are held
back while both happen, so an epoch is either logged and checkpointed or neither: a resumed run never
logs a step twice. ``state.json`` is replaced atomically and names its weights file, so a crash while
writing leaves the previous checkpoint intact. The folder is deleted when the run ends FINISHED.

``training.resume=true`` (with ``training.resume_run_id`` or, without it, the newest checkpoint made
with the same config) restores the weights, optimizer and early-stopping state and continues with the
next epoch. A checkpoint that cannot be read (a truncated weights file, a broken ``state.json``) is
reported as such, naming the file and what to do, before the run is reopened, so its status stays
as it was. Not restored: the order in which the training data is shuffled (a resumed epoch k sees the
order of epoch 0 of a fresh pipeline), so a resumed run matches an uninterrupted one in epochs and
metric-history length, not value for value.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bilstm_exp.errors import UserError

if TYPE_CHECKING:  # Keras is imported only where a callback is made: a resume is checked before TensorFlow
    import keras

    from bilstm_exp.config.schema import ExperimentConfig

FOLDER = "checkpoints"
STATE = "state.json"
BEST = "best.weights.npz"
# How a run is executed, not what it computes: these may differ between the run and its resumption.
RUNTIME_KEYS = ("training.resume", "training.resume_run_id", "training.verbose")
HELD = {signal.SIGINT, signal.SIGTERM}  # held back while an epoch is logged and checkpointed


class ResumeError(UserError):
    """No checkpoint to resume, or one made for another config or data."""


class CorruptCheckpoint(ResumeError):
    """A checkpoint file cannot be read. The run keeps its status (the session ends it as it was)."""

    keeps_status = True
    failure_reason = "corrupt_checkpoint"


def _corrupt(path: Path, problem: str, run_id: str) -> CorruptCheckpoint:
    return CorruptCheckpoint(f"checkpoint {path} of run {run_id} cannot be read ({problem}); the run was left as it "
                             f"was. Fix: delete {path.parent}/ and start a new run without training.resume (the "
                             f"interrupted run keeps its logged epochs in MLflow), or restore the file from a backup")


@dataclass
class Checkpointer:
    """The checkpoint folder of one run; ``state`` is what a resumption starts from (None: a new run)."""

    root: Path
    config: dict[str, Any]  # flattened config without secrets, compared on resume
    state: dict[str, Any] | None = None
    run_id: str | None = None
    history: dict[str, list[float]] = field(default_factory=dict)
    held: Any = None  # the Deferral holding SIGINT/SIGTERM while an epoch is logged and checkpointed
    data_md5: str | None = None

    # ------------------------------------------------------------------ finding one

    @classmethod
    def open(cls, root: Path, config: dict[str, Any], resume: bool, run_id: str | None) -> Checkpointer:
        """A fresh checkpointer, or (resume) the one of ``run_id`` or of the newest matching checkpoint."""
        config = json.loads(json.dumps({k: v for k, v in config.items() if k not in RUNTIME_KEYS}, default=str))
        if not resume:
            return cls(root, config)
        folder = root / FOLDER
        if run_id is not None:
            _check_files(folder / run_id, run_id)
            state = _read_state(folder / run_id)
            if state is None:
                raise ResumeError(f"training.resume_run_id={run_id}: no checkpoint in {FOLDER}/{run_id}/ of "
                                  f"{root.name or root}. Fix: run in the working directory of the interrupted run, "
                                  "or drop training.resume to start a new run")
            _check_config(state, config, run_id)
        else:
            candidates = sorted((s for s in map(_read_state, _subfolders(folder)) if s is not None),
                                key=lambda s: s["saved_at"], reverse=True)
            matching = [s for s in candidates if _differences(s["config"], config) == []]
            if not matching:
                broken = [p.name for p in _subfolders(folder) if (p / STATE).exists() and _read_state(p) is None]
                others = ""
                if candidates:
                    newest = candidates[0]
                    differences = _differences(newest["config"], config)
                    others = (f" ({len(candidates)} checkpoint(s) there were made with another config; the newest, "
                              f"run {newest['run_id']}, differs in {len(differences)} key(s): "
                              f"{'; '.join(differences[:8])}{'; ...' if len(differences) > 8 else ''})")
                if broken:
                    others += f" (unreadable checkpoint(s): {', '.join(f'{FOLDER}/{b}/' for b in broken)})"
                raise ResumeError(f"training.resume=true: no checkpoint of this config in {FOLDER}/{others}. Fix: "
                                  "repeat the interrupted run's overrides, pass training.resume_run_id=RUN_ID, "
                                  "or drop training.resume to start a new run")
            state = matching[0]
            _check_files(folder / state["run_id"], state["run_id"])
        return cls(root, config, state=state, run_id=state["run_id"],
                   history={k: list(v) for k, v in state["history"].items()})

    @property
    def resuming(self) -> bool:
        return self.state is not None

    @property
    def folder(self) -> Path:
        if self.run_id is None:
            raise RuntimeError("Checkpointer.bind(run_id) first")
        return self.root / FOLDER / self.run_id

    @property
    def initial_epoch(self) -> int:
        """The first epoch still to train."""
        return 0 if self.state is None else self.state["epoch"] + 1

    @property
    def fit_done(self) -> bool:
        """The interrupted run had finished training (it was stopped while recording its results)."""
        return bool(self.state and self.state.get("fit_done"))

    def bind(self, run_id: str) -> None:
        self.run_id = run_id

    def check_data(self, md5: str) -> None:
        self.data_md5 = md5
        if self.state is not None and self.state.get("data_md5") not in (None, md5):
            raise ResumeError(f"run {self.run_id} was trained on other data (md5 {self.state['data_md5']}, "
                              f"now {md5}). Fix: restore that data, or drop training.resume to start a new run")

    # ------------------------------------------------------------------ restoring

    def restore(self, model: keras.Model) -> None:
        """Load model and optimizer variables of the last finished epoch into a compiled model."""
        if self.state is None:
            return
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        path = self.folder / self.state["weights"]
        try:
            model.load_weights(path)
        except Exception as error:  # h5py/Keras errors: the file does not fit this model or is damaged
            raise _corrupt(path, f"{type(error).__name__}: {str(error).splitlines()[0][:200]}", self.run_id) from None

    def callbacks(self, logger: keras.callbacks.Callback,
                  stopping: keras.callbacks.EarlyStopping | None) -> list[keras.callbacks.Callback]:
        """The last callbacks of ``fit``, siblings in this order: hold signals, ``logger`` (the MLflow
        logger), checkpoint the epoch and release the signals. An epoch is thus either logged and
        checkpointed or neither. Also restores early stopping's counters on a resumption."""
        hold, checkpoint = _callback_classes()
        return [hold(self), logger, checkpoint(self, stopping)]

    # ------------------------------------------------------------------ writing

    def save(self, model: keras.Model, epoch: int, logs: dict[str, Any],
             stopping: keras.callbacks.EarlyStopping | None, fit_done: bool = False) -> None:
        folder = self.folder
        folder.mkdir(parents=True, exist_ok=True)
        weights = f"epoch-{epoch:04d}.weights.h5"
        model.save_weights(folder / f"{weights}.tmp.weights.h5", overwrite=True)
        os.replace(folder / f"{weights}.tmp.weights.h5", folder / weights)
        early = None
        if stopping is not None:
            early = {"wait": int(stopping.wait), "best_epoch": int(stopping.best_epoch),
                     "stopped_epoch": int(stopping.stopped_epoch),
                     "best": None if stopping.best is None else float(stopping.best)}
            if stopping.best_weights is not None:
                with open(folder / f"{BEST}.tmp", "wb") as out:
                    np.savez(out, *stopping.best_weights)
                os.replace(folder / f"{BEST}.tmp", folder / BEST)
        state = {"run_id": self.run_id, "epoch": epoch, "fit_done": fit_done, "weights": weights,
                 "saved_at": time.time(), "config": self.config, "data_md5": self.data_md5,
                 "history": self.history, "early_stopping": early}
        _write_json(folder / STATE, state)
        for old in folder.glob("epoch-*.weights.h5"):
            if old.name != weights:
                old.unlink(missing_ok=True)

    def delete(self) -> None:
        """After a FINISHED run: nothing is left to resume."""
        if self.run_id is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            if (self.root / FOLDER).is_dir() and not any((self.root / FOLDER).iterdir()):
                (self.root / FOLDER).rmdir()


def for_config(config: ExperimentConfig, root: Path, tracking_uri: str | None = None) -> Checkpointer:
    """The checkpointer of a run of ``config`` in ROOT: epoch checkpoints in
    checkpoints/<run_id>/; with training.resume=true, the interrupted run's, checked (files, config,
    and that the run is in the tracking store, default: the current one, and not FINISHED)."""
    from bilstm_exp.config.schema import flatten
    from bilstm_exp.tracking import store

    flat = {k: v for k, v in flatten(store.masked_config(config)).items() if not store.is_secret(k, v)}
    checkpointer = Checkpointer.open(root, flat, config.training.resume, config.training.resume_run_id)
    if checkpointer.resuming:
        store.check_resumable(checkpointer.run_id, tracking_uri)
    return checkpointer


@functools.cache
def _callback_classes() -> tuple[type, type]:
    """The two Keras callbacks of :meth:`Checkpointer.callbacks`, defined on first use."""
    import keras

    class HoldSignals(keras.callbacks.Callback):
        """Holds SIGINT and SIGTERM back at the end of an epoch, until :class:`EpochCheckpoint` has saved it."""

        def __init__(self, checkpointer: Checkpointer):
            super().__init__()
            self.checkpointer = checkpointer

        def on_epoch_end(self, epoch: int, logs=None) -> None:
            self.checkpointer.held = Deferral().hold()

    class EpochCheckpoint(keras.callbacks.Callback):
        def __init__(self, checkpointer: Checkpointer, stopping: keras.callbacks.EarlyStopping | None):
            super().__init__()
            self.checkpointer, self.stopping = checkpointer, stopping

        def on_train_begin(self, logs=None) -> None:
            state = self.checkpointer.state
            if state and self.stopping is not None and state.get("early_stopping"):
                # EarlyStopping.on_train_begin (called before this) has just reset these.
                early = state["early_stopping"]
                self.stopping.wait, self.stopping.best_epoch = early["wait"], early["best_epoch"]
                self.stopping.best = early["best"]
                best = self.checkpointer.folder / BEST
                if best.exists():
                    with np.load(best) as arrays:
                        self.stopping.best_weights = [arrays[f"arr_{i}"] for i in range(len(arrays.files))]

        def on_epoch_end(self, epoch: int, logs=None) -> None:
            logs = logs or {}
            try:
                finite = all(np.isfinite(float(v)) for v in logs.values() if np.ndim(v) == 0)
                for key, value in logs.items():
                    if np.ndim(value) == 0:
                        self.checkpointer.history.setdefault(key, []).append(float(value))
                if finite:  # a NaN epoch is no state to resume from
                    self.checkpointer.save(self.model, epoch, logs, self.stopping)
            finally:
                held, self.checkpointer.held = self.checkpointer.held, None
                if held is not None:
                    held.release()  # a signal that arrived meanwhile is handled now

        def on_train_end(self, logs=None) -> None:
            epochs = len(next(iter(self.checkpointer.history.values()), []))
            if epochs and all(np.isfinite(v) for values in self.checkpointer.history.values() for v in values):
                # after EarlyStopping restored its best weights: what evaluation will use
                with held_signals():
                    self.checkpointer.save(self.model, epochs - 1, {}, self.stopping, fit_done=True)

    return HoldSignals, EpochCheckpoint


class Deferral:
    """SIGINT and SIGTERM recorded instead of handled between :meth:`hold` and :meth:`release`, which
    then hands the first one to the handler that was in place (so it arrives as usual, only later).

    Python handles signals in the main thread, whichever thread the kernel delivered them to, so
    swapping the Python-level handlers holds them back reliably; a thread's signal mask would not
    (TensorFlow's threads would still receive them). Must be used from the main thread.
    """

    def __init__(self):
        self.previous: dict[int, Any] = {}
        self.pending: list[int] = []

    def hold(self) -> Deferral:
        for sig in HELD:
            self.previous[sig] = signal.signal(sig, lambda signum, frame: self.pending.append(signum))
        return self

    def release(self) -> None:
        previous, self.previous = self.previous, {}
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        if self.pending:
            sig = self.pending[0]
            handler = previous.get(sig)
            if callable(handler):
                handler(sig, None)  # e.g. the session's: raises Terminated / KeyboardInterrupt
            elif handler != signal.SIG_IGN:
                signal.raise_signal(sig)  # the default action


@contextmanager
def held_signals():
    """SIGINT and SIGTERM wait until the block is done, then arrive as usual."""
    held = Deferral().hold()
    try:
        yield
    finally:
        held.release()


def _subfolders(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_dir()] if folder.is_dir() else []


def _read_state(folder: Path) -> dict[str, Any] | None:
    try:
        state = json.loads((folder / STATE).read_text())
    except (OSError, ValueError):
        return None
    return state if (folder / state.get("weights", "")).is_file() else None


def _check_files(folder: Path, run_id: str) -> None:
    """A checkpoint folder's files must be readable: state.json (JSON naming its weights file), the
    weights (an HDF5 file h5py can open and list) and, if present, the early-stopping weights."""
    state_path = folder / STATE
    if not state_path.exists():
        return  # nothing there: the caller says "no checkpoint"
    try:
        state = json.loads(state_path.read_text())
        missing = {"epoch", "run_id", "config", "history", "weights"} - set(state)
        if missing:
            raise KeyError(f"no {', '.join(sorted(missing))}")
        weights = folder / state["weights"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise _corrupt(state_path, f"{type(error).__name__}: {error}", run_id) from None
    if not weights.is_file():
        raise _corrupt(weights, "the file is missing", run_id)
    try:
        import h5py

        with h5py.File(weights, "r") as handle:
            if not list(handle.keys()):
                raise ValueError("no weights in it")
    except Exception as error:
        raise _corrupt(weights, f"{type(error).__name__}: {str(error).splitlines()[0][:200]}", run_id) from None
    if (folder / BEST).exists():
        try:
            with np.load(folder / BEST) as arrays:
                for name in arrays.files:
                    arrays[name]
        except Exception as error:
            raise _corrupt(folder / BEST, f"{type(error).__name__}: {str(error).splitlines()[0][:200]}",
                           run_id) from None


def _differences(saved: dict[str, Any], config: dict[str, Any]) -> list[str]:
    keys = sorted(set(saved) | set(config))
    return [f"{k}={saved.get(k)!r} (now {config.get(k)!r})" for k in keys if saved.get(k) != config.get(k)]


def _check_config(state: dict[str, Any], config: dict[str, Any], run_id: str) -> None:
    differences = _differences(state["config"], config)
    if differences:
        raise ResumeError(f"run {run_id} was made with another config: {'; '.join(differences[:5])}. Fix: resume "
                          "with the run's overrides (its overrides.yaml artifact), or drop training.resume")


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, default=str))
    os.replace(tmp, path)
