"""What MLflow's system metrics cost a training epoch: ``bilstm-exp bench``'s ``tracking_overhead``
(the full plugin's epoch in an MLflow run over bare ``model.fit``) with ``tracking.system_metrics``
on and off, the arms alternating in one process on the quick profile's data (1,200 synthetic texts).

usage: python benchmarks/system_metrics_overhead.py [--rounds 4] [--reps 5]
prints one line per measurement and the medians; the figures are quoted in system_metrics_overhead.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--reps", type=int, default=5, help="timed epochs per arm of one tracking_overhead")
    args = parser.parse_args()
    from bilstm_exp.analysis.bench_measure import Bench
    from bilstm_exp.analysis.bench_setup import PROFILES

    quick = PROFILES["quick"]
    results: dict[str, list[dict]] = {"on": [], "off": []}
    with tempfile.TemporaryDirectory(prefix="system-metrics-overhead-") as tmp:
        benches = {}
        for arm in results:
            Path(tmp, arm).mkdir()
            settings = dataclasses.replace(quick, reps=args.reps,
                                           overrides=[*quick.overrides, f"tracking.system_metrics={arm == 'on'}"])
            benches[arm] = Bench(settings, Path(tmp, arm))
        for round_ in range(args.rounds):
            for arm in ("on", "off") if round_ % 2 == 0 else ("off", "on"):
                results[arm].append(benches[arm].tracking_overhead())
                r = results[arm][-1]
                print(f"round {round_ + 1} system metrics {arm:3}: tracking_overhead {r['ratio']:.3f} (pairwise "
                      f"{r['pairwise_median_ratio']:.3f}, CPU {r['cpu_ratio']:.3f}), load {os.getloadavg()[0]:.2f}",
                      flush=True)
    for arm, rows in results.items():
        print(f"system metrics {arm:3}: median tracking_overhead {statistics.median(r['ratio'] for r in rows):.3f}, "
              f"median CPU ratio {statistics.median(r['cpu_ratio'] for r in rows):.3f}")


if __name__ == "__main__":
    main()
