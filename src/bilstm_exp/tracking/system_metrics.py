"""MLflow's own system metrics on training runs: what `mlflow.autolog` users see in a run's System
metrics tab.

While a run started inside :func:`sampling` is open, MLflow's monitor thread samples every
``tracking.system_metrics_interval_s`` seconds (default 10, MLflow's own) and logs
``system/cpu_utilization_percentage``, ``system/system_memory_usage_megabytes`` (and ``_percentage``),
``system/disk_*`` and ``system/network_*``; with an NVIDIA GPU and the ``nvidia-ml-py`` package,
``system/gpu_0_utilization_percentage``, ``system/gpu_0_memory_usage_megabytes`` and more per GPU
(MLflow's GPU monitor; without the package it skips GPU metrics). It needs ``psutil``, a dependency of
the package. ``tracking.system_metrics=false`` turns it off.

The switch is MLflow's environment variables, set for the run and restored afterwards, because
``mlflow.start_run`` reads them when it opens the run (the parents of sweeps and cross-validations
are created through the client and sample nothing).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from bilstm_exp.processes import environment

ENABLE = "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"
INTERVAL = "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"


@contextmanager
def sampling(enabled: bool, interval_s: float) -> Iterator[None]:
    """MLflow samples system metrics on the fluent runs started inside (or not, ``enabled=False``)."""
    with environment({ENABLE: str(bool(enabled)).lower(), INTERVAL: f"{interval_s:g}"}):
        yield
