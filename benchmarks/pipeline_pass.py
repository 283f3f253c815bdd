"""What one pass over a run's training pipeline costs, before any model sees it: the first pass of a new
pipeline (a cross-validation's fold builds one) against the passes after it.

Builds a run's training pipeline (``training.runner.datasets``, ``data.batching.make_dataset``) for the
run's prepared training split, several times, and reads three passes of each with no model: the time to
the first batch and to the end of each pass, wall and process CPU. Run it on two commits to compare their
pipelines (benchmarks/pipeline_pass.md holds both: tf.data slicing, caching and bucketing each text, then
whole rows padded once per bucket).

usage: python benchmarks/pipeline_pass.py [--pipelines 3] [overrides...]   (default: data=tweets)
writes benchmarks/pipeline_pass.md (``--out`` changes the path).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from first_epoch import describe  # noqa: E402  (the commit, without local paths)


def passes(dataset, count: int = 3) -> list[tuple[float, float, float]]:
    """(s to the first batch, s to the end, CPU s) of each pass."""
    out = []
    for _ in range(count):
        wall, cpu = time.perf_counter(), time.process_time()
        batches = iter(dataset)
        next(batches)
        first = time.perf_counter() - wall
        for _ in batches:
            pass
        out.append((first, time.perf_counter() - wall, time.process_time() - cpu))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipelines", type=int, default=3, help="new pipelines, one after another")
    parser.add_argument("--out", type=Path, default=HERE / "pipeline_pass.md")
    args, overrides = parser.parse_known_args()
    overrides = overrides or ["data=tweets"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from bilstm_exp.config.compose import compose
    from bilstm_exp.config.schema import validate
    from bilstm_exp.data import batching, prepare
    from bilstm_exp.training import runner

    config = validate(compose(overrides))
    prepared = prepare.prepare(config.data, config.seed)
    train = prepared.splits["train"]
    lengths = np.array([len(s) for s in train])
    rows = [passes(runner.datasets(config, prepared)["train"]) for _ in range(args.pipelines)]
    load = os.getloadavg()[0]
    batches = batching.planned_padding(lengths, config.training.batch_size, padding=config.data.padding,
                                       max_length=config.data.max_length,
                                       **runner.buckets(config, prepared)).batches
    lines = [
        "# One pass over a run's training pipeline", "",
        f"`python benchmarks/pipeline_pass.py {' '.join(overrides)}` ({describe(HERE.parent)}; "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}; 1-minute load {load:.2f} at the end; {os.cpu_count()} cores).", "",
        f"{len(train):,} training texts, median length {int(np.median(lengths))}, batch "
        f"{config.training.batch_size}, {batches} batches a pass; {args.pipelines} new pipelines, one after another. "
        "Each cell: seconds to the first batch / to the end of the pass (process CPU seconds of the pass).", "",
        "| new pipeline | pass 1 | pass 2 | pass 3 |", "|---|---|---|---|",
    ]
    for number, one in enumerate(rows, 1):
        lines.append(f"| {number} | " + " | ".join(f"{f:.2f} / {e:.2f} ({c:.2f})" for f, e, c in one) + " |")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
