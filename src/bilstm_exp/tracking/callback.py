"""The Keras callback that logs each epoch to MLflow: usable with any ``model.fit``.

The only module of :mod:`bilstm_exp.tracking` that imports Keras.
"""

from __future__ import annotations

from typing import Any

import keras
import mlflow

from bilstm_exp.tracking.session import Session


def metric_name(keras_key: str) -> str:
    """Keras log keys -> stable MLflow names: loss -> train/loss, val_auc -> val/auc,
    grad_norm_mean -> grad/global_norm_mean; keys that already hold a '/' pass through."""
    if "/" in keras_key:
        return keras_key
    if keras_key.startswith("grad_norm_"):
        return "grad/global_" + keras_key[len("grad_"):]
    if keras_key.startswith("grad_"):
        return "grad/" + keras_key[len("grad_"):]
    if keras_key.startswith("val_"):
        return "val/" + keras_key[len("val_"):]
    if keras_key == "learning_rate":
        return "lr"
    return "train/" + keras_key


class MLflowLogger(keras.callbacks.Callback):
    """Logs every epoch's Keras logs to MLflow in one batched request (step = epoch index).

    ``model.fit(..., callbacks=[MLflowLogger()])`` inside an active MLflow run, or
    ``MLflowLogger(session)`` with a :class:`~bilstm_exp.tracking.session.Session` (buffered and
    resilient to a server outage). Callbacks placed before it may add entries (e.g.
    ``time/epoch_s``) to ``logs``; they are logged in the same request. Also logs the optimizer's
    current learning rate as ``lr``.
    """

    def __init__(self, session: Session | None = None, run_id: str | None = None):
        super().__init__()
        self.session = session
        self.run_id = run_id

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        metrics = {metric_name(k): float(v) for k, v in (logs or {}).items()}
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is not None and "lr" not in metrics:
            metrics["lr"] = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        if self.session is None:  # the active run (or ``run_id``): its writes go through a session too
            self.session = Session.attach(mlflow.get_tracking_uri(), self.run_id or mlflow.active_run().info.run_id)
        self.session.log_metrics(metrics, step=epoch)
