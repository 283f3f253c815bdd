"""The one place that composes conf/ with Hydra outside ``@hydra.main``.

:func:`compose` registers the schemas (``config.register_schemas``) and composes conf/ with Hydra
overrides the way ``dvc exp run`` does, so ``bilstm-exp train``, ``bilstm-exp compose-params``,
the benchmarks and the tests all see the same config. A composition Hydra refuses (an unknown group
option, a bad override) becomes a :class:`ConfigError` that names the override and the fix.
Importing this module loads neither Hydra nor TensorFlow.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from bilstm_exp.config.schema import check_renamed, register_schemas
from bilstm_exp.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parents[3] / "conf"
CONFIG_NAME = "config"
VERSION_BASE = "1.3"


def compose(overrides: list[str] | tuple[str, ...] = (), conf_dir: Path | str | None = None) -> DictConfig:
    """conf/ composed with Hydra overrides (interpolations left as they are), or ConfigError."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    conf_dir = Path(conf_dir or CONF_DIR).resolve()
    if not (conf_dir / f"{CONFIG_NAME}.yaml").is_file():
        raise ConfigError(f"{conf_dir}: no {CONFIG_NAME}.yaml. Fix: run this in the project root (where conf/ is)")
    register_schemas()
    overrides = list(overrides)
    check_renamed(overrides)
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base=VERSION_BASE):
            return hydra_compose(config_name=CONFIG_NAME, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as error:  # unknown option, bad override syntax
        raise ConfigError(f"cannot compose conf/ with {' '.join(overrides) or 'no overrides'}: "
                          f"{_one_line(error)}. Fix: correct the override "
                          "(`python -m bilstm_exp --help` lists every group and option)") from None


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
