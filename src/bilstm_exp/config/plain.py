"""The validated config as plain data: nested dicts (YAML, params.yaml, config.yaml artifacts) and
their dotted flattening (MLflow params, checkpoint identities)."""

from __future__ import annotations

import dataclasses
from typing import Any


def to_dict(config: Any) -> dict[str, Any]:
    """The validated config (an ``ExperimentConfig``) as plain nested dicts, without ``env_refs``, which
    says where values came from rather than being one."""
    return {key: value for key, value in dataclasses.asdict(config).items() if key != "env_refs"}


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'model': {'lstm_units': 64}} -> {'model.lstm_units': 64}; lists stay whole values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat
