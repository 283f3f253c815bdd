"""The experiment's schema: the table of options (group -> option -> dataclass) and the validation
that turns a composed config into typed dataclasses.

Every default lives in a dataclass of the group modules (``data_schema``, ``model_schema``,
``optimizer_schema``, ``run_schema``); ``registration`` stores them in Hydra's ConfigStore, which each
YAML of the configs extends. :func:`validate` checks the composed config: OmegaConf's structured
configs catch unknown keys and wrong types, each dataclass's ``__post_init__`` checks value ranges,
and every problem becomes a :class:`ConfigError` naming the dotted key and the fix. Validation reads
the config only: it opens no file (a word-vector file is the run's pre-flight,
``models.vector_files``) and changes no value it was given.

``SCHEMAS`` is the table of options; the builders that read them are registries keyed by the same
names (``architectures.REGISTRY``, ``optim.OPTIMIZERS``, ``data.SOURCES``), which a plugin extends
through :func:`add_option`.

This module must not import TensorFlow (nor Hydra at import): bad input is refused in about a second.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

from bilstm_exp import plugins
from bilstm_exp.config.checks import check
from bilstm_exp.config.data_schema import (
    DataConfig,
    FileDataConfig,
    ImdbDataConfig,
    SyntheticDataConfig,
    TweetsDataConfig,
)
from bilstm_exp.config.model_schema import (
    AttentionModelConfig,
    BasicModelConfig,
    ModelConfig,
    StackedModelConfig,
    UnidirectionalModelConfig,
)
from bilstm_exp.config.optimizer_schema import (
    CLIPPING_MODES,
    AdamWOptimizerConfig,
    ClippingConfig,
    OptimizerConfig,
    RMSpropOptimizerConfig,
    SGDOptimizerConfig,
)
from bilstm_exp.config.run_schema import ProfilingConfig, TrackingConfig, TrainingConfig, metric_mode
from bilstm_exp.errors import ConfigError
from bilstm_exp.tracking import redaction


@dataclass
class ExperimentConfig:
    seed: int
    data: DataConfig
    model: ModelConfig
    optimizer: OptimizerConfig
    clipping: ClippingConfig
    training: TrainingConfig
    tracking: TrackingConfig
    profiling: ProfilingConfig
    # leaves whose value came from ${oc.env:...}: dotted key -> that interpolation text, which is what is
    # recorded instead of the value (tracking.redaction.scrub); where values came from, not a value itself
    env_refs: dict[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        check(not (self.training.resume and self.data.folds), "training.resume",
              "cannot resume a cross-validation (data.folds) run", "drop training.resume and start it again")


# group -> option name -> schema; a group with a single schema maps every name to it
SCHEMAS: dict[str, dict[str, type]] = {
    "data": {"synthetic": SyntheticDataConfig, "file": FileDataConfig,
             "tweets": TweetsDataConfig, "imdb": ImdbDataConfig},
    "model": {"basic": BasicModelConfig, "attention": AttentionModelConfig,
              "stacked": StackedModelConfig, "unidirectional": UnidirectionalModelConfig},
    "optimizer": {"adam": OptimizerConfig, "adamw": AdamWOptimizerConfig,
                  "sgd": SGDOptimizerConfig, "rmsprop": RMSpropOptimizerConfig},
    "clipping": {name: ClippingConfig for name in CLIPPING_MODES},
    "training": {"default": TrainingConfig},
    "tracking": {"local": TrackingConfig, "server": TrackingConfig},
    "profiling": {"standard": ProfilingConfig, "trace": ProfilingConfig},
}
# top-level keys beside seed and the groups: a project's plugin modules (bilstm_exp.plugins), and the
# installed package's version (``${bilstm_exp_version:}``: a param of a project's DVC train stage, so an
# upgrade re-runs training; bilstm-exp init writes both)
TOP_LEVEL = ("plugins", "bilstm_exp_version")
PLUGIN_BASES = {"model": ModelConfig, "optimizer": OptimizerConfig, "data": DataConfig}  # groups open to plugins


def validate(cfg: DictConfig | dict) -> ExperimentConfig:
    """Check a composed config and return it as typed dataclasses, or raise ConfigError."""
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(cfg)
    known = set(SCHEMAS) | {"seed", *TOP_LEVEL}
    extra = sorted(set(cfg.keys()) - known - {"hydra", "experiment", "hparams_search"})
    if extra:
        raise ConfigError(f"{extra[0]}: unknown top-level key. Allowed: {', '.join(sorted(known))}. "
                          "Fix: remove it or correct its spelling")
    env_refs = check_names(cfg)  # before any value is resolved into a message
    plugins.load(_plugin_modules(cfg.get("plugins")))  # a plugin's schema joins SCHEMAS before the groups are read
    seed = cfg.get("seed", 42)
    check(isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0, "seed",
          f"must be a non-negative integer, got {seed!r}", "e.g. seed=42")
    groups = {group: _group(cfg, group) for group in SCHEMAS}
    groups["tracking"] = with_champion(groups["tracking"], groups["training"])
    return ExperimentConfig(seed=seed, **groups, env_refs=env_refs)


def _group(cfg: DictConfig, group: str) -> Any:
    """One group of the composed config as its option's dataclass (its checks run on construction)."""
    node = cfg.get(group)
    check(node is not None, group, "is missing", f"add {group} to the defaults list in conf/config.yaml")
    schema = _schema_for(group, node)
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), node))
    except ConfigError:
        raise
    except OmegaConfBaseException as error:
        raise _explain(group, schema, error) from None


def with_champion(tracking: TrackingConfig, training: TrainingConfig) -> TrackingConfig:
    """The tracking group with its champion criterion filled in (a copy): one selection criterion, so
    the champion follows training.monitor and its mode unless tracking sets its own."""
    metric = tracking.champion_metric or training.monitor
    greater = tracking.champion_greater_is_better
    if greater is None:
        greater = (training.monitor_mode if metric == training.monitor else metric_mode(metric)) == "max"
    return dataclasses.replace(tracking, champion_metric=metric, champion_greater_is_better=greater)


def _schema_for(group: str, node: Any) -> type:
    options = SCHEMAS[group]
    if len(set(options.values())) == 1:
        return next(iter(options.values()))
    name = node.get("name") if isinstance(node, DictConfig) else None
    plugin = " (your own: list the module that registers it in plugins:)" if group in PLUGIN_BASES else ""
    check(name in options, f"{group}.name", f"'{name}' is not one of {', '.join(options)}",
           f"choose an option, e.g. {group}={next(iter(options))}{plugin}")
    return options[name]


def _explain(group: str, schema: type, error: OmegaConfBaseException) -> ConfigError:
    key = f"{group}.{error.full_key}" if getattr(error, "full_key", None) else group
    text = str(error).splitlines()[0]
    if isinstance(error, ConfigKeyError):
        allowed = ", ".join(f.name for f in dataclasses.fields(schema))
        return ConfigError(f"{key}: unknown key. Allowed keys for this {group} option: {allowed}. "
                           "Fix: remove it or correct its spelling")
    if isinstance(error, MissingMandatoryValue):
        return ConfigError(f"{key}: is required and has no value. Fix: pass it, e.g. {key}=...")
    return ConfigError(f"{key}: {text}. Fix: give a value of the type that {schema.__name__} declares "
                       f"({schema.__module__})")


# What MLflow stores as a name (the experiment, the registered model, its versions and aliases; run
# names and tags built from the options' names): stored as it is, so it can never be masked.
NAME_KEYS = {"tracking.experiment_name": "tracking.experiment_name=bilstm-exp",
             "tracking.registered_model_name": "tracking.registered_model_name=bilstm-sentiment",
             **{f"{group}.name": f"{group}=<an option of conf/{group}/>" for group in ("data", "model", "optimizer",
                                                                                        "clipping", "tracking")}}


def check_names(cfg: DictConfig) -> dict[str, str]:
    """Refuse an environment interpolation (``${oc.env:...}``, also through another key) in a name;
    return every leaf from the environment: dotted key -> its interpolation text."""
    env_refs = redaction.references(cfg)
    for key, example in NAME_KEYS.items():
        if key in env_refs:
            raise ConfigError(f"{key}: '{env_refs[key]}' takes its value from the environment, and MLflow stores a "
                              "name as it is (experiments, registered models, versions, aliases, tags), where it "
                              f"cannot be masked. Fix: write the name itself, e.g. {example}")
    return env_refs


def _plugin_modules(value: Any) -> list[str]:
    """The top-level ``plugins:`` key: a list of module names (one name alone is taken as a list)."""
    if value is None:
        return []
    value = OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value
    check(isinstance(value, (list, str)), "plugins", f"must be a list of module names, got {value!r}",
           "e.g. plugins: [my_models.wide] in conf/config.yaml")
    return [value] if isinstance(value, str) else value


def add_option(group: str, name: str, schema: type | None = None) -> type:
    """The schema of option ``name`` of ``group`` for a registry: the one SCHEMAS lists, or ``schema``,
    which a plugin passes (bilstm_exp.plugins) and which joins SCHEMAS so :func:`validate` knows it."""
    options = SCHEMAS[group]
    if schema is None:  # the package's own options; a plugin always passes its schema
        if name not in options:
            raise ValueError(f"{group} option {name!r} has no schema: pass schema= (a dataclass subclassing "
                             f"{PLUGIN_BASES[group].__name__}) and give it a conf/{group}/{name}.yaml")
        return options[name]
    if name in options:
        raise ValueError(f"{group} option {name!r} exists already ({options[name].__name__}). Fix: name yours "
                         "differently, or override the packaged YAML in your conf/ instead")
    base = PLUGIN_BASES[group]
    defaults = {f.name: f.default for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else {}
    if not (isinstance(schema, type) and issubclass(schema, base) and defaults.get("name") == name):
        raise ValueError(f"the schema of {group} option {name!r} must be a @dataclass subclassing {base.__name__} "
                         f"whose name defaults to {name!r} (name: str = {name!r})")
    options[name] = schema
    return schema
