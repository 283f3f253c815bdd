"""The schemas in Hydra's ConfigStore: every option's defaults as ``schema/<group>/<option>``, which
each YAML of the configs extends (``- /schema/model/basic@_here_``), and their digest.

The stored nodes are plain (untyped) copies of the defaults on purpose: a typed node would make
Hydra reject a wrong type or a misspelt key while composing, inside ``@hydra.main``, with its own
message and exit code 1; instead ``schema.validate`` checks the composed config and answers with the
dotted key, what is allowed and the fix (exit 2 at the command line)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from omegaconf import OmegaConf

from bilstm_exp.config.schema import SCHEMAS

SCHEMA_GROUP = "schema"  # conf/<group>/<option>.yaml extends /schema/<group>/<option> from the ConfigStore
VERSION_RESOLVER = "bilstm_exp_version"  # ${bilstm_exp_version:}: the installed package's version


def schema_defaults(group: str, option: str) -> dict[str, Any]:
    """The defaults of one option's schema as plain data: what its YAML extends."""
    return OmegaConf.to_container(OmegaConf.structured(SCHEMAS[group][option]))


def register_schemas() -> None:
    """Store every option's defaults in Hydra's ConfigStore as ``schema/<group>/<option>``.

    Call it before Hydra composes conf/ (storing again is harmless). Besides the package's own entry
    points (``compose.compose``, ``python -m bilstm_exp``), the Hydra plugin module
    ``hydra_plugins.bilstm_exp_schemas`` calls it whenever Hydra scans its plugins, which is how DVC's
    own composition (``dvc exp run -S ...``) sees the schemas without importing this package itself.
    """
    from hydra.core.config_store import ConfigStore

    from bilstm_exp import __version__

    if not OmegaConf.has_resolver(VERSION_RESOLVER):
        OmegaConf.register_new_resolver(VERSION_RESOLVER, lambda: __version__)
    store = ConfigStore.instance()
    for group, options in SCHEMAS.items():
        for option in options:
            store.store(group=f"{SCHEMA_GROUP}/{group}", name=option, node=schema_defaults(group, option),
                        provider="bilstm_exp")


def schema_digest() -> str:
    """md5 of every registered default: changes whenever a default of config/ does (for drift checks).
    A plugin's schema does not count: it is known only once a config naming it is validated."""
    tree = {group: {option: schema_defaults(group, option) for option, schema in options.items()
                    if schema.__module__.startswith("bilstm_exp.config.")}
            for group, options in SCHEMAS.items()}
    return hashlib.md5(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()
