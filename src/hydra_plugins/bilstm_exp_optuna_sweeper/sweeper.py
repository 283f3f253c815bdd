"""``hydra/sweeper=optuna``: each Optuna trial is one Hydra job, asked for and told through Optuna's
public ask-and-tell API.

A sweep: the search space comes from ``hydra.sweeper.params`` and the command line (a later sweep
override of a key replaces an earlier one; a plain ``key=value`` fixes the key), the study is created
or loaded (``storage`` + ``study_name``), then batches of ``n_jobs`` trials are asked, launched as
jobs and told the values the jobs return, until ``n_trials`` have run. The result is written to
``<sweep dir>/optimization_results.yaml`` in hydra-optuna-sweeper's format (``best_params`` and
``best_value``; with several objectives, ``solutions``: the Pareto front), plus the objective names
and, for each solution, the job number of this sweep that ran it (null: another worker's trial of a
shared study), which is how the sweep callback finds the trial's MLflow run.

The job returns one float, or with ``objectives`` one value per objective (``cli.train.objective``).

A nested estimate: when the trials hold out part of the data (``data.heldout_fraction`` > 0, e.g.
``hparams_search=optuna_nested``), a single-objective sweep runs one more job after the last trial: the
best trial's params with :data:`HELDOUT_OVERRIDES`, i.e. trained once on the data the trials selected on
and tested on the held-out part none of them saw (``best_heldout_job`` in the results). The sweep callback
logs its test metrics on the parent run beside the selected trial's value (``bilstm_exp.training.heldout``).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from bilstm_exp.errors import ConfigError, UserError, exit_on_user_error

RESULTS = "optimization_results.yaml"
HELDOUT_OVERRIDES = ["data.folds=null", "data.heldout_as_test=true"]  # the held-out job: one split, tested on it
DIRECTIONS = ("minimize", "maximize")


def distribution(override: Override):
    """The Optuna distribution of one sweep override: ``choice(...)`` and a shuffled ``range`` are
    categorical, ``range(a, b, step)`` a stepped int from a to b, b included as in hydra-optuna-sweeper
    (float when any bound is), ``interval(a, b)``
    is uniform (int when both bounds are), ``tag(log, interval(a, b))`` log-uniform."""
    from hydra.core.override_parser.types import IntervalSweep, RangeSweep, Transformer
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    value = override.value()
    if override.is_choice_sweep() or (isinstance(value, RangeSweep) and value.shuffle):
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    if isinstance(value, RangeSweep):
        if any(isinstance(x, float) for x in (value.start, value.stop, value.step)):
            return FloatDistribution(float(value.start), float(value.stop), step=float(value.step))
        return IntDistribution(int(value.start), int(value.stop), step=int(value.step))
    if isinstance(value, IntervalSweep):
        log = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log)
        return FloatDistribution(float(value.start), float(value.end), log=log)
    raise ConfigError(f"hydra.sweeper.params: {override.input_line} is not a sweep Optuna can sample. Fix: use "
                      "choice(...), range(...), interval(...) or tag(log, interval(...))")


def search_space(overrides: list[str]) -> tuple[dict[str, Any], list[str]]:
    """(key -> distribution, fixed overrides) of the sweeper's params followed by the command line's
    overrides: the last override of a key wins, a sweep becomes a distribution, anything else is
    passed to every trial as it was written."""
    latest: dict[str, Override] = {}
    for override in OverridesParser.create().parse_overrides(overrides):
        latest.pop(override.get_key_element(), None)  # re-inserted: keeps the order of the last mention
        latest[override.get_key_element()] = override
    space = {key: distribution(o) for key, o in latest.items() if o.is_sweep_override()}
    fixed = [o.input_line for key, o in latest.items() if key not in space]
    return space, fixed


def directions_of(direction: Any, objectives: list[str] | None) -> list[str]:
    """``direction`` as a list, checked against ``objectives`` (one direction per objective)."""
    directions = [str(direction)] if isinstance(direction, str) else [str(d) for d in direction]  # a ListConfig too
    wrong = [d for d in directions if d not in DIRECTIONS]
    if wrong:
        raise ConfigError(f"hydra.sweeper.direction: {wrong[0]!r} is not a direction. Fix: minimize or maximize "
                          "(a list of them for several objectives)")
    if len(directions) > 1 and not objectives:
        raise ConfigError(f"hydra.sweeper.direction has {len(directions)} directions but no objectives. Fix: name "
                          "one metric per direction, e.g. hydra.sweeper.objectives=[val/loss,latency/predict_p50_ms]")
    if objectives and len(objectives) != len(directions):
        raise ConfigError(f"hydra.sweeper.objectives names {len(objectives)} metrics for {len(directions)} "
                          "directions. Fix: one direction per objective, e.g. hydra.sweeper.direction="
                          "[minimize,minimize]")
    return directions


def values_of(returned: Any, count: int) -> list[float]:
    """A job's return value as ``count`` floats (NaN where the job returned none: Optuna fails the trial)."""
    items = list(returned) if isinstance(returned, list | tuple) else [returned]
    try:
        values = [float(item) for item in items]
    except (TypeError, ValueError):
        values = []
    return values if len(values) == count else [math.nan] * count


class OptunaSweeper(Sweeper):
    """Hydra's ``Sweeper`` on Optuna; the config and its keys: :class:`config.OptunaSweeperConf`."""

    def __init__(self, sampler: DictConfig, direction: Any, objectives: list[str] | None, storage: Any,
                 study_name: str | None, n_trials: int, n_jobs: int, max_failure_rate: float,
                 params: DictConfig | None) -> None:
        self.sampler_config, self.storage_config = sampler, storage
        self.direction, self.study_name = direction, study_name
        self.objectives = [str(name) for name in objectives] if objectives else None
        self.n_trials, self.n_jobs, self.max_failure_rate = n_trials, n_jobs, max_failure_rate
        self.params = {str(key): str(value) for key, value in (params or {}).items()}
        self.config: DictConfig | None = None
        self.launcher = None
        self.job_idx = 0

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)
        self.job_idx = 0

    def sweep(self, arguments: list[str]) -> None:
        with exit_on_user_error():  # bad input: one line and exit 2 before any trial runs
            space, fixed, directions = self.checked(self.params, self.direction, self.objectives, self.n_jobs,
                                                    self.n_trials, self.max_failure_rate, arguments)
            study = self._study(directions)
        jobs: dict[int, int] = {}  # trial number -> this sweep's job number
        remaining = self.n_trials
        while remaining > 0:
            batch = min(self.n_jobs, remaining)
            self._run_batch(study, [study.ask(space) for _ in range(batch)], fixed, jobs)
            remaining -= batch
        self._write_results(study, directions, jobs, self._run_heldout(study, directions, fixed))

    @staticmethod
    def checked(params: dict[str, str], direction: Any, objectives: list[str] | None, n_jobs: int, n_trials: int,
                max_failure_rate: float, arguments: list[str]) -> tuple[dict[str, Any], list[str], list[str]]:
        """(search space, fixed overrides, directions) of these settings, or the ConfigError of the first wrong one."""
        space, fixed = search_space([f"{key}={value}" for key, value in params.items()] + list(arguments))
        directions = directions_of(direction, objectives)
        if not 1 <= n_jobs or not 0 <= n_trials or not 0.0 <= max_failure_rate <= 1.0:
            raise ConfigError("hydra.sweeper: n_jobs must be >= 1, n_trials >= 0 and max_failure_rate in [0, 1]. "
                              "Fix: e.g. hydra.sweeper.n_jobs=1 hydra.sweeper.n_trials=20")
        return space, fixed, directions

    @classmethod
    def check_settings(cls, sweeper: DictConfig, arguments: list[str]) -> None:
        """What is wrong in the sweeper's settings alone (the search space, the directions and objectives, the
        counts, a storage URL's form or password), raised before anything exists: the sweep callback calls it
        before it opens the store and the sweep's parent run (bilstm_exp.training.sweep)."""
        from bilstm_exp.team.optuna_storage import check_url

        params = {str(key): str(value) for key, value in (sweeper.get("params") or {}).items()}
        objectives = [str(name) for name in sweeper.objectives] if sweeper.get("objectives") else None
        cls.checked(params, sweeper.direction, objectives, sweeper.n_jobs, sweeper.n_trials, sweeper.max_failure_rate,
                    arguments)
        storage = sweeper.get("storage")
        url = storage if isinstance(storage, str) else storage.get("url") if isinstance(storage, DictConfig) else None
        if isinstance(url, str):
            check_url(url)

    def _study(self, directions: list[str]):
        import optuna
        from hydra.errors import InstantiationException
        from hydra.utils import instantiate

        from bilstm_exp.team.optuna_storage import optuna_storage

        storage = self.storage_config
        if isinstance(storage, str):  # a database URL: refused with a password, a failure to open is one line
            storage = optuna_storage(storage)
        elif isinstance(storage, DictConfig):  # a _target_ node, e.g. bilstm_exp.team.optuna_storage.journal_storage
            try:
                storage = instantiate(storage)
            except InstantiationException as error:  # Hydra wraps the target's own error: a UserError is shown as is
                if isinstance(error.__cause__, UserError):
                    raise error.__cause__ from None
                raise
        study = optuna.create_study(storage=storage, sampler=instantiate(self.sampler_config),
                                    study_name=self.study_name, directions=directions, load_if_exists=True)
        if list(study.directions) != [getattr(optuna.study.StudyDirection, d.upper()) for d in directions]:
            raise ConfigError(f"the study {study.study_name!r} in this storage optimises "
                              f"{[d.name.lower() for d in study.directions]}, this sweep {directions}. Fix: the "
                              "study's directions, or another hydra.sweeper.study_name")
        print(f"[bilstm-exp] Optuna study {study.study_name!r} ({type(study.sampler).__name__}, "
              f"{', '.join(directions)}): {self.n_trials} trials, {len(study.trials)} in the study already",
              flush=True)
        return study

    def _run_batch(self, study, trials: list, fixed: list[str], jobs: dict[int, int]) -> None:
        """Launch one batch of trials as jobs and tell Optuna their values; too many failed jobs
        re-raise the first job's error (as hydra-optuna-sweeper does)."""
        from hydra.core.utils import JobStatus
        from optuna.trial import TrialState

        overrides = [[f"{key}={value}" for key, value in trial.params.items()] + fixed for trial in trials]
        returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
        failed = []
        for index, (trial, job) in enumerate(zip(trials, returns)):
            jobs[trial.number] = self.job_idx + index
            if job.status != JobStatus.COMPLETED:
                study.tell(trial, state=TrialState.FAIL)
                failed.append(job)
                continue
            values = values_of(job.return_value, len(study.directions))
            if any(math.isnan(v) for v in values):
                names = self.objectives or ["the objective"]
                print(f"bilstm-exp: warning: trial {trial.number}: {', '.join(names)} returned {values}: the trial "
                      "counts as failed (a metric the run did not log, or a diverged run)", file=sys.stderr, flush=True)
            study.tell(trial, values)
        self.job_idx += len(returns)
        if failed and len(failed) / len(returns) > self.max_failure_rate:
            failed[0].return_value  # noqa: B018 - JobReturn re-raises the job's exception with its traceback

    def _run_heldout(self, study, directions: list[str], fixed: list[str]) -> int | None:
        """The nested estimate's job (see the module docstring): its job number, or None when the trials
        hold nothing out, the search has several objectives (no single best) or no trial completed."""
        from hydra.core.utils import JobStatus
        from optuna.trial import TrialState

        if not OmegaConf.select(self.config, "data.heldout_fraction", default=0.0):
            return None
        if len(directions) > 1 or not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            print("[bilstm-exp] Optuna: no single best trial; the held-out part is not evaluated. Evaluate a trial "
                  "with its overrides plus " + " ".join(HELDOUT_OVERRIDES), file=sys.stderr, flush=True)
            return None
        best = study.best_trial
        print(f"[bilstm-exp] Optuna: trial {best.number} selected ({best.value:.4g}); training its config once on the "
              "selection data and testing it on the held-out part", flush=True)
        overrides = [f"{key}={value}" for key, value in best.params.items()] + fixed + HELDOUT_OVERRIDES
        [job] = self.launcher.launch([overrides], initial_job_idx=self.job_idx)
        self.job_idx += 1
        if job.status != JobStatus.COMPLETED:  # the sweep callback ends the parent FAILED (a job failed)
            print("bilstm-exp: warning: the held-out job failed: the search has no selection-free estimate",
                  file=sys.stderr, flush=True)
        return self.job_idx - 1

    def _write_results(self, study, directions: list[str], jobs: dict[int, int], heldout_job: int | None) -> None:
        """optimization_results.yaml in the sweep dir (see the module docstring)."""
        from optuna.trial import TrialState

        if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            print("[bilstm-exp] Optuna: no trial completed; no optimization_results.yaml", file=sys.stderr, flush=True)
            return
        results: dict[str, Any] = {"name": "optuna", "study_name": study.study_name}
        if len(directions) == 1:
            best = study.best_trial
            results.update(best_params=best.params, best_value=best.value, best_trial=best.number,
                           best_job=jobs.get(best.number))
            if heldout_job is not None:
                results["best_heldout_job"] = heldout_job
        else:
            front = sorted(study.best_trials, key=lambda t: t.number)
            results.update(objectives=self.objectives, directions=directions, solutions=[
                {"trial": t.number, "job": jobs.get(t.number), "params": t.params, "values": t.values} for t in front])
            lines = [f"  trial {t.number}: {', '.join(f'{v:.4g}' for v in t.values)}  "
                     + " ".join(f"{key}={value}" for key, value in t.params.items()) for t in front]
            print(f"[bilstm-exp] Optuna: Pareto front of {len(front)} trials ({', '.join(self.objectives)}):",
                  *lines, sep="\n", flush=True)
        path = Path(str(self.config.hydra.sweep.dir)) / RESULTS
        path.parent.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(results), path)
