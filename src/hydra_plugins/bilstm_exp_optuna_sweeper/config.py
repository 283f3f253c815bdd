"""The ``hydra/sweeper=optuna`` config and its ``hydra/sweeper/sampler`` options (tpe, random, nsgaii).

The keys are hydra-optuna-sweeper's, so its users' configs and overrides keep working; ``objectives``
is new. Storage and sampler are instantiated by the sweeper itself when the sweep starts
(``_recursive_: false``), so that a bad storage URL is one line naming the fix, not a traceback.
No ``from __future__ import annotations`` here: Hydra's plugin scan imports this module without
registering it in ``sys.modules``, where dataclasses would look string annotations up.
"""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class TPESamplerConfig:
    """Optuna's TPESampler (Bayesian; handles several objectives too)."""

    _target_: str = "optuna.samplers.TPESampler"
    seed: int | None = None  # reproducible proposals; null on shared-study workers (each samples differently)
    n_startup_trials: int = 10  # random trials before TPE takes over
    multivariate: bool = False  # model the parameters jointly instead of one by one
    constant_liar: bool = True  # treat running trials as bad: parallel workers spread out instead of repeating


@dataclass
class RandomSamplerConfig:
    """Optuna's RandomSampler (a baseline for TPE)."""

    _target_: str = "optuna.samplers.RandomSampler"
    seed: int | None = None


@dataclass
class NSGAIISamplerConfig:
    """Optuna's NSGAIISampler (genetic; for multi-objective searches with many trials)."""

    _target_: str = "optuna.samplers.NSGAIISampler"
    seed: int | None = None
    population_size: int = 50  # trials per generation


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.bilstm_exp_optuna_sweeper.sweeper.OptunaSweeper"
    _recursive_: bool = False  # the sweeper instantiates storage and sampler itself (errors as one line)
    defaults: list[Any] = field(default_factory=lambda: [{"sampler": "tpe"}])

    sampler: Any = MISSING  # a hydra/sweeper/sampler option
    direction: Any = "minimize"  # minimize | maximize, or a list of them, one per objective
    objectives: list[str] | None = None  # metric names a multi-objective search returns, one per direction
    storage: Any = None  # null (in memory), a database URL (sqlite:///optuna.db), or a _target_ node
    study_name: str | None = None  # with a storage: sweeps with the same name continue (or share) one study
    n_trials: int = 20  # trials this sweep runs
    n_jobs: int = 1  # trials launched per batch (run in parallel by a parallel launcher)
    max_failure_rate: float = 0.0  # failed trials tolerated per batch before the sweep stops
    params: dict[str, str] | None = None  # the search space: key -> choice(...), interval(...), range(...)


def register() -> None:
    store = ConfigStore.instance()
    store.store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="bilstm_exp")
    for name, node in (("tpe", TPESamplerConfig), ("random", RandomSamplerConfig), ("nsgaii", NSGAIISamplerConfig)):
        store.store(group="hydra/sweeper/sampler", name=name, node=node, provider="bilstm_exp")


register()
