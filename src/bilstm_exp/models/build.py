"""Model builders: ``build(model_cfg, vocab_size, num_classes)`` -> a Functional Keras model.

``build`` wraps the architecture named by ``model.name`` (a registry: ``bilstm_exp.models.architectures``,
one module per architecture: ``basic``, ``attention``, ``stacked``, ``unidirectional``) in the parts
every model shares: the token-id input, the masked embedding, the recurrent-layer factory
:func:`_recurrent` and the classification head, inside a :class:`TelemetryModel`.

GPU note: the recurrent layers keep Keras's cuDNN-compatible defaults (tanh/sigmoid, bias,
no unrolling) and the inputs are right-padded with a mask from ``Embedding(mask_zero=True)``,
so on a GPU Keras picks the fused cuDNN kernel. ``recurrent_dropout > 0`` rules that kernel
out and training falls back to the generic (several times slower) one; ``model.embedding_dropout``
(spatial dropout, a layer of its own before the recurrent layers) and ``model.output_dropout`` do not.
"""

from __future__ import annotations

import functools

import keras
import numpy as np
import tensorflow as tf

from bilstm_exp.config.model_schema import ModelConfig
from bilstm_exp.models import architectures
from bilstm_exp.models.fast_lstm import recurrent_layer
from bilstm_exp.models.optimizer_step import xla_apply

try:  # Keras's own train_step undoes the per-replica loss scaling the same way
    from keras.src.losses.loss import unscale_loss_for_distribution
except ImportError:  # a Keras without it: no strategy scaling to undo
    def unscale_loss_for_distribution(value):
        return value


class RunningMax(keras.metrics.Metric):
    """The largest value seen since the last reset (Keras ships Mean but no Max)."""

    def __init__(self, name: str = "max", **kwargs):
        super().__init__(name=name, **kwargs)
        self.maximum = self.add_variable(shape=(), initializer="zeros", name="maximum")

    def update_state(self, value):
        self.maximum.assign(keras.ops.maximum(self.maximum, keras.ops.cast(value, self.dtype)))

    def result(self):
        return keras.ops.copy(self.maximum)  # a snapshot: logs must not change when metrics reset

    def reset_state(self):
        self.maximum.assign(0.0)


@keras.saving.register_keras_serializable(package="bilstm_exp")
class TelemetryModel(keras.Model):
    """A Functional model whose ``train_step`` also measures the gradient before clipping.

    Per epoch it reports ``grad_norm_mean`` and ``grad_norm_max`` (global L2 norm of the raw
    gradient) and ``grad_clip_fraction`` (share of steps in which the optimizer's clipping
    changed the gradient: ``global_clipnorm`` when the global norm exceeds it, ``clipnorm`` when
    any variable's norm does, ``clipvalue`` when any element does). For sparse embedding
    gradients the norm is taken over the gathered rows. This is Keras's documented way to
    customise ``fit``; everything else (loss, metrics, callbacks) stays standard.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.grad_norm_mean = keras.metrics.Mean(name="grad_norm_mean")
        self.grad_norm_max = RunningMax(name="grad_norm_max")
        self.grad_clip_fraction = keras.metrics.Mean(name="grad_clip_fraction")
        self.xla_optimizer_step = False  # the optimizer update as one XLA cluster (set by training on a CPU)

    def _clipped(self, grads, global_norm):
        opt = getattr(self.optimizer, "inner_optimizer", self.optimizer)
        values = [g.values if isinstance(g, tf.IndexedSlices) else g for g in grads if g is not None]
        if opt.global_clipnorm:
            return global_norm > opt.global_clipnorm
        if opt.clipnorm:
            return tf.reduce_any(tf.stack([tf.norm(v) > opt.clipnorm for v in values]))
        if opt.clipvalue:
            return tf.reduce_any(tf.stack([tf.reduce_max(tf.abs(v)) > opt.clipvalue for v in values]))
        return tf.constant(False)

    def train_step(self, data):
        x, y = data[0], data[1]
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(x=x, y=y, y_pred=y_pred, training=True)
            scaled = self.optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, self.trainable_variables)
        norm = tf.linalg.global_norm([g for g in grads if g is not None])
        if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
            norm = norm / tf.cast(self.optimizer.dynamic_scale, norm.dtype)
        clipped = self._clipped(grads, norm)
        if self.xla_optimizer_step:
            xla_apply(self.optimizer, grads, self.trainable_variables)
        else:
            self.optimizer.apply(grads, self.trainable_variables)
        self.grad_norm_mean.update_state(norm)
        self.grad_norm_max.update_state(norm)
        self.grad_clip_fraction.update_state(tf.cast(clipped, "float32"))
        for metric in self.metrics:
            if metric.name == "loss":  # under a distribution strategy compute_loss divides by the replicas
                metric.update_state(unscale_loss_for_distribution(loss))
            elif not metric.name.startswith("grad_"):
                metric.update_state(y, y_pred)
        return {metric.name: metric.result() for metric in self.metrics}

    def test_step(self, data):
        logs = super().test_step(data)
        return {key: value for key, value in logs.items() if not key.startswith("grad_")}


def _recurrent(cfg: ModelConfig, units: int, name: str, **kwargs) -> keras.layers.Layer:
    """The one recurrent-layer factory every architecture builds its layers with (``model.kernel``:
    FastLSTM's CPU fast path or Keras's LSTM; GRU is always Keras's)."""
    return recurrent_layer(cfg.cell, units, kernel=cfg.kernel, dropout=cfg.dropout,
                           recurrent_dropout=cfg.recurrent_dropout, name=name, **kwargs)


def _embed(cfg: ModelConfig, tokens, vocab_size: int, embedding_matrix: np.ndarray | None):
    """Token ids -> masked word vectors (mask from id 0), optionally started from ``embedding_matrix``
    (frozen when ``model.embeddings_trainable`` is false), then spatial dropout (``model.embedding_dropout``).

    ``SpatialDropout1D`` drops whole embedding channels for a text (the same channels at every position)
    and passes the padding mask on. It is a layer of its own before the recurrent layers, so it leaves
    their settings, and with them the cuDNN kernel choice on a GPU, untouched (unlike
    ``model.recurrent_dropout``).
    """
    layer = keras.layers.Embedding(vocab_size, cfg.embedding_dim, mask_zero=True,
                                   trainable=cfg.embeddings_trainable, name="embedding")
    x = layer(tokens)
    if embedding_matrix is not None:
        if tuple(embedding_matrix.shape) != (vocab_size, cfg.embedding_dim):
            raise ValueError(f"embedding_matrix has shape {tuple(embedding_matrix.shape)}; the embedding "
                             f"needs (vocab_size, model.embedding_dim) = ({vocab_size}, {cfg.embedding_dim})")
        layer.set_weights([np.asarray(embedding_matrix, dtype="float32")])
    if cfg.embedding_dropout > 0:
        x = keras.layers.SpatialDropout1D(cfg.embedding_dropout, name="embedding_dropout")(x)
    return x


def _head(cfg: ModelConfig, features, num_classes: int):
    """Dropout on the features (``model.output_dropout``), then the output layer."""
    if cfg.output_dropout > 0:
        features = keras.layers.Dropout(cfg.output_dropout, name="output_dropout")(features)
    if num_classes == 2:
        return keras.layers.Dense(1, activation="sigmoid", dtype="float32", name="output")(features)
    return keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="output")(features)


def build(cfg: ModelConfig, vocab_size: int, num_classes: int, *,
          embedding_matrix: np.ndarray | None = None) -> TelemetryModel:
    """Build the configured architecture (uncompiled). Inputs: int32 token ids, 0 = padding.

    ``embedding_matrix`` (vocab_size x model.embedding_dim): the embedding's initial weights, e.g.
    pretrained word vectors from :func:`bilstm_exp.models.embeddings.for_vocabulary`; None: random.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    architecture = architectures.get(cfg)
    tokens = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    x = _embed(cfg, tokens, vocab_size, embedding_matrix)
    features = architecture.build(cfg, tokens, x, functools.partial(_recurrent, cfg))
    return TelemetryModel(tokens, _head(cfg, features, num_classes), name=cfg.name)


def inference_model(model: keras.Model) -> keras.Model:
    """A plain Functional copy (shared weights) for saving and serving: no custom train step."""
    return keras.Model(model.inputs, model.outputs, name=model.name)


def attention_model(model: keras.Model) -> keras.Model:
    """Token ids -> attention weights (batch, time), for models built with ``model.name=attention``."""
    return keras.Model(model.inputs, model.get_layer("attention").output[1], name="attention_weights")


def loss(num_classes: int, label_smoothing: float = 0.0) -> str | keras.losses.Loss:
    """The training loss: binary cross-entropy on the one sigmoid output for two classes, sparse categorical
    cross-entropy for more. ``training.label_smoothing`` s > 0 trains towards (1 - s) * target + s / classes
    (s / 2 for the binary output), so a confident model is not pushed further towards 0 and 1."""
    if not label_smoothing:
        return "binary_crossentropy" if num_classes == 2 else "sparse_categorical_crossentropy"
    if num_classes == 2:
        return keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing, name="binary_crossentropy")
    return SmoothedSparseCrossentropy(num_classes, label_smoothing)


class SmoothedSparseCrossentropy(keras.losses.Loss):
    """Sparse categorical cross-entropy with label smoothing, which Keras's sparse loss lacks: the integer
    labels one-hot encoded inside the loss, so the data pipelines stay the same for every loss."""

    def __init__(self, num_classes: int, label_smoothing: float, name: str = "sparse_categorical_crossentropy"):
        super().__init__(name=name)
        self.num_classes, self.label_smoothing = num_classes, label_smoothing

    def call(self, y_true, y_pred):
        onehot = keras.ops.one_hot(keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32"), self.num_classes)
        return keras.losses.categorical_crossentropy(onehot, y_pred, label_smoothing=self.label_smoothing)

    def get_config(self) -> dict:
        return {"num_classes": self.num_classes, "label_smoothing": self.label_smoothing, "name": self.name}
