"""A real team server for the tests, started the way a user starts it: `python -m bilstm_exp.team.cli start`.

The command starts a PostgreSQL cluster (initdb into a temporary folder, a free port; as the `postgres`
system user when the tests run as root) and `mlflow server --app-name basic-auth` on it with proxied
artifacts, prints where things are and runs until SIGTERM/Ctrl-C. Here it is stopped with SIGINT at the
end of the module, and what it printed is kept so a test can check that no secret appeared in it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bilstm_exp.team import server
from bilstm_exp.team.common import DB_ROLE

READY_LINE = "Ctrl-C stops both services"
# How long a Ctrl-C'd server may take to stop before the test kills it: the product's own bound (each
# service at its limit, server.STOP_WITHIN_S) plus a minute for the processes to exit on a busy host.
# The wait ends as soon as the command exits (seconds), so a generous bound costs nothing when it works.
STOP_BOUND_S = server.STOP_WITHIN_S + 60


@dataclass
class Team:
    """What a test needs of a running team server; the secrets are read from its 0600 files."""

    state_dir: Path
    process: subprocess.Popen
    output: Path
    tracking_uri: str = ""
    db_port: int = 0
    secrets: dict = field(default_factory=dict)

    @property
    def admin_password(self) -> str:
        return self.secrets["admin_password"]

    @property
    def pgpass(self) -> Path:
        return self.state_dir / "pgpass"

    def db_url(self, database: str = "optuna") -> str:
        return f"postgresql://{DB_ROLE}@127.0.0.1:{self.db_port}/{database}"

    def env(self, username: str = "admin", password: str | None = None) -> dict[str, str]:
        """A client's environment: tracking URI and credentials (admin unless named), PGPASSFILE."""
        return {"MLFLOW_TRACKING_URI": self.tracking_uri, "MLFLOW_TRACKING_USERNAME": username,
                "MLFLOW_TRACKING_PASSWORD": self.admin_password if password is None else password,
                "PGPASSFILE": str(self.pgpass)}

    def all_secrets(self) -> list[str]:
        return [value for value in self.secrets.values() if value]

    def printed(self) -> str:
        return self.output.read_text(errors="replace")


def start(state_dir: Path, timeout_s: float = 180) -> Team:
    output = state_dir.parent / f"{state_dir.name}-cli.out"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        env.pop(name, None)
    with open(output, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "bilstm_exp.team.cli", "start", "--dir", str(state_dir),
                                    "--port", "0", "--workers", "2"], stdout=out, stderr=subprocess.STDOUT,
                                   env=env, start_new_session=True)
    team = Team(state_dir, process, output)
    deadline = time.monotonic() + timeout_s
    while READY_LINE not in team.printed():
        if process.poll() is not None or time.monotonic() > deadline:
            stop(team)
            raise RuntimeError(f"bilstm_exp.team.cli start did not come up:\n{team.printed()[-3000:]}\n"
                               f"{(state_dir / 'mlflow-server.log').read_text(errors='replace')[-3000:]}"
                               if (state_dir / "mlflow-server.log").exists() else team.printed()[-3000:])
        time.sleep(0.5)
    info = json.loads((state_dir / "server.json").read_text())
    team.tracking_uri = info["tracking_uri"]
    team.db_port = int(info["db_port"])
    team.secrets = json.loads((state_dir / "secrets.json").read_text())
    return team


def stop(team: Team, timeout_s: float = STOP_BOUND_S) -> int | None:
    """Ctrl-C the command (it stops MLflow and PostgreSQL itself); SIGKILL the group if it hangs."""
    if team.process.poll() is None:
        os.killpg(team.process.pid, signal.SIGINT)
        try:
            team.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(team.process.pid, signal.SIGKILL)
            team.process.wait(timeout=10)
    return team.process.returncode
