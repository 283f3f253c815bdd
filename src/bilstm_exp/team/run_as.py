"""The privilege drop: PostgreSQL refuses to run as root, so a root user runs its programs as another user.

When we are not root, :class:`RunAs` is ourselves and changes nothing. When we are root it is the
``postgres`` system user Debian's package creates (or ``$BILSTM_EXP_PG_USER``): every ``initdb``,
``pg_ctl`` and ``psql`` then runs with that user's uid, gid and home, and the folders they need are
chowned to it.
"""

from __future__ import annotations

import os
import pwd
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bilstm_exp.team.common import ServerError

RUN_AS_ENV = "BILSTM_EXP_PG_USER"  # system user PostgreSQL runs as when we are root (default: postgres)


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
                              "it as. Fix: install Debian's postgresql package (scripts/install-postgres.sh "
                              f"creates `postgres`), or set {RUN_AS_ENV} to an existing non-root user") from None
        if entry.pw_uid == 0:
            raise ServerError(f"{RUN_AS_ENV}={name} is root; PostgreSQL refuses to run as root. "
                              "Fix: name a non-root user")
        return cls(entry.pw_uid, entry.pw_gid, entry.pw_name, entry.pw_dir)

    @property
    def is_self(self) -> bool:
        return self.uid == os.geteuid()

    def run(self, args: list[str], *, timeout: float = 120, env: dict[str, str] | None = None,
            check: bool = True) -> subprocess.CompletedProcess:
        """Run ARGS as this user with a minimal environment; a failure (when CHECK) is a ServerError with
        the program's own last words. It runs in a session of its own: a Ctrl-C at the terminal reaches
        us (subprocess.run then ends the program) but not the PostgreSQL daemon ``pg_ctl start`` leaves,
        nor a ``pg_ctl status`` or ``stop`` of the stop that a second Ctrl-C would otherwise cut short."""
        kwargs = {} if self.is_self else {"user": self.uid, "group": self.gid, "extra_groups": []}
        full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8",
                    "HOME": self.home if not self.is_self else os.environ.get("HOME", self.home), **(env or {})}
        result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=full_env,
                                cwd="/", start_new_session=True, **kwargs)
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
