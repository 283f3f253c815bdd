"""An MLflow run-context provider: lineage tags on every run started inside a bilstm-exp project.

Registered under the entry-point group ``mlflow.run_context_provider`` (see pyproject.toml), so
any ``mlflow.start_run()`` in a process that has bilstm-exp installed, with the working
directory inside a checkout of this project, gets:

* ``git_commit``: the checked-out commit; ``git_dirty``: "true" when tracked files differ from it;
* ``dvc_stage`` / ``dvc_exp_name``: when DVC runs the process (``dvc repro`` / ``dvc exp run``).

Outside a bilstm-exp checkout it stays silent.
"""

from __future__ import annotations

import os
import subprocess
from functools import lru_cache
from pathlib import Path

from mlflow.tracking.context.abstract_context import RunContextProvider


@lru_cache(maxsize=8)
def project_root(start: str) -> Path | None:
    """The nearest folder at or above ``start`` holding a bilstm-exp pyproject.toml."""
    for folder in (Path(start), *Path(start).parents):
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file() and 'name = "bilstm-exp"' in pyproject.read_text(errors="replace"):
            return folder
    return None


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def lineage_tags(root: Path) -> dict[str, str]:
    tags: dict[str, str] = {}
    commit = _git(root, "rev-parse", "HEAD")
    if commit:
        tags["git_commit"] = commit
        status = _git(root, "status", "--porcelain", "--untracked-files=no")
        tags["git_dirty"] = "true" if status else "false"
    for env, tag in (("DVC_STAGE", "dvc_stage"), ("DVC_EXP_NAME", "dvc_exp_name")):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    return tags


class LineageContextProvider(RunContextProvider):
    def in_context(self) -> bool:
        return project_root(os.getcwd()) is not None

    def tags(self) -> dict[str, str]:
        root = project_root(os.getcwd())
        return lineage_tags(root) if root else {}
