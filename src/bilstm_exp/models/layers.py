"""Additive (Bahdanau) attention over the time steps of a recurrent layer."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="bilstm_exp")
class AdditiveAttention(keras.layers.Layer):
    """Pools a sequence into one context vector, weighting each time step.

    ``score_t = V tanh(W1 h_t + W2 q)``, ``weights = softmax_t(score)`` with padded steps set to
    exactly zero weight, ``context = sum_t weights_t h_t``. ``q`` is the query, here the final
    states of both directions. Returns ``(context, weights)`` so the weights can be inspected.

    Call as ``layer(sequence, query, mask=token_mask)`` with ``sequence`` (batch, time, features),
    ``query`` (batch, query_features) and a boolean ``mask`` (batch, time), True on real tokens.
    """

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        if units <= 0:
            raise ValueError(f"AdditiveAttention units must be > 0, got {units}")
        self.units = units
        self.w1 = keras.layers.Dense(units, use_bias=False, name="w1")
        self.w2 = keras.layers.Dense(units, name="w2")
        self.v = keras.layers.Dense(1, use_bias=False, name="v")
        self.supports_masking = True

    def build(self, sequence_shape, query_shape):
        self.w1.build(sequence_shape)
        self.w2.build(query_shape)
        self.v.build((*sequence_shape[:-1], self.units))
        self.built = True

    def call(self, sequence, query, mask=None):
        hidden = ops.tanh(self.w1(sequence) + ops.expand_dims(self.w2(query), 1))
        scores = ops.cast(ops.squeeze(self.v(hidden), -1), "float32")  # softmax in float32
        if mask is not None:
            mask = ops.cast(mask, "bool")
            scores = ops.where(mask, scores, ops.full_like(scores, -1e9))
        weights = ops.softmax(scores, axis=-1)
        if mask is not None:
            weights = weights * ops.cast(mask, weights.dtype)  # exact zeros on padding
        context = ops.sum(ops.expand_dims(ops.cast(weights, sequence.dtype), -1) * sequence, axis=1)
        return context, weights

    def compute_mask(self, sequence, query=None, mask=None):
        return None  # the context vector has no time axis left to mask

    def get_config(self):
        return {**super().get_config(), "units": self.units}


from bilstm_exp.models.fast_lstm import FastLSTM  # noqa: E402,F401  (re-export; importing registers it for loading)
