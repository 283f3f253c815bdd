"""Users and permissions on a running team server, created by its admin through MLflow's auth API.

A new user's password goes to a mode-0600 file in ``<dir>/users/`` to hand over privately, never to a
terminal, a log or a command line.
"""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

from bilstm_exp.processes import environment
from bilstm_exp.team.common import ServerError, write_private
from bilstm_exp.team.server import TeamServer

PERMISSIONS = ("READ", "EDIT", "MANAGE", "NO_PERMISSIONS")
USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")  # it names a file in <dir>/users/


def add_user(server: TeamServer, username: str, password: str | None = None) -> str:
    """Create an MLflow user (as the admin) and return its password (generated when not given)."""
    from mlflow.server.auth.client import AuthServiceClient

    password = password or secrets.token_urlsafe(16)
    with admin_credentials(server):
        AuthServiceClient(server.tracking_uri).create_user(username, password)
    return password


def grant(server: TeamServer, username: str, resource_id: str, permission: str,
          resource_type: str = "experiment") -> None:
    """Give USERNAME PERMISSION (READ, EDIT, MANAGE, NO_PERMISSIONS) on an experiment (its id) or, with
    resource_type="registered_model", a registered model (its name), as the admin."""
    from mlflow.server.auth.client import AuthServiceClient

    with admin_credentials(server):
        AuthServiceClient(server.tracking_uri).grant_user_permission(username, resource_type, resource_id,
                                                                     permission)


@contextlib.contextmanager
def admin_credentials(server: TeamServer) -> Iterator[None]:
    """The admin's credentials in this process's environment (where MLflow's clients read them), for the
    duration of the block only."""
    with environment({"MLFLOW_TRACKING_USERNAME": server.admin_user,
                      "MLFLOW_TRACKING_PASSWORD": server.admin_password()}):
        yield


def parse_grants(items: list[str]) -> list[tuple[str, str]]:
    """``ID[:PERMISSION]`` items (permission EDIT when left out) as (experiment id, permission) pairs."""
    grants = []
    for item in items:
        experiment_id, _, permission = item.partition(":")
        permission = (permission or "EDIT").upper()
        if not experiment_id or permission not in PERMISSIONS:
            raise ServerError(f"--experiment {item!r} is not ID[:PERMISSION]. Fix: e.g. --experiment 3:EDIT "
                              f"(permissions: {', '.join(PERMISSIONS)})")
        grants.append((experiment_id, permission))
    return grants


def check_name(name: str) -> str:
    """NAME, when it can name a user and the file of its credentials (no folder, nothing hidden)."""
    if not USER_NAME.fullmatch(name):
        raise ServerError(f"user name {name!r} is not a plain name. Fix: use letters, digits and . _ @ - "
                          "(it names the credentials file)")
    return name


def create_user_file(server: TeamServer, name: str, grants: list[tuple[str, str]]) -> Path:
    """Create user NAME with GRANTS on SERVER; return the 0600 file that holds the new credentials."""
    from mlflow.exceptions import MlflowException

    check_name(name)
    try:
        password = add_user(server, name)
        for experiment_id, permission in grants:
            grant(server, name, experiment_id, permission)
    except MlflowException as error:
        raise ServerError(f"the server refused: {error.message.splitlines()[0][:300]}. Fix: is the server running "
                          f"(bilstm-exp server start --dir {server.state_dir}) and is the name new?") from None
    return write_private(server.state_dir / "users" / f"{name}.env", "".join([
        f"MLFLOW_TRACKING_URI={server.tracking_uri}\n",
        f"MLFLOW_TRACKING_USERNAME={name}\n",
        f"MLFLOW_TRACKING_PASSWORD={password}\n",
    ]))
