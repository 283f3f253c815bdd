"""Command-line overrides checked before Hydra composes them: keys an earlier version had (renamed),
and a key the chosen option lacks (``data.path=...`` without ``data=file``, a misspelt key), each
named with the fix where Hydra would only say "Key '...' is not in struct"."""

from __future__ import annotations

import dataclasses
import difflib

from bilstm_exp.config.schema import SCHEMAS
from bilstm_exp.errors import ConfigError

RENAMED = {  # keys of earlier versions, and what replaced them
    "training.early_stopping.monitor": "use training.monitor (e.g. training.monitor=val/accuracy): one metric now "
                                       "decides early stopping, the kept weights, the champion and every ranking",
}


def check_renamed(overrides: list[str]) -> None:
    """Refuse a key an earlier version had, naming what replaced it (Hydra would say "not in struct")."""
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key in RENAMED:
            raise ConfigError(f"{key}: this key is gone. Fix: {RENAMED[key]}")


def check_option_keys(overrides: list[str], defaults: dict[str, str]) -> None:
    """Refuse ``group.key=value`` when the group's chosen option (picked in ``overrides``, else in
    ``defaults``) has no ``key`` but another option of the group has: Hydra would only say "Key 'path'
    is not in struct"; this names the option to add (``data.path=...`` needs ``data=file``)."""
    check_renamed(overrides)
    if any(o.startswith(("experiment=", "hparams_search=")) for o in overrides):
        return  # a preset may pick options itself
    chosen = dict(defaults)
    chosen.update({name: value for name, eq, value in (o.partition("=") for o in overrides)
                   if eq and name in SCHEMAS})
    for override in overrides:
        dotted, eq, _ = override.partition("=")
        group, dot, key = dotted.partition(".")
        if not (eq and dot) or group not in SCHEMAS or chosen.get(group) not in SCHEMAS[group]:
            continue
        key = key.split(".")[0]
        has = lambda schema, key=key: key in {f.name for f in dataclasses.fields(schema)}  # noqa: E731
        if has(SCHEMAS[group][chosen[group]]):
            continue
        options = [option for option, schema in SCHEMAS[group].items() if has(schema)]
        if not options:
            raise _unknown_key(f"{group}.{key}", SCHEMAS[group][chosen[group]], override)
        owners = " and ".join(f"{group}={o}" for o in options)
        raise ConfigError(f"{dotted}: the {group} option '{chosen[group]}' has no key '{key}'; "
                          f"{owners} {'has' if len(options) == 1 else 'have'} it. "
                          f"Fix: add {group}={options[0]}, e.g. {group}={options[0]} {override}")


def _unknown_key(dotted: str, schema: type, override: str) -> ConfigError:
    """A key no option of its group has: the allowed keys, and the closest one as the fix."""
    group, key = dotted.split(".", 1)
    allowed = [f.name for f in dataclasses.fields(schema)]
    close = difflib.get_close_matches(key, allowed, n=1)
    fix = (f"did you mean {group}.{close[0]}? e.g. {override.replace(dotted, f'{group}.{close[0]}', 1)}" if close
           else "remove it or correct its spelling")
    return ConfigError(f"{dotted}: unknown key. Allowed keys for this {group} option: {', '.join(allowed)}. Fix: {fix}")
