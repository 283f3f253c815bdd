"""What training prints while it runs, sized for a terminal.

* Each epoch (``training.verbose=auto``, the default): one short line when stdout is not a terminal
  (a log, CI, a pipe), the few numbers a person watches::

      [bilstm-exp] epoch 3/10  train/loss 0.6812  val/loss 0.6907  val/accuracy 0.5625  1.6 s

  On a terminal, Keras's progress bar showing the same few metrics (:class:`ShortProgbar`).
  ``training.log_level=verbose`` gives Keras's own line of every metric (the bar on a terminal);
  ``training.verbose=0|1|2`` is Keras's own setting, as asked.
* Cross-validation folds and sweep trials: ``fold 2/5`` / ``trial 2/20`` with the time elapsed and an
  estimate of what is left: :class:`bilstm_exp.training.summary.Countdown` (no Keras there: the sweep
  callback runs it in Hydra's process).

The end-of-run summary is :mod:`bilstm_exp.training.summary`'s.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import keras

from bilstm_exp.config.run_schema import TrainingConfig
from bilstm_exp.training.profiling import steps_done
from bilstm_exp.training.summary import PREFIX, say

WATCHED = {"loss": "train/loss", "val_loss": "val/loss", "val_accuracy": "val/accuracy"}  # Keras key -> shown


def short(training: TrainingConfig) -> bool:
    """The short progress (this module's), rather than Keras's own line of every metric."""
    return str(training.verbose) == "auto" and training.log_level != "verbose"


def keras_verbose(training: TrainingConfig) -> int:
    """``verbose`` for ``model.fit``: 0 when :class:`EpochLine` prints, 1 for a progress bar (Keras's,
    or :class:`ShortProgbar` when it is among the callbacks), 2 for Keras's line per epoch."""
    if str(training.verbose) != "auto":
        return int(training.verbose)
    if sys.stdout.isatty():
        return 1
    return 0 if short(training) else 2


def callbacks(training: TrainingConfig, epochs: int) -> list[keras.callbacks.Callback]:
    """The progress callbacks of a run (none when Keras prints its own)."""
    if not short(training):
        return []
    return [ShortProgbar()] if sys.stdout.isatty() else [EpochLine(epochs)]


class ShortProgbar(keras.callbacks.ProgbarLogger):
    """Keras's progress bar with only the :data:`WATCHED` metrics (it takes the place of Keras's own).

    With several steps per Keras call (``training.steps_per_execution``) Keras reports a call by the index
    its last step would have, which an epoch's last call overstates (``32/16``): the bar counts the steps
    the optimizer ran instead."""

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)
        self._first_step = steps_done(self.model)

    def on_train_batch_end(self, batch, logs=None):
        done = steps_done(self.model)
        if done is not None and self._first_step is not None:
            batch = min(batch, done - self._first_step - 1)
        super().on_train_batch_end(batch, logs)

    def _update_progbar(self, batch, logs=None):
        super()._update_progbar(batch, _watched(logs))

    def _finalize_progbar(self, logs):
        super()._finalize_progbar(_watched(logs))


def _watched(logs: dict[str, Any] | None) -> dict[str, Any]:
    return {key: value for key, value in (logs or {}).items() if key in WATCHED}


class EpochLine(keras.callbacks.Callback):
    """One line per epoch: ``epoch k/N``, the :data:`WATCHED` metrics and the epoch's time."""

    def __init__(self, epochs: int):
        super().__init__()
        self.epochs = epochs
        self.started = time.perf_counter()

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        say(epoch_line(epoch, self.epochs, logs or {}, time.perf_counter() - self.started))


def epoch_line(epoch: int, epochs: int, logs: dict[str, Any], seconds: float) -> str:
    """``[bilstm-exp] epoch 3/10  train/loss 0.6812  val/loss 0.6907  val/accuracy 0.5625  1.6 s``
    (``epoch`` 0-based, as Keras counts; people count from 1)."""
    numbers = "  ".join(f"{name} {float(logs[key]):.4f}" for key, name in WATCHED.items() if key in logs)
    return f"{PREFIX} epoch {epoch + 1}/{epochs}  {numbers}  {seconds:.1f} s"
