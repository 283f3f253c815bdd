"""Do self-trained word vectors help? ``basic`` on the shipped tweets, with and without word2vec vectors.

For each of ``--splits`` stratified splits (``data.split_seed`` 1..K), word2vec vectors are trained with
``bilstm_exp.models.embeddings.pretrain`` on that split's TRAINING texts only (no validation or test text leaks
into the vectors), then the same small ``basic`` model (same weights seed, same epochs, early stopping
on val/loss with the best weights restored) is trained three ways: random embeddings (the default),
the self-trained vectors fine-tuned, and the vectors frozen. The table gives test accuracy and AUC as
mean +/- 95% confidence interval over the splits, and the paired difference to random embeddings
(paired t-test over the same splits, scipy). No MLflow: it times nothing and records only accuracy.

    .venv/bin/python benchmarks/embeddings.py               # full: 5 splits, 5 epochs -> benchmarks/embeddings.md
    .venv/bin/python benchmarks/embeddings.py --smoke --out embeddings_smoke.md   # a few-minute check

Both variants share one vocabulary per split, fitted with ``data.min_token_frequency=2`` (word2vec's
min count), so every vocabulary word can have a vector.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bilstm_exp.config.compose import compose  # noqa: E402
from bilstm_exp.config.schema import validate  # noqa: E402
from bilstm_exp.data import batching  # noqa: E402
from bilstm_exp.data import prepare as data  # noqa: E402
from bilstm_exp.models import build as models
from bilstm_exp.models import embeddings
from bilstm_exp.serving import model as serving
from bilstm_exp.training import runner as training
from bilstm_exp.training.evaluation import evaluate  # noqa: E402

VARIANTS = {  # name -> model overrides on top of the base config
    "random (default)": [],
    "word2vec, fine-tuned": ["model.pretrained_embeddings={vectors}"],
    "word2vec, frozen": ["model.pretrained_embeddings={vectors}", "model.embeddings_trainable=false"],
}


def load() -> str:
    try:
        return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg()) + f" on {os.cpu_count()} CPUs"
    except OSError:
        return "load unknown"


def train_one(overrides: list[str], prepared: data.PreparedData) -> dict[str, float]:
    import keras

    config = validate(compose(overrides))
    training.configure_tensorflow(config)
    pipelines = training.datasets(config, prepared)
    vectors = embeddings.for_vocabulary(config.model, prepared.vocab, prepared.splits["train"], seed=config.seed)
    batches = batching.padding_stats(pipelines["train"]).batches
    model = training.compile_model(config, prepared, batches, vectors=vectors)
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.training.early_stopping.patience,
                                         restore_best_weights=True)
    history = model.fit(pipelines["train"], validation_data=pipelines["val"], epochs=config.training.epochs,
                        callbacks=[stop], verbose=0)
    classifier = serving.TextClassifier().setup(models.inference_model(model), prepared.vocab, {
        "class_names": prepared.class_names, "max_length": prepared.max_length, "truncating": prepared.truncating})
    result = dict(evaluate(classifier, prepared).metrics)
    result["epochs"] = len(history.history["loss"])
    result.update(vectors.metrics)
    return result


def summary(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t confidence interval."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return float(x.mean()), float("nan")
    return float(x.mean()), float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--splits", type=int, default=5, help="stratified splits (data.split_seed 1..K)")
    parser.add_argument("--epochs", type=int, default=5, help="classifier epochs (early stopping on val/loss)")
    parser.add_argument("--dim", type=int, default=100, help="embedding size (both variants)")
    parser.add_argument("--w2v-epochs", type=int, default=10, help="word2vec passes over the training texts")
    parser.add_argument("--max-samples", type=int, default=None, help="cap the tweets (data.max_samples)")
    parser.add_argument("--smoke", action="store_true", help="tiny: 2 splits, 600 tweets, 1 epoch, dim 16")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("embeddings.md"))
    args = parser.parse_args()
    if args.smoke:
        args.splits, args.epochs, args.dim, args.w2v_epochs, args.max_samples = 2, 1, 16, 1, args.max_samples or 600
    base = ["data=tweets", "data.min_token_frequency=2", "model=basic", "model.lstm_units=32",
            f"model.embedding_dim={args.dim}", f"training.epochs={args.epochs}", "training.verbose=0",
            "profiling.latency_samples=0"]
    if args.max_samples:
        base.append(f"data.max_samples={args.max_samples}")
    load_before, start = load(), time.perf_counter()
    results: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="bilstm-exp-embeddings-") as tmp:
        for split in range(1, args.splits + 1):
            config = validate(compose([*base, f"data.split_seed={split}"]))
            prepared = data.prepare(config.data, split)
            vectors = Path(tmp) / f"word2vec-split{split}.txt"
            trained = embeddings.pretrain(prepared.texts["train"], vectors, dim=args.dim, epochs=args.w2v_epochs,
                                          min_count=2, seed=split)
            print(f"split {split}: {trained.line()}", flush=True)
            for name, extra in VARIANTS.items():
                overrides = [*base, f"data.split_seed={split}", *(o.format(vectors=vectors) for o in extra)]
                results[name].append(train_one(overrides, prepared))
                r = results[name][-1]
                print(f"  {name:22s} test/accuracy {r['test/accuracy']:.4f}  test/auc {r['test/auc']:.4f}  "
                      f"epochs {r['epochs']}", flush=True)
    write(args, base, results, prepared, load_before, time.perf_counter() - start)


def write(args, base, results, prepared, load_before: str, seconds: float) -> None:
    from scipy import stats

    reference = results["random (default)"]
    lines = [
        "# Self-trained word vectors on the tweets (basic)",
        "",
        f"`python {' '.join(sys.argv)}`: {args.splits} stratified splits (data.split_seed 1..{args.splits}), "
        f"{sum(prepared.stats['num_examples'].values())} tweets per split "
        f"({prepared.stats['num_examples']['train']} train / {prepared.stats['num_examples']['val']} val / "
        f"{prepared.stats['num_examples']['test']} test); overrides `{' '.join(base)}`; word2vec (skip-gram, "
        f"window 5, min count 2, {args.w2v_epochs} epochs) trained on each split's training texts only. "
        "Mean +/- 95% CI over the splits; the difference is paired by split (t-test).",
        f"Machine: {platform.machine()}, Python {platform.python_version()}, {os.cpu_count()} CPUs; "
        f"{load_before} before, {load()} after; {seconds:.0f} s in all.",
        "",
        "| embeddings | test accuracy | test AUC | vocabulary without a vector | epochs | "
        "accuracy - random (paired) | p |",
        "|---|---|---|---|---|---|---|",
    ]
    verdicts = []
    for name, rows in results.items():
        acc, auc = [r["test/accuracy"] for r in rows], [r["test/auc"] for r in rows]
        (ma, ca), (mu, cu) = summary(acc), summary(auc)
        oov = f"{np.mean([r['embedding/oov_fraction'] for r in rows]):.1%}" if "embedding/oov_fraction" in rows[0] \
            else "-"
        epochs = f"{np.mean([r['epochs'] for r in rows]):.1f}"
        if rows is reference:
            diff, p = "-", "-"
        else:
            deltas = np.array(acc) - np.array([r["test/accuracy"] for r in reference])
            md, cd = summary(list(deltas))
            pvalue = float(stats.ttest_rel(acc, [r["test/accuracy"] for r in reference]).pvalue) \
                if len(deltas) > 1 and np.std(deltas) > 0 else float("nan")
            diff, p = f"{md:+.4f} +/- {cd:.4f}", f"{pvalue:.3f}"
            verdicts.append(f"{name}: {md:+.2%} accuracy vs random embeddings, "
                            + ("a difference beyond the split-to-split noise (p < 0.05)." if pvalue < 0.05
                               else "within the split-to-split noise (p >= 0.05 or too few splits)."))
        lines.append(f"| {name} | {ma:.4f} +/- {ca:.4f} | {mu:.4f} +/- {cu:.4f} | {oov} | {epochs} | {diff} | {p} |")
    lines += ["", *(f"- {v}" for v in verdicts)]
    if args.smoke:
        lines += ["", "Smoke settings: checks that the script works; the numbers mean nothing."]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
