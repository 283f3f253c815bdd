"""What the embedding table's size costs a train step: the fixed per-step cost on real corpora.

The default run's vocabulary is capped at ``data.vocab_size`` (20,000 words): a real corpus fills it,
the built-in synthetic reviews use about 4,000. Keras's Adam updates every row of the embedding
table at every step (its moments decay whether a word occurs in the batch or not), so the table's
size is a per-step cost that no sequence length or batch shape changes. This script measures, for
the default model at several vocabulary sizes, side by side with the arms alternating:

1. a whole train step (``train_on_batch``, batch 32, texts of 16 and 64 tokens);
2. the optimizer update alone, as the XLA program a run compiles (``models/optimizer_step.py``):
   ``shipped``, the sparse embedding gradient (``tf.IndexedSlices``) handed to Keras's Adam, against
   ``densified``, the same gradient made dense first (one scatter-add) inside the same program.
   The two are not the same update: Keras squares a sparse gradient row by row before summing the
   rows of a repeated word into the second moment, where Adam on the dense gradient squares the sum.

usage: python benchmarks/embedding_update.py [--vocab 1000 4000 20000] [--rounds 8]
writes benchmarks/embedding_update.md (``--out`` changes the path).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import types
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
BATCH = 32


def timed(fn, rounds: int, calls: int) -> list[float]:
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        out.append((time.perf_counter() - start) / calls * 1000)
    return out


class Bench:
    def __init__(self, vocabs: list[int], rounds: int):
        from bilstm_exp.analysis.bench_setup import compose_config
        from bilstm_exp.training import runner

        self.vocabs, self.rounds = vocabs, rounds
        self.config = compose_config([])
        runner.configure_tensorflow(self.config)
        self.rng = np.random.default_rng(0)

    def compiled(self, vocab: int):
        from bilstm_exp.models import build as models
        from bilstm_exp.training import runner

        model = models.build(self.config.model, vocab, 2)
        return runner.compile_model(self.config, types.SimpleNamespace(num_classes=2), 100, model=model)

    def steps(self, length: int) -> dict[int, list[float]]:
        """Whole train steps at texts of ``length`` tokens, per vocabulary size."""
        out: dict[int, list[float]] = {v: [] for v in self.vocabs}
        for v in self.vocabs:
            model = self.compiled(v)
            batch = (self.rng.integers(2, v, size=(BATCH, length), dtype=np.int32),
                     self.rng.integers(0, 2, size=(BATCH,)).astype(np.int32))
            for _ in range(3):
                model.train_on_batch(*batch)  # traced and compiled before timing
            out[v] = [model, batch]
        timings: dict[int, list[float]] = {v: [] for v in self.vocabs}
        for r in range(self.rounds):
            for v in self.vocabs if r % 2 == 0 else self.vocabs[::-1]:
                model, batch = out[v]
                timings[v] += timed(lambda m=model, b=batch: m.train_on_batch(*b), 1, 20)
        return timings

    def update_program(self, vocab: int, densified: bool):
        import tensorflow as tf

        from bilstm_exp.models.optimizer_step import _rows_to_power_of_two

        model = self.compiled(vocab)
        tokens = self.rng.integers(2, vocab, size=(BATCH, 16), dtype=np.int32)
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(model(tokens, training=True))
        grads = [_rows_to_power_of_two(g) if isinstance(g, tf.IndexedSlices) else g
                 for g in tape.gradient(loss, model.trainable_variables)]
        optimizer, variables = model.optimizer, model.trainable_variables

        def apply(g):
            if densified:
                g = [tf.convert_to_tensor(x) if isinstance(x, tf.IndexedSlices) else x for x in g]
            return optimizer.apply(g, variables)

        function = tf.function(apply, jit_compile=True)
        function(grads)
        return lambda: function(grads)

    def updates(self, vocab: int) -> dict[str, list[float]]:
        arms = {"shipped": self.update_program(vocab, False), "densified": self.update_program(vocab, True)}
        timings: dict[str, list[float]] = {arm: [] for arm in arms}
        for r in range(self.rounds):
            for arm in ("shipped", "densified") if r % 2 == 0 else ("densified", "shipped"):
                timings[arm] += timed(arms[arm], 1, 30)
        return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, nargs="+", default=[1000, 4000, 20000])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--out", type=Path, default=HERE / "embedding_update.md")
    args = parser.parse_args()

    from bilstm_exp.analysis.bench_report import machine_sentence, write_report

    load = os.getloadavg()
    bench = Bench(args.vocab, args.rounds)
    steps = {length: bench.steps(length) for length in (16, 64)}
    updates = {v: bench.updates(v) for v in args.vocab}
    load_after = os.getloadavg()
    med = statistics.median
    small, large = args.vocab[0], args.vocab[-1]
    lines = [
        "# The embedding table's size in a train step",
        "",
        f"`python benchmarks/embedding_update.py --vocab {' '.join(map(str, args.vocab))} --rounds {args.rounds}`: "
        f"the default model (FastLSTM, 64 units, embedding 64, Adam), batch {BATCH}, random token ids; medians "
        "of the rounds, arms alternating.",
        "",
        machine_sentence(load, load_after),
        "",
        "| vocabulary | step, 16 tokens (ms) | step, 64 tokens (ms) | update as shipped (ms) | update densified (ms) |",
        "|---|---|---|---|---|",
        *(f"| {v:,} | {med(steps[16][v]):.2f} | {med(steps[64][v]):.2f} | {med(updates[v]['shipped']):.2f} | "
          f"{med(updates[v]['densified']):.2f} |" for v in args.vocab),
        "",
        f"A step at {large:,} words costs {med(steps[16][large]) - med(steps[16][small]):.2f} ms more than at "
        f"{small:,} (16 tokens); the update as shipped "
        f"{med(updates[large]['shipped']) - med(updates[small]['shipped']):.2f} ms more.",
        "",
    ]
    write_report(args.out, lines)


if __name__ == "__main__":
    main()
