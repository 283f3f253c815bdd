"""`python -m bilstm_exp [overrides]`: one run (or a sweep with -m), composed by Hydra.

Hydra reads the packaged configs (``pkg://bilstm_exp.conf``), after ``./conf`` when the working
folder has one (hydra_plugins.bilstm_exp_searchpath).
"""

from __future__ import annotations

import sys

from bilstm_exp import quiet

quiet.setup()  # first: before Hydra, TensorFlow or MLflow print anything (BILSTM_EXP_LOG_LEVEL=verbose: all logs)

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from bilstm_exp.cli.train import check_overrides, check_working_folder, run_from_hydra  # noqa: E402
from bilstm_exp.config.compose import CONF_MODULE, CONFIG_NAME, VERSION_BASE, check_composes  # noqa: E402
from bilstm_exp.config.registration import register_schemas  # noqa: E402
from bilstm_exp.errors import exit_on_user_error  # noqa: E402

register_schemas()  # the YAML files extend these schemas (config.py)


@hydra.main(version_base=VERSION_BASE, config_path=f"pkg://{CONF_MODULE}", config_name=CONFIG_NAME)
def main(cfg: DictConfig) -> float | None:
    return run_from_hydra(cfg)


if __name__ == "__main__":
    check_overrides(sys.argv[1:])  # data.path=... without data=file: a hint, not Hydra's "not in struct"
    with exit_on_user_error():
        check_working_folder(sys.argv[1:])  # read-only or full: one line, not Hydra's traceback writing outputs/
        check_composes(sys.argv[1:])  # an unknown option or key: one line and exit 2, not Hydra's 13 and exit 1
    main()
