"""``basic``: Embedding -> Bidirectional(LSTM) -> Dense."""

from __future__ import annotations

from bilstm_exp.config.model_schema import BasicModelConfig
from bilstm_exp.models.architectures.registry import Flops, merged_width, recurrent_flops, register


def flops(cfg: BasicModelConfig) -> Flops:
    """Both directions read every token."""
    return Flops(per_token=2 * recurrent_flops(cfg.embedding_dim, cfg.lstm_units, cfg.cell), per_sample=0.0,
                 features=merged_width(cfg.lstm_units, cfg.merge_mode))


@register("basic", flops=flops)
def build(cfg: BasicModelConfig, tokens, embedded, recurrent):
    import keras

    return keras.layers.Bidirectional(recurrent(cfg.lstm_units, "lstm"), merge_mode=cfg.merge_mode,
                                      name="bidirectional")(embedded)
