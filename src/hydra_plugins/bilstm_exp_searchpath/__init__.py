"""Puts a project's own ``./conf`` and bilstm-exp's packaged configs on Hydra's config search path.

Hydra imports every module under the ``hydra_plugins`` namespace package and asks each
:class:`SearchPathPlugin` to edit the search path of every composition: ``@hydra.main``,
``hydra.compose`` and DVC's own (``dvc exp run -S``), which never imports bilstm_exp itself. The
first folder that holds a config wins, so a user's ``conf/model/basic.yaml`` overrides the packaged
one and ``conf/model/wide.yaml`` adds an option beside the packaged ones (``--help`` lists both).

- bilstm-exp's own entry points compose ``pkg://bilstm_exp.conf``: ``./conf`` (when present) goes
  before it.
- A composition pointed at a config folder (DVC's ``hydra.config_dir``, ``compose(conf_dir=...)``)
  reads that folder as the user's: the packaged configs go after it.
"""

from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath, SearchPathQuery
from hydra.plugins.search_path_plugin import SearchPathPlugin

from bilstm_exp.config.compose import CONF_MODULE, USER_CONF

PACKAGED = f"pkg://{CONF_MODULE}"


class BilstmExpSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        paths = [element.path for element in search_path.get_path()]
        user = Path.cwd() / USER_CONF
        if PACKAGED in paths:
            if user.is_dir():
                search_path.prepend("bilstm-exp-user", f"file://{user}", anchor=SearchPathQuery(path=PACKAGED))
        else:
            search_path.append("bilstm-exp", PACKAGED)
