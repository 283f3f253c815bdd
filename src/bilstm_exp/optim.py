"""Optimizer, learning-rate schedule and gradient clipping from the config.

Clipping maps to Keras's own optimizer arguments (Keras allows one per optimizer):
``clipping=norm`` -> ``clipnorm`` (each variable's gradient rescaled to that L2 norm),
``clipping=value`` -> ``clipvalue`` (element-wise), ``clipping=global_norm`` ->
``global_clipnorm`` (all gradients rescaled together, which keeps their direction).
"""

from __future__ import annotations

import keras

from bilstm_exp.config import (
    AdamWOptimizerConfig,
    ClippingConfig,
    OptimizerConfig,
    RMSpropOptimizerConfig,
    SGDOptimizerConfig,
)

CLIP_ARGUMENT = {"norm": "clipnorm", "value": "clipvalue", "global_norm": "global_clipnorm"}


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
    if isinstance(cfg, AdamWOptimizerConfig):
        return keras.optimizers.AdamW(weight_decay=cfg.weight_decay, **kwargs)
    if isinstance(cfg, SGDOptimizerConfig):
        return keras.optimizers.SGD(momentum=cfg.momentum, nesterov=cfg.nesterov, **kwargs)
    if isinstance(cfg, RMSpropOptimizerConfig):
        return keras.optimizers.RMSprop(rho=cfg.rho, momentum=cfg.momentum, **kwargs)
    return keras.optimizers.Adam(**kwargs)
