"""``stacked``: Embedding -> Bidirectional(LSTM) x N -> Dense; all but the last layer return sequences."""

from __future__ import annotations

from bilstm_exp.config.model_schema import StackedModelConfig
from bilstm_exp.models.architectures.registry import Flops, merged_width, recurrent_flops, register


def flops(cfg: StackedModelConfig) -> Flops:
    """Each layer reads the previous layer's merged width."""
    per_token, width = 0.0, cfg.embedding_dim
    for units in cfg.layer_sizes:
        per_token += 2 * recurrent_flops(width, units, cfg.cell)
        width = merged_width(units, cfg.merge_mode)
    return Flops(per_token=per_token, per_sample=0.0, features=width)


@register("stacked", flops=flops)
def build(cfg: StackedModelConfig, tokens, embedded, recurrent):
    import keras

    x = embedded
    for i, units in enumerate(cfg.layer_sizes):
        last = i == len(cfg.layer_sizes) - 1
        x = keras.layers.Bidirectional(recurrent(units, f"lstm_{i}", return_sequences=not last),
                                       merge_mode=cfg.merge_mode, name=f"bidirectional_{i}")(x)
    return x
