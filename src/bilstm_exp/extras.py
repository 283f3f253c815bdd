"""Optional extras: a command whose extra is not installed says which one, in one line (exit 2).

The base install trains (word vectors included: gensim), tracks, compares, predicts and runs the DVC
stages. The rest comes with an extra of pyproject.toml: ``[server]`` (the team server: PostgreSQL
driver, MLflow's auth app), ``[cluster]`` (the submitit launchers), ``[gpu]`` (TensorFlow with CUDA).
A command that needs one calls :func:`require` before it imports the extra's modules, so a missing
extra is a message naming the ``pip install`` to run instead of an ImportError traceback.
"""

from __future__ import annotations

import importlib.util

from bilstm_exp.errors import UserError


class MissingExtraError(UserError):
    """A command needs an optional dependency that is not installed."""


def require(module: str, extra: str, what: str) -> None:
    """Raise MissingExtraError naming ``extra`` when ``module`` cannot be found (``what``: who needs it).

    It finds the module without importing it (gensim or psycopg take a second to import), so a
    config check can call it."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing; a module blocked with sys.modules[name] = None
        found = False
    if not found:
        raise MissingExtraError(f"{what} needs the [{extra}] extra ({module} is not installed). "
                                f"Fix: pip install 'bilstm-exp[{extra}]'")


# overrides that pick something an extra installs: (override prefix, module, extra)
OVERRIDES = (
    ("hydra/launcher=submitit", "hydra_plugins.hydra_submitit_launcher", "cluster"),
    ("hparams_search=optuna_shared", "psycopg", "server"),
)


def check_overrides(overrides: list[str]) -> None:
    """Refuse an override whose extra is missing (Hydra would say "Could not find 'hydra/launcher/...'")."""
    for override in overrides:
        for prefix, module, extra in OVERRIDES:
            if override.startswith(prefix):
                require(module, extra, override)
