"""The suite's warm interpreter (tests/warm.py) starts a module as `python -m` would: its folder, argv,
environment and streams, and its end as the interpreter's (exit code, atexit, an uncaught exception or
KeyboardInterrupt). The CLI tests rely on it; a difference here would hide one from them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from tests import warm

PROBE = """
import atexit, json, os, sys
atexit.register(lambda: print("atexit ran", flush=True))
print(json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd(), "name": __name__, "path0": sys.path[0],
                  "env": os.environ.get("PROBE_VALUE"), "ppid": os.getppid()}), flush=True)
print("to stderr", file=sys.stderr)
how = sys.argv[1]
if how == "exit":
    sys.exit(int(sys.argv[2]))
if how == "message":
    sys.exit("a message")
if how == "raise":
    raise ValueError("uncaught")
if how == "interrupt":
    raise KeyboardInterrupt
if how == "wait":
    import time
    time.sleep(60)
"""


@pytest.fixture
def probe(tmp_path):
    (tmp_path / "probe.py").write_text(PROBE)
    return tmp_path


def probed(out: subprocess.CompletedProcess) -> dict:
    return json.loads(out.stdout.splitlines()[0])


def test_a_warm_child_gets_the_requests_folder_argv_environment_and_streams(probe):
    out = warm.run("probe", ["ok", "--flag", "x y"], cwd=probe, env={**os.environ, "PROBE_VALUE": "given"}, timeout=120)
    assert out.returncode == 0, out.stderr
    seen = probed(out)
    assert seen["argv"] == ["ok", "--flag", "x y"] and seen["name"] == "__main__"
    assert seen["cwd"] == str(probe) and seen["path0"] == str(probe)
    assert seen["env"] == "given"
    assert seen["ppid"] != os.getpid()  # forked by the server, not started by this process
    assert out.stdout.splitlines()[-1] == "atexit ran" and out.stderr == "to stderr\n"


@pytest.mark.parametrize(("args", "code", "stderr"), [
    (["exit", "3"], 3, ""),
    (["message"], 1, "a message"),
    (["raise"], 1, "ValueError: uncaught"),
    (["interrupt"], -signal.SIGINT, "KeyboardInterrupt"),
])
def test_a_warm_child_ends_as_the_interpreter_would(probe, args, code, stderr):
    out = warm.run("probe", args, cwd=probe, timeout=120)
    fresh = subprocess.run([sys.executable, "-m", "probe", *args], cwd=probe, capture_output=True, text=True,
                           timeout=120)
    assert out.returncode == fresh.returncode == code
    assert stderr in out.stderr and stderr in fresh.stderr
    assert out.stdout.splitlines()[-1] == fresh.stdout.splitlines()[-1] == "atexit ran"


def test_a_warm_child_takes_signals_and_a_timeout_kills_it(probe):
    process = warm.popen("probe", ["wait"], cwd=probe, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         start_new_session=True)
    assert json.loads(process.stdout.readline())["argv"] == ["wait"]
    assert os.getpgid(process.pid) == process.pid  # a session of its own, as asked
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == -signal.SIGTERM
    with pytest.raises(subprocess.TimeoutExpired):
        warm.run("probe", ["wait"], cwd=probe, timeout=1)


def test_an_environment_read_at_import_time_gets_a_process_of_its_own(probe):
    out = warm.run("probe", ["ok"], cwd=probe, env={**os.environ, "PYTHONPATH": str(probe)}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert probed(out)["ppid"] == os.getpid()
    assert not warm.warm_enough({**os.environ, "BILSTM_EXP_LOG_LEVEL": "verbose"})
    assert warm.warm_enough({**os.environ, "TF_CONFIG": "{}"})  # read when the strategy is made


def test_a_server_that_cannot_start_leaves_plain_subprocesses_and_a_warning(probe, tmp_path, monkeypatch):
    dead = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    dead.wait()
    (tmp_path / "server.log").write_text("what the server printed\n")
    monkeypatch.setattr(warm, "_server", {"pid": os.getpid(), "path": str(tmp_path / "socket"), "process": dead,
                                          "env": warm._server.get("env")})
    with pytest.warns(pytest.PytestWarning, match=r"(?s)did not start \(exit 3\).*what the server printed"):
        out = warm.run("probe", ["ok"], cwd=probe, timeout=120)
    assert out.returncode == 0 and probed(out)["ppid"] == os.getpid()
