"""`python -m bilstm_exp [overrides]`: one run (or a sweep with -m), composed by Hydra from conf/."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from bilstm_exp.cli import run_from_hydra
from bilstm_exp.compose import CONF_DIR, CONFIG_NAME, VERSION_BASE
from bilstm_exp.config import register_schemas

register_schemas()  # the YAML files extend these schemas (config.py)


@hydra.main(version_base=VERSION_BASE, config_path=str(CONF_DIR), config_name=CONFIG_NAME)
def main(cfg: DictConfig) -> float | None:
    return run_from_hydra(cfg)


if __name__ == "__main__":
    main()
