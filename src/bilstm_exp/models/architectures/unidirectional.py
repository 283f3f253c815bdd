"""``unidirectional``: Embedding -> LSTM (forward only) -> Dense; the baseline for what the second
direction buys."""

from __future__ import annotations

from bilstm_exp.config.model_schema import UnidirectionalModelConfig
from bilstm_exp.models.architectures.registry import Flops, recurrent_flops, register


def flops(cfg: UnidirectionalModelConfig) -> Flops:
    return Flops(per_token=recurrent_flops(cfg.embedding_dim, cfg.lstm_units, cfg.cell), per_sample=0.0,
                 features=cfg.lstm_units)


@register("unidirectional", flops=flops)
def build(cfg: UnidirectionalModelConfig, tokens, embedded, recurrent):
    return recurrent(cfg.lstm_units, "lstm")(embedded)
