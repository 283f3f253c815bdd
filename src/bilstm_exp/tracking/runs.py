"""`bilstm-exp runs [--limit N]`: the recent runs; `--stale [--older-than MIN] [--close]`: runs a dead
process left RUNNING.

``bilstm-exp runs`` lists the most recently started runs of the store, like ``mlflow runs list`` but
readable: start time, status, name (the config), the monitored metric and test accuracy, run id.
Reading needs no write access: a store on a read-only file system can be listed.

A run ends FINISHED, FAILED or KILLED whenever its process can still act (exceptions, Ctrl-C,
SIGTERM). A ``kill -9``, the OOM killer, a power cut, or a disk so full that the store cannot record
the end (:mod:`bilstm_exp.disk`) leave it RUNNING for ever. Every run carries
the tags ``bilstm_exp.heartbeat`` (UTC time of its last logged epoch, or of its start),
``bilstm_exp.host`` and ``bilstm_exp.pid`` (:mod:`bilstm_exp.tracking.session`). A RUNNING run is
*stale* when

* its process ran on this host and is gone (no such pid, or a zombie), or
* its heartbeat (its start time when it has none) is older than ``--older-than`` minutes
  (default 30: longer than any epoch should take; raise it for long epochs).

``--close`` ends each stale run KILLED, tagged ``failure_reason=stale`` and ``error`` saying why;
its checkpoint (if any) is untouched, so ``training.resume=true`` can still continue it.

No TensorFlow here.
"""

from __future__ import annotations

import argparse
import datetime
import os
import socket
import time
from dataclasses import dataclass

from bilstm_exp.errors import TrackingError
from bilstm_exp.processes import alive
from bilstm_exp.tracking import store
from bilstm_exp.tracking.store import HEARTBEAT_TAG, HOST_TAG, PID_TAG

DEFAULT_OLDER_THAN_MIN = 30.0
DEFAULT_LIMIT = 20


@dataclass
class Stale:
    run: object  # mlflow.entities.Run
    experiment: str
    age_min: float  # minutes since the heartbeat (or the start)
    reason: str


def last_sign_of_life(run) -> float:
    """Seconds since the epoch of the run's heartbeat tag, else its start time."""
    text = run.data.tags.get(HEARTBEAT_TAG)
    if text:
        try:
            return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(
                tzinfo=datetime.UTC).timestamp()
        except ValueError:
            pass
    return run.info.start_time / 1000.0


def process_gone(run) -> bool:
    """True when the run's process ran on this host and no longer exists (or is a zombie)."""
    if run.data.tags.get(HOST_TAG) != socket.gethostname():
        return False
    try:
        pid = int(run.data.tags.get(PID_TAG, ""))
    except ValueError:
        return False
    return pid != os.getpid() and not alive(pid)


def find(client, experiment_ids: list[str], names: dict[str, str], older_than_min: float,
         now: float | None = None) -> list[Stale]:
    """The stale RUNNING runs of the given experiments (see the module docstring)."""
    now = time.time() if now is None else now
    found = []
    running = client.search_runs(experiment_ids, filter_string="attributes.status = 'RUNNING'", max_results=10000)
    for run in running:
        age = (now - last_sign_of_life(run)) / 60.0
        if process_gone(run):
            reason = f"its process (pid {run.data.tags[PID_TAG]} on {run.data.tags[HOST_TAG]}) is gone"
        elif age >= older_than_min:
            reason = f"no heartbeat for {age:.1f} min (limit {older_than_min:g})"
        else:
            continue
        found.append(Stale(run, names.get(run.info.experiment_id, run.info.experiment_id), age, reason))
    return found


def close(client, stale: Stale) -> None:
    """End a stale run KILLED, saying why, through a session attached to it (as every run ends)."""
    from bilstm_exp.tracking.session import Session

    Session.attach(client.tracking_uri, stale.run.info.run_id).end("KILLED", {
        "failure_reason": "stale", "error": f"closed by `bilstm-exp runs --stale --close`: {stale.reason}"})


# --------------------------------------------------------------------------- listing


def recent(client, experiment_ids: list[str], limit: int) -> list:
    """The ``limit`` most recently started runs of the experiments, any status, newest first."""
    return client.search_runs(experiment_ids, order_by=["attributes.start_time DESC"], max_results=limit)


def key_metrics(run) -> str:
    """The numbers a person looks at first: the run's monitored metric (``training.monitor``, as the
    run recorded it) and its test accuracy, when logged."""
    keys = dict.fromkeys([run.data.params.get("training.monitor", "val/loss"), "test/accuracy"])
    return "  ".join(f"{key} {run.data.metrics[key]:.4f}" for key in keys if key in run.data.metrics) or "-"


def table(runs: list, names: dict[str, str]) -> list[str]:
    """One aligned line per run: start time (UTC), status, name, key metrics, id (and the experiment
    when there are several)."""
    several = len({run.info.experiment_id for run in runs}) > 1
    rows = [["STARTED (UTC)", "STATUS", "NAME", "KEY METRICS", "RUN ID"] + (["EXPERIMENT"] if several else [])]
    for run in runs:
        started = datetime.datetime.fromtimestamp(run.info.start_time / 1000, datetime.UTC)
        experiment = [names.get(run.info.experiment_id, run.info.experiment_id)] if several else []
        rows.append([started.strftime("%Y-%m-%d %H:%M"), run.info.status, run.info.run_name or "-", key_metrics(run),
                     run.info.run_id, *experiment])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``bilstm-exp runs``."""
    parser.description = __doc__
    parser.add_argument("--limit", type=int, default=DEFAULT_LIMIT, metavar="N",
                        help=f"how many of the most recent runs to list (default {DEFAULT_LIMIT})")
    parser.add_argument("--stale", action="store_true",
                        help="only runs whose process is gone or whose heartbeat is old")
    parser.add_argument("--older-than", type=float, default=DEFAULT_OLDER_THAN_MIN, metavar="MIN",
                        help=f"heartbeat age in minutes that makes a run stale (default {DEFAULT_OLDER_THAN_MIN:g})")
    parser.add_argument("--close", action="store_true", help="end the stale runs KILLED (needs --stale)")
    parser.add_argument("--experiment", default=None, help="only this experiment (default: all)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else ./mlflow.db)")


def command(args: argparse.Namespace) -> None:
    if args.close and not args.stale:
        raise TrackingError("--close ends stale runs only. Fix: add --stale (and --older-than MIN)")
    if args.older_than < 0:
        raise TrackingError(f"--older-than {args.older_than:g}: must be >= 0 minutes. Fix: e.g. --older-than 30")
    if args.limit < 1:
        raise TrackingError(f"--limit {args.limit}: must be >= 1. Fix: e.g. --limit {DEFAULT_LIMIT}")
    client = store.open_store(store.existing_store(args.tracking_uri))  # reads only: a read-only store will do
    experiments = client.search_experiments()
    if args.experiment:
        experiments = [e for e in experiments if e.name == args.experiment]
        if not experiments:
            raise TrackingError(f"experiment '{args.experiment}' not found. Fix: drop --experiment or pass one of "
                                "the names `mlflow experiments search` lists")
    names = {e.experiment_id: e.name for e in experiments}
    if args.stale:
        stale(client, find(client, list(names), names, args.older_than), args.close)
        return
    runs = recent(client, list(names), args.limit)
    if not runs:
        print("no runs in this store yet")
        return
    for line in table(runs, names):
        print(line)
    if len(runs) == args.limit:
        print(f"(the {args.limit} most recent; --limit N lists more)")


def stale(client, rows: list[Stale], close_them: bool) -> None:
    """Print the stale runs and, with ``close_them``, end each KILLED."""
    if not rows:
        print("no stale runs")
        return
    for row in rows:
        info = row.run.info
        print(f"{info.run_id}\t{row.experiment}\t{info.run_name}\tlast heartbeat {row.age_min:.1f} min ago\t"
              f"{row.reason}")
        if close_them:
            close(client, row)
    print(f"{len(rows)} stale run(s)" + (": ended KILLED" if close_them else "; end them KILLED with --close"))
