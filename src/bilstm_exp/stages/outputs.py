"""What the DVC stages share: where they read and write, outputs written atomically, and the tags
that link an MLflow run to the DVC run that made it.

Every stage writes its outputs into a temporary folder next to them and renames them into place
only when it has succeeded, so an interrupted run leaves nothing a later run could mistake for a
result (DVC also deletes a stage's outputs before running it and writes dvc.lock only on success).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from bilstm_exp.errors import DataError

PREPARED = Path("data/prepared")
PREPARE_REPORTS = Path("reports/prepare")
MODEL = Path("artifacts/model")
TRAIN_REPORTS = Path("reports/train")
EVALUATE_REPORTS = Path("reports/evaluate")
DVC_LOCK = Path("dvc.lock")


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


def write_text(path: Path, text: str) -> None:
    with staging(path) as (temp,):
        temp.write_text(text, encoding="utf-8")


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


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


def tracking_root() -> Path:
    """Where a local MLflow store lives: the DVC repo root (also for `dvc exp run --temp`)."""
    return Path(os.environ.get("DVC_ROOT") or ".").resolve()


def load_prepared():
    from bilstm_exp.data.prepare import PreparedData

    if not (PREPARED / "splits.npz").is_file():
        raise DataError(f"{PREPARED}/: no prepared data. Fix: run `dvc repro prepare` "
                        "(or `bilstm-exp prepare --params params.yaml`) first")
    return PreparedData.load(PREPARED)
