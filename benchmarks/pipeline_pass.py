"""What one pass over a run's training pipeline costs, before any model sees it: the first pass of a new
pipeline (a cross-validation's fold builds one) against the passes after it.

Builds the default training pipeline (``data.batching.make_dataset``: slice each text to its length,
``cache()``, shuffle the whole split, bucket by length) for the run's prepared training split, and reads
three passes with no model: the time to the first batch and to the end of each pass, wall and process
CPU. Beside it, the same pipeline without ``cache()``: every pass then slices every text again.

usage: python benchmarks/pipeline_pass.py [--pipelines 3] [overrides...]   (default: data=tweets)
writes benchmarks/pipeline_pass.md (``--out`` changes the path).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from unittest import mock

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
    parser.add_argument("--pipelines", type=int, default=3, help="new pipelines per arm, the arms alternating")
    parser.add_argument("--out", type=Path, default=HERE / "pipeline_pass.md")
    args, overrides = parser.parse_known_args()
    overrides = overrides or ["data=tweets"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    from bilstm_exp.config.compose import compose
    from bilstm_exp.config.schema import validate
    from bilstm_exp.data import batching, prepare
    from bilstm_exp.training import runner

    config = validate(compose(overrides))
    prepared = prepare.prepare(config.data, config.seed)
    train = prepared.splits["train"]
    lengths = np.array([len(s) for s in train])
    real_cache = tf.data.Dataset.cache
    arms = {"as runs build it (cache)": real_cache, "no cache()": lambda ds, *a, **k: ds}
    rows: dict[str, list] = {name: [] for name in arms}
    for _ in range(args.pipelines):
        for name, cache in arms.items():
            with mock.patch.object(tf.data.Dataset, "cache", cache):
                rows[name].append(passes(runner.datasets(config, prepared)["train"]))
    load = os.getloadavg()[0]
    batches = batching.planned_padding(lengths, config.training.batch_size, padding=config.data.padding,
                                       max_length=config.data.max_length,
                                       boundaries=runner._boundaries(config, prepared)).batches
    lines = [
        "# One pass over a run's training pipeline", "",
        f"`python benchmarks/pipeline_pass.py {' '.join(overrides)}` ({describe(HERE.parent)}; "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}; 1-minute load {load:.2f} at the end; {os.cpu_count()} cores).", "",
        f"{len(train):,} training texts, median length {int(np.median(lengths))}, batch "
        f"{config.training.batch_size}, {batches} batches a pass; {args.pipelines} new pipelines per arm, the arms "
        "alternating. Each cell: seconds to the first batch / to the end of the pass (process CPU seconds of "
        "the pass).", "",
        "| pipeline | pass 1 | pass 2 | pass 3 |", "|---|---|---|---|",
    ]
    for name, runs in rows.items():
        for one in runs:
            lines.append(f"| {name} | " + " | ".join(f"{f:.2f} / {e:.2f} ({c:.2f})" for f, e, c in one) + " |")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
