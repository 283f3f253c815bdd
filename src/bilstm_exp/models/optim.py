"""Optimizer, learning-rate schedule and gradient clipping from the config.

Clipping maps to Keras's own optimizer arguments (Keras allows one per optimizer):
``clipping=norm`` -> ``clipnorm`` (each variable's gradient rescaled to that L2 norm),
``clipping=value`` -> ``clipvalue`` (element-wise), ``clipping=global_norm`` ->
``global_clipnorm`` (all gradients rescaled together, which keeps their direction).

Optimizers are a registry, ``OPTIMIZERS``: ``optimizer.name`` -> schema (``config.SCHEMAS``) and a
builder that makes the Keras optimizer from the config and the common arguments (learning rate or
schedule, clipping). A new optimizer is one registered function here, its schema dataclass in
config.py and its YAML in conf/optimizer/.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras

from bilstm_exp.config.optimizer_schema import (
    AdamWOptimizerConfig,
    ClippingConfig,
    OptimizerConfig,
    RMSpropOptimizerConfig,
    SGDOptimizerConfig,
)
from bilstm_exp.config.schema import add_option

# clipping.name (config.CLIPPING_MODES, all but none) -> the Keras optimizer argument
CLIP_ARGUMENT = {"norm": "clipnorm", "value": "clipvalue", "global_norm": "global_clipnorm"}


@dataclass(frozen=True)
class Optimizer:
    name: str
    schema: type[OptimizerConfig]
    build: Callable[..., keras.optimizers.Optimizer]  # (cfg, **common) -> optimizer


OPTIMIZERS: dict[str, Optimizer] = {}


def register(name: str, schema: type[OptimizerConfig] | None = None) -> Callable:
    """Decorator: register ``build(cfg, **common)`` as optimizer ``name``.

    Its schema is ``config.SCHEMAS['optimizer'][name]``; a plugin (bilstm_exp.plugins) passes its own
    ``schema``, a dataclass subclassing OptimizerConfig, which joins that table."""

    def add(build: Callable[..., keras.optimizers.Optimizer]) -> Callable[..., keras.optimizers.Optimizer]:
        OPTIMIZERS[name] = Optimizer(name, add_option("optimizer", name, schema), build)
        return build

    return add


@register("adam")
def _adam(cfg: OptimizerConfig, **common: Any) -> keras.optimizers.Optimizer:
    return keras.optimizers.Adam(**common)


@register("adamw")
def _adamw(cfg: AdamWOptimizerConfig, **common: Any) -> keras.optimizers.Optimizer:
    return keras.optimizers.AdamW(weight_decay=cfg.weight_decay, **common)


@register("sgd")
def _sgd(cfg: SGDOptimizerConfig, **common: Any) -> keras.optimizers.Optimizer:
    return keras.optimizers.SGD(momentum=cfg.momentum, nesterov=cfg.nesterov, **common)


@register("rmsprop")
def _rmsprop(cfg: RMSpropOptimizerConfig, **common: Any) -> keras.optimizers.Optimizer:
    return keras.optimizers.RMSprop(rho=cfg.rho, momentum=cfg.momentum, **common)


@keras.saving.register_keras_serializable(package="bilstm_exp")
class Warmup(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to ``peak`` over ``warmup_steps``, then ``after`` (or constant ``peak``)."""

    def __init__(self, peak: float, warmup_steps: int, after=None):
        self.peak = float(peak)
        self.warmup_steps = int(warmup_steps)
        self.after = after

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        warm = self.peak * (step + 1.0) / max(self.warmup_steps, 1)
        later = self.peak if self.after is None else self.after(step - self.warmup_steps)
        return keras.ops.where(step < self.warmup_steps, warm, later)

    def get_config(self):
        after = None if self.after is None else keras.saving.serialize_keras_object(self.after)
        return {"peak": self.peak, "warmup_steps": self.warmup_steps, "after": after}

    @classmethod
    def from_config(cls, config):
        after = config["after"]
        return cls(config["peak"], config["warmup_steps"],
                   None if after is None else keras.saving.deserialize_keras_object(after))


def learning_rate(cfg: OptimizerConfig, steps_per_epoch: int, epochs: int):
    """A float for a constant rate, else a LearningRateSchedule stepping once per batch."""
    schedule = cfg.schedule
    warmup = int(round(schedule.warmup_epochs * steps_per_epoch))
    decay_steps = max(1, steps_per_epoch * epochs - warmup)
    if schedule.name == "cosine":
        after = keras.optimizers.schedules.CosineDecay(cfg.learning_rate, decay_steps, alpha=schedule.min_fraction)
    elif schedule.name == "exponential":
        after = keras.optimizers.schedules.ExponentialDecay(cfg.learning_rate, max(1, steps_per_epoch),
                                                            schedule.decay_rate)
    else:
        after = None
    if warmup == 0:
        return cfg.learning_rate if after is None else after
    return Warmup(cfg.learning_rate, warmup, after)


def build(cfg: OptimizerConfig, clipping: ClippingConfig, steps_per_epoch: int,
          epochs: int) -> keras.optimizers.Optimizer:
    """The configured optimizer with its schedule and clipping argument.

    Under a ``mixed_float16`` policy ``Model.compile`` wraps it in a LossScaleOptimizer.
    """
    kwargs = {"learning_rate": learning_rate(cfg, steps_per_epoch, epochs)}
    if clipping.name != "none":
        kwargs[CLIP_ARGUMENT[clipping.name]] = clipping.threshold
    entry = OPTIMIZERS.get(cfg.name)
    if entry is None or not isinstance(cfg, entry.schema):
        raise ValueError(f"unknown optimizer {cfg.name!r} for a {type(cfg).__name__}; "
                         f"use one of {', '.join(OPTIMIZERS)}")
    return entry.build(cfg, **kwargs)
