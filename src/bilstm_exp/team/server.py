"""A team tracking server for trying one out locally: PostgreSQL + ``mlflow server`` with basic auth.

    bilstm-exp server start                 # or: make server; Ctrl-C stops both services
    python -m bilstm_exp.team.cli start --dir .team-server --port 5000

What it starts, all on 127.0.0.1:

* a PostgreSQL cluster (Debian's ``postgresql`` package: ``initdb`` and ``pg_ctl`` from
  ``pg_config --bindir``) in ``<dir>/postgres`` on a free port, with three databases: ``mlflow``
  (runs, metrics, registry), ``mlflow_auth`` (users and permissions) and ``optuna`` (shared Optuna
  studies, see ``conf/hparams_search/optuna_shared.yaml``). PostgreSQL refuses to run as root, so
  when started by root its processes run as the ``postgres`` system user the package creates.
  Connections over TCP need the role's password (scram-sha-256); local socket connections are
  trusted but the socket is only open to the cluster's owner (mode 0700).
* ``mlflow server --app-name basic-auth`` on that PostgreSQL with proxied artifacts
  (``--serve-artifacts --artifacts-destination <dir>/artifacts``): clients upload and download
  artifacts over HTTP through the server and need no storage credentials of their own.

Secrets never appear on a command line, in a URI or in the output. They are generated once (or taken
from ``BILSTM_EXP_SERVER_ADMIN_PASSWORD``) and kept in mode-0600 files in ``<dir>``:

* ``credentials.env``  MLFLOW_TRACKING_URI/USERNAME/PASSWORD for the admin: ``set -a; . FILE; set +a``
* ``pgpass``           libpq password file for the database role; point ``PGPASSFILE`` at it
  (the MLflow server and Optuna workers connect with password-free URLs such as
  ``postgresql://bilstm@127.0.0.1:PORT/optuna``)
* ``secrets.json``     the admin and database passwords and the Flask secret key
* ``auth.ini``         MLflow's basic-auth config (``MLFLOW_AUTH_CONFIG_PATH``)

Starting again with the same ``--dir`` reuses the cluster and the passwords, so runs persist.

This module puts the parts together (:func:`start`, :func:`attach`, :func:`stop_dir`); the parts are
``team.postgres`` (the cluster), ``team.run_as`` (the privilege drop), ``team.mlflow_server`` (the
process), ``team.users`` (users and permissions) and ``team.cli`` (``bilstm-exp server``).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bilstm_exp.team import mlflow_server
from bilstm_exp.team.common import DB_ROLE, HOST, ServerError, free_port, write_private
from bilstm_exp.team.postgres import DATABASES, Postgres, pg_bindir, postgres_folder
from bilstm_exp.team.postgres import STOP_WITHIN_S as POSTGRES_STOP_WITHIN_S
from bilstm_exp.team.run_as import RunAs

ADMIN_USER = "admin"
ADMIN_PASSWORD_ENV = "BILSTM_EXP_SERVER_ADMIN_PASSWORD"
DEFAULT_DIR = ".team-server"
STATE_FILE = "server.json"  # non-secret facts a later `stop`, `user` or attach() needs: ports, folders, pid
# The longest a stop can take, each service at its bound (each returns as soon as its service has exited).
STOP_WITHIN_S = mlflow_server.STOP_WITHIN_S + POSTGRES_STOP_WITHIN_S


def _silent(line: str) -> None:
    """The default report of a stop: a library caller reads nothing."""


@dataclass
class Secrets:
    admin_password: str
    db_password: str
    flask_secret_key: str

    @classmethod
    def load_or_create(cls, path: Path) -> Secrets:
        if path.is_file():
            return cls(**json.loads(path.read_text()))
        made = cls(admin_password=os.environ.get(ADMIN_PASSWORD_ENV) or secrets.token_urlsafe(18),
                   db_password=secrets.token_urlsafe(24), flask_secret_key=secrets.token_hex(32))
        write_private(path, json.dumps(made.__dict__))
        return made


def read_state(state_dir: Path) -> dict:
    path = state_dir / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def write_state(state_dir: Path, **facts) -> None:
    """Update server.json with FACTS (keeping the others)."""
    (state_dir / STATE_FILE).write_text(json.dumps({**read_state(state_dir), **facts}, indent=2))


@dataclass
class TeamServer:
    """A team server: :func:`start` makes one it owns (``process`` set), :func:`attach` a handle on one
    another process runs; :meth:`stop` ends both services either way."""

    state_dir: Path
    tracking_uri: str
    postgres: Postgres
    process: subprocess.Popen | None = field(default=None, repr=False)
    admin_user: str = ADMIN_USER

    # Non-secret facts a user needs; the secrets stay in the files these name.
    @property
    def credentials_file(self) -> Path:
        return self.state_dir / "credentials.env"

    @property
    def pgpass_file(self) -> Path:
        return self.state_dir / "pgpass"

    @property
    def log(self) -> Path:
        return self.state_dir / "mlflow-server.log"

    @property
    def artifacts_dir(self) -> Path:
        return self.state_dir / "artifacts"

    def db_url(self, database: str = "optuna") -> str:
        return self.postgres.url(database)

    def admin_password(self) -> str:
        return Secrets.load_or_create(self.state_dir / "secrets.json").admin_password

    def client_env(self, username: str | None = None, password: str | None = None) -> dict[str, str]:
        """Environment for a client process: the tracking URI and credentials (admin by default), and
        PGPASSFILE for Optuna workers that use the shared study database."""
        return {"MLFLOW_TRACKING_URI": self.tracking_uri,
                "MLFLOW_TRACKING_USERNAME": username or self.admin_user,
                "MLFLOW_TRACKING_PASSWORD": password if password is not None else self.admin_password(),
                "PGPASSFILE": str(self.pgpass_file)}

    def stop(self, remove: bool = False, report: Callable[[str], None] = _silent) -> bool:
        """Stop the MLflow server, then PostgreSQL (which disconnects what is left), each as soon as it
        has exited and within its bound; REPORT gets one line per service stopped. REMOVE deletes the
        state folder and the cluster too. True when something was running; a ServerError names a
        service that would not stop, after trying both."""
        problems, stopped = [], False
        for name, step in (("the MLflow server", self._stop_mlflow), ("PostgreSQL", self.postgres.stop)):
            try:
                how = step()
            except (ServerError, subprocess.SubprocessError) as error:
                problems.append(f"{name}: {error}")
                continue
            if how:
                report(how)
                stopped = True
        if remove:
            shutil.rmtree(self.postgres.folder, ignore_errors=True)
            shutil.rmtree(self.state_dir, ignore_errors=True)
        if problems:
            raise ServerError(f"the team server did not stop cleanly ({'; '.join(problems)}). Fix: run "
                              f"`bilstm-exp server stop --dir {self.state_dir}` again")
        return stopped

    def _stop_mlflow(self) -> str | None:
        """Our own child by its handle; one a killed `start` left behind by the pid it recorded."""
        if self.process is not None:
            how = mlflow_server.stop_process(self.process)
            self.process = None
        else:
            pid = read_state(self.state_dir).get("mlflow_pid")
            how = mlflow_server.stop_pid(int(pid)) if pid and mlflow_server.is_mlflow(int(pid)) else None
        with contextlib.suppress(OSError, ValueError):  # a later `stop` must not signal a reused pid
            write_state(self.state_dir, mlflow_pid=None)
        return f"MLflow server {how}" if how else None

    def describe(self) -> str:
        return "\n".join([
            f"MLflow tracking server: {self.tracking_uri}  (basic auth; admin user '{self.admin_user}')",
            f"  admin credentials:   {self.credentials_file} (mode 0600; load with `set -a; . {self.credentials_file}; "
            "set +a`)",
            f"  artifacts (proxied): {self.artifacts_dir}",
            f"  server log:          {self.log}",
            f"PostgreSQL:            {HOST}:{self.postgres.port} (role '{DB_ROLE}'; databases {', '.join(DATABASES)})",
            f"  password file:       {self.pgpass_file} (mode 0600; export PGPASSFILE={self.pgpass_file})",
            f"  Optuna storage:      {self.db_url('optuna')}",
            f"  cluster folder:      {self.postgres.folder}",
        ])


def start_postgres(state_dir: Path, db_port: int, keys: Secrets) -> Postgres:
    """The cluster of STATE_DIR (made on first start), running with its databases, and the password file
    clients use for it. DB_PORT 0: the port of the last start, else a free one."""
    state = read_state(state_dir)
    run_as = RunAs.for_postgres()
    folder = Path(state["postgres_folder"]) if state.get("postgres_folder") else None
    if folder is None or not folder.is_dir():  # first start, or a temp-dir cluster that did not survive a reboot
        folder = postgres_folder(state_dir, run_as)
    pg = Postgres(folder, int(db_port or state.get("db_port") or free_port()), run_as, pg_bindir())
    write_state(state_dir, postgres_folder=str(pg.folder), db_port=pg.port)  # before it runs: stop_dir finds it
    pg.init(keys.db_password)
    pg.start()
    pg.create_databases()
    write_private(state_dir / "pgpass", f"{HOST}:{pg.port}:*:{DB_ROLE}:{keys.db_password}\n")
    return pg


def start(state_dir: Path | str = DEFAULT_DIR, *, port: int = 0, db_port: int = 0, workers: int = 2,
          timeout_s: float = 180) -> TeamServer:
    """Start (or restart on the same state folder) PostgreSQL and the MLflow basic-auth server; return
    the running :class:`TeamServer`. PORT/DB_PORT 0 pick free ports. Raises :class:`ServerError`; on
    any failure or interrupt on the way, what had started is stopped again."""
    state_dir = Path(state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / ".gitignore").write_text("*\n")  # never commit the secrets or the data
    keys = Secrets.load_or_create(state_dir / "secrets.json")
    try:
        pg = start_postgres(state_dir, db_port, keys)
        return start_mlflow(state_dir, pg, keys, port or free_port(), workers, timeout_s)
    except BaseException:
        with contextlib.suppress(ServerError):  # the reason it did not come up is the error to show
            stop_dir(state_dir)
        raise


def start_mlflow(state_dir: Path, pg: Postgres, keys: Secrets, port: int, workers: int,
                 timeout_s: float) -> TeamServer:
    """``mlflow server`` on PG, answering on PORT, and the admin's credentials file for its clients."""
    auth = mlflow_server.write_auth_config(state_dir / "auth.ini", pg.url("mlflow_auth"), ADMIN_USER)
    tracking_uri = f"http://{HOST}:{port}"
    write_state(state_dir, tracking_uri=tracking_uri, db_url_optuna=pg.url("optuna"), mlflow_pid=None)
    # The admin's password reaches the server through its environment only (the first start creates the user).
    process = mlflow_server.launch(state_dir, pg.url("mlflow"), port, workers, {
        "PGPASSFILE": str(state_dir / "pgpass"), "MLFLOW_AUTH_CONFIG_PATH": str(auth),
        "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN_USER, "MLFLOW_AUTH_ADMIN_PASSWORD": keys.admin_password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": keys.flask_secret_key})
    write_state(state_dir, mlflow_pid=process.pid)
    server = TeamServer(state_dir, tracking_uri, pg, process)
    mlflow_server.wait_healthy(f"{tracking_uri}/health", process, server.log, timeout_s)
    write_private(server.credentials_file, "".join([
        f"MLFLOW_TRACKING_URI={tracking_uri}\n",
        f"MLFLOW_TRACKING_USERNAME={ADMIN_USER}\n",
        f"MLFLOW_TRACKING_PASSWORD={keys.admin_password}\n",
        f"PGPASSFILE={server.pgpass_file}\n",
    ]))
    return server


def attach(state_dir: Path | str = DEFAULT_DIR) -> TeamServer:
    """A handle on the server a ``start`` on STATE_DIR runs (in another process), for admin calls such as
    :func:`bilstm_exp.team.users.add_user` and for :func:`stop_dir`. It starts nothing."""
    state = read_state(Path(state_dir).resolve())
    if not state.get("postgres_folder"):
        raise ServerError(f"no team server state in {state_dir}. Fix: start one with `bilstm-exp server start "
                          f"--dir {state_dir}`, or pass the --dir it was started with")
    pg = Postgres(Path(state["postgres_folder"]), int(state["db_port"]), RunAs.for_postgres(), pg_bindir())
    return TeamServer(Path(state_dir).resolve(), state.get("tracking_uri", ""), pg)


def stop_dir(state_dir: Path | str, report: Callable[[str], None] = _silent) -> bool:
    """Stop what a ``start`` on STATE_DIR left running (its foreground command was killed, say): the MLflow
    server's process group and the PostgreSQL cluster. True when something was running."""
    if not read_state(Path(state_dir).resolve()).get("postgres_folder"):
        return False
    return attach(state_dir).stop(report=report)


@contextlib.contextmanager
def running(state_dir: Path | str, **kwargs) -> Iterator[TeamServer]:
    """``with running(folder) as server:`` start, yield, and always stop (removing nothing)."""
    server = start(state_dir, **kwargs)
    try:
        yield server
    finally:
        server.stop()
