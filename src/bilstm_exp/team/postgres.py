"""The team server's PostgreSQL cluster: found, initialised once, started, given its databases, stopped.

It uses Debian's ``postgresql`` package (``initdb`` and ``pg_ctl`` from ``pg_config --bindir``;
scripts/install-postgres.sh installs it). The cluster listens on 127.0.0.1 only, on a port of its own,
and on a socket only its owner can open; TCP connections need the role's password (scram-sha-256).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bilstm_exp.team.common import DB_ROLE, HOST, ServerError, tail, write_private
from bilstm_exp.team.run_as import RunAs

DATABASES = ("mlflow", "mlflow_auth", "optuna")
PG_BIN_ENV = "BILSTM_EXP_PG_BIN"
# A fast shutdown disconnects the clients and writes a final checkpoint: pg_ctl returns as soon as that
# is done (seconds), and waits at most this long on a slow or busy host before the immediate shutdown.
FAST_STOP_S = 120
IMMEDIATE_STOP_S = 30
STOP_WITHIN_S = FAST_STOP_S + IMMEDIATE_STOP_S + 30  # the whole stop, status checks included


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
    candidates.extend(sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: p.parent.name, reverse=True))
    if shutil.which("initdb"):
        candidates.append(Path(shutil.which("initdb")).parent)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    raise ServerError("PostgreSQL's initdb/pg_ctl were not found. Fix: run scripts/install-postgres.sh (as root "
                      f"it installs Debian's postgresql), or set {PG_BIN_ENV} to the folder that holds them")


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

    def pg_ctl(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
        return self.run_as.run([str(self.bindir / "pg_ctl"), "-D", str(self.data), *args], timeout=timeout)

    def psql(self, database: str, sql: str) -> str:
        """Run SQL through the trusted local socket (no password) as the cluster's superuser role."""
        out = self.run_as.run([str(self.bindir / "psql"), "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1",
                               "-h", str(self.socket_dir), "-p", str(self.port), "-U", DB_ROLE, "-d", database,
                               "-c", sql])
        return out.stdout.strip()

    def running(self) -> bool:
        return self.data.is_dir() and self.run_as.run(
            [str(self.bindir / "pg_ctl"), "-D", str(self.data), "status"], check=False).returncode == 0

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
        if not self.log.exists():
            self.log.touch(mode=0o600)
            self.run_as.chown(self.log)
        try:
            self.pg_ctl("-o", options, "-l", str(self.log), "-w", "-t", "60", "start", timeout=90)
        except ServerError as error:
            raise ServerError(f"PostgreSQL did not start on port {self.port}: {error}\n{tail(self.log)}") from None

    def create_databases(self) -> None:
        existing = set(self.psql("postgres", "SELECT datname FROM pg_database").split())
        for name in DATABASES:
            if name not in existing:
                self.psql("postgres", f'CREATE DATABASE "{name}"')

    def stop(self) -> str | None:
        """Stop the cluster and say how; None when it was not running. A fast shutdown (clients
        disconnected, a final checkpoint) is waited for until it is done; only one still going after
        FAST_STOP_S becomes an immediate shutdown, after which the next start replays the write-ahead
        log (nothing committed is lost)."""
        if not self.running():
            return None
        began = time.monotonic()
        try:
            self.pg_ctl("-m", "fast", "-w", "-t", str(FAST_STOP_S), "stop", timeout=FAST_STOP_S + 10)
            return f"PostgreSQL stopped ({time.monotonic() - began:.1f} s)"
        except (ServerError, subprocess.TimeoutExpired):
            if not self.running():
                return f"PostgreSQL stopped ({time.monotonic() - began:.1f} s)"
        self.pg_ctl("-m", "immediate", "-w", "-t", str(IMMEDIATE_STOP_S), "stop", timeout=IMMEDIATE_STOP_S + 10)
        return (f"PostgreSQL did not finish a fast shutdown within {FAST_STOP_S} s, so it was stopped immediately "
                f"({time.monotonic() - began:.1f} s; its next start replays the write-ahead log)")


def postgres_folder(state_dir: Path, run_as: RunAs) -> Path:
    """``state_dir/postgres`` when the PostgreSQL user can reach it; otherwise (root running in a private
    folder such as pytest's) a fresh folder under the system temp dir, recorded in server.json."""
    state_dir.mkdir(parents=True, exist_ok=True)
    if run_as.is_self or (state_dir / "postgres").is_dir():
        return state_dir / "postgres"
    os.chmod(state_dir, os.stat(state_dir).st_mode | stat.S_IXOTH)  # searchable, not listable or writable
    pg_parent = state_dir / "postgres"
    pg_parent.mkdir(mode=0o700)
    run_as.chown(pg_parent)
    if run_as.can_reach(pg_parent):
        return pg_parent
    pg_parent.rmdir()
    return Path(tempfile.mkdtemp(prefix="bilstm-exp-postgres-"))
