"""The DVC pipeline's stages (dvc.yaml): prepare -> train -> evaluate, one `bilstm-exp` call each.

    bilstm-exp prepare  --params params.yaml   data/prepared/, reports/prepare/
    bilstm-exp train    --params params.yaml   artifacts/model/, reports/train/ (one MLflow run)
    bilstm-exp evaluate --params params.yaml   reports/evaluate/, logged to train's MLflow run
    bilstm-exp compose-params [OVERRIDES]      conf/ -> params.yaml (what `dvc exp run -S` does)

The stages read ``params.yaml``, which is what DVC tracks, never ``conf/`` directly. params.yaml
is a Hydra composition of the configs (the project's own ``conf/``, when it has one, over the packaged
``bilstm_exp/conf``); it records the md5 of both in a comment line.
`dvc repro` does not recompose (treeverse/dvc#10750), so every stage first checks that conf/ has
not changed since params.yaml was composed and stops with the command to run when it has. Under
`dvc exp run` DVC has just recomposed params.yaml itself (hydra.enabled in .dvc/config); the stage
then writes the record.

Every stage writes its outputs into a temporary folder next to them and renames them into place
only when it has succeeded, so an interrupted run leaves nothing a later run could mistake for a
result (DVC also deletes a stage's outputs before running it and writes dvc.lock only on success).

This module imports TensorFlow and MLflow only inside the stages that need them.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from bilstm_exp.config.compose import CONF_DIR, CONF_MODULE, USER_CONF, conf_layers
from bilstm_exp.config.schema import ExperimentConfig, validate
from bilstm_exp.errors import ConfigError, DataError, TrackingError

PARAMS = Path("params.yaml")
PREPARED = Path("data/prepared")
PREPARE_REPORTS = Path("reports/prepare")
MODEL = Path("artifacts/model")
TRAIN_REPORTS = Path("reports/train")
EVALUATE_REPORTS = Path("reports/evaluate")
DVC_LOCK = Path("dvc.lock")

STAMP = "# conf-md5: "
HEADER = ("# conf/ composed by Hydra. DVC tracks this file and the pipeline stages read it. Do not edit it:\n"
          "# edit conf/ and run `bilstm-exp compose-params [OVERRIDES]`, or `dvc exp run -S KEY=VALUE`.\n")
RECOMPOSE = ("run `dvc exp run` (it recomposes conf/ into params.yaml; add -S KEY=VALUE for overrides), "
             "or `bilstm-exp compose-params [OVERRIDES]` and then `dvc repro`")


# --------------------------------------------------------------------------- params.yaml <-> conf/


def conf_md5(root: Path, params: dict[str, Any]) -> str:
    """Hash of what the configs ``params`` was composed from say: config.yaml and the folders of the
    groups it draws on, in each layer (the project's ``conf/`` and the packaged one), each YAML file's
    layer, relative path and parsed content (comments and formatting do not count). config.yaml's
    ``hydra:`` section (output folders, callbacks) never reaches params.yaml, so it does not count
    either. The defaults the YAML files extend (the schemas in config/) count too."""
    from bilstm_exp.config.registration import schema_digest

    digest = hashlib.md5(schema_digest().encode())
    for layer in conf_layers(root):
        name = "conf" if layer != CONF_DIR else CONF_MODULE  # never a path of this machine
        for path in _config_files(layer, params):
            digest.update(f"{name}/{path.relative_to(layer).as_posix()}".encode() + b"\0")
            digest.update(json.dumps(_yaml_content(path, layer), sort_keys=True, default=str).encode() + b"\0")
    return digest.hexdigest()


def _config_files(layer: Path, params: dict[str, Any]) -> list[Path]:
    """config.yaml and the YAML files of the groups a composition draws on (its top-level keys that
    are folders of the layer)."""
    groups = sorted(key for key in params if isinstance(params[key], dict) and (layer / key).is_dir())
    files = [layer / "config.yaml"]
    for group in groups:
        files += sorted(p for p in (layer / group).rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
    return [path for path in files if path.is_file()]


def _yaml_content(path: Path, layer: Path) -> Any:
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({str(error).splitlines()[0]}). Fix: correct the file") from None
    if path == layer / "config.yaml" and isinstance(content, dict):
        content = {key: value for key, value in content.items() if key != "hydra"}
    return content


def compose(root: Path, overrides: list[str]) -> str:
    """conf/ composed with Hydra overrides, as YAML text exactly as `dvc exp run` writes it, except that
    values from the environment stay ``${oc.env:NAME}`` (resolved when a stage reads params.yaml):
    the git-tracked params.yaml never holds an environment value (bilstm_exp.tracking.redaction)."""
    from omegaconf import ListConfig, OmegaConf

    from bilstm_exp.config.compose import compose as hydra_compose
    from bilstm_exp.tracking import redaction

    cfg = hydra_compose(overrides, conf_dir=root / USER_CONF if (root / USER_CONF).is_dir() else None)
    from_env = redaction.references(cfg)
    OmegaConf.resolve(cfg)
    for key, text in from_env.items():
        if not isinstance(OmegaConf.select(cfg, key), ListConfig):
            OmegaConf.update(cfg, key, text, merge=False)
    return OmegaConf.to_yaml(cfg)


def compose_params(root: Path, overrides: list[str]) -> Path:
    """Write params.yaml: the composition, preceded by a header and the conf/ md5 it came from."""
    body = compose(root, overrides)
    params = yaml.safe_load(body)
    validate(params)
    from bilstm_exp.config.plain import flatten
    from bilstm_exp.tracking import redaction

    leaked = redaction.credential_keys(flatten(params))
    if leaked:
        raise ConfigError(f"{leaked[0]}: holds credentials, and params.yaml is tracked by git. Fix: remove them "
                          "and put them in MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD or "
                          "MLFLOW_TRACKING_TOKEN")
    stamp = f"{STAMP}{conf_md5(root, params)}\n"
    recipe = f"# overrides: {' '.join(overrides)}\n" if overrides else ""
    _write_text(root / PARAMS, HEADER + stamp + recipe + body)
    return root / PARAMS


def read_stamp(text: str) -> str | None:
    for line in text.splitlines():
        if line.startswith(STAMP):
            return line[len(STAMP):].strip()
    return None


def _restore_header(root: Path, text: str, md5: str, note: str) -> None:
    """Rewrite params.yaml as compose_params writes it: HEADER, the conf/ md5, ``note``, then the YAML
    (values untouched, so DVC's params of the stage do not change)."""
    _write_text(root / PARAMS, HEADER + f"{STAMP}{md5}\n" + note + text.removeprefix(HEADER))


def check_fresh(root: Path, text: str, params: dict[str, Any]) -> None:
    """Refuse params.yaml when conf/ changed after it was composed (see the module docstring)."""
    current = conf_md5(root, params)
    stamp = read_stamp(text)
    if stamp is None and os.environ.get("DVC_EXP_NAME"):
        # `dvc exp run` has just composed params.yaml from conf/ (hydra.enabled), without our header
        # (DVC writes the bare YAML): put the header back and record the conf/ it came from.
        _restore_header(root, text, current, f"# composed by: dvc exp run ({os.environ['DVC_EXP_NAME']})\n")
        return
    if stamp is None:
        if yaml.safe_load(compose(root, [])) == yaml.safe_load(text):
            _restore_header(root, text, current, "")  # e.g. a `dvc exp run` whose stages were all cached
            return
        raise ConfigError(f"params.yaml: no '{STAMP.strip('# ')}' line, so it cannot be checked against conf/, "
                          f"and it differs from the default composition of conf/. Fix: {RECOMPOSE}")
    if stamp != current:
        raise ConfigError(f"conf/ changed since params.yaml was composed (params.yaml records conf/ md5 {stamp}, "
                          f"conf/ is now {current}); this stage would run on stale params. Fix: {RECOMPOSE}")


def load_params(path: Path, root: Path | None = None) -> ExperimentConfig:
    """Read, drift-check and validate params.yaml."""
    root = root or Path.cwd()
    if not path.is_file():
        raise ConfigError(f"{path}: not found. Fix: run the stage in the project root, or create it from conf/ "
                          "with `bilstm-exp compose-params` (or `dvc exp run`)")
    text = path.read_text(encoding="utf-8")
    try:
        params = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({str(error).splitlines()[0]}). "
                          "Fix: recreate it with `bilstm-exp compose-params`") from None
    if not isinstance(params, dict) or not params:
        raise ConfigError(f"{path}: empty or not a mapping. Fix: recreate it with `bilstm-exp compose-params`")
    if path.resolve() == (root / PARAMS).resolve():
        check_fresh(root, text, params)
    return validate(params)


# --------------------------------------------------------------------------- atomic outputs


@contextmanager
def staging(*targets: Path) -> Iterator[list[Path]]:
    """Temporary paths next to ``targets``; on success each is renamed over its target, the
    last one last (so the last target, e.g. a metrics file, appears only when all others exist)."""
    temps: list[Path] = []
    try:
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            folder = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
            temps.append(folder / target.name)
        yield temps
        for temp, target in zip(temps, targets, strict=True):
            if not temp.exists():
                raise RuntimeError(f"stage did not write {target}")
            _remove(target)
            os.replace(temp, target)
    finally:
        for temp in temps:
            shutil.rmtree(temp.parent, ignore_errors=True)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _write_text(path: Path, text: str) -> None:
    with staging(path) as (temp,):
        temp.write_text(text, encoding="utf-8")


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


# --------------------------------------------------------------------------- DVC <-> MLflow


def dvc_tags(stage: str) -> dict[str, str]:
    """Tags linking an MLflow run to the DVC run that made it (run in the repo DVC runs the stage in)."""
    tags = {"dvc_stage": os.environ.get("DVC_STAGE", stage)}  # the names context.py uses too
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = os.environ["DVC_EXP_NAME"]
    if os.environ.get("DVC_EXP_BASELINE_REV"):
        tags["dvc_exp_baseline_rev"] = os.environ["DVC_EXP_BASELINE_REV"]
    md5 = prepared_md5_from_lock(DVC_LOCK)
    if md5:
        tags["dvc_prepared_md5"] = md5
    return tags


def prepared_md5_from_lock(lock: Path) -> str | None:
    """The md5 DVC recorded for data/prepared when the prepare stage last succeeded."""
    if not lock.is_file():
        return None
    stages = (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages", {})
    for out in (stages.get("prepare") or {}).get("outs", []):
        if Path(out.get("path", "")) == PREPARED:
            return out.get("md5")
    return None


def _tracking_root() -> Path:
    """Where a local MLflow store lives: the DVC repo root (also for `dvc exp run --temp`)."""
    return Path(os.environ.get("DVC_ROOT") or ".").resolve()


# --------------------------------------------------------------------------- stages


def prepare_stage(config: ExperimentConfig) -> None:
    from bilstm_exp.data.prepare import prepare

    prepared = prepare(config.data)  # data.split_seed: the split (seed is for the weights)
    stats = {"data_md5": prepared.md5(), "class_names": prepared.class_names, **prepared.stats}
    with staging(PREPARED, PREPARE_REPORTS / "length_histogram.csv", PREPARE_REPORTS / "stats.json") as (
            folder, histogram, stats_file):
        prepared.save(folder)
        _write_csv(histogram, ["length", "count"], [[k, v] for k, v in prepared.stats["length_histogram"].items()])
        _write_json(stats_file, stats)
    counts = prepared.stats["num_examples"]
    print(f"prepared {counts['train']} train / {counts['val']} val / {counts['test']} test examples, "
          f"vocabulary {len(prepared.vocab)} -> {PREPARED}/")


def _load_prepared():
    from bilstm_exp.data.prepare import PreparedData

    if not (PREPARED / "splits.npz").is_file():
        raise DataError(f"{PREPARED}/: no prepared data. Fix: run `dvc repro prepare` "
                        "(or `bilstm-exp prepare --params params.yaml`) first")
    return PreparedData.load(PREPARED)


def train_stage(config: ExperimentConfig) -> None:
    from bilstm_exp.models import vector_files
    from bilstm_exp.training import summary

    vector_files.check(config.model)  # model.pretrained_embeddings readable and as wide, before TensorFlow
    summary.announce(config, _tracking_root())  # the first line: where the run is recorded
    if config.data.folds:
        raise ConfigError(f"data.folds={config.data.folds}: the DVC pipeline trains one model on one split. Fix: run "
                          "cross-validation with `python -m bilstm_exp data.folds=K`, and set data.folds=null here")
    prepared = _load_prepared()  # before TensorFlow is imported: a missing input fails in a second

    from bilstm_exp.tracking.callback import metric_name
    from bilstm_exp.training import runner as training

    root = _tracking_root()
    result = training.run(config, root=root, prepared=prepared, extra_tags=dvc_tags("train"))
    history = result.history
    epochs = len(history.get("loss", []))
    last = {metric_name(k): float(v[-1]) for k, v in history.items() if v}
    kept = {k: float(v) for k, v in result.metrics.items() if k.startswith(("val/", "best/"))}  # the kept weights'
    metrics = {"mlflow_run_id": result.run_id, "epochs_trained": epochs,
               **{k: last[k] for k in sorted(last) if k.split("/")[0] == "train"}, **dict(sorted(kept.items())),
               **{k: result.metrics[k] for k in ("model/params", "model/size_mb") if k in result.metrics}}
    columns = [k for k in history if len(history[k]) == epochs]
    with staging(MODEL, TRAIN_REPORTS / "history.csv", TRAIN_REPORTS / "metrics.json") as (
            model_dir, history_csv, metrics_json):
        result.classifier.save(model_dir)  # the files the logged pyfunc model is made of
        _write_csv(history_csv, ["epoch", *(metric_name(k).replace("/", "_") for k in columns)],
                   [[i + 1, *(history[k][i] for k in columns)] for i in range(epochs)])
        _write_json(metrics_json, metrics)
    print(f"trained {epochs} epoch(s): MLflow run {result.run_id}; model -> {MODEL}/")
    summary.report_run(config, root, result.run_id, result.kept_offline)  # test metrics, champion, where


def load_classifier(model_dir: Path):
    from bilstm_exp.serving import model as serving

    if not (model_dir / "model.keras").is_file():
        raise DataError(f"{model_dir}/: no trained model. Fix: run `dvc repro train` first")
    return serving.TextClassifier.load(model_dir)


def evaluate_stage(config: ExperimentConfig) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from bilstm_exp.tracking import store
    from bilstm_exp.training.evaluation import detailed

    train_metrics = TRAIN_REPORTS / "metrics.json"
    if not train_metrics.is_file():
        raise DataError(f"{train_metrics}: not found. Fix: run `dvc repro train` first")
    run_id = json.loads(train_metrics.read_text()).get("mlflow_run_id")
    if not run_id:
        raise DataError(f"{train_metrics}: no mlflow_run_id. Fix: re-run training with `dvc repro -f train`")
    classifier = load_classifier(MODEL)
    prepared = _load_prepared()
    metrics, tables = detailed(classifier, prepared, config.data.num_buckets)

    root = _tracking_root()
    store.setup(config.tracking, root)
    client = MlflowClient()
    try:
        client.get_run(run_id)
    except MlflowException:
        raise TrackingError(f"MLflow run {run_id} (from {train_metrics}) is not in the tracking store "
                            f"{store.redact(store.resolve_uri(config.tracking, root))}. Fix: re-train into this "
                            "store with `dvc repro -f train`, or set tracking to the store that holds it") from None

    out = {"mlflow_run_id": run_id, **metrics}
    files = ("confusion.csv", "roc.csv", "precision_recall.csv", "length_buckets.csv", "metrics.json")
    with staging(*(EVALUATE_REPORTS / name for name in files)) as (confusion, roc, pr, buckets, metrics_json):
        _write_csv(confusion, ["actual", "predicted"], tables["confusion"])
        _write_csv(roc, ["fpr", "tpr", "threshold"], tables["roc"])
        _write_csv(pr, ["recall", "precision", "threshold"], tables["precision_recall"])
        _write_csv(buckets, ["length", "examples", "accuracy"], tables["length_buckets"])
        _write_json(metrics_json, out)
        logged = {**metrics, **{f"test/accuracy_length_{row[0]}": row[2] for row in tables["length_buckets"]}}
        store.log_batch(client, run_id, metrics=store.as_metrics(logged),
                        tags=store.as_tags({"dvc_evaluate_stage": os.environ.get("DVC_STAGE", "evaluate")}))
        for path in (confusion, roc, pr, buckets, metrics_json):
            client.log_artifact(run_id, str(path), artifact_path="evaluate")
    summary = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float))
    print(f"evaluated on {metrics['test/examples']} test examples: {summary}; logged to MLflow run {run_id}")


# --------------------------------------------------------------------------- command line


STAGES = {"prepare": prepare_stage, "train": train_stage, "evaluate": evaluate_stage}


def run_stage(name: str, params: str) -> None:
    from bilstm_exp import quiet

    config = load_params(Path(params))
    quiet.setup(config.training.log_level)  # before the stage imports TensorFlow or MLflow
    STAGES[name](config)


def add_train_params_option(train_parser: argparse.ArgumentParser) -> None:
    """`bilstm-exp train --params params.yaml`: the DVC train stage (no Hydra composition)."""
    train_parser.add_argument("--params", default=None, metavar="PATH",
                              help="run as the DVC train stage: read PATH (params.yaml), train on data/prepared/, "
                                   "write artifacts/model/ and reports/train/")
    plain = train_parser.get_default("func")

    def command(args: argparse.Namespace) -> None:
        if args.params is None:
            return plain(args)
        if args.overrides:
            raise ConfigError("train --params reads every value from the params file, so overrides are not "
                              f"allowed. Fix: `bilstm-exp compose-params {' '.join(args.overrides)}` "
                              "or `dvc exp run -S ...`")
        run_stage("train", args.params)

    train_parser.set_defaults(func=command)


def add_commands(sub) -> None:
    """The `prepare`, `evaluate` and `compose-params` subcommands."""
    for name, text in (("prepare", "DVC stage: the data source -> data/prepared/ and reports/prepare/"),
                       ("evaluate", "DVC stage: test metrics and plots in reports/evaluate/, logged to the "
                                    "train stage's MLflow run")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--params", default=str(PARAMS), metavar="PATH", help="the params file (default: params.yaml)")
        p.set_defaults(func=lambda args, stage=name: run_stage(stage, args.params))
    p = sub.add_parser("compose-params", help="compose conf/ (with Hydra overrides) into params.yaml for `dvc repro`")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=attention clipping=norm")
    p.set_defaults(func=_compose_command)


def _compose_command(args: argparse.Namespace) -> None:
    path = compose_params(Path.cwd(), list(args.overrides))
    print(f"wrote {path.name} from conf/{' with ' + ' '.join(args.overrides) if args.overrides else ''}")
