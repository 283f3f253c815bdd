"""One compiled model trained again from a fresh start, so a cross-validation's folds keep Keras's traced steps.

A new Keras model traces its own train and test steps in its first epoch: 1-2.5 s of a later fold's
first epoch with the default model (docs/profiling.md), although fold k's model has fold 1's shapes.
:meth:`KeptModel.adopt` takes the model a fold has just built and compiled (nothing traced yet) and, where
it is the same model as the one kept, hands back the kept one with the fresh one's whole state copied in:

- every variable of the model: the weights (the embedding's start from the fold's own word vectors
  included) and the seed states of its dropout layers;
- every variable of the optimizer: its step count, moments, and the loss scale under mixed precision.

The metrics are reset by ``fit`` at every epoch. So the kept model trains exactly as the fresh one would
(tests/test_crossval_insights.py compares the two runs bit for bit), with the functions it traced before.
"The same model" is checked, not assumed: the same run settings (a traced step holds Python values such as
the dropout rates and the loss), the same model class, the same variables (shapes and dtypes, in order)
and the same optimizer config (its learning-rate schedule, which knows the steps per epoch, included).
A fold whose vocabulary is smaller than ``data.vocab_size`` can differ in its embedding's shape; then the
fresh model trains, and is the one kept for the next fold.
"""

from __future__ import annotations

import keras


def _signature(model: keras.Model, settings: str) -> tuple:
    """What must match for one model's traced steps to be another's: the run's settings, the model's
    class and variables, the optimizer's class, variables and config."""
    def shapes(variables):
        return tuple((tuple(v.shape), str(v.dtype)) for v in variables)

    optimizer = model.optimizer
    config = {k: v for k, v in optimizer.get_config().items() if k != "name"}  # Keras numbers the names
    return settings, type(model), shapes(model.variables), type(optimizer), shapes(optimizer.variables), repr(config)


class KeptModel:
    """The compiled model of the previous fold (none before the first), and its signature."""

    def __init__(self) -> None:
        self.model: keras.Model | None = None
        self.signature: tuple | None = None

    def adopt(self, fresh: keras.Model, settings: str) -> keras.Model:
        """``fresh`` (built and compiled for a run with ``settings``, e.g. the repr of its config; not yet
        trained) as the model to train: the kept model with fresh's state where the two match, else
        ``fresh`` itself, kept from now on."""
        kept, signature = self.model, _signature(fresh, settings)
        if kept is None or signature != self.signature:
            self.model, self.signature = fresh, signature
            return fresh
        for target, source in [*zip(kept.variables, fresh.variables, strict=True),
                               *zip(kept.optimizer.variables, fresh.optimizer.variables, strict=True)]:
            target.assign(source)
        return kept  # fit itself clears stop_training, which early stopping set in the previous fold
