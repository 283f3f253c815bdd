"""Optuna's RDB storage made safe for several worker processes sharing one study database.

hydra-optuna-sweeper's ``storage`` instantiates :func:`optuna_storage` (conf/hparams_search/optuna_shared.yaml).
"""

from __future__ import annotations

import gc

from bilstm_exp.team.common import DB_ROLE, ServerError

OPTUNA_LOCK_ID = 0x6269_6C73  # pg_advisory_lock key serialising the first schema setup between workers


def optuna_storage(url: str, heartbeat_interval: int | None = None, grace_period: int | None = None):
    """An Optuna ``RDBStorage`` on URL that several worker processes can share (hydra-optuna-sweeper's
    ``storage`` instantiates it, see conf/hparams_search/optuna_shared.yaml).

    Why not the plain URL: Optuna 2.10 (the version hydra-optuna-sweeper 1.3 allows) stamps its schema
    version through a connection it never commits, which SQLAlchemy 2 rolls back, so every later open
    fails its compatibility check with a bare AssertionError. This stamps the version in a committed
    transaction, under a PostgreSQL advisory lock so that workers starting together do not race on
    creating the tables, and refuses a URL with a password: Hydra writes the sweeper's config, storage
    URL included, to every job's .hydra/hydra.yaml. libpq reads the password from PGPASSFILE instead.
    """
    import sqlalchemy
    from alembic.migration import MigrationContext
    from optuna.storages import RDBStorage
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
    lock_engine = sqlalchemy.create_engine(url) if parsed.get_backend_name() == "postgresql" else None
    lock = None
    try:
        if lock_engine is not None:
            lock = lock_engine.connect()
            lock.execute(sqlalchemy.text(f"SELECT pg_advisory_lock({OPTUNA_LOCK_ID})"))
        storage = RDBStorage(url, skip_compatibility_check=True, heartbeat_interval=heartbeat_interval,
                             grace_period=grace_period)
        manager = storage._version_manager
        gc.collect()  # returns (and rolls back) the connection Optuna left open: on sqlite it holds the write lock
        head = manager.get_head_version()
        with storage.engine.begin() as connection:
            context = MigrationContext.configure(connection)
            current = context.get_current_revision()
            if current is None:
                context.stamp(manager._create_alembic_script(), head)
            elif current != head:
                raise ServerError(f"the Optuna tables at {parsed.render_as_string(hide_password=True)} have "
                                  f"schema {current}, this Optuna expects {head}. Fix: use a new database, or "
                                  "the Optuna version that created it")
    except sqlalchemy.exc.OperationalError as error:
        reason = str(error.orig if getattr(error, "orig", None) is not None else error).strip().splitlines()[0]
        raise ServerError(f"cannot open the Optuna storage {parsed.render_as_string(hide_password=True)}: "
                          f"{reason}. Fix: start the database (bilstm-exp server) and set PGPASSFILE to its "
                          "password file") from None
    finally:
        if lock is not None:
            lock.execute(sqlalchemy.text(f"SELECT pg_advisory_unlock({OPTUNA_LOCK_ID})"))
            lock.close()
        if lock_engine is not None:
            lock_engine.dispose()
    return storage
