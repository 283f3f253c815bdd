"""A local sqlite store as a file: where it is, whether it exists, is a database, is undamaged and
(for a run) writable; and the lock around creating it.

Checked with Python's own sqlite3, read-only, before MLflow opens the store: MLflow retries a broken
file for minutes and then prints a traceback, and a damaged page shows only when a run writes to it.
Reading needs no lock and no write access, so a store on a read-only file system stays readable.
No MLflow here.
"""

from __future__ import annotations

import os
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bilstm_exp import disk
from bilstm_exp.errors import TrackingError


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other stores)."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(urllib.parse.urlsplit(uri).path[1:] if uri.startswith("sqlite:////") else uri[len("sqlite:///"):])


@contextmanager
def store_lock(uri: str, timeout_s: float = 300) -> Iterator[None]:
    """A cross-process lock (a file next to a sqlite store) around creating and migrating the store:
    MLflow's schema migration fails when two processes run it at once on a new database. Other stores
    need none."""
    db = sqlite_path(uri)
    if db is None:
        yield
        return
    from filelock import FileLock, Timeout

    try:
        with FileLock(str(db) + ".lock", timeout=timeout_s):
            yield
    except Timeout:
        raise TrackingError(f"tracking store {uri}: another process has held {db}.lock for {timeout_s:.0f} s. "
                            f"Fix: wait for it, or delete {db}.lock if no bilstm-exp process is running") from None


def not_a_file(db: Path, uri: str) -> TrackingError | None:
    """A sqlite URI whose folder is missing or whose path is a folder (None: neither)."""
    if not db.parent.is_dir():
        return TrackingError(f"tracking store {uri}: folder {db.parent} does not exist. "
                             "Fix: create it or point tracking.tracking_uri elsewhere")
    if db.is_dir():
        return TrackingError(f"tracking store {uri}: {db} is a folder, not a sqlite file. "
                             "Fix: point the URI at a file, e.g. sqlite:///mlflow.db")
    return None


def check_file(db: Path, uri: str, write: bool) -> None:
    """A sqlite store that exists must be a readable, undamaged database (and writable for a run):
    checked with sqlite3 first, because MLflow retries a broken one for minutes and then prints a
    traceback, and a damaged page shows only when a run writes to it."""
    problem = not_a_file(db, uri)
    if problem is not None:
        raise problem
    if not db.exists():
        if write and not os.access(db.parent, os.W_OK):
            raise TrackingError(f"tracking store {uri}: folder {db.parent} is read-only, so the store cannot be "
                                "created. Fix: make it writable or point tracking.tracking_uri elsewhere")
        return
    aside = f"move {db} aside (mv {db} {db}.broken) and start a new store"
    damage = _damage(db)
    if damage is not None and damage.startswith(_UNUSABLE):
        raise TrackingError(f"tracking store {uri}: {db} is not a usable sqlite database "
                            f"({damage.removeprefix(_UNUSABLE)}). Fix: {aside}, or restore it from a backup")
    if damage is not None:
        raise TrackingError(f"tracking store {uri}: {db} is damaged (sqlite's quick_check: {damage}). Fix: restore "
                            f"it from a backup, recover what is readable (sqlite3 {db} .recover | sqlite3 "
                            f"{db}.recovered, then use sqlite:///{db}.recovered), or {aside}")
    if write:
        _check_writable(db, uri, aside)


_UNUSABLE = "unusable: "
QUICK_CHECK_S = 5.0  # the integrity check's budget: a larger store is checked this far (a few GB)


def _damage(db: Path) -> str | None:
    """What is wrong with the sqlite file ``db``: ``unusable: ...`` when it is no database at all,
    else the first problem sqlite's ``PRAGMA quick_check`` finds within :data:`QUICK_CHECK_S` (None:
    none found). Read-only: needs no lock and no write access. The budget is kept by interrupting the
    check from a timer (sqlite checks a table's pages in one step, which a progress handler cannot cut)."""
    import sqlite3

    try:
        connection = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
        try:
            connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError as error:  # a busy store is not a broken one: MLflow waits for it
            connection.close()
            return None if "locked" in str(error) else f"{_UNUSABLE}{error}"
        timer = threading.Timer(QUICK_CHECK_S, connection.interrupt)
        timer.start()
        try:
            rows = connection.execute("PRAGMA quick_check(1)").fetchall()
        finally:
            timer.cancel()
            connection.close()
    except sqlite3.OperationalError as error:
        return None if "interrupted" in str(error) else str(error)  # interrupted: past the budget, none found
    except sqlite3.DatabaseError as error:
        return str(error)
    if rows == [("ok",)]:
        return None
    return " ".join(str(rows[0][0]).replace("*** in database main ***", "").split())  # one line


def _check_writable(db: Path, uri: str, aside: str) -> None:
    """A run writes to the store: a read-only file, folder or file system is refused with the fix."""
    import sqlite3

    read_only = not os.access(db, os.W_OK) or not os.access(db.parent, os.W_OK)
    if not read_only:
        try:  # a write lock, released at once: fails on a read-only file or file system
            connection = sqlite3.connect(str(db), timeout=10)
            try:
                connection.execute("BEGIN IMMEDIATE")
                connection.rollback()
            finally:
                connection.close()
        except sqlite3.OperationalError as error:
            read_only = "readonly" in str(error) or "read-only" in str(error)
            if not read_only and "locked" not in str(error):
                raise TrackingError(f"tracking store {uri}: {db} cannot be written ({error}). Fix: {aside}, "
                                    "or restore it from a backup") from None
    if read_only:
        mounted = _read_only_mount(db.parent)
        fix = (f"remount {mounted} writable, or copy the store to a writable folder and point "
               "tracking.tracking_uri (or --tracking-uri) there" if mounted else
               f"make it and its folder writable (chmod u+w {db} {db.parent}), or point "
               "tracking.tracking_uri (or --tracking-uri) at a writable store")
        raise TrackingError(f"tracking store {uri}: {db} is read-only, and this command writes to it "
                            f"(reading commands such as runs, compare and predict need no write access). Fix: {fix}")


def _read_only_mount(folder: Path) -> Path | None:
    """The mount point of ``folder`` when its whole file system is mounted read-only (None otherwise)."""
    try:
        return disk.mount_point(folder) if os.statvfs(folder).f_flag & os.ST_RDONLY else None
    except OSError:
        return None
