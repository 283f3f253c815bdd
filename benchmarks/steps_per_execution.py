"""What ``training.steps_per_execution`` saves an epoch, and a check that it changes no result.

Keras runs ``steps_per_execution`` train steps in one ``tf.function`` call. Its per-step Python work
(the loop, the batch callbacks, handing the logs back) is then paid once per call, and the steps of
a call run back to back in the graph. The updates are the same, in the same order. This script
measures, for each corpus and each value, side by side:

1. **the same result**: each value trains one epoch from the same initial weights on the same batch
   order, and the largest absolute difference of any weight against ``steps_per_execution=1`` is
   reported (0.0: bit for bit the same);
2. **the epoch**: ``model.fit(epochs=1)`` with validation and the run's EpochProfiler, the values
   alternating (A B C, C B A, ...) after an untimed epoch of each, medians of the timed epochs:
   the epoch (training, validation and callbacks) and ``time/train_s`` (the training calls only).

usage: python benchmarks/steps_per_execution.py [--values 1 8 32] [--corpus synthetic tweets] [--epochs 5]
writes benchmarks/steps_per_execution.md (``--out`` changes the path).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CORPORA = {  # name -> Hydra overrides on top of the default composition
    "synthetic": [],  # the built-in reviews: 1,600 training texts, median 150 tokens
    "tweets": ["data=tweets", "data.max_samples=6000"],  # the shipped tweets, short texts: median 18 words
}


def _setup(overrides: list[str]):
    """(config, prepared data) of one corpus and value."""
    from bilstm_exp.analysis.bench_setup import compose_config
    from bilstm_exp.data.prepare import prepare

    config = compose_config(overrides)
    return config, prepare(config.data, config.seed)


def _fresh(config, prepared):
    """A model and pipelines as a run makes them: the seed set first, so every value starts the same."""
    from bilstm_exp.data import batching
    from bilstm_exp.training import runner

    runner.configure_tensorflow(config)
    pipes = runner.datasets(config, prepared)
    stats = batching.padding_stats(pipes["train"])
    return runner.compile_model(config, prepared, stats.batches), pipes, stats


def same_result(corpus: list[str], values: list[int]) -> dict[int, float]:
    """Largest |weight difference| after one epoch, each value against the first."""
    weights = {}
    for value in values:
        config, prepared = _setup([*corpus, f"training.steps_per_execution={value}"])
        model, pipes, _ = _fresh(config, prepared)
        model.fit(pipes["train"], epochs=1, verbose=0)
        weights[value] = model.get_weights()
    first = weights[values[0]]
    return {v: max(float(np.max(np.abs(a - b))) for a, b in zip(first, w, strict=True)) for v, w in weights.items()}


def epochs(corpus: list[str], values: list[int], rounds: int) -> dict[int, dict[str, list[float]]]:
    """Per value: the timed epochs' seconds (``epoch``) and their training calls' seconds (``train``)."""
    from bilstm_exp.analysis.bench_setup import epoch_clock
    from bilstm_exp.training import profiling

    arms = {}
    for value in values:
        config, prepared = _setup([*corpus, f"training.steps_per_execution={value}"])
        model, pipes, stats = _fresh(config, prepared)
        arms[value] = (model, pipes, stats, len(prepared.labels["train"]))
    out: dict[int, dict[str, list[float]]] = {v: {"epoch": [], "train": []} for v in values}
    for r in range(rounds + 1):  # round 0: untimed (tracing and compiling every bucket's shape)
        for value in values if r % 2 == 0 else values[::-1]:
            model, pipes, stats, samples = arms[value]
            clock, profiler = epoch_clock(), profiling.EpochProfiler(samples, stats.real_tokens)
            logs = model.fit(pipes["train"], validation_data=pipes["val"], epochs=1, verbose=0,
                             callbacks=[clock, profiler]).history
            if r:
                out[value]["epoch"].append(clock.last()[0])
                out[value]["train"].append(logs["time/train_s"][0])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--corpus", nargs="+", default=list(CORPORA), choices=list(CORPORA))
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs per value")
    parser.add_argument("--out", type=Path, default=HERE / "steps_per_execution.md")
    args = parser.parse_args()

    from bilstm_exp.analysis.bench_report import machine_sentence, write_report

    load = os.getloadavg()
    results = {}
    for name in args.corpus:
        print(f"[steps_per_execution] {name}", flush=True)
        results[name] = (same_result(CORPORA[name], args.values), epochs(CORPORA[name], args.values, args.epochs))
    load_after = os.getloadavg()
    med, base = statistics.median, args.values[0]
    rows = []
    for name, (diff, times) in results.items():
        for value in args.values:
            epoch, train = med(times[value]["epoch"]), med(times[value]["train"])
            rows.append(f"| {name} | {value} | {diff[value]:.1e} | {epoch:.3f} | "
                        f"{epoch / med(times[base]['epoch']):.3f} | {train:.3f} | "
                        f"{train / med(times[base]['train']):.3f} | "
                        f"{', '.join(f'{t:.3f}' for t in times[value]['epoch'])} |")
    lines = [
        "# `training.steps_per_execution`: an epoch's time, the same result",
        "",
        f"`python benchmarks/steps_per_execution.py --values {' '.join(map(str, args.values))} --corpus "
        f"{' '.join(args.corpus)} --epochs {args.epochs}`, {time.strftime('%Y-%m-%d %H:%M %Z')}: the default model "
        "and run settings (FastLSTM, batch 32, bucketed batches), one epoch of training and validation per `fit`, "
        "the values alternating after an untimed epoch of each; medians of the timed epochs.",
        "",
        machine_sentence(load, load_after),
        "",
        "Corpora: " + "; ".join(f"`{n}` ({' '.join(CORPORA[n]) or 'the default data'})" for n in args.corpus) + ".",
        "",
        f"| corpus | steps_per_execution | max weight difference to {base} after one epoch | epoch (s) | "
        f"epoch / {base} | training calls (s) | training / {base} | timed epochs (s) |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "A difference of 0.0 means the same weights bit for bit: the calls run the same updates in the same order. "
        "The saving is Keras's per-step work between calls (the Python loop, the batch callbacks, the logs handed "
        "back), so it is largest where steps are shortest.",
        "",
    ]
    write_report(args.out, lines)


if __name__ == "__main__":
    main()
