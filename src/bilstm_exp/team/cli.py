"""``bilstm-exp server start|stop|user``: the team server's command line.

    bilstm-exp server start [--dir .team-server] [--port 5000]   # foreground; Ctrl-C stops both services
    bilstm-exp server stop [--dir ...]        # what a killed `start` left running
    bilstm-exp server user NAME [--experiment ID[:PERMISSION]]   # a user; password into <dir>/users/NAME.env
    python -m bilstm_exp.team.cli start ...   # the same without the rest of bilstm-exp (make server)

Errors are :class:`bilstm_exp.team.common.ServerError` (a UserError): the one error boundary
(:func:`bilstm_exp.errors.exit_on_user_error`) prints them in one line and exits 2.
"""

from __future__ import annotations

import argparse
import getpass
import os
import signal
import sys
import time

from bilstm_exp import extras
from bilstm_exp.errors import exit_on_user_error
from bilstm_exp.team import server, users
from bilstm_exp.team.common import HOST, ServerError, port_free

PREFIX = "bilstm-exp server:"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``bilstm-exp server`` and ``python -m bilstm_exp.team.cli``: what the server starts, then the options."""
    parser.description = server.__doc__
    parser.add_argument("action", nargs="?", default="start", choices=["start", "stop", "user"],
                        help="start: run PostgreSQL and the MLflow server in the foreground until Ctrl-C; "
                             "stop: stop what a killed start left running; user NAME: create an MLflow user "
                             "(password written to <dir>/users/NAME.env, mode 0600)")
    parser.add_argument("name", nargs="?", help="user: the user name")
    parser.add_argument("--experiment", action="append", default=[], metavar="ID[:PERMISSION]",
                        help="user: grant PERMISSION (default EDIT) on experiment ID; repeatable")
    parser.add_argument("--dir", default=server.DEFAULT_DIR, help=f"state folder (default: {server.DEFAULT_DIR})")
    parser.add_argument("--port", type=int, default=5000, help="MLflow server port (0: a free one; default 5000)")
    parser.add_argument("--db-port", type=int, default=0, help="PostgreSQL port (0: a free one, kept on restart)")
    parser.add_argument("--workers", type=int, default=2, help="MLflow server worker processes")


def command(args: argparse.Namespace) -> None:
    {"start": start_command, "stop": stop_command, "user": user_command}[args.action](args)


def say(line: str) -> None:
    print(f"{PREFIX} {line}", flush=True)


def stop_command(args: argparse.Namespace) -> None:
    if server.stop_dir(args.dir, report=say):
        say("stopped")
    else:
        say(f"nothing was running for {args.dir}")


def user_command(args: argparse.Namespace) -> None:
    """The admin creates a user; the password goes to a 0600 file to hand over privately, never to the
    terminal."""
    if not args.name:
        raise ServerError("`user` needs a name. Fix: bilstm-exp server user alice [--experiment 1:EDIT]")
    users.check_name(args.name)  # before anything is asked of the server
    grants = users.parse_grants(args.experiment)
    path = users.create_user_file(server.attach(args.dir), args.name, grants)
    granted = ", ".join(f"{p} on experiment {e}" for e, p in grants) or "READ everywhere (the default)"
    print(f"created MLflow user '{args.name}': {granted}. Credentials in {path} (mode 0600): hand them over "
          "privately; the user loads them with `set -a; . FILE; set +a`")


def start_command(args: argparse.Namespace) -> None:
    """Start both services, run until Ctrl-C or SIGTERM (or until the MLflow server exits), then stop both
    and say so, service by service."""
    extras.require("psycopg", "server", "bilstm-exp server start")  # the PostgreSQL driver
    extras.require("flask_wtf", "server", "bilstm-exp server start")  # MLflow's basic-auth app (mlflow[auth])
    if args.port and not port_free(args.port):
        raise ServerError(f"port {args.port} on {HOST} is in use. Fix: stop what listens there or pass --port 0 "
                          "for a free port")
    for sig in (signal.SIGINT, signal.SIGTERM):  # SIGTERM stops it the way Ctrl-C does; SIGINT even when the
        signal.signal(sig, interrupt)  # shell that started it in the background had it ignored
    running = server.start(args.dir, port=args.port, db_port=args.db_port, workers=args.workers)
    print(running.describe(), flush=True)
    print(f"Running as {getpass.getuser()}; Ctrl-C stops both services (data kept in {running.state_dir}).",
          flush=True)
    exit_code = None
    try:
        while running.process.poll() is None:
            time.sleep(1)
        exit_code = running.process.returncode
    except KeyboardInterrupt:
        pass
    finally:
        stop_and_say_so(running)
    if exit_code is not None:
        raise ServerError(f"the mlflow server exited on its own ({exit_code}), so PostgreSQL was stopped too. "
                          f"Fix: read the end of {running.log}, then start again")


def interrupt(signum, frame) -> None:  # noqa: ARG001 - a signal handler's signature
    raise KeyboardInterrupt


def stop_and_say_so(running: server.TeamServer) -> None:
    """Stop both services, one line each; a second Ctrl-C (or SIGTERM) while they stop is answered, not
    obeyed: cutting the stop short would leave PostgreSQL running."""
    def still_stopping(signum, frame) -> None:  # noqa: ARG001
        # os.write, not print: a handler may run in the middle of a print, which is not reentrant
        os.write(sys.stdout.fileno(), f"{PREFIX} still stopping (each service within its bound)\n".encode())

    signal.signal(signal.SIGINT, still_stopping)
    signal.signal(signal.SIGTERM, still_stopping)
    say("stopping the MLflow server and PostgreSQL")
    running.stop(report=say)
    say("stopped")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bilstm-exp server", formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    with exit_on_user_error(interrupted="stopped"):
        command(args)


if __name__ == "__main__":
    main()
