"""Epoch checkpoints, so an interrupted run can continue into the same MLflow run.

Every finished epoch is checkpointed in ``checkpoints/<run_id>/`` under the working directory:

    state.json              last finished epoch (0-based), run id, the config it was made with, the data
                            md5, every epoch's Keras logs and the early-stopping counters
    epoch-NNNN.weights.npz  model and optimizer variables, so learning-rate schedules and Adam moments continue
                            where they stopped; NumPy, not HDF5: a disk full mid-write left HDF5 an unflushable
                            file and a SIGSEGV at exit (earlier versions' ``.weights.h5`` still resume)
    best.weights.npz        early stopping's best weights (``restore_best_weights``), when it has some

A checkpoint is written after MLflow has received the epoch's metrics, and SIGINT/SIGTERM are held
back while both happen, so an epoch is either logged and checkpointed or neither: a resumed run never
logs a step twice. Every file is written under a temporary name and renamed, ``state.json`` (which
names its weights file) last, so a crash or a full disk while writing leaves the previous checkpoint
intact (a full disk ends the run with :class:`bilstm_exp.disk.DiskFull`). The folder is deleted when
the run ends FINISHED.

``training.resume=true`` (with ``training.resume_run_id`` or, without it, the newest checkpoint made
with the same config) restores the weights, optimizer and early-stopping state and continues with the
next epoch. A checkpoint that cannot be read (a truncated weights file, a broken ``state.json``) is
reported as such, naming the file and what to do, before the run is reopened, so its status stays
as it was. Not restored: the order in which the training data is shuffled (a resumed epoch k sees the
order of epoch 0 of a fresh pipeline), so a resumed run matches an uninterrupted one in epochs and
metric-history length, not value for value.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bilstm_exp import disk
from bilstm_exp.errors import UserError
from bilstm_exp.tracking.redaction import is_secret, scrub
from bilstm_exp.training.signals import Deferral, held_signals

if TYPE_CHECKING:  # Keras is imported only where a callback is made: a resume is checked before TensorFlow
    import keras

    from bilstm_exp.config.schema import ExperimentConfig

FOLDER = "checkpoints"
STATE = "state.json"
BEST = "best.weights.npz"
# How a run is executed, not what it computes: these may differ between the run and its resumption.
RUNTIME_KEYS = ("training.resume", "training.resume_run_id", "training.verbose")


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
            if path.suffix == ".h5":  # a checkpoint of an earlier version (Keras's save_weights)
                model.load_weights(path)
            else:
                _load_variables(model, path)
        except Exception as error:  # h5py/Keras errors: the file does not fit this model or is damaged
            raise _corrupt(path, f"{type(error).__name__}: {str(error).splitlines()[0][:200]}", self.run_id) from None

    def callbacks(self, logger: keras.callbacks.Callback,
                  stopping: keras.callbacks.EarlyStopping | None) -> list[keras.callbacks.Callback]:
        """The last callbacks of ``fit``, siblings in this order: hold signals, ``logger`` (the MLflow
        logger), checkpoint the epoch and release the signals. An epoch is thus either logged and
        checkpointed or neither. Also restores early stopping's counters on a resumption."""
        import keras

        hold = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: self._hold())
        save = keras.callbacks.LambdaCallback(
            on_train_begin=lambda logs: self._restore_stopping(stopping),
            on_epoch_end=lambda epoch, logs: self._epoch_end(save.model, epoch, logs or {}, stopping),
            on_train_end=lambda logs: self._train_end(save.model, stopping))
        return [hold, logger, save]

    def _hold(self) -> None:
        """SIGINT and SIGTERM wait from the end of an epoch until it is checkpointed."""
        self.held = Deferral().hold()

    def _restore_stopping(self, stopping: keras.callbacks.EarlyStopping | None) -> None:
        """A resumption: early stopping's counters and best weights as the interrupted run left them
        (``EarlyStopping.on_train_begin``, called just before, has reset them)."""
        early = (self.state or {}).get("early_stopping")
        if stopping is None or not early:
            return
        stopping.wait, stopping.best_epoch, stopping.best = early["wait"], early["best_epoch"], early["best"]
        if (self.folder / BEST).exists():
            with np.load(self.folder / BEST) as arrays:
                stopping.best_weights = [arrays[f"arr_{i}"] for i in range(len(arrays.files))]

    def _epoch_end(self, model: keras.Model, epoch: int, logs: dict[str, Any],
                   stopping: keras.callbacks.EarlyStopping | None) -> None:
        """Keep the epoch's logs and checkpoint it (a NaN epoch is no state to resume from); then
        release the signals held since the epoch ended (one that arrived meanwhile is handled now)."""
        try:
            scalars = {key: float(value) for key, value in logs.items() if np.ndim(value) == 0}
            for key, value in scalars.items():
                self.history.setdefault(key, []).append(value)
            if all(np.isfinite(v) for v in scalars.values()):
                self.save(model, epoch, stopping)
        finally:
            held, self.held = self.held, None
            if held is not None:
                held.release()

    def _train_end(self, model: keras.Model, stopping: keras.callbacks.EarlyStopping | None) -> None:
        """After EarlyStopping restored its best weights: checkpoint what evaluation will use."""
        epochs = len(next(iter(self.history.values()), []))
        if epochs and all(np.isfinite(v) for values in self.history.values() for v in values):
            with held_signals():
                self.save(model, epochs - 1, stopping, fit_done=True)

    # ------------------------------------------------------------------ writing

    def save(self, model: keras.Model, epoch: int, stopping: keras.callbacks.EarlyStopping | None,
             fit_done: bool = False) -> None:
        """Checkpoint ``epoch`` atomically: each file is written under a temporary name, then all are
        renamed, ``state.json`` last. A failed write (a full disk) removes what it wrote and leaves the
        previous checkpoint as it was."""
        folder = self.folder
        weights = f"epoch-{epoch:04d}{'-final' if fit_done else ''}.weights.npz"
        early, best = _early_stopping(stopping)
        state = {"run_id": self.run_id, "epoch": epoch, "fit_done": fit_done, "weights": weights,
                 "saved_at": time.time(), "config": self.config, "data_md5": self.data_md5,
                 "history": self.history, "early_stopping": early}
        staged: list[tuple[Path, Path]] = []
        try:
            folder.mkdir(parents=True, exist_ok=True)
            staged.append(_stage(folder / weights, lambda tmp: _save_variables(model, tmp)))
            if best is not None:
                staged.append(_stage(folder / BEST, lambda tmp: np.savez(tmp, *best)))
            staged.append(_stage(folder / STATE, lambda tmp: tmp.write_text(json.dumps(state, default=str))))
        except Exception as error:
            for tmp, _ in staged:
                disk.remove_quietly(tmp)
            if disk.is_full(error):
                raise self._full(epoch) from error
            raise
        for tmp, final in staged:
            os.replace(tmp, final)
        for old in folder.glob("epoch-*.weights.*"):
            if old.name != weights:
                old.unlink(missing_ok=True)

    def _full(self, epoch: int) -> disk.DiskFull:
        """The one line for a checkpoint that did not fit: where, and what is still there to resume."""
        kept = _read_state(self.folder)
        tail = (f"no epoch of run {self.run_id} was checkpointed. Fix: free space there and start the run again"
                if kept is None else f"the last good checkpoint of run {self.run_id} (epoch {kept['epoch'] + 1}) "
                "is intact. Fix: free space there, then continue the run with the same overrides plus "
                "training.resume=true")
        return disk.DiskFull(f"no space left on device for the checkpoint of epoch {epoch + 1}: "
                             f"{disk.where(self.folder)}; {tail}")

    def delete(self) -> None:
        """After a FINISHED run: nothing is left to resume."""
        if self.run_id is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            if (self.root / FOLDER).is_dir() and not any((self.root / FOLDER).iterdir()):
                (self.root / FOLDER).rmdir()


def identity(config: ExperimentConfig) -> dict[str, Any]:
    """What names a checkpoint: the flattened config as it is recorded (environment values as their
    interpolation text, nothing secret), compared key by key on resume."""
    from bilstm_exp.config.plain import flatten, to_dict

    recorded = scrub(to_dict(config), config.env_refs)
    return {k: v for k, v in flatten(recorded).items() if not is_secret(k, v)}


def for_config(config: ExperimentConfig, root: Path) -> Checkpointer:
    """The checkpointer of a run of ``config`` in ROOT: epoch checkpoints in checkpoints/<run_id>/;
    with training.resume=true, the interrupted run's, its files and config checked. Whether that run
    is still in the tracking store is the store's question (:func:`bilstm_exp.tracking.store.check_resumable`)."""
    return Checkpointer.open(root, identity(config), config.training.resume, config.training.resume_run_id)


def _early_stopping(stopping: keras.callbacks.EarlyStopping | None) -> tuple[dict | None, list | None]:
    """Early stopping's counters (JSON) and its best weights so far (None without early stopping)."""
    if stopping is None:
        return None, None
    best = None if stopping.best is None else float(stopping.best)
    early = {"wait": int(stopping.wait), "best_epoch": int(stopping.best_epoch),
             "stopped_epoch": int(stopping.stopped_epoch), "best": best}
    return early, stopping.best_weights


def _save_variables(model: keras.Model, path: Path) -> None:
    """The model's weights and its built optimizer's variables, in their orders, as one ``.npz`` file."""
    import keras

    arrays = {f"model_{i}": np.asarray(value) for i, value in enumerate(model.get_weights())}
    if model.optimizer is not None and model.optimizer.built:
        arrays.update({f"optimizer_{i}": keras.ops.convert_to_numpy(variable)
                       for i, variable in enumerate(model.optimizer.variables)})
    with open(path, "wb") as handle:  # a handle: np.savez would add ".npz" to a name ending otherwise
        np.savez(handle, **arrays)


def _load_variables(model: keras.Model, path: Path) -> None:
    """What :func:`_save_variables` wrote, into a model of the same config (a mismatch raises)."""
    with np.load(path) as arrays:
        def series(prefix: str) -> list[np.ndarray]:
            return [arrays[f"{prefix}_{i}"] for i in range(sum(n.startswith(f"{prefix}_") for n in arrays.files))]

        model.set_weights(series("model"))
        saved = series("optimizer")
        for variable, value in zip(model.optimizer.variables if saved else [], saved, strict=True):
            variable.assign(value)  # strict: a count that differs raises (reported as a checkpoint that does not fit)


def _stage(final: Path, write: Callable[[Path], Any]) -> tuple[Path, Path]:
    """``write`` the file under a temporary name next to ``final`` (the ending kept); a failed write
    removes its half-written file. Returns (temporary, final)."""
    tmp = final.with_name(f"tmp-{final.name}")
    try:
        write(tmp)
    except BaseException:
        disk.remove_quietly(tmp)
        raise
    return tmp, final


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
        if weights.suffix == ".h5":  # a checkpoint of an earlier version
            import h5py

            with h5py.File(weights, "r") as handle:
                if not list(handle.keys()):
                    raise ValueError("no weights in it")
        else:
            with np.load(weights) as arrays:
                if not [name for name in arrays.files if name.startswith("model_")]:
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
