"""Optuna storages for a study that several worker processes share.

The sweeper's ``storage`` instantiates one of them (conf/hparams_search/optuna_shared.yaml and
optuna_journal.yaml):

* :func:`optuna_storage`: Optuna's ``RDBStorage`` on a database, e.g. the team server's PostgreSQL.
* :func:`journal_storage`: Optuna's ``JournalStorage`` on one file, for a cluster with a shared
  filesystem and no database.

Both use Optuna's public API only.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from bilstm_exp.team.common import DB_ROLE, ServerError

OPTUNA_LOCK_ID = 0x6269_6C73  # pg_advisory_lock key serialising the first schema setup between workers


def check_url(url: str):
    """URL as SQLAlchemy parses it, or ServerError: not a database URL, or one that carries a password."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - SQLAlchemy raises several kinds for a malformed URL
        raise ServerError(f"Optuna storage URL {url!r} is not a database URL. Fix: use e.g. "
                          f"postgresql://{DB_ROLE}@HOST:PORT/optuna or sqlite:///optuna.db") from None
    if parsed.password:
        raise ServerError("the Optuna storage URL carries a password, which Hydra would write into every job's "
                          ".hydra/hydra.yaml and its logs. Fix: remove it from the URL and put it in a libpq "
                          "password file (a line HOST:PORT:*:USER:PASSWORD, mode 0600) named by PGPASSFILE")
    return parsed


def optuna_storage(url: str):
    """An Optuna ``RDBStorage`` on URL that several worker processes can share.

    Why not the plain URL: workers that start together on a new database would race on creating the
    tables, so on PostgreSQL the storage is opened under an advisory lock. A URL with a password is
    refused: Hydra writes the sweeper's config, storage URL included, to every job's .hydra/hydra.yaml;
    libpq reads the password from PGPASSFILE instead.
    """
    import sqlalchemy
    from optuna.storages import RDBStorage

    parsed = check_url(url)
    shown = parsed.render_as_string(hide_password=True)
    lock_engine = sqlalchemy.create_engine(url) if parsed.get_backend_name() == "postgresql" else None
    try:
        with lock_engine.connect() if lock_engine is not None else contextlib.nullcontext() as lock:
            if lock is not None:  # released with the session when the connection closes
                lock.execute(sqlalchemy.text(f"SELECT pg_advisory_lock({OPTUNA_LOCK_ID})"))
            return RDBStorage(url)
    except sqlalchemy.exc.OperationalError as error:
        reason = str(error.orig if getattr(error, "orig", None) is not None else error).strip().splitlines()[0]
        fix = ("start the database (bilstm-exp server) and set PGPASSFILE to its password file" if lock_engine
               else "a database file in a folder that exists and is writable, e.g. sqlite:///optuna.db")
        raise ServerError(f"cannot open the Optuna storage {shown}: {reason}. Fix: {fix}") from None
    except RuntimeError as error:  # Optuna: tables of an older Optuna version
        raise ServerError(f"the Optuna storage {shown} does not fit this Optuna: {str(error).split('. ')[0]}. Fix: "
                          f"`optuna storage upgrade --storage {shown}` (back it up first), or a new database") from None
    finally:
        if lock_engine is not None:
            lock_engine.dispose()


def journal_storage(path: str):
    """Optuna's ``JournalStorage`` in the file PATH (created with its folder): workers on machines that
    share a filesystem (NFS included: the file lock is a symlink) share the study in it."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    file = Path(path).expanduser()
    if file.is_dir():
        raise ServerError(f"the Optuna journal {path} is a folder. Fix: name a file, e.g. {file / 'optuna.journal'}")
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(file)))
    except OSError as error:
        raise ServerError(f"cannot open the Optuna journal {path}: {error.strerror or error}. Fix: a writable path "
                          "on the filesystem every worker shares") from None

