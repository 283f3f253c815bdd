"""What a training run records in MLflow, besides per-epoch metrics: its header (params, config,
overrides, data md5, the three splits as dataset inputs) before training, and its results (reports,
attention heatmap, the raw-text model with its final metrics and their datasets, the registry
version) after.

Everything goes through the run's :class:`~bilstm_exp.tracking.session.Session`.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bilstm_exp.analysis import reports
from bilstm_exp.config.plain import flatten, to_dict
from bilstm_exp.config.schema import ExperimentConfig
from bilstm_exp.data.prepare import PreparedData
from bilstm_exp.models import build as models
from bilstm_exp.serving import model as serving
from bilstm_exp.tracking import datasets, store
from bilstm_exp.tracking import model_registry as registry
from bilstm_exp.tracking.session import Session
from bilstm_exp.training import checkpoints
from bilstm_exp.training.evaluation import Evaluation


def header(session: Session, config: ExperimentConfig, overrides: list[str], prepared: PreparedData,
           folder: Path) -> None:
    """What a new run records before training: params, config and overrides, data md5."""
    recorded = store.masked_config(config)  # values from ${oc.env:...} as their interpolation; secrets masked
    session.log_params(flatten(recorded))
    (folder / "config.yaml").write_text(yaml.safe_dump(recorded, sort_keys=False))
    (folder / "overrides.yaml").write_text(yaml.safe_dump(store.scrub(list(overrides))))
    session.log_artifacts(folder / "config.yaml")
    session.log_artifacts(folder / "overrides.yaml")
    tags = {"data_md5": prepared.md5(), FINGERPRINT_TAG: prepared.fingerprint(), GROUP_TAG: config_group(config)}
    if prepared.fold is not None:
        tags["data.fold_fingerprint"] = prepared.split_fingerprint()
    session.log_tags(tags)
    inputs = datasets.inputs(config.data, prepared)
    session.write(lambda client, run_id: client.log_inputs(run_id, inputs))  # the UI's Datasets column
    session.log_params({"derived.vocab_size": len(prepared.vocab), "derived.num_classes": prepared.num_classes,
                        "derived.train_examples": len(prepared.labels["train"]),
                        "derived.max_length": max(len(s) for s in prepared.splits["train"])})


FINGERPRINT_TAG = registry.FINGERPRINT_TAG  # "data.fingerprint": what the scores were measured on
GROUP_TAG = "config.group"  # runs of one configuration, repeated over seeds, split seeds or folds
# keys that change only the randomness (weights/shuffling seed, data split) or how a run is executed or
# recorded, not the configuration being evaluated
GROUP_IGNORED = ("seed", "data.split_seed", *checkpoints.RUNTIME_KEYS)
GROUP_IGNORED_PREFIXES = ("tracking.", "profiling.")


def config_group(config: ExperimentConfig) -> str:
    """Tag ``config.group``: md5 (12 hex digits) of the flattened config without :data:`GROUP_IGNORED`
    and ``tracking.*`` / ``profiling.*``. ``-m seed=1,2,3`` (or data.split_seed=...) runs of one
    configuration share it; compare groups by it."""
    flat = {k: v for k, v in flatten(to_dict(config)).items()
            if k not in GROUP_IGNORED and not k.startswith(GROUP_IGNORED_PREFIXES)}
    return hashlib.md5(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:12]


NAME_GROUPS = ("model", "optimizer", "clipping", "data", "training")  # the config groups a run name reads
# how a run is run, said elsewhere, or following another key (monitor_mode: training.monitor)
NAME_IGNORED = (*GROUP_IGNORED, "training.log_level", "data.folds", "training.monitor_mode")
NAME_PREFIXES = {"clipping": "clip_", "data": "data_"}  # a group's option name, when not the default one
MAX_NAME = 80


def run_name(config: ExperimentConfig, prefix: str = "") -> str:
    """``basic-adamw-dropout0.3``: the architecture and the optimizer, then each key that differs from its
    default (:func:`_defaults`), so runs of different configs get different names; ``prefix`` (``cv5-``) first.
    A group's other option is named with its group (``clip_global_norm``, ``data_tweets``); a path by its
    file's stem; at most :data:`MAX_NAME` characters (the keys that do not fit are counted: ``-+3``)."""
    flat = flatten(store.masked_config(config))  # a value from the environment never names a run
    defaults = {key: value for group in NAME_GROUPS
                for key, value in flatten(_defaults(group, getattr(config, group)), f"{group}.").items()}
    defaults.update({f"{group}.name": option for group, option in _default_options().items()})
    parts = [config.model.name, config.optimizer.name]
    for key, value in sorted(flat.items(), key=lambda item: _group_order(item[0])):  # model keys first
        group, _, leaf = key.partition(".")
        if group not in NAME_GROUPS or key in NAME_IGNORED or key in ("model.name", "optimizer.name") \
                or key not in defaults or value == defaults[key]:
            continue
        if isinstance(value, str) and "${" in value:  # from the environment (masked): not a name
            continue
        if isinstance(value, str) and "/" in value:  # a file: its name says what it is (glove.6B.50d)
            parts.append(Path(value).stem)
        else:
            parts.append(f"{NAME_PREFIXES.get(group, '')}{value}" if leaf == "name"
                         else f"{leaf.replace('.', '_')}{value}")
    name, left = prefix + "-".join(str(part) for part in parts[:2]), 0
    for part in parts[2:]:  # whole parts, in order, while they fit; "+3": three more keys differ
        if len(name) + len(f"-{part}") > MAX_NAME - 4:
            left += 1
        else:
            name += f"-{part}"
    return f"{name}-+{left}" if left else name


def _group_order(key: str) -> int:
    group = key.partition(".")[0]
    return NAME_GROUPS.index(group) if group in NAME_GROUPS else len(NAME_GROUPS)


def _default_options() -> dict[str, str]:
    """Each group's default option, from the packaged config.yaml's defaults list (data: synthetic)."""
    from bilstm_exp.config.compose import CONF_DIR

    entries = yaml.safe_load((CONF_DIR / "config.yaml").read_text()).get("defaults", [])
    return {group: option for entry in entries if isinstance(entry, dict) for group, option in entry.items()}


def _defaults(group: str, chosen: Any) -> dict[str, Any]:
    """A group's defaults for the chosen option as nested dicts: its schema's, then its packaged YAML's
    (``conf/data/tweets.yaml`` sets its own max_length)."""
    import dataclasses

    from bilstm_exp.config.compose import CONF_DIR

    out: dict[str, Any] = {}
    for field in dataclasses.fields(type(chosen)):
        if field.default is not dataclasses.MISSING:
            out[field.name] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            value = field.default_factory()
            out[field.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    option = CONF_DIR / group / f"{getattr(chosen, 'name', 'default')}.yaml"
    own = yaml.safe_load(option.read_text()) if option.is_file() else None
    return {**out, **{key: value for key, value in (own or {}).items() if key != "defaults"}}


def results(session: Session, config: ExperimentConfig, classifier: serving.TextClassifier,
            prepared: PreparedData, evaluation: Evaluation, history: dict[str, list[float]],
            metrics: dict[str, float], folder: Path) -> str | None:
    """Artifacts and the model, in a fresh folder: repeatable if the server goes down meanwhile.
    Returns the logged model's URI (None: a cross-validation fold, which logs no model by default)."""
    folder = Path(tempfile.mkdtemp(prefix="record-", dir=folder))
    if (folder.parent / "profile").is_dir():  # profiling=trace: a TensorBoard-readable profiler trace
        session.log_artifacts(folder.parent / "profile", "profile")
    full = "fold" not in session.journal.tags or config.tracking.fold_artifacts == "full"  # a fold: small reports
    _artifacts(session, classifier.model, prepared, evaluation, history, folder / "reports", heatmap=full)
    if not full:  # a fold's model is never registered: not logged either (tracking.fold_artifacts=full logs it)
        session.log_tags({registry.SKIPPED_TAG: registry.skip_reason(config.tracking.register_model, None, fold=True)})
        return None
    # one step past the kept weights' evaluation (step = epochs trained): a step without metrics, so MLflow
    # links none to the model by itself (it would drop their datasets); _attach_metrics links them
    return _model(session, config, classifier, prepared, metrics, folder / "model", len(history.get("loss", [])) + 1)


def _artifacts(session: Session, model, prepared: PreparedData, evaluation: Evaluation,
               history: dict[str, list[float]], folder: Path, heatmap: bool = True) -> None:
    """Curves, confusion matrix, classification report, vocabulary and (attention, ``heatmap``) the heatmap."""
    folder.mkdir()
    names = prepared.class_names
    reports.training_curves(history, folder / "training_curves.png")
    reports.confusion_matrix(evaluation.y_true, evaluation.y_pred, names, folder / "confusion_matrix.png")
    reports.classification_report(evaluation.y_true, evaluation.y_pred, names, folder / "classification_report.txt")
    (folder / "vocab.json").write_text(prepared.vocab.to_json())
    session.log_artifacts(folder, "reports")
    if heatmap and has_attention(model):
        attention = folder / "attention"
        attention.mkdir()
        reports.attention_heatmap(attention_examples(model, prepared, evaluation), attention)
        session.log_artifacts(attention, "attention")


def has_attention(model) -> bool:
    return "attention" in [layer.name for layer in model.layers]


def attention_examples(model, prepared: PreparedData, evaluation: Evaluation,
                       count: int = 4) -> list[dict[str, Any]]:
    """Attention over the tokens of the ``count`` shortest test texts (fixed for a data split)."""
    order = np.argsort([len(s) for s in prepared.splits["test"]], kind="stable")[:count]
    ids = serving.pad_right([prepared.splits["test"][i] for i in order])
    weights = np.asarray(models.attention_model(model).predict_on_batch(ids))
    words = ["<pad>", "<unk>", *prepared.vocab.words]
    return [{"tokens": [words[t] for t in prepared.splits["test"][i]],
             "weights": [round(float(w), 5) for w in weights[row, : len(prepared.splits["test"][i])]],
             "label": prepared.class_names[evaluation.y_true[i]],
             "prediction": prepared.class_names[evaluation.y_pred[i]]}
            for row, i in enumerate(order)]


def _model(session: Session, config: ExperimentConfig, classifier: serving.TextClassifier,
           prepared: PreparedData, metrics: dict[str, float], folder: Path, step: int) -> str:
    """Log the raw-text pyfunc model with its final metrics; register it and decide on the champion alias."""
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    signature = ModelSignature(inputs=Schema([ColSpec("string")]),  # unnamed: a plain list of texts passes too
                               outputs=Schema([ColSpec("double", "probability"), ColSpec("string", "label")]))
    info = registry.log_model(serving.TextClassifier(), artifacts=classifier.save(folder), signature=signature,
                              input_example=pd.DataFrame({"text": prepared.texts["test"][:2]}), step=step)
    _attach_metrics(session, info.model_id)
    tags = session.journal.tags  # what the run was started and tagged with (sweep_job, fold)
    skipped = registry.skip_reason(config.tracking.register_model, config.data.max_samples,
                                   sweep_registers=config.tracking.sweep_registers,
                                   sweep_job="sweep_job" in tags, fold="fold" in tags)
    if skipped:
        session.log_tags({registry.SKIPPED_TAG: skipped})
        if "fold" not in tags:  # a cross-validation says it once, in its summary
            print(f"[bilstm-exp] run {session.run_id} not registered: {skipped}", flush=True)
    else:
        session.register(info.model_uri, config.tracking.registered_model_name, {**_latest(session), **metrics},
                         config.tracking.champion_metric, config.tracking.champion_greater_is_better)
    return info.model_uri


def _attach_metrics(session: Session, model_id: str) -> None:
    """The run's final metrics (each one's latest entry) attached to its logged model, ``test/*`` with the
    testing dataset and ``val/*`` with the validation one (:func:`datasets.dataset_of`): the Models tab
    says which data each describes."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    run = MlflowClient(session.offline_uri or session.uri).get_run(session.offline_run_id or session.run_id)
    inputs = run.inputs.dataset_inputs if run.inputs else []
    attached = []
    for key, metric in _latest_entries(session).items():
        dataset = datasets.dataset_of(key, inputs)
        attached.append(Metric(key, metric.value, metric.timestamp, metric.step, model_id=model_id,
                               dataset_name=dataset.name if dataset else None,
                               dataset_digest=dataset.digest if dataset else None))
    # sent again with a model id: MLflow attaches them to the model, the run keeps one entry each (same time)
    session.write(lambda client, run_id: store.log_batch(client, run_id, metrics=attached))


def _latest_entries(session: Session) -> dict[str, Any]:
    """Each metric's latest entry (highest step, then time) as logged so far: the kept weights' val/*."""
    latest: dict[str, Any] = {}
    for metric in session.journal.metrics:
        if metric.key not in latest or (metric.step, metric.timestamp) >= (latest[metric.key].step,
                                                                           latest[metric.key].timestamp):
            latest[metric.key] = metric
    return latest


def _latest(session: Session) -> dict[str, float]:
    """Each metric's latest value: what the registry's ``metric.*`` version tags record."""
    return {key: metric.value for key, metric in _latest_entries(session).items()}
