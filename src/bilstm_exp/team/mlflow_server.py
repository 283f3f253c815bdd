"""The ``mlflow server`` process of the team server: its auth config, its start, its health and its stop.

``mlflow server --app-name basic-auth`` runs uvicorn with worker processes. It starts in a session of
its own (a Ctrl-C meant for the foreground command does not reach it), so it is stopped as a group:
SIGTERM to every process in it, a wait until the group's leader (``mlflow server``, which waits for
uvicorn, which waits for its workers) has exited, and SIGKILL only for a group that outlives the grace.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bilstm_exp.processes import alive
from bilstm_exp.team.common import HOST, ServerError, tail, write_private

# MLflow 3's server also starts a job runner and seven huey consumers (for GenAI jobs: scorers, prompt
# optimisation), eight more processes that import MLflow; nothing here uses them. Set the variable to true
# to get them.
WITHOUT_JOB_RUNNER = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
# After SIGTERM, uvicorn lets requests in flight finish for at most this long, then closes them.
GRACEFUL_SHUTDOWN_S = 10
# The wait for the whole server to exit after SIGTERM: the grace above plus the teardown of the Python
# processes, which takes seconds on a busy host. The stop returns as soon as it has exited.
STOP_GRACE_S = 60
KILL_WAIT_S = 10
STOP_WITHIN_S = STOP_GRACE_S + KILL_WAIT_S
CLIENT_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


def write_auth_config(path: Path, auth_db_url: str, admin_user: str) -> Path:
    """MLflow's basic-auth config (``MLFLOW_AUTH_CONFIG_PATH``): users and permissions in AUTH_DB_URL,
    everyone reads everything, writing needs a grant or ownership. No secret in it."""
    return write_private(path, "\n".join([
        "[mlflow]",
        "default_permission = READ",
        f"database_uri = {auth_db_url}",
        f"admin_username = {admin_user}",
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
        "grant_default_workspace_access = false",
        "auth_cache_ttl_seconds = 60",
        "",
    ]))


def launch(state_dir: Path, backend_url: str, port: int, workers: int, env: dict[str, str]) -> subprocess.Popen:
    """Start ``mlflow server`` (basic auth, proxied artifacts in STATE_DIR/artifacts) in its own session,
    its output appended to STATE_DIR/mlflow-server.log. ENV: what it needs beyond ours (PGPASSFILE, the
    auth config and the admin's bootstrap secrets; never on its command line)."""
    artifacts = state_dir / "artifacts"
    artifacts.mkdir(exist_ok=True)
    full_env = {**WITHOUT_JOB_RUNNER, **os.environ, **env}
    for name in CLIENT_VARIABLES:  # the server is no client of itself
        full_env.pop(name, None)
    full_env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), full_env.get("PATH", "")])
    args = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_url,
            "--serve-artifacts", "--artifacts-destination", artifacts.as_uri(), "--app-name", "basic-auth",
            "--host", HOST, "--port", str(port), "--workers", str(workers),
            "--uvicorn-opts", f"--timeout-graceful-shutdown {GRACEFUL_SHUTDOWN_S}"]
    with open(state_dir / "mlflow-server.log", "ab") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=state_dir, env=full_env,
                                start_new_session=True)


def wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout_s: float) -> None:
    """Poll URL until it answers 200; a ServerError with the log's tail when the process exits or the
    deadline passes."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise ServerError(f"mlflow server exited with {process.returncode}:\n{tail(log)}")
        with contextlib.suppress(urllib.error.URLError, OSError), urllib.request.urlopen(url, timeout=2) as response:
            if response.status == 200:
                return
        if time.monotonic() > deadline:
            raise ServerError(f"{url} did not answer within {timeout_s:.0f} s:\n{tail(log)}")
        time.sleep(0.5)


def stop_process(process: subprocess.Popen, timeout_s: float = STOP_GRACE_S) -> str | None:
    """Stop the process group PROCESS leads (e.g. uvicorn's workers); say how, None if it had exited."""
    if process.poll() is not None:
        return None
    return stop_group(process.pid, lambda: process.poll() is not None, timeout_s)


def stop_pid(pid: int, timeout_s: float = STOP_GRACE_S) -> str | None:
    """The same for a server another process started (its pid from server.json)."""
    if not alive(pid):
        return None
    return stop_group(pid, lambda: not alive(pid), timeout_s)


def stop_group(pgid: int, exited: Callable[[], bool], timeout_s: float) -> str:
    """SIGTERM the group, wait until EXITED() or TIMEOUT_S; then SIGKILL it. Says what it took."""
    began = time.monotonic()
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, KILL_WAIT_S)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        except PermissionError:
            raise ServerError(f"not allowed to stop process group {pgid}. Fix: run the stop as the user who "
                              "started the server") from None
        deadline = time.monotonic() + wait_s
        while not exited() and time.monotonic() < deadline:
            time.sleep(0.1)
        if exited():
            break
    took = time.monotonic() - began
    if not exited():
        raise ServerError(f"process group {pgid} is still running {took:.0f} s after SIGTERM and SIGKILL. "
                          f"Fix: look at it with `ps -g {pgid}`")
    if sig == signal.SIGKILL:
        return f"killed: it had not exited {timeout_s:.0f} s after SIGTERM ({took:.1f} s)"
    return f"stopped ({took:.1f} s)"


def is_mlflow(pid: int) -> bool:
    """Whether PID still runs ``mlflow server`` (a pid recorded long ago may have been reused)."""
    try:
        return b"mlflow" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return not Path("/proc/self").exists() and alive(pid)  # no /proc here: trust the record
    except OSError:
        return alive(pid)
