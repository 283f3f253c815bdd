"""The one place that composes the configs with Hydra outside ``@hydra.main``, and where they live.

The configs have two layers on Hydra's search path: a project's own ``./conf`` (optional: it may
override a packaged file, add an option to a group or a preset) comes first, the packaged defaults
(``pkg://bilstm_exp.conf``, this package's ``conf/`` folder) after it. The Hydra plugin module
``hydra_plugins.bilstm_exp_searchpath`` puts both on the path of every composition: ``@hydra.main``,
:func:`compose` and DVC's own (``dvc exp run -S``).

:func:`compose` registers the schemas (``config.register_schemas``) and composes the way
``dvc exp run`` does, so ``bilstm-exp train``, ``bilstm-exp compose-params``, the benchmarks and the
tests all see the same config. A composition Hydra refuses (an unknown group option, a bad override)
becomes a :class:`ConfigError` that names the override and the fix.
Importing this module loads neither Hydra nor TensorFlow.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from bilstm_exp.config.overrides import check_renamed
from bilstm_exp.config.registration import register_schemas
from bilstm_exp.config.schema import check_names, validate
from bilstm_exp.errors import ConfigError

CONF_MODULE = "bilstm_exp.conf"  # the packaged configs, as Hydra finds them: pkg://bilstm_exp.conf
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"  # the same folder on disk
USER_CONF = Path("conf")  # a project's own configs, relative to where a command runs
CONFIG_NAME = "config"
VERSION_BASE = "1.3"


def conf_layers(root: Path | None = None) -> list[Path]:
    """The config folders a composition in ``root`` reads, first match wins: ``root/conf`` when it
    exists, then the packaged configs."""
    user = (root or Path.cwd()) / USER_CONF
    return [user, CONF_DIR] if user.is_dir() else [CONF_DIR]


def primary_config(root: Path | None = None) -> Path:
    """The ``config.yaml`` Hydra starts from: the project's own if it has one, else the packaged one."""
    return next(layer / f"{CONFIG_NAME}.yaml" for layer in conf_layers(root)
                if (layer / f"{CONFIG_NAME}.yaml").is_file())


def compose(overrides: list[str] | tuple[str, ...] = (), conf_dir: Path | str | None = None) -> DictConfig:
    """The configs composed with Hydra overrides (interpolations left as they are), or ConfigError.

    ``conf_dir``: a project's config folder to read before the packaged one (default: ``./conf`` when
    it exists), as DVC does with ``hydra.config_dir``."""
    import yaml
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    register_schemas()
    overrides = list(overrides)
    check_renamed(overrides)
    if conf_dir is None:
        context = initialize_config_module(config_module=CONF_MODULE, version_base=VERSION_BASE)
    else:
        context = initialize_config_dir(config_dir=str(Path(conf_dir).resolve()), version_base=VERSION_BASE)
    try:
        with context:
            return hydra_compose(config_name=CONFIG_NAME, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as error:  # unknown option, bad override syntax
        raise ConfigError(f"cannot compose conf/ with {' '.join(overrides) or 'no overrides'}: "
                          f"{_one_line(error)}. Fix: correct the override "
                          "(`python -m bilstm_exp --help` lists every group and option)") from None
    except yaml.YAMLError as error:  # a file of the project's conf/ that is not YAML
        mark = getattr(error, "problem_mark", None)
        where = f"{mark.name}, line {mark.line + 1}" if mark else "a file of conf/"
        raise ConfigError(f"{where}: not valid YAML ({getattr(error, 'problem', None) or error}). "
                          "Fix: correct the file") from None


# flags after which @hydra.main reads another primary config or only prints: no pre-flight for those
OWN_CONFIG_FLAGS = ("-cn", "--config-name", "-cp", "--config-path", "-cd", "--config-dir", "-h", "--help",
                    "--hydra-help", "-i", "--info", "-sc", "--shell-completion")


def check_composes(args: list[str]) -> None:
    """Compose the command line of ``python -m bilstm_exp`` once before ``@hydra.main`` does, so an
    unknown option or a mistyped key (``model=transformer``, ``model.lstm_unit=3``) is one ConfigError
    with the options and the fix, where Hydra prints 13 lines and exits 1, and a name from the
    environment is refused before a sweep's callback creates its experiment. Sweeps (``seed=1,2``,
    ``interval(...)``) and ``hydra`` overrides are Hydra's to expand: left out of this composition.

    A plain run (overrides only, no flag such as ``-m`` or ``--cfg``) is also validated here: a bad value
    is the same ConfigError the run would raise, after one composition instead of Hydra's two more and
    before Hydra makes the run's output folder. A config that reads Hydra's own values (``${hydra:...}``)
    is left to the run, where they resolve."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    if any(arg.split("=", 1)[0] in OWN_CONFIG_FLAGS for arg in args):
        return
    overrides = [arg for arg in args if "=" in arg and not arg.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as error:
        raise ConfigError(f"cannot parse the overrides {' '.join(overrides)}: {_one_line(error)}. Fix: write "
                          "each as key=value (`python -m bilstm_exp --help` lists every group and option)") from None
    composed = compose([text for text, override in zip(overrides, parsed, strict=True)
                        if not override.is_sweep_override() and not override.key_or_group.startswith("hydra")])
    if len(overrides) == len(args) and "${hydra:" not in OmegaConf.to_yaml(composed):
        validate(composed)  # a plain run's bad value (model.lstm_units=0): Hydra would compose it twice more first
    else:
        check_names(composed)  # (validate checks the names first)


def _one_line(error: Exception) -> str:
    """Hydra's message on one line, without the search path: "Could not find 'model/x' (options: a, b)"."""
    lines = []
    for line in str(error).strip().splitlines():
        line = line.strip()
        if line.startswith("Config search path"):
            break
        if line and not line.startswith("See https://"):
            lines.append(line.rstrip("."))
    if not lines:
        return type(error).__name__
    if len(lines) > 1 and lines[1].startswith("Available options"):
        return f"{lines[0]} (available: {', '.join(lines[2:])})"
    return "; ".join(lines[:2])
