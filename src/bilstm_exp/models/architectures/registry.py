"""The registry machinery and the FLOP building blocks the architecture modules share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bilstm_exp.config.model_schema import ModelConfig
from bilstm_exp.config.schema import add_option

LSTM_GATES, GRU_GATES = 4, 3
# Element-wise FLOPs per unit per time step, beyond the matmuls. LSTM: 4 bias adds, 5 activations
# (3 sigmoid gates, tanh candidate, tanh of the cell), c = f*c + i*g (3), h = o*tanh(c) (1) -> 13.
# GRU (reset_after, Keras's default): 6 bias adds, 3 activations, r*(W_h h) (1), the new h as
# z*h + (1-z)*candidate (3) -> 13.
LSTM_ELEMENTWISE, GRU_ELEMENTWISE = 13, 13


@dataclass(frozen=True)
class Flops:
    """Forward FLOPs of an architecture's body (embedding to features; the head is not included)."""

    per_token: float  # per real (unpadded) token
    per_sample: float  # once per text (e.g. an attention query)
    features: int  # width of the feature vector the head reads


@dataclass(frozen=True)
class Architecture:
    name: str
    schema: type[ModelConfig]
    build: Callable[..., Any]  # (cfg, tokens, embedded, recurrent) -> features tensor
    flops: Callable[[Any], Flops]  # (cfg) -> Flops


REGISTRY: dict[str, Architecture] = {}


def register(name: str, *, flops: Callable[[Any], Flops], schema: type[ModelConfig] | None = None) -> Callable:
    """Decorator: register ``build`` as architecture ``name``.

    Its schema is ``config.SCHEMAS['model'][name]``; a plugin (bilstm_exp.plugins) passes its own
    ``schema``, a dataclass subclassing a ModelConfig, which joins that table."""

    def add(build: Callable[..., Any]) -> Callable[..., Any]:
        REGISTRY[name] = Architecture(name, add_option("model", name, schema), build, flops)
        return build

    return add


def get(cfg: ModelConfig) -> Architecture:
    """The registered architecture for a validated model config."""
    architecture = REGISTRY.get(cfg.name)
    if architecture is None:
        raise ValueError(f"unknown architecture {cfg.name!r}; use one of {', '.join(REGISTRY)}")
    if not isinstance(cfg, architecture.schema):
        raise ValueError(f"model.name={cfg.name} needs a {architecture.schema.__name__}, got a {type(cfg).__name__}")
    return architecture


# --------------------------------------------------------------------------- FLOP building blocks


def recurrent_flops(d_in: int, units: int, cell: str = "lstm") -> float:
    """Forward FLOPs of one recurrent direction for one token: ``2*G*(d_in+h)*h + E*h``.

    ``G`` gates (LSTM 4, GRU 3), each an input and a recurrent matmul (a multiply-add is 2 FLOPs),
    plus ``E`` element-wise FLOPs per unit (see ``LSTM_ELEMENTWISE``).
    """
    gates, elementwise = (LSTM_GATES, LSTM_ELEMENTWISE) if cell == "lstm" else (GRU_GATES, GRU_ELEMENTWISE)
    return 2.0 * gates * (d_in + units) * units + elementwise * units


def merged_width(units: int, merge_mode: str) -> int:
    """Output width of a Bidirectional layer: both directions side by side, or combined element-wise."""
    return 2 * units if merge_mode == "concat" else units
