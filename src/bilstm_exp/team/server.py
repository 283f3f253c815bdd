"""A team tracking server for trying one out locally: PostgreSQL + ``mlflow server`` with basic auth.

    bilstm-exp server start                 # or: make server; Ctrl-C stops both services
    python -m bilstm_exp.team.server start --dir .team-server --port 5000

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
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bilstm_exp.team.common import DB_ROLE, HOST, ServerError, free_port, port_free, tail, write_private

DATABASES = ("mlflow", "mlflow_auth", "optuna")
ADMIN_USER = "admin"
ADMIN_PASSWORD_ENV = "BILSTM_EXP_SERVER_ADMIN_PASSWORD"
PG_BIN_ENV = "BILSTM_EXP_PG_BIN"
RUN_AS_ENV = "BILSTM_EXP_PG_USER"  # system user PostgreSQL runs as when we are root (default: postgres)
DEFAULT_DIR = ".team-server"
# MLflow 3's server also starts a job runner and seven huey consumers (for GenAI jobs: scorers, prompt
# optimisation), eight more processes that import MLflow; nothing here uses them. Set the variable to true
# to get them.
WITHOUT_JOB_RUNNER = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def pg_bindir() -> Path:
    """Folder with ``initdb`` and ``pg_ctl``: $BILSTM_EXP_PG_BIN, ``pg_config --bindir``, or the newest
    /usr/lib/postgresql/<version>/bin (Debian keeps them off PATH)."""
    candidates: list[Path] = []
    if os.environ.get(PG_BIN_ENV):
        candidates.append(Path(os.environ[PG_BIN_ENV]))
    if shutil.which("pg_config"):
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, timeout=10)
            candidates.append(Path(out.stdout.strip()))
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: p.parent.name, reverse=True)
    candidates.extend(versions)
    if shutil.which("initdb"):
        candidates.append(Path(shutil.which("initdb")).parent)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    raise ServerError("PostgreSQL's initdb/pg_ctl were not found. Fix: install the server "
                      "(Debian: `apt-get install -y postgresql`) or set BILSTM_EXP_PG_BIN to its bin folder")


@dataclass(frozen=True)
class RunAs:
    """The system user the PostgreSQL processes run as: ourselves, or `postgres` when we are root."""

    uid: int
    gid: int
    name: str
    home: str

    @classmethod
    def for_postgres(cls) -> RunAs:
        if os.geteuid() != 0:
            entry = pwd.getpwuid(os.geteuid())
            return cls(entry.pw_uid, entry.pw_gid, entry.pw_name, entry.pw_dir)
        name = os.environ.get(RUN_AS_ENV, "postgres")
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise ServerError(f"PostgreSQL refuses to run as root and there is no system user {name!r} to run "
                              "it as. Fix: install Debian's postgresql package (it creates `postgres`), "
                              f"or set {RUN_AS_ENV} to an existing non-root user") from None
        if entry.pw_uid == 0:
            raise ServerError(f"{RUN_AS_ENV}={name} is root; PostgreSQL refuses to run as root. "
                              "Fix: name a non-root user")
        return cls(entry.pw_uid, entry.pw_gid, entry.pw_name, entry.pw_dir)

    @property
    def is_self(self) -> bool:
        return self.uid == os.geteuid()

    def run(self, args: list[str], *, timeout: float = 120, env: dict[str, str] | None = None,
            check: bool = True, new_session: bool = False) -> subprocess.CompletedProcess:
        kwargs = {} if self.is_self else {"user": self.uid, "group": self.gid, "extra_groups": []}
        kwargs["start_new_session"] = new_session  # a daemon outside our process group: Ctrl-C reaches us first
        full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8",
                    "HOME": self.home if not self.is_self else os.environ.get("HOME", self.home), **(env or {})}
        result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=full_env,
                                cwd="/", **kwargs)
        if check and result.returncode != 0:
            raise ServerError(f"{Path(args[0]).name} failed ({result.returncode}): "
                              f"{(result.stderr or result.stdout).strip()[-1500:]}")
        return result

    def chown(self, path: Path) -> None:
        if not self.is_self:
            os.chown(path, self.uid, self.gid)

    def can_reach(self, folder: Path) -> bool:
        """Whether this user can create files in FOLDER (every parent must be searchable)."""
        if self.is_self:
            return True
        return self.run(["/bin/sh", "-c", 'test -w "$1" && test -x "$1"', "sh", str(folder)],
                        check=False).returncode == 0


# --------------------------------------------------------------------------- PostgreSQL


@dataclass
class Postgres:
    """A PostgreSQL cluster in ``folder/data`` listening on 127.0.0.1:``port`` and a private socket."""

    folder: Path
    port: int
    run_as: RunAs
    bindir: Path

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def socket_dir(self) -> Path:
        return self.folder / "socket"

    @property
    def log(self) -> Path:
        return self.folder / "postgres.log"

    def url(self, database: str) -> str:
        """SQLAlchemy URL without a password: libpq reads it from PGPASSFILE."""
        return f"postgresql://{DB_ROLE}@{HOST}:{self.port}/{database}"

    def pg_ctl(self, *args: str, timeout: float = 90, new_session: bool = False) -> subprocess.CompletedProcess:
        return self.run_as.run([str(self.bindir / "pg_ctl"), "-D", str(self.data), *args], timeout=timeout,
                               new_session=new_session)

    def psql(self, database: str, sql: str) -> str:
        """Run SQL through the trusted local socket (no password) as the cluster's superuser role."""
        out = self.run_as.run([str(self.bindir / "psql"), "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1",
                               "-h", str(self.socket_dir), "-p", str(self.port), "-U", DB_ROLE, "-d", database,
                               "-c", sql])
        return out.stdout.strip()

    def running(self) -> bool:
        return self.run_as.run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "status"],
                               check=False).returncode == 0

    def init(self, db_password: str) -> None:
        """initdb (once), with the role's password given through a file only the cluster's owner reads."""
        for path in (self.folder, self.socket_dir):
            path.mkdir(parents=True, exist_ok=True)
            os.chmod(path, 0o700)
            self.run_as.chown(path)
        if (self.data / "PG_VERSION").is_file():
            return
        pwfile = write_private(self.folder / "initdb-pwfile", db_password + "\n")
        self.run_as.chown(pwfile)
        try:
            self.run_as.run([str(self.bindir / "initdb"), "-D", str(self.data), "-U", DB_ROLE, "--pwfile",
                             str(pwfile), "-E", "UTF8", "--auth-local=trust", "--auth-host=scram-sha-256",
                             "--no-instructions"], timeout=180)
        finally:
            pwfile.unlink(missing_ok=True)

    def start(self) -> None:
        if self.running():
            return
        options = (f"-p {self.port} -c listen_addresses={HOST} -c unix_socket_directories='{self.socket_dir}' "
                   "-c unix_socket_permissions=0700 -c max_connections=200 -c fsync=on")
        log = self.log
        if not log.exists():
            log.touch(mode=0o600)
            self.run_as.chown(log)
        try:
            self.pg_ctl("-o", options, "-l", str(log), "-w", "-t", "60", "start", timeout=90, new_session=True)
        except ServerError as error:
            raise ServerError(f"PostgreSQL did not start on port {self.port}: {error}\n{tail(log)}") from None

    def create_databases(self) -> None:
        existing = set(self.psql("postgres", "SELECT datname FROM pg_database").split())
        for name in DATABASES:
            if name not in existing:
                self.psql("postgres", f'CREATE DATABASE "{name}"')

    def stop(self) -> None:
        if self.data.is_dir() and self.running():
            self.pg_ctl("-m", "fast", "-w", "-t", "60", "stop", timeout=90)


def postgres_folder(state_dir: Path, run_as: RunAs) -> Path:
    """``state_dir/postgres`` when the PostgreSQL user can reach it; otherwise (root running in a private
    folder such as pytest's) a fresh folder under the system temp dir, recorded in server.json."""
    state_dir.mkdir(parents=True, exist_ok=True)
    if run_as.is_self:
        return state_dir / "postgres"
    if (state_dir / "postgres").is_dir():
        return state_dir / "postgres"
    os.chmod(state_dir, os.stat(state_dir).st_mode | stat.S_IXOTH)  # searchable, not listable or writable
    pg_parent = state_dir / "postgres"
    pg_parent.mkdir(mode=0o700)
    run_as.chown(pg_parent)
    if run_as.can_reach(pg_parent):
        return pg_parent
    pg_parent.rmdir()
    return Path(tempfile.mkdtemp(prefix="bilstm-exp-postgres-"))


# --------------------------------------------------------------------------- the team server


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


@dataclass
class TeamServer:
    """A running team server; :func:`start` makes one, :meth:`stop` ends both services."""

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

    def stop(self, remove: bool = False) -> None:
        """Stop the MLflow server (SIGTERM to its process group, then SIGKILL) and PostgreSQL.
        REMOVE deletes the state folder and the cluster too."""
        if self.process is not None:
            stop_process(self.process)
            self.process = None
            info_path = self.state_dir / "server.json"
            with contextlib.suppress(OSError, ValueError):  # a later `stop` must not signal a reused pid
                info_path.write_text(json.dumps({**json.loads(info_path.read_text()), "mlflow_pid": None}, indent=2))
        with contextlib.suppress(ServerError, subprocess.SubprocessError):
            self.postgres.stop()
        if remove:
            shutil.rmtree(self.postgres.folder, ignore_errors=True)
            shutil.rmtree(self.state_dir, ignore_errors=True)

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


def stop_process(process: subprocess.Popen, timeout_s: float = 20) -> None:
    """SIGTERM the process group (e.g. uvicorn's workers), then SIGKILL after a bounded wait."""
    if process.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout_s: float) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise ServerError(f"mlflow server exited with {process.returncode}:\n{tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise ServerError(f"{url} did not answer within {timeout_s:.0f} s:\n{tail(log)}")
        time.sleep(0.5)


def start(state_dir: Path | str = DEFAULT_DIR, *, port: int = 0, db_port: int = 0, workers: int = 2,
          timeout_s: float = 180) -> TeamServer:
    """Start (or restart on the same state folder) PostgreSQL and the MLflow basic-auth server; return
    the running :class:`TeamServer`. PORT/DB_PORT 0 pick free ports. Raises :class:`ServerError`."""
    state_dir = Path(state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / ".gitignore").write_text("*\n")  # never commit the secrets or the data
    info_path = state_dir / "server.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    bindir = pg_bindir()
    run_as = RunAs.for_postgres()
    pg_folder = Path(info["postgres_folder"]) if info.get("postgres_folder") else postgres_folder(state_dir, run_as)
    if not pg_folder.is_dir():  # a temp-dir cluster that did not survive a reboot
        pg_folder = postgres_folder(state_dir, run_as)
    db_port = db_port or info.get("db_port") or free_port()
    pg = Postgres(pg_folder, int(db_port), run_as, bindir)
    keys = Secrets.load_or_create(state_dir / "secrets.json")
    pg.init(keys.db_password)
    pg.start()
    pg.create_databases()
    write_private(state_dir / "pgpass", f"{HOST}:{pg.port}:*:{DB_ROLE}:{keys.db_password}\n")
    write_private(state_dir / "auth.ini", "\n".join([
        "[mlflow]",
        "default_permission = READ",  # everyone reads everything; writing needs a grant or ownership
        f"database_uri = {pg.url('mlflow_auth')}",
        f"admin_username = {ADMIN_USER}",
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
        "grant_default_workspace_access = false",
        "auth_cache_ttl_seconds = 60",
        "",
    ]))
    # admin_password goes through the environment of the server process only (first start creates the user).
    port = port or free_port()
    tracking_uri = f"http://{HOST}:{port}"
    info = {"postgres_folder": str(pg_folder), "db_port": pg.port, "tracking_uri": tracking_uri,
            "db_url_optuna": pg.url("optuna"), "mlflow_pid": None}
    info_path.write_text(json.dumps(info, indent=2))
    artifacts = state_dir / "artifacts"
    artifacts.mkdir(exist_ok=True)
    env = {**WITHOUT_JOB_RUNNER, **os.environ,
           "PGPASSFILE": str(state_dir / "pgpass"),
           "MLFLOW_AUTH_CONFIG_PATH": str(state_dir / "auth.ini"),
           "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN_USER,
           "MLFLOW_AUTH_ADMIN_PASSWORD": keys.admin_password,
           "MLFLOW_FLASK_SERVER_SECRET_KEY": keys.flask_secret_key}
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        env.pop(name, None)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    args = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", pg.url("mlflow"),
            "--serve-artifacts", "--artifacts-destination", artifacts.as_uri(), "--app-name", "basic-auth",
            "--host", HOST, "--port", str(port), "--workers", str(workers)]
    log = state_dir / "mlflow-server.log"
    with open(log, "ab") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=state_dir, env=env,
                                   start_new_session=True)
    info_path.write_text(json.dumps({**info, "mlflow_pid": process.pid}, indent=2))
    server = TeamServer(state_dir, tracking_uri, pg, process)
    try:
        wait_healthy(f"{tracking_uri}/health", process, log, timeout_s)
    except BaseException:
        server.stop()
        raise
    write_private(state_dir / "credentials.env", "".join([
        f"MLFLOW_TRACKING_URI={tracking_uri}\n",
        f"MLFLOW_TRACKING_USERNAME={ADMIN_USER}\n",
        f"MLFLOW_TRACKING_PASSWORD={keys.admin_password}\n",
        f"PGPASSFILE={state_dir / 'pgpass'}\n",
    ]))
    return server


def stop_dir(state_dir: Path | str) -> bool:
    """Stop what a ``start`` on STATE_DIR left running (its foreground command was killed, say): the MLflow
    server's process group and the PostgreSQL cluster. True when something was running."""
    info_path = Path(state_dir) / "server.json"
    if not info_path.is_file():
        return False
    info = json.loads(info_path.read_text())
    stopped = False
    pid = info.get("mlflow_pid")
    if pid:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(int(pid), signal.SIGTERM)
            stopped = True
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                os.killpg(int(pid), 0)
                time.sleep(0.2)
            os.killpg(int(pid), signal.SIGKILL)
    folder = Path(info.get("postgres_folder", ""))
    if (folder / "data").is_dir():
        pg = Postgres(folder, int(info["db_port"]), RunAs.for_postgres(), pg_bindir())
        if pg.running():
            pg.stop()
            stopped = True
    return stopped


def attach(state_dir: Path | str = DEFAULT_DIR) -> TeamServer:
    """A handle on the server a ``start`` on STATE_DIR runs (in another process), for admin calls such as
    :func:`add_user` and :func:`grant`. It does not start or own anything."""
    info_path = Path(state_dir).resolve() / "server.json"
    if not info_path.is_file():
        raise ServerError(f"no team server state in {state_dir}. Fix: start one with `bilstm-exp server start "
                          f"--dir {state_dir}`, or pass the --dir it was started with")
    info = json.loads(info_path.read_text())
    pg = Postgres(Path(info["postgres_folder"]), int(info["db_port"]), RunAs.for_postgres(), pg_bindir())
    return TeamServer(info_path.parent, info["tracking_uri"], pg)


@contextlib.contextmanager
def running(state_dir: Path | str, **kwargs) -> Iterator[TeamServer]:
    """``with running(folder) as server:`` start, yield, and always stop (removing nothing)."""
    server = start(state_dir, **kwargs)
    try:
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------- users and permissions


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
    keys = {"MLFLOW_TRACKING_USERNAME": server.admin_user, "MLFLOW_TRACKING_PASSWORD": server.admin_password()}
    saved = {key: os.environ.get(key) for key in keys}
    os.environ.update(keys)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# --------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", nargs="?", default="start", choices=["start", "stop", "user"],
                        help="start: run PostgreSQL and the MLflow server in the foreground until Ctrl-C; "
                             "stop: stop what a killed start left running; user NAME: create an MLflow user "
                             "(password written to <dir>/users/NAME.env, mode 0600)")
    parser.add_argument("name", nargs="?", help="user: the user name")
    parser.add_argument("--experiment", action="append", default=[], metavar="ID[:PERMISSION]",
                        help="user: grant PERMISSION (default EDIT) on experiment ID; repeatable")
    parser.add_argument("--dir", default=DEFAULT_DIR, help=f"state folder (default: {DEFAULT_DIR})")
    parser.add_argument("--port", type=int, default=5000, help="MLflow server port (0: a free one; default 5000)")
    parser.add_argument("--db-port", type=int, default=0, help="PostgreSQL port (0: a free one, kept on restart)")
    parser.add_argument("--workers", type=int, default=2, help="MLflow server worker processes")


def add_command(subparsers) -> None:
    """``bilstm-exp server``: hook for cli.main (``server.add_command(sub)``)."""
    parser = subparsers.add_parser("server", help="start a local team tracking server (PostgreSQL + MLflow "
                                                  "basic auth + proxied artifacts)")
    add_arguments(parser)
    parser.set_defaults(func=command)


def command(args: argparse.Namespace) -> None:
    if args.action == "stop":
        try:
            print("bilstm-exp server: stopped" if stop_dir(args.dir) else
                  f"bilstm-exp server: nothing was running for {args.dir}")
        except ServerError as error:
            print(f"bilstm-exp server: error: {error}", file=sys.stderr)
            raise SystemExit(2) from None
        return
    if args.action == "user":
        try:
            user_command(args)
        except (ServerError, ValueError) as error:
            print(f"bilstm-exp server: error: {error}", file=sys.stderr)
            raise SystemExit(2) from None
        return
    if args.port and not port_free(args.port):
        print(f"bilstm-exp server: error: port {args.port} on {HOST} is in use. Fix: stop what listens there "
              "or pass --port 0 for a free port", file=sys.stderr)
        raise SystemExit(2)
    stopping = []

    def on_signal(signum, frame):  # noqa: ARG001
        stopping.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        server = start(args.dir, port=args.port, db_port=args.db_port, workers=args.workers)
    except ServerError as error:
        print(f"bilstm-exp server: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    print(server.describe(), flush=True)
    print(f"Running as {getpass.getuser()}; Ctrl-C stops both services (data kept in {server.state_dir}).",
          flush=True)
    try:
        while server.process is not None and server.process.poll() is None:
            time.sleep(1)
        print(f"bilstm-exp server: mlflow server exited ({server.process.returncode}); see {server.log}",
              file=sys.stderr)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        print("bilstm-exp server: stopped", flush=True)


def user_command(args: argparse.Namespace) -> None:
    """``bilstm-exp server user NAME [--experiment ID[:PERMISSION]]``: the admin creates a user; the password
    goes to a 0600 file to hand over privately, never to the terminal."""
    if not args.name:
        raise ServerError("`user` needs a name. Fix: bilstm-exp server user alice [--experiment 1:EDIT]")
    grants = []
    for item in args.experiment:
        experiment_id, _, permission = item.partition(":")
        permission = (permission or "EDIT").upper()
        if not experiment_id or permission not in ("READ", "EDIT", "MANAGE", "NO_PERMISSIONS"):
            raise ServerError(f"--experiment {item!r}: expected ID[:READ|EDIT|MANAGE|NO_PERMISSIONS]")
        grants.append((experiment_id, permission))
    from mlflow.exceptions import MlflowException

    server = attach(args.dir)
    try:
        password = add_user(server, args.name)
        for experiment_id, permission in grants:
            grant(server, args.name, experiment_id, permission)
    except MlflowException as error:
        raise ServerError(f"the server refused: {error.message.splitlines()[0][:300]}. Fix: is the server running "
                          f"(bilstm-exp server start --dir {args.dir}) and is the name new?") from None
    path = write_private(server.state_dir / "users" / f"{args.name}.env", "".join([
        f"MLFLOW_TRACKING_URI={server.tracking_uri}\n",
        f"MLFLOW_TRACKING_USERNAME={args.name}\n",
        f"MLFLOW_TRACKING_PASSWORD={password}\n",
    ]))
    granted = ", ".join(f"{p} on experiment {e}" for e, p in grants) or "READ everywhere (the default)"
    print(f"created MLflow user '{args.name}': {granted}. Credentials in {path} (mode 0600): hand them over "
          "privately; the user loads them with `set -a; . FILE; set +a`")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bilstm-exp server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    command(parser.parse_args(argv))


if __name__ == "__main__":
    main()
