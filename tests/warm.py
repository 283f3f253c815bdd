"""A warm interpreter for the tests' `python -m bilstm_exp ...` processes.

A tiny training run costs about 13 CPU seconds as a process of its own, and about 6 of them are its
imports (TensorFlow, Keras, MLflow, Hydra), paid again by each of the suite's CLI runs. A warm server, one
per test process, imports them once; each request forks it, and the child runs the module as `python -m`
would (``runpy``, ``__name__ == "__main__"``, the request's argv, folder, environment and standard
streams), then exits as the interpreter would: non-daemon threads joined, ``atexit`` handlers run, the
exit code of ``SystemExit``, a traceback and 1 for an uncaught exception, death by SIGINT for an uncaught
KeyboardInterrupt. The child is a real process: signals, exit codes, files and locks behave as they do.

What a warm child does not repeat is the import, so the tests of what a command prints or imports as it
starts (tests/test_first_hour.py, tests/test_installed.py, tests/test_architecture.py's probes) keep
processes of their own, as does any request whose environment differs from the server's in a variable
read at import time (:data:`IMPORT_TIME_ENV`: PYTHONPATH, TF_*, the log level...): :func:`popen` starts
those as plain subprocesses, and so it does for every request with ``BILSTM_EXP_TEST_WARM=off``.

Run as a script, this file is the server: ``python tests/warm.py SOCKET``.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import pytest

# What every CLI run imports, in the order `python -m bilstm_exp` imports it (quiet first)
IMPORTS = ("bilstm_exp.quiet", "tensorflow", "keras", "mlflow", "hydra", "bilstm_exp.cli.train",
           "bilstm_exp.training.runner", "bilstm_exp.tracking.session",
           # and what a run imports when it opens its store (0.85 s), trains word vectors, scores, reads git
           "mlflow.store.tracking.sqlalchemy_store", "mlflow.store.model_registry.sqlalchemy_store",
           "gensim.models", "sklearn.metrics", "git")
# Variables read while those modules are imported (or by the interpreter's start): a request that sets
# one of them differently from the server runs in a process of its own. TF_CONFIG (a multi-worker cluster)
# is read when the strategy is made, not at the import.
IMPORT_TIME_ENV = re.compile(r"^(PYTHON|TF_(?!CONFIG$)|KERAS|CUDA|XLA_|OMP_|MKL|OPENBLAS|LD_|MALLOC|HYDRA_|JAX_|"
                             r"BILSTM_EXP_LOG_LEVEL$|MLFLOW_LOGGING_LEVEL$|MLFLOW_CONFIGURE_LOGGING$|"
                             r"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR$)")
START_S = 300  # the bound on the server's imports: a hang detector (about 6 s on a quiet 2-core host)


# --------------------------------------------------------------------------- the server


def serve(path: str) -> None:
    """Import IMPORTS, then fork a child for each request on the unix socket PATH until the parent exits."""
    import importlib

    parent = os.getppid()
    importlib.import_module("bilstm_exp.quiet").setup()
    for name in IMPORTS:
        importlib.import_module(name)
    # MLflow's map of installed packages, built at a process's first log_model from every distribution's
    # metadata (about 0.3 s): the same map in every child, whose folder holds no distribution. A private
    # function: an MLflow without it leaves the children to build the map, as fresh processes do.
    build_map = getattr(importlib.import_module("mlflow.utils.requirements_utils"), "_init_modules_to_packages_map",
                        None)
    if build_map is not None:
        build_map()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path + ".new")
    listener.listen(64)
    os.rename(path + ".new", path)  # the client waits for PATH: it appears ready to accept
    waiting: dict[int, socket.socket] = {}  # child pid -> the connection its exit status goes to
    while os.getppid() == parent:
        if select.select([listener], [], [], 0.05)[0]:
            connection = listener.accept()[0]
            message, fds, _, _ = socket.recv_fds(connection, 1 << 20, 3)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(json.loads(message), fds, [listener, connection, *waiting.values()])
            for fd in fds:
                os.close(fd)
            connection.send(str(pid).encode())
            waiting[pid] = connection
        _reap(waiting)


def _reap(waiting: dict[int, socket.socket]) -> None:
    while waiting:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            return
        connection = waiting.pop(pid, None)
        if connection is not None:
            try:
                connection.send(str(os.waitstatus_to_exitcode(status)).encode())
            except OSError:  # the client gave up on it (its own timeout)
                pass
            connection.close()


def _child(request: dict, fds: list[int], sockets: list[socket.socket]) -> None:
    """In the forked child: become `python -m MODULE ARGS` in the request's folder and environment."""
    try:
        for sock in sockets:
            sock.close()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        for fd in set(fds) - {0, 1, 2}:
            os.close(fd)
        if request["new_session"]:
            os.setsid()
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        from bilstm_exp import quiet

        if quiet.is_quiet():  # as quiet.setup() sets them in a fresh process, before its imports
            os.environ.update(quiet.QUIET_ENV)
        sys.argv = [request["module"], *request["args"]]
        sys.path[0] = os.getcwd()  # as `python -m` puts it
        code = _run_main(request["module"])
    except BaseException:  # the set-up failed: say so on the request's stderr
        import traceback

        traceback.print_exc()
        code = 70
    os._exit(code)


def _run_main(module: str) -> int:
    """Run MODULE as __main__, then shut down as the interpreter does; the exit code."""
    import runpy
    import threading

    interrupted = False
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exit_:
        code = _exit_code(exit_.code)
    except KeyboardInterrupt:
        sys.excepthook(*sys.exc_info())
        code, interrupted = 1, True
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    threading._shutdown()  # noqa: SLF001 - what the interpreter does at exit: join non-daemon threads
    atexit._run_exitfuncs()  # noqa: SLF001
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    if interrupted:  # as CPython exits after an uncaught KeyboardInterrupt: killed by SIGINT
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    return code


def _exit_code(code) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


# --------------------------------------------------------------------------- the client


class WarmProcess:
    """The part of subprocess.Popen the tests use (text mode), for a child of the warm server."""

    def __init__(self, connection: socket.socket, args: list[str], pipes: dict[str, int]):
        self.args, self.returncode, self._connection = args, None, connection
        self.pid = int(connection.recv(64))
        self.stdout, self.stderr = (open(pipes[name], errors="replace") if name in pipes else None  # noqa: SIM115
                                    for name in ("stdout", "stderr"))
        self._readers: dict[str, tuple[threading.Thread, list[str]]] = {}

    def poll(self) -> int | None:
        if self.returncode is None and select.select([self._connection], [], [], 0)[0]:
            status = self._connection.recv(64)
            self._connection.close()
            if not status:  # the server ended first (its test process is ending): no exit status to report
                raise RuntimeError(f"tests/warm.py: the warm server ended before pid {self.pid} did")
            self.returncode = int(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None and not select.select([self._connection], [], [], timeout)[0]:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.poll()

    def communicate(self, timeout: float | None = None) -> tuple[str | None, str | None]:
        """As Popen's: the pipes read to their end (a thread each, so neither fills) and the exit awaited."""
        for name in ("stdout", "stderr"):
            stream = getattr(self, name)
            if stream is not None and name not in self._readers:
                chunks: list[str] = []
                reader = threading.Thread(target=lambda s=stream, c=chunks: c.append(s.read()), daemon=True)
                reader.start()
                self._readers[name] = (reader, chunks)
        deadline = None if timeout is None else time.monotonic() + timeout
        for reader, _ in self._readers.values():
            reader.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if reader.is_alive():
                raise subprocess.TimeoutExpired(self.args, timeout)
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return tuple("".join(self._readers[name][1]) if name in self._readers else None
                     for name in ("stdout", "stderr"))

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


_server: dict[str, object] = {}  # this test process's server: "pid" (of the test process), "path", "process", "env"
_starting = threading.Lock()  # tests start processes from threads (the bad-input table: four at a time)


def _socket_path() -> str | None:
    """This process's server's socket, the server started at the first request; None (and a warning, once)
    when it could not start: the requests then run as plain subprocesses, slower but the same."""
    with _starting:
        if _server.get("pid") != os.getpid():
            _start_server()
    path, process = Path(_server["path"]), _server["process"]
    deadline = time.monotonic() + START_S
    while not path.exists() and not _server.get("failed"):
        if process.poll() is not None or time.monotonic() > deadline:
            log = (path.parent / "server.log").read_text(errors="replace")[-3000:]
            _server["failed"] = True
            warnings.warn(f"tests/warm.py: the warm interpreter did not start (exit {process.poll()}); the "
                          f"CLI tests start plain subprocesses instead:\n{log}", pytest.PytestWarning, stacklevel=2)
        time.sleep(0.05)
    return None if _server.get("failed") else str(path)


def _start_server() -> None:
    folder = Path(tempfile.mkdtemp(prefix="bilstm-exp-test-warm-"))
    env = _server_env()
    with open(folder / "server.log", "wb") as log:
        process = subprocess.Popen([sys.executable, __file__, str(folder / "socket")], stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=subprocess.STDOUT, env=env, cwd=folder)
    _server.update(pid=os.getpid(), path=str(folder / "socket"), process=process, env=env)
    atexit.register(_stop_server, process, folder)


def _server_env() -> dict[str, str]:
    """The environment a server starts with now: this process's, as run_module passes it to a child."""
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def _stop_server(process: subprocess.Popen, folder: Path) -> None:
    """At the test process's exit (the server would notice within 0.05 s anyway): stop it, remove its folder."""
    process.terminate()
    shutil.rmtree(folder, ignore_errors=True)


def warm_enough(env: dict[str, str]) -> bool:
    """Whether a child of the server starts as a process of its own with ENV would: the same value of every
    IMPORT_TIME_ENV variable, as a process sees them at its imports (quiet.setup() first)."""
    ours = _server.get("env") or _server_env()
    theirs, ours = _at_import(env), _at_import(ours)
    return all(theirs.get(key) == ours.get(key) for key in set(theirs) | set(ours) if IMPORT_TIME_ENV.match(key))


def _at_import(env: dict[str, str]) -> dict[str, str]:
    from bilstm_exp import quiet

    verbose = env.get(quiet.ENV, "").strip().lower() == "verbose"
    return env if verbose else {**env, **quiet.QUIET_ENV}


def popen(module: str, args: list[str], *, cwd: Path | str, env: dict[str, str] | None = None,
          stdout=None, stderr=None, start_new_session: bool = False, text: bool = True):
    """`python -m MODULE ARGS`, as subprocess.Popen would start it (stdout/stderr: None, PIPE, STDOUT for
    stderr, or an open file), forked from the warm server when ENV allows (:func:`warm_enough`)."""
    env = dict(os.environ if env is None else env)
    command = [sys.executable, "-m", module, *args]
    forked = warm_enough(env) and os.environ.get("BILSTM_EXP_TEST_WARM", "") != "off"
    path = _socket_path() if forked else None
    if path is None:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=stdout, stderr=stderr, text=text,
                                start_new_session=start_new_session)
    pipes, ours, targets = {}, [], {}  # ours: the write ends, closed here once the server has its copies
    for name, target in (("stdout", stdout), ("stderr", stderr)):
        if target == subprocess.PIPE:
            pipes[name], target = os.pipe()
            ours.append(target)
        elif target == subprocess.STDOUT:
            target = targets["stdout"]
        elif target is None:  # inherited, as subprocess.Popen does
            target = getattr(sys, f"__{name}__")
        targets[name] = target if isinstance(target, int) else target.fileno()
    request = {"module": module, "args": list(args), "cwd": str(cwd), "env": env, "new_session": start_new_session}
    try:
        with open(os.devnull, "rb") as stdin:
            connection = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            connection.connect(path)
            socket.send_fds(connection, [json.dumps(request).encode()], [stdin.fileno(), *targets.values()])
            process = WarmProcess(connection, command, pipes)
    finally:
        for fd in ours:
            os.close(fd)
    return process


def run(module: str, args: list[str], *, cwd: Path | str, env: dict[str, str] | None = None,
        timeout: float | None = None) -> subprocess.CompletedProcess:
    """subprocess.run(..., capture_output=True, text=True) of `python -m MODULE ARGS` through :func:`popen`."""
    process = popen(module, args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


if __name__ == "__main__":
    serve(sys.argv[1])
