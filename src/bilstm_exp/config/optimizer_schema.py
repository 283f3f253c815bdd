"""The ``optimizer`` group's schemas (adam, adamw, sgd, rmsprop; ``models.optim`` builds them by name)
with the learning-rate schedule, and the ``clipping`` group's one schema."""

from __future__ import annotations

from dataclasses import dataclass, field

from bilstm_exp.config.checks import check, choice, fraction


@dataclass
class ScheduleConfig:
    name: str = "constant"  # constant, cosine or exponential
    warmup_epochs: float = 0.0  # linear warm-up from 0 to learning_rate over this many epochs
    decay_rate: float = 0.5  # exponential: learning-rate factor per epoch
    min_fraction: float = 0.0  # cosine: final learning rate as a fraction of learning_rate

    def __post_init__(self) -> None:
        choice(self.name, ("constant", "cosine", "exponential"), "optimizer.schedule.name")
        check(self.warmup_epochs >= 0, "optimizer.schedule.warmup_epochs",
              f"must be >= 0, got {self.warmup_epochs}", "e.g. optimizer.schedule.warmup_epochs=1")
        check(0 < self.decay_rate <= 1, "optimizer.schedule.decay_rate",
              f"must be in (0, 1], got {self.decay_rate}", "e.g. optimizer.schedule.decay_rate=0.5")
        fraction(self.min_fraction, "optimizer.schedule.min_fraction", 0.0)


@dataclass
class OptimizerConfig:
    name: str = "adam"  # an option of conf/optimizer/ (optim.OPTIMIZERS)
    learning_rate: float = 1e-3  # initial step size
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)

    def __post_init__(self) -> None:
        check(0 < self.learning_rate < float("inf"), "optimizer.learning_rate",
              f"must be a finite value > 0, got {self.learning_rate}", "e.g. optimizer.learning_rate=0.001")


@dataclass
class AdamWOptimizerConfig(OptimizerConfig):
    name: str = "adamw"
    weight_decay: float = 0.004  # decoupled weight decay

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.weight_decay >= 0, "optimizer.weight_decay",
              f"must be >= 0, got {self.weight_decay}", "e.g. optimizer.weight_decay=0.004")


@dataclass
class SGDOptimizerConfig(OptimizerConfig):
    name: str = "sgd"
    learning_rate: float = 0.05
    momentum: float = 0.9  # in [0, 1)
    nesterov: bool = True  # Nesterov momentum

    def __post_init__(self) -> None:
        super().__post_init__()
        fraction(self.momentum, "optimizer.momentum", 0.9)


@dataclass
class RMSpropOptimizerConfig(OptimizerConfig):
    name: str = "rmsprop"
    rho: float = 0.9  # moving-average factor of squared gradients
    momentum: float = 0.0  # in [0, 1)

    def __post_init__(self) -> None:
        super().__post_init__()
        fraction(self.rho, "optimizer.rho", 0.9)
        fraction(self.momentum, "optimizer.momentum", 0.0)


CLIPPING_MODES = ("none", "norm", "value", "global_norm")


@dataclass
class ClippingConfig:
    name: str = "none"  # none, norm (clipnorm), value (clipvalue), global_norm (global_clipnorm)
    threshold: float | None = None  # norm: max L2 norm per variable; value: max |element|; global_norm: global L2

    def __post_init__(self) -> None:
        choice(self.name, CLIPPING_MODES, "clipping.name")
        if self.name == "none":
            check(self.threshold is None, "clipping.threshold",
                  f"must be null with clipping=none, got {self.threshold}",
                  "pick a clipping option, e.g. clipping=norm")
            return
        check(self.threshold is not None and self.threshold > 0, "clipping.threshold",
              f"must be > 0 with clipping={self.name}, got {self.threshold}",
              "e.g. clipping.threshold=1.0")
