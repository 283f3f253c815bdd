"""Registers bilstm-exp's config schemas whenever Hydra scans its plugins.

Each YAML in conf/ extends a schema from Hydra's ConfigStore (``- /schema/model/basic@_here_``).
Hydra imports every module under the ``hydra_plugins`` namespace package before it composes, in
any process: ``@hydra.main``, ``hydra.compose`` and DVC's own composition for ``dvc exp run -S``,
which never imports bilstm_exp itself. This module is how those compositions find the schemas.
It defines no plugin class and imports no TensorFlow.
"""

from bilstm_exp.config.registration import register_schemas

register_schemas()
