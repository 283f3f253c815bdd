"""`python -m bilstm_exp [overrides]`: one run (or a sweep with -m), composed by Hydra from conf/."""

from __future__ import annotations

import sys

from bilstm_exp import quiet

quiet.setup()  # first: before Hydra, TensorFlow or MLflow print anything (BILSTM_EXP_LOG_LEVEL=verbose: all logs)

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from bilstm_exp.cli.main import check_overrides, run_from_hydra  # noqa: E402
from bilstm_exp.config.compose import CONF_DIR, CONFIG_NAME, VERSION_BASE  # noqa: E402
from bilstm_exp.config.schema import register_schemas  # noqa: E402

register_schemas()  # the YAML files extend these schemas (config.py)


@hydra.main(version_base=VERSION_BASE, config_path=str(CONF_DIR), config_name=CONFIG_NAME)
def main(cfg: DictConfig) -> float | None:
    return run_from_hydra(cfg)


if __name__ == "__main__":
    check_overrides(sys.argv[1:])  # data.path=... without data=file: a hint, not Hydra's "not in struct"
    main()
