"""``attention``: Embedding -> Bidirectional(LSTM, return_sequences) -> additive attention -> Dense.

The query is both directions' final hidden state; ``models.attention_model`` reads the attention
weights back from the layer named ``attention``.
"""

from __future__ import annotations

from bilstm_exp.config.model_schema import AttentionModelConfig
from bilstm_exp.models.architectures.registry import Flops, merged_width, recurrent_flops, register


def flops(cfg: AttentionModelConfig) -> Flops:
    """The BiLSTM, plus with ``D`` = merged width and ``a`` = attention units: per token ``2*D*a``
    (W1 h_t) + ``2*a`` (add W2 q, tanh) + ``2*a`` (v) + ``3`` (softmax) + ``2*D`` (weighted sum);
    per sample ``2*(2h)*a`` (W2 q; the query is both directions' final ``h``)."""
    width, a = merged_width(cfg.lstm_units, cfg.merge_mode), cfg.attention_units
    per_token = 2 * recurrent_flops(cfg.embedding_dim, cfg.lstm_units, cfg.cell) + 2 * width * a + 4 * a + 3 + 2 * width
    return Flops(per_token=per_token, per_sample=2 * (2 * cfg.lstm_units) * a, features=width)


@register("attention", flops=flops)
def build(cfg: AttentionModelConfig, tokens, embedded, recurrent):
    import keras

    from bilstm_exp.models.layers import AdditiveAttention

    rnn = keras.layers.Bidirectional(recurrent(cfg.lstm_units, "lstm", return_sequences=True, return_state=True),
                                     merge_mode=cfg.merge_mode, name="bidirectional")
    outputs = rnn(embedded)
    sequence, states = outputs[0], outputs[1:]
    half = len(states) // 2  # LSTM: (h, c) per direction; GRU: (h,)
    query = keras.layers.Concatenate(name="query")([states[0], states[half]])
    token_mask = keras.ops.not_equal(tokens, 0)
    features, _ = AdditiveAttention(cfg.attention_units, name="attention")(sequence, query, mask=token_mask)
    return features
