"""`bilstm-exp` subcommands and the glue between Hydra and a run.

    bilstm-exp train [overrides...]          one run (same as python -m bilstm_exp overrides...)
    bilstm-exp prepare|train|evaluate --params params.yaml   the DVC stages
    bilstm-exp compose-params [overrides...] conf/ -> params.yaml
    bilstm-exp predict --model URI TEXT...   one prediction per text (or --file)
    bilstm-exp compare [--parent RUN_ID]     rank runs: table, Pareto front, plot, report
    bilstm-exp sync --from DIR --to URI      upload a run kept offline while the server was down
    bilstm-exp bench [--quick]               the benchmarks quoted in the README

Every command runs inside one error boundary (:func:`bilstm_exp.errors.exit_on_user_error`): bad
input prints one line naming the problem and the fix and exits 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from omegaconf import DictConfig

from bilstm_exp.compose import CONF_DIR, compose  # noqa: F401  (CONF_DIR, compose: also used by the tests)
from bilstm_exp.config import ExperimentConfig, validate
from bilstm_exp.errors import exit_on_user_error, fail

INTERRUPTED = ("the run ended KILLED; its last finished epoch is checkpointed in checkpoints/<run_id>/. "
               "Continue it with the same overrides plus training.resume=true")


def train(config: ExperimentConfig, overrides: list[str], **run_kwargs):
    from bilstm_exp import training  # imports TensorFlow: only after the config is valid

    with exit_on_user_error(interrupted=INTERRUPTED):
        return training.run(config, root=Path.cwd(), overrides=overrides, **run_kwargs)


def run_from_hydra(cfg: DictConfig) -> float | None:
    """Body of the @hydra.main entry point: validate, run, return the value sweepers optimise."""
    from hydra.core.hydra_config import HydraConfig

    from bilstm_exp.sweep import job_run_kwargs  # a multirun job: child of the sweep's parent run

    overrides = list(HydraConfig.get().overrides.task)
    with exit_on_user_error():
        config = validate(cfg)
    result = train(config, overrides, **job_run_kwargs())
    return max(result.history.get("val_accuracy", [float("nan")]))


def _train_command(args: argparse.Namespace) -> None:
    train(validate(compose(args.overrides)), args.overrides)


def _predict_command(args: argparse.Namespace) -> None:
    texts = list(args.texts)
    if args.file:
        texts += read_texts(Path(args.file))
    if not texts:
        fail("no texts given. Fix: pass texts as arguments or --file PATH")
    import mlflow.pyfunc

    if args.tracking_uri:
        mlflow.set_tracking_uri(args.tracking_uri)
    try:
        model = mlflow.pyfunc.load_model(args.model)
    except Exception as error:
        fail(f"cannot load model {args.model}: {str(error).splitlines()[0]}. Fix: check the URI "
             "(models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID/model) and the tracking URI")
    import pandas as pd

    result = model.predict(pd.DataFrame({"text": texts}))  # matches any raw-text signature, old or new
    for text, prob, label in zip(texts, result["probability"], result["label"], strict=True):
        print(f"{label}\t{prob:.4f}\t{text}")


def read_texts(path: Path) -> list[str]:
    """One text per line, or the `text` column of a CSV."""
    if not path.is_file():
        fail(f"{path}: no such file. Fix: pass an existing text or CSV file")
    if path.suffix.lower() == ".csv":
        import pandas as pd

        table = pd.read_csv(path)
        if "text" not in table.columns:
            fail(f"{path}: no 'text' column (found {', '.join(table.columns)}). Fix: name the column 'text'")
        return table["text"].dropna().astype(str).tolist()  # an empty cell is no text, not "nan"
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def parser() -> argparse.ArgumentParser:
    from bilstm_exp import bench, compare, offline, pipeline

    top = argparse.ArgumentParser(prog="bilstm-exp", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train and evaluate one configuration, tracked in MLflow")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=attention training.epochs=1")
    p.set_defaults(func=_train_command)
    pipeline.add_train_params_option(p)
    pipeline.add_commands(sub)  # the DVC stages: prepare, evaluate; compose-params
    p = sub.add_parser("predict", help="predict texts with a logged or registered model")
    p.add_argument("--model", default="models:/bilstm-sentiment@champion", help="model URI")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: MLflow's own default)")
    p.add_argument("--file", default=None, help="a text file (one text per line) or a CSV with a text column")
    p.add_argument("texts", nargs="*")
    p.set_defaults(func=_predict_command)
    p = sub.add_parser("compare", help="rank runs or a sweep's child runs: table, Pareto front, plot, report")
    compare.add_arguments(p)
    p.set_defaults(func=compare.command)
    offline.add_command(sub)  # bilstm-exp sync: upload runs kept offline while the server was down
    p = sub.add_parser("bench", help=bench.HELP)
    bench.add_arguments(p)
    p.set_defaults(func=bench.command)
    return top


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    with exit_on_user_error(interrupted=INTERRUPTED if args.command == "train" else "stopped"):
        args.func(args)


if __name__ == "__main__":
    main()
