"""`python -m bilstm_exp [overrides]`: one run (or a sweep with -m), composed by Hydra from conf/."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from bilstm_exp.cli import CONF_DIR, run_from_hydra


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float | None:
    return run_from_hydra(cfg)


if __name__ == "__main__":
    main()
