"""The DVC prepare stage: the data source -> data/prepared/ (splits, vocabulary, class names) and
reports/prepare/ (counts, length percentiles and histogram)."""

from __future__ import annotations

from bilstm_exp.config.schema import ExperimentConfig
from bilstm_exp.stages.outputs import PREPARE_REPORTS, PREPARED, staging, write_csv, write_json


def prepare_stage(config: ExperimentConfig) -> None:
    from bilstm_exp.data.prepare import prepare

    prepared = prepare(config.data)  # data.split_seed: the split (seed is for the weights)
    stats = {"data_md5": prepared.md5(), "class_names": prepared.class_names, **prepared.stats}
    with staging(PREPARED, PREPARE_REPORTS / "length_histogram.csv", PREPARE_REPORTS / "stats.json") as (
            folder, histogram, stats_file):
        prepared.save(folder)
        write_csv(histogram, ["length", "count"], [[k, v] for k, v in prepared.stats["length_histogram"].items()])
        write_json(stats_file, stats)
    counts = prepared.stats["num_examples"]
    print(f"prepared {counts['train']} train / {counts['val']} val / {counts['test']} test examples, "
          f"vocabulary {len(prepared.vocab)} -> {PREPARED}/")
