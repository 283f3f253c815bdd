"""Data-parallel training with ``tf.distribute``: ``training.strategy`` = default | mirrored | multi_worker.

- ``default``: one process, TensorFlow's default device placement (what every run did before).
- ``mirrored``: ``tf.distribute.MirroredStrategy`` over every local GPU, one replica per GPU; each
  ``training.batch_size`` batch is split among them. Without a GPU it is one replica on the CPU
  (same numbers as ``default``, only slower to start).
- ``multi_worker``: ``tf.distribute.MultiWorkerMirroredStrategy`` across the processes listed in
  the ``TF_CONFIG`` environment variable (the same ``cluster`` on every process, each with its own
  ``task``). All of them run the same command with the same config; gradients are all-reduced each
  step. The chief (task type ``chief``, or worker 0 when the cluster has no chief) is the only one
  that opens an MLflow run, logs, checkpoints and registers; the others train and exit 0 writing
  nothing.

Data: every worker builds the same (seeded, length-bucketed) batches of ``batch_size / replicas``
examples and keeps every N-th of them (N workers) with ``Dataset.shard`` after batching, cut to the
same count on every worker, so all workers run the same number of steps per epoch (a worker that
ran out of batches before its peers would leave them waiting in a collective). ``training.batch_size``
thus stays the number of examples per optimizer step, whatever the strategy. TensorFlow's own auto
sharding is off (the datasets reach Keras already distributed, through
``distribute_datasets_from_function``).

A dead worker ends the chief's run FAILED: MultiWorkerMirroredStrategy checks its peers every 30 s
and aborts the collectives (``UnavailableError``); collectives also time out after
:data:`COLLECTIVE_TIMEOUT_S`, and waiting for the cluster to come up times out after
:data:`STARTUP_TIMEOUT_S`, so nothing waits forever.

Not under a strategy other than ``default``: the XLA-compiled optimizer step (collectives inside XLA
on a CPU are not supported; training.compile_model asks :func:`active`), epoch checkpoints and
``training.resume`` under ``multi_worker`` (each worker would have to restore the same epoch).
Under ``multi_worker`` each Keras call runs one step, whatever ``training.steps_per_execution`` says
(:func:`steps_per_execution`).

This module imports TensorFlow only inside functions: :func:`cluster` (the TF_CONFIG check) runs
before any TensorFlow work, so a bad TF_CONFIG exits 2 with a message at once.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

from bilstm_exp.config.schema import ExperimentConfig
from bilstm_exp.errors import ConfigError

ENV = "TF_CONFIG"
COLLECTIVE_TIMEOUT_S = 600  # one all-reduce (a train step) may take this long before the run fails
STARTUP_TIMEOUT_S = 900  # every worker must have started (data prepared, strategy created) within this
EXAMPLE = ('TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
           '"task": {"type": "worker", "index": 0}}\' on the first machine, index 1 on the second')


@dataclass(frozen=True)
class Cluster:
    """This process's place in the TF_CONFIG cluster."""

    task_type: str  # chief or worker
    task_index: int
    size: int  # training processes: chiefs + workers
    rank: int  # 0 .. size-1: the chief first, then the workers in order (the shard this process reads)

    @property
    def is_chief(self) -> bool:
        return self.rank == 0


def _fail(problem: str) -> NoReturn:
    raise ConfigError(f"training.strategy=multi_worker: {problem}. Fix: set {EXAMPLE}, "
                      "or use training.strategy=default")


def cluster(config: ExperimentConfig) -> Cluster | None:
    """The parsed TF_CONFIG for ``training.strategy=multi_worker`` (None for the other strategies).

    Raises :class:`ConfigError` naming the problem and the fix when TF_CONFIG is missing or invalid,
    or when the config asks for something multi_worker does not do."""
    if config.training.strategy != "multi_worker":
        return None
    jobs, task_type, index = _task(_spec())
    chiefs = len(jobs.get("chief", []))
    size = chiefs + len(jobs.get("worker", []))
    if config.training.batch_size % size:
        raise ConfigError(f"training.batch_size: {config.training.batch_size} examples per step do not split "
                          f"evenly among the {size} workers of {ENV}. Fix: a multiple of {size}, e.g. "
                          f"training.batch_size={size * max(1, round(config.training.batch_size / size))}")
    if config.training.resume:
        raise ConfigError("training.resume: not supported with training.strategy=multi_worker (every worker "
                          "would have to restore the same epoch). Fix: drop training.resume, or resume with "
                          "training.strategy=default")
    return Cluster(task_type, index, size, index if task_type == "chief" else chiefs + index)


def _spec() -> dict[str, Any]:
    """TF_CONFIG as JSON with a 'cluster' and a 'task' object."""
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        _fail(f"the {ENV} environment variable is not set (it names the cluster and this process's task)")
    try:
        spec = json.loads(raw)
    except ValueError as error:
        _fail(f"{ENV} is not valid JSON ({error})")
    if not (isinstance(spec, dict) and isinstance(spec.get("cluster"), dict) and isinstance(spec.get("task"), dict)):
        _fail(f"{ENV} needs a 'cluster' object and a 'task' object")
    return spec


def _task(spec: dict[str, Any]) -> tuple[dict[str, list[str]], str, int]:
    """The cluster's jobs (chief and workers as 'host:port' lists) and this process's task type and index."""
    jobs = spec["cluster"]
    unknown = sorted(set(jobs) - {"chief", "worker"})
    if unknown:
        _fail(f"{ENV}'s cluster has job(s) {', '.join(unknown)}; only 'chief' and 'worker' train")
    for job, addresses in jobs.items():
        if not isinstance(addresses, list) or not addresses or not all(
                isinstance(a, str) and a.rpartition(":")[2].isdigit() and a.rpartition(":")[0] for a in addresses):
            _fail(f"{ENV}'s cluster.{job} must be a non-empty list of 'host:port' strings, got {addresses!r}")
    if len(jobs.get("chief", [])) > 1:
        _fail(f"{ENV}'s cluster has {len(jobs['chief'])} chiefs; at most one")
    if not jobs.get("worker") and not jobs.get("chief"):
        _fail(f"{ENV}'s cluster lists no worker")
    task_type, index = spec["task"].get("type"), spec["task"].get("index", 0)
    if task_type not in jobs:
        _fail(f"{ENV}'s task.type is {task_type!r}, not one of the cluster's jobs ({', '.join(jobs)})")
    if not isinstance(index, int) or not 0 <= index < len(jobs[task_type]):
        _fail(f"{ENV}'s task.index is {index!r}; cluster.{task_type} has {len(jobs[task_type])} address(es), "
              f"so it must be 0..{len(jobs[task_type]) - 1}")
    return jobs, task_type, index


def is_chief(config: ExperimentConfig) -> bool:
    """True for every process except a non-chief ``multi_worker`` task (checks TF_CONFIG)."""
    found = cluster(config)
    return found is None or found.is_chief


def active(config: ExperimentConfig) -> bool:
    """Whether training runs under a strategy other than TensorFlow's default one."""
    return config.training.strategy != "default"


def steps_per_execution(config: ExperimentConfig) -> int:
    """``training.steps_per_execution``, or 1 under ``multi_worker``: Keras 3's multi-step loop fails
    there on its first call ("You must feed a value for placeholder tensor ... while/cond/Placeholder",
    a distributed iterator's optional inside ``tf.while_loop``); ``mirrored`` runs it."""
    return 1 if config.training.strategy == "multi_worker" else config.training.steps_per_execution


def strategy(config: ExperimentConfig) -> Any:
    """The ``tf.distribute.Strategy`` of ``training.strategy``, created once per process.

    MultiWorkerMirroredStrategy must exist before TensorFlow runs its first op:
    ``training.configure_tensorflow`` calls this first. Creating it waits until every worker of
    TF_CONFIG has created its own (at most :data:`STARTUP_TIMEOUT_S`)."""
    import tensorflow as tf

    if config.training.strategy == "default":
        return tf.distribute.get_strategy()
    cluster(config)  # a bad TF_CONFIG fails here too, with the message, if the caller skipped the check
    return _create(config.training.strategy, os.environ.get(ENV, ""))


@functools.cache
def _create(name: str, tf_config: str) -> Any:  # tf_config: part of the cache key only
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()  # every local GPU; none: the CPU, one replica
    from tensorflow.python.distribute import collective_all_reduce_strategy as mwms

    # The public API has no knob for waiting on the cluster at startup (TensorFlow's default: forever).
    mwms.CollectiveAllReduceExtended._check_health_initial_timeout = STARTUP_TIMEOUT_S
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=COLLECTIVE_TIMEOUT_S)
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)


def scope(config: ExperimentConfig) -> contextlib.AbstractContextManager:
    """Build and compile the model inside this (variables mirrored on every replica)."""
    return strategy(config).scope() if active(config) else contextlib.nullcontext()


def replica_batch_size(config: ExperimentConfig) -> int:
    """Examples per replica and step: ``training.batch_size`` split among all replicas of all workers
    under multi_worker (the datasets are per replica there); the whole batch otherwise (Keras splits it
    among a mirrored strategy's local replicas itself)."""
    if config.training.strategy != "multi_worker":
        return config.training.batch_size
    return max(1, config.training.batch_size // strategy(config).num_replicas_in_sync)


def shard(config: ExperimentConfig, pipelines: dict[str, Any], names: tuple[str, ...] = ("train", "val")) -> dict:
    """multi_worker: this worker's share of the batched ``names`` datasets, the same number of batches
    on every worker, distributed to its replicas as they are (no auto sharding, no re-batching).
    Other strategies: ``pipelines`` unchanged."""
    found = cluster(config)
    if found is None:
        return pipelines
    import tensorflow as tf

    dist = strategy(config)
    replicas_here = dist.num_replicas_in_sync // found.size  # the same on every worker
    out = dict(pipelines)
    for name in names:
        dataset = pipelines[name]
        steps = int(dataset.cardinality()) // dist.num_replicas_in_sync  # steps per epoch, every worker
        if steps < 1:
            raise ConfigError(f"training.strategy=multi_worker: the {name} split has {int(dataset.cardinality())} "
                              f"batch(es), fewer than the {dist.num_replicas_in_sync} replicas. Fix: more data or a "
                              "smaller training.batch_size")
        mine = dataset.shard(found.size, found.rank).take(steps * replicas_here)
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        mine = mine.with_options(options)
        out[name] = _Distributed(dist.distribute_datasets_from_function(lambda _context, d=mine: d), mine, steps)
    return out


class _Distributed:
    """A distributed dataset that still answers ``as_numpy_iterator`` (this worker's local batches,
    for padding statistics) and ``len`` (steps per epoch); Keras gets the distributed one."""

    def __init__(self, distributed: Any, local: Any, steps: int):
        self.distributed, self.local, self.steps = distributed, local, steps

    def as_numpy_iterator(self) -> Iterator:
        return self.local.as_numpy_iterator()

    def __len__(self) -> int:
        return self.steps


def fit_inputs(config: ExperimentConfig, model: Any, pipelines: dict[str, Any]) -> tuple[Any, Any]:
    """The train and validation inputs for ``model.fit`` (call it inside :func:`fitting`).

    multi_worker: works around Keras 3's fit under MultiWorkerMirroredStrategy (tensorflow/tensorflow#72388,
    Keras 3.15): its step functions reduce every scalar log with ``strategy.reduce("MEAN", v, axis=0)``,
    which fails for scalars, so the steps here return each log as a 1-element vector (the values are
    all-reduced already: the mean over workers is the value); and before the first step it all-reduces
    the first input batch to build the model symbolically, which fails for integer token ids (and
    would need equal shapes on every worker), so the model's state is built here from a local batch and
    the strategy comes from the scope of :func:`fitting` instead."""
    if config.training.strategy != "multi_worker":
        return pipelines["train"], pipelines["val"]
    x, y = next(iter(pipelines["train"].local))
    with strategy(config).scope():
        y_pred = model(x, training=False)
        model.compute_loss(x=x, y=y, y_pred=y_pred)  # builds the compiled loss and metrics' state
        model.compute_metrics(x, y, y_pred)
        model.reset_metrics()
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
    model._distribute_strategy = None  # Keras's symbolic build is skipped; fit runs inside strategy.scope()
    for step in ("train_step", "test_step"):
        setattr(model, step, _vector_logs(getattr(model, step)))
    return pipelines["train"].distributed, pipelines["val"].distributed


def _vector_logs(step: Any) -> Any:
    import tensorflow as tf

    @tf.autograph.experimental.do_not_convert
    def vector_step(data):
        return tf.nest.map_structure(lambda value: tf.reshape(tf.cast(value, "float32"), [1]), step(data))

    return vector_step


class WorkerLost(RuntimeError):
    """A peer of a multi_worker run died or stopped answering during training."""

    failure_reason = "worker_lost"


@contextlib.contextmanager
def fitting(config: ExperimentConfig) -> Iterator[None]:
    """Around ``model.fit``: under multi_worker, inside the strategy's scope (see :func:`fit_inputs`),
    and a collective aborted because a peer is down becomes :class:`WorkerLost` (the run ends FAILED
    with ``failure_reason=worker_lost``)."""
    if config.training.strategy != "multi_worker":
        yield
        return
    import tensorflow as tf

    try:
        with strategy(config).scope():
            yield
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError,
            tf.errors.FailedPreconditionError, tf.errors.InternalError) as error:
        first = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        raise WorkerLost(f"a worker of the multi_worker cluster failed or stopped answering ({first}); "
                         "the run is FAILED. Start every worker again (same TF_CONFIG cluster)") from error
