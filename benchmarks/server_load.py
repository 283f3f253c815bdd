"""Load on a tracking server: runs/s, metric rows/s and single-metric requests/s, side by side.

    .venv/bin/python benchmarks/server_load.py                 # both servers, default load
    .venv/bin/python benchmarks/server_load.py --clients 8 --runs 15 --batches 10

Two servers run at once on 127.0.0.1, each with 2 worker processes, and get the same load in turn, in
alternating rounds (A B B A ...) so that a change in the machine's load hits both; medians per server:

* ``team``:   bilstm_exp.team (PostgreSQL backend, basic auth, proxied artifacts), as ``make server``
* ``sqlite``: ``mlflow server`` on a sqlite file, no auth (the single-machine setup the tests use)

Load, from CLIENTS threads of this process (each its own MlflowClient), bounded in count and time:

1. runs:    each client makes RUNS runs: create_run, log_batch (10 params, 10 metrics), set_terminated
2. rows:    each client sends BATCHES log_batch requests of 1,000 metric rows (MLflow's per-request maximum)
3. single:  each client sends SINGLES log_metric calls of one row (what an unbatched logger does)

Results go to benchmarks/server_load.json with the machine's load before and after; docs/scaling.md
quotes them. Client and servers share this machine, so the numbers are what one machine serves to
itself: a floor for a server on its own hardware, not a ceiling.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def phase(clients: int, per_client: int, work, deadline_s: float) -> dict:
    """Run work(client_index, item_index) CLIENTS x PER_CLIENT times from CLIENTS threads, all starting
    together; stop early at DEADLINE_S. Returns counts, seconds and per-request latencies."""
    barrier = threading.Barrier(clients)
    latencies: list[float] = []
    lock = threading.Lock()
    stop_at = [0.0]

    def one(index: int) -> int:
        barrier.wait()
        done = 0
        for item in range(per_client):
            if time.monotonic() > stop_at[0]:
                break
            start = time.perf_counter()
            work(index, item)
            with lock:
                latencies.append(time.perf_counter() - start)
            done += 1
        return done

    stop_at[0] = time.monotonic() + deadline_s
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        done = sum(pool.map(one, range(clients)))
    seconds = time.perf_counter() - start
    latencies.sort()
    return {"items": done, "seconds": round(seconds, 2), "per_s": round(done / seconds, 2),
            "p50_ms": round(1000 * latencies[len(latencies) // 2], 1) if latencies else None,
            "p95_ms": round(1000 * latencies[int(len(latencies) * 0.95)], 1) if latencies else None,
            "truncated": done < clients * per_client}


def load(uri: str, clients: int, runs: int, batches: int, singles: int, deadline_s: float) -> dict:
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    admin = MlflowClient(uri)
    experiment_id = admin.create_experiment(f"load-{int(time.time() * 1000)}")
    local = threading.local()

    def client() -> MlflowClient:
        if not hasattr(local, "client"):
            local.client = MlflowClient(uri)
        return local.client

    def make_run(index: int, item: int) -> None:
        c = client()
        run = c.create_run(experiment_id, tags={"client": str(index)})
        c.log_batch(run.info.run_id, params=[Param(f"p{k}", str(k)) for k in range(10)],
                    metrics=[Metric(f"m{k}", 0.5, 0, 0) for k in range(10)])
        c.set_terminated(run.info.run_id)

    result = {"runs": phase(clients, runs, make_run, deadline_s)}

    row_runs = [admin.create_run(experiment_id).info.run_id for _ in range(clients)]
    now = int(time.time() * 1000)

    def batch(index: int, item: int) -> None:
        client().log_batch(row_runs[index], metrics=[Metric(f"loss{k % 10}", 0.1, now, item * 100 + k // 10)
                                                     for k in range(1000)])

    rows = phase(clients, batches, batch, deadline_s)
    rows["rows_per_s"] = round(rows["per_s"] * 1000, 1)
    result["rows"] = rows

    def single(index: int, item: int) -> None:
        client().log_metric(row_runs[index], "single", 0.1, step=item)

    result["single"] = phase(clients, singles, single, deadline_s)
    stored = sum(len(admin.get_metric_history(run_id, "loss0")) for run_id in row_runs)
    result["check"] = {"loss0_rows_stored": stored, "loss0_rows_sent": rows["items"] * 100}
    return result


def sqlite_server(folder: Path):
    from bilstm_exp.team.common import free_port
    from bilstm_exp.team.mlflow_server import stop_process, wait_healthy

    port = free_port()
    log = folder / "sqlite-server.log"
    args = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
            "--serve-artifacts", "--artifacts-destination", (folder / "artifacts").as_uri(),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "2"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    with open(log, "ab") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=folder,
                                   start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(f"{uri}/health", process, log, 180)
    except BaseException:
        stop_process(process)
        raise
    return uri, process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--runs", type=int, default=15, help="runs per client")
    parser.add_argument("--batches", type=int, default=10, help="1,000-row log_batch requests per client")
    parser.add_argument("--singles", type=int, default=40, help="one-row log_metric calls per client")
    parser.add_argument("--deadline", type=float, default=120, help="seconds per phase at most")
    parser.add_argument("--servers", default="team,sqlite")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (ABBA order)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "server_load.json"))
    args = parser.parse_args()

    import mlflow

    from bilstm_exp.team import server as team_server
    from bilstm_exp.team.mlflow_server import stop_process

    results = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                           "python": platform.python_version(), "mlflow": mlflow.__version__,
                           "load_before": load_average()},
               "load": {"clients": args.clients, "runs_per_client": args.runs, "batches_per_client": args.batches,
                        "singles_per_client": args.singles, "rounds": args.rounds}, "servers": {}}
    names = args.servers.split(",")
    credentials = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    saved = {k: os.environ.get(k) for k in credentials}
    with tempfile.TemporaryDirectory(prefix="bilstm-exp-load-") as tmp, contextlib.ExitStack() as stack:
        tmp = Path(tmp)
        uris, envs = {}, {}
        for name in names:  # both up at once; the load alternates between them, round by round
            if name == "team":
                team = team_server.start(tmp / "team", port=0, workers=2)
                stack.callback(team.stop, remove=True)
                uris[name] = team.tracking_uri
                envs[name] = {k: v for k, v in team.client_env().items() if k in credentials}
            else:
                (tmp / name).mkdir()
                uris[name], process = sqlite_server(tmp / name)
                stack.callback(stop_process, process)
                envs[name] = {}
        for round_index in range(args.rounds):
            for name in names if round_index % 2 == 0 else reversed(names):
                for key in credentials:
                    os.environ.pop(key, None)
                os.environ.update(envs[name])
                entry = {**load(uris[name], args.clients, args.runs, args.batches, args.singles, args.deadline),
                         "load_at_start": load_average()}
                results["servers"].setdefault(name, []).append(entry)
                print(f"round {round_index} {name}: {json.dumps(entry)}", flush=True)
    for key, value in saved.items():
        os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
    results["machine"]["load_after"] = load_average()

    def median(name: str, phase_name: str, field: str) -> float:
        return statistics.median(entry[phase_name][field] for entry in results["servers"][name])

    results["medians"] = {name: {"runs_per_s": median(name, "runs", "per_s"),
                                 "rows_per_s": median(name, "rows", "rows_per_s"),
                                 "single_per_s": median(name, "single", "per_s")} for name in names}
    if "team" in names and "sqlite" in names:
        team_m, sqlite_m = results["medians"]["team"], results["medians"]["sqlite"]
        results["ratios_team_over_sqlite"] = {key: round(team_m[key] / sqlite_m[key], 2) for key in team_m}
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "servers"}, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
