"""How a run trains (``training``: epochs, batches, THE selection metric, resume, strategy), where it
records (``tracking``: store, experiment, registered model, champion) and what it profiles
(``profiling``): one schema each."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from bilstm_exp.config.checks import check, choice, fraction, positive

MONITORS = ("val/loss", "val/accuracy", "val/auc")  # per-epoch validation metrics (val/auc: two classes)
# metrics every finished run logs (the kept weights' evaluation), usable as tracking.champion_metric
RUN_METRICS = tuple(f"{split}/{name}" for split in ("val", "test") for name in ("loss", "accuracy", "auc", "macro_f1"))


def metric_mode(metric: str) -> str:
    """min for losses, max for everything else (accuracy, AUC, F1)."""
    return "min" if metric.rsplit("/", 1)[-1].endswith("loss") else "max"


@dataclass
class EarlyStoppingConfig:
    enabled: bool = True  # stop when training.monitor stops improving
    patience: int = 2  # epochs without improvement of training.monitor before stopping

    def __post_init__(self) -> None:
        check(self.patience >= 0, "training.early_stopping.patience",
              f"must be >= 0, got {self.patience}", "e.g. training.early_stopping.patience=2")


@dataclass
class TrainingConfig:
    epochs: int = 20  # at most this many passes; early stopping ends a default run first (README: Defaults)
    batch_size: int = 32  # examples per step (bucketing keeps it per bucket)
    deterministic: bool = False  # enable_op_determinism: identical metrics for a seed, slower
    # train steps per tf.function call: Keras's per-step Python work is paid once per call; the same updates and
    # metrics as 1 (docs/profiling.md); Ctrl-C, progress bars and batch callbacks act between calls;
    # strategy=multi_worker runs 1 (training/distribute.py)
    steps_per_execution: int = 32
    mixed_precision: bool = False  # float16 compute with float32 output on a GPU; leave off on a CPU
    verbose: str = "auto"  # Keras progress: auto, 0, 1 or 2
    log_level: str = "quiet"  # quiet: library logs, warnings, progress bars silenced (bilstm_exp.quiet); verbose
    resume: bool = False  # continue an interrupted run from its last checkpointed epoch (checkpoints/<run_id>/)
    resume_run_id: str | None = None  # the run to resume; null: the newest checkpoint of this config
    monitor: str = "val/loss"  # THE selection metric: early stopping, kept weights, champion, sweep best, objective
    monitor_mode: str | None = None  # min or max; null: min for losses, max otherwise
    restore_best_weights: bool = True  # keep the best epoch's weights on training.monitor (false: the last epoch's)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    strategy: str = "default"  # default: one process; mirrored: all local GPUs; multi_worker: the TF_CONFIG cluster
    label_smoothing: float = 0.0  # in [0, 1): train towards (1 - s) * target + s / classes, not 0/1 (Keras's losses)

    def __post_init__(self) -> None:
        positive(self.epochs, "training.epochs", 3)
        fraction(self.label_smoothing, "training.label_smoothing", 0.1)
        choice(self.strategy, ("default", "mirrored", "multi_worker"), "training.strategy")
        positive(self.batch_size, "training.batch_size", 32)
        positive(self.steps_per_execution, "training.steps_per_execution", 1)
        choice(str(self.verbose), ("auto", "0", "1", "2"), "training.verbose")
        choice(self.log_level, ("quiet", "verbose"), "training.log_level")
        choice(self.monitor, MONITORS, "training.monitor")
        if self.monitor_mode is None:
            self.monitor_mode = metric_mode(self.monitor)
        choice(self.monitor_mode, ("min", "max"), "training.monitor_mode")
        if self.resume_run_id is not None:
            check(self.resume, "training.resume_run_id", "is set but training.resume is false",
                  f"add training.resume=true to resume run {self.resume_run_id}")
            check(len(self.resume_run_id) == 32 and all(c in "0123456789abcdef" for c in self.resume_run_id),
                  "training.resume_run_id", f"'{self.resume_run_id}' is not an MLflow run id (32 hex digits)",
                  "copy the run id from the MLflow UI or the checkpoints/ folder name")


def loads_back(model_name: str) -> bool:
    """MLflow reads ``models:/NAME@alias`` as a URL: '#' starts a fragment, '?' a query, tabs and newlines
    are dropped. A name that does not survive that is registered, then cannot be loaded (issue 22)."""
    path = f"/{model_name}@champion"
    parts = urllib.parse.urlsplit(f"models:{path}")
    return parts.path == path and not parts.query and not parts.fragment


MAX_EXPERIMENT_NAME = 500  # MLflow's limit (mlflow.utils.validation); checked here, before any data is read


@dataclass
class TrackingConfig:
    name: str = "local"  # local (sqlite file in the working directory) or server
    tracking_uri: str | None = None  # local: sqlite:///mlflow.db; server: this or MLFLOW_TRACKING_URI
    experiment_name: str = "bilstm-exp"  # MLflow experiment the runs go to
    registered_model_name: str = "bilstm-sentiment"  # model registry name each run registers a version under
    register_model: Any = "auto"  # auto: register unless a smoke run (data.max_samples set); true; false
    sweep_registers: str = "best"  # in a -m sweep: best (the best job's model only), all (every job), none
    champion_metric: str | None = None  # the alias `champion` moves to a version that beats it; null: training.monitor
    champion_greater_is_better: bool | None = None  # null: from training.monitor_mode (min for losses)
    fold_artifacts: str = "small"  # a CV fold logs metrics and reports; full: also its model, heatmap, latency
    system_metrics: bool = True  # MLflow's system/* metrics (CPU, memory, disk, network; GPU) on training runs
    system_metrics_interval_s: float = 10.0  # seconds between samples (MLflow's default; costs nothing measurable)

    def __post_init__(self) -> None:
        choice(self.name, ("local", "server"), "tracking.name")
        check(self.system_metrics_interval_s > 0, "tracking.system_metrics_interval_s",
              f"must be > 0, got {self.system_metrics_interval_s}", "e.g. tracking.system_metrics_interval_s=10")
        check(bool(self.experiment_name.strip()), "tracking.experiment_name", "must not be empty",
              "e.g. tracking.experiment_name=bilstm-exp")
        check(len(self.experiment_name) <= MAX_EXPERIMENT_NAME, "tracking.experiment_name",
              f"{len(self.experiment_name)} characters, and MLflow refuses names over {MAX_EXPERIMENT_NAME}",
              "pick a shorter plain name, e.g. tracking.experiment_name=bilstm-exp")
        check(bool(self.registered_model_name.strip()) and not set("/:") & set(self.registered_model_name),
              "tracking.registered_model_name", f"must be non-empty without '/' or ':', got "
              f"'{self.registered_model_name}'", "e.g. tracking.registered_model_name=bilstm-sentiment")
        check(loads_back(self.registered_model_name), "tracking.registered_model_name",
              f"'{self.registered_model_name}' would be registered but never loaded back: a models:/ URI "
              "(predict --model models:/NAME@champion) cuts it at '#' or '?' and drops tabs and newlines",
              "use letters, digits, spaces and - _ . e.g. tracking.registered_model_name=my-model-1")
        if isinstance(self.register_model, str) and self.register_model.lower() in ("true", "false"):
            self.register_model = self.register_model.lower() == "true"
        check(self.register_model in (True, False, "auto"), "tracking.register_model",
              f"must be auto, true or false, got {self.register_model!r}", "e.g. tracking.register_model=auto")
        choice(self.sweep_registers, ("best", "all", "none"), "tracking.sweep_registers")
        choice(self.fold_artifacts, ("small", "full"), "tracking.fold_artifacts")
        if self.champion_metric is not None:
            choice(self.champion_metric, RUN_METRICS, "tracking.champion_metric")


@dataclass
class ProfilingConfig:
    name: str = "standard"  # standard: timings and throughput; trace: plus a TensorFlow profiler trace
    latency_samples: int = 50  # single-text predictions timed for latency/predict_p50_ms (0: skip)
    trace_start_step: int = 5  # profiling=trace: training steps skipped before the trace (tracing, warm-up)
    trace_steps: int = 10  # profiling=trace: training steps recorded by the TensorFlow profiler

    def __post_init__(self) -> None:
        check(self.latency_samples >= 0, "profiling.latency_samples",
              f"must be >= 0, got {self.latency_samples}", "e.g. profiling.latency_samples=50")
        check(self.trace_start_step >= 0, "profiling.trace_start_step",
              f"must be >= 0, got {self.trace_start_step}", "e.g. profiling.trace_start_step=5")
        positive(self.trace_steps, "profiling.trace_steps", 10)
