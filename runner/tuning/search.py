"""One tuning job's search: which hyperparameters the next trial gets, and whether a running trial stops early.

optuna does the searching (its samplers and pruners, kept in an in-memory study per tuning job); smlocal's store
stays the only record. A restarted server rebuilds the study from the stored trials in their order, with the
pruner's bookkeeping each kept (Hyperband's rungs), so the search goes on where it was.

- Random and Hyperband sample with optuna's RandomSampler, Bayesian with its TPESampler (multivariate, with the
  running trials' values "lied" as the worst, so parallel trials spread out). The sampler of trial n is seeded
  from (RandomSeed, n): trial n's values depend only on the seed and what the trials before it scored.
- Grid walks `smlocal.core.tuning.ranges.grid` in order; trial n takes the n-th point.
- Hyperband stops trials from their intermediate values with optuna's HyperbandPruner (MinResource and
  MaxResource of HyperbandStrategyConfig; one resource unit is one value of the objective metric); a trial
  reaching MaxResource is stopped, as SageMaker stops it.
- TrainingJobEarlyStoppingType=Auto stops a trial by SageMaker's documented median rule, as an optuna pruner
  (`RunningAverageMedianPruner`): its value at an epoch worse than the median of the running averages of the
  earlier trials' values up to the same epoch.
"""

from __future__ import annotations

import logging
import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from smlocal.core.tuning.lifecycle import MAXIMIZE, SUCCEEDED, TrialRecord, TuningJobRecord
from smlocal.core.tuning.limits import infer_max_resource
from smlocal.core.tuning.ranges import CATEGORICAL, INTEGER, Param, grid, parse_ranges

log = logging.getLogger("smlocal.tuning")
optuna.logging.set_verbosity(optuna.logging.WARNING)

RANDOM, GRID, BAYESIAN, HYPERBAND = "Random", "Grid", "Bayesian", "Hyperband"
# The median rule judges a trial at an epoch once this many earlier trials reached that epoch (a median of fewer
# says little; SageMaker does not publish its own number).
MEDIAN_RULE_STARTUP_TRIALS = 3
# Bayesian: random trials before the model guides the search.
BAYESIAN_STARTUP_TRIALS = 5
# The key of the training job definition a trial uses, in the study's parameters (several definitions).
DEFINITION_KEY = "TrainingJobDefinitionName"


class RunningAverageMedianPruner(optuna.pruners.BasePruner):
    """SageMaker's Auto early stopping: "Compute the running average of the objective metric for all previous
    training jobs up to the same epoch, and then compute the median of all of the running averages. If the value
    of the objective metric for the current training job is worse than the median value ..., SageMaker stops the
    current training job." Judged once `min_trials` earlier trials reached the epoch."""

    def __init__(self, min_trials: int = MEDIAN_RULE_STARTUP_TRIALS) -> None:
        self.min_trials = min_trials

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        step = trial.last_step
        if step is None:
            return False
        averages = []
        for other in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            if other.number != trial.number and step in other.intermediate_values:
                averages.append(statistics.fmean(v for s, v in other.intermediate_values.items() if s <= step))
        if len(averages) < self.min_trials:
            return False
        median = statistics.median(averages)
        current = trial.intermediate_values[step]
        return current > median if study.direction == optuna.study.StudyDirection.MINIMIZE else current < median


@dataclass(frozen=True)
class Proposal:
    """What the next trial runs: its definition, its HyperParameters' tuned values and the study's own values."""

    definition_name: str | None
    tuned: dict[str, str]
    search_params: dict[str, Any]
    handle: optuna.Trial | None = None


def _distribution(param: Param) -> BaseDistribution:
    if param.kind == CATEGORICAL:
        return CategoricalDistribution(list(param.values))
    if param.reverse_log:
        # Uniform in log(1 - x): the study searches u = 1 - x on a log scale.
        return FloatDistribution(1 - param.high, 1 - param.low, log=True)
    if param.kind == INTEGER:
        return IntDistribution(int(param.low), int(param.high), log=param.log)
    return FloatDistribution(param.low, param.high, log=param.log)


def _tuned_value(param: Param, study_value: Any) -> str:
    return param.format(1 - study_value if param.reverse_log else study_value)


def seed_of(job: TuningJobRecord) -> int:
    """RandomSeed, or one drawn from the job's name so a restarted server keeps the same sequence."""
    seed = job.config.get("RandomSeed")
    return int(seed) if seed is not None else random.Random(job.arn).randrange(2**31)


ValuesOf = Callable[[TrialRecord], list[float]]


class Search:
    def __init__(self, job: TuningJobRecord, parents: list[TuningJobRecord] | None = None,
                 values_of: ValuesOf = lambda _trial: []) -> None:
        """`values_of(trial)`: a stored trial's objective values so far (rebuilding the study after a restart)."""
        self.job = job
        self.strategy = job.config["Strategy"]
        self.seed = seed_of(job)
        self.spaces: dict[str | None, list[Param]] = {
            d.get("DefinitionName"): parse_ranges(d.get("HyperParameterRanges") or job.config.get("ParameterRanges"),
                                                  d.get("StaticHyperParameters"))
            for d in job.definitions
        }
        self.multi = len(self.spaces) > 1
        self.study = optuna.create_study(
            study_name=job.arn, pruner=self._pruner(),
            direction="maximize" if job.direction == MAXIMIZE else "minimize")
        self._handles: dict[int, optuna.Trial] = {}
        self._reported: dict[int, int] = {}
        for parent in parents or []:
            self._warm_start(parent)
        for trial in job.trials:
            self._restore(trial, values_of(trial) if self.judges_running_trials() else [])

    # ---- the space -------------------------------------------------------------------------------

    def _key(self, definition: str | None, name: str) -> str:
        return f"{definition}/{name}" if self.multi else name

    def _distributions(self) -> dict[str, BaseDistribution]:
        out: dict[str, BaseDistribution] = {}
        if self.multi:
            out[DEFINITION_KEY] = CategoricalDistribution(list(self.spaces))
        for definition, params in self.spaces.items():
            out.update({self._key(definition, p.name): _distribution(p) for p in params})
        return out

    def _pruner(self) -> optuna.pruners.BasePruner:
        if self.strategy == HYPERBAND:
            hyperband = (self.job.config.get("StrategyConfig") or {}).get("HyperbandStrategyConfig") or {}
            return optuna.pruners.HyperbandPruner(min_resource=hyperband.get("MinResource", 1),
                                                  max_resource=self.max_resource() or "auto")
        if self.job.config.get("TrainingJobEarlyStoppingType") == "Auto":
            return RunningAverageMedianPruner()
        return optuna.pruners.NopPruner()

    def max_resource(self) -> int | None:
        """Hyperband's MaxResource: as configured, or the epochs the static hyperparameters name (as SageMaker
        infers it)."""
        hyperband = (self.job.config.get("StrategyConfig") or {}).get("HyperbandStrategyConfig") or {}
        if hyperband.get("MaxResource"):
            return int(hyperband["MaxResource"])
        return infer_max_resource(self.job.definitions)

    # ---- trials -----------------------------------------------------------------------------------

    def _sampler(self, number: int) -> optuna.samplers.BaseSampler:
        seed = (self.seed * 1_000_003 + number) % 2**32
        if self.strategy == BAYESIAN:
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=BAYESIAN_STARTUP_TRIALS, multivariate=True,
                                              constant_liar=True)
        return optuna.samplers.RandomSampler(seed=seed)

    def grid_points(self) -> list[tuple[str | None, dict[str, str]]]:
        return [(definition, point) for definition, params in self.spaces.items() for point in grid(params)]

    def judges_running_trials(self) -> bool:
        """Whether running trials' intermediate values may stop them (Hyperband, or Auto early stopping)."""
        return not isinstance(self.study.pruner, optuna.pruners.NopPruner)

    def propose(self, number: int, taken: list[tuple[str | None, dict[str, str]]] = ()) -> Proposal | None:  # type: ignore[assignment]
        """The next trial's values (trial `number`, from 1). Grid: the first point no trial in `taken` ran (a
        trial replaced after a platform failure runs its point again); None when every point was run."""
        if self.strategy == GRID:
            point = next((p for p in self.grid_points() if p not in taken), None)
            if point is None:
                return None
            definition, tuned = point
            return Proposal(definition, tuned, dict(tuned), self.study.ask({}))
        self.study.sampler = self._sampler(number)
        handle = self.study.ask()
        definition = handle.suggest_categorical(DEFINITION_KEY, list(self.spaces)) if self.multi else next(
            iter(self.spaces))
        tuned: dict[str, str] = {}
        for param in self.spaces[definition]:
            key = self._key(definition, param.name)
            distribution = _distribution(param)
            if isinstance(distribution, CategoricalDistribution):
                value = handle.suggest_categorical(key, list(distribution.choices))
            elif isinstance(distribution, IntDistribution):
                value = handle.suggest_int(key, distribution.low, distribution.high, log=distribution.log)
            else:
                value = handle.suggest_float(key, distribution.low, distribution.high, log=distribution.log)
            tuned[param.name] = _tuned_value(param, value)
        return Proposal(definition, tuned, dict(handle.params), handle)

    def launched(self, trial_id: int, proposal: Proposal) -> None:
        if proposal.handle is not None:
            self._handles[trial_id] = proposal.handle

    def dropped(self, proposal: Proposal) -> None:
        """The trial was not launched (its tuning job stopped meanwhile)."""
        if proposal.handle is not None:
            self.study.tell(proposal.handle, state=TrialState.FAIL)

    def report(self, trial: TrialRecord, values: list[float]) -> tuple[bool, dict[str, Any] | None]:
        """A running trial's objective values so far: (stop it now?, the pruner's bookkeeping to keep if it
        changed). A trial is stopped when the pruner says so, or (Hyperband) when it reached MaxResource."""
        handle = self._handles.get(trial.id)
        if handle is None:
            return False, None
        done = self._reported.get(trial.id, 0)
        if len(values) <= done:
            return False, None
        before = dict(self._frozen(handle).system_attrs)
        prune = False
        for step in range(done, len(values)):
            handle.report(values[step], step)
            self._reported[trial.id] = step + 1
            if handle.should_prune():
                prune = True
                break
        attrs = dict(self._frozen(handle).system_attrs)
        limit = self.max_resource() if self.strategy == HYPERBAND else None
        reached_limit = limit is not None and len(values) >= limit
        return prune or reached_limit, attrs if attrs != before else None

    def _frozen(self, handle: optuna.Trial) -> optuna.trial.FrozenTrial:
        return self.study.trials[handle.number]

    def finish(self, trial: TrialRecord) -> None:
        """The trial's training job ended: the study learns its objective (or that it has none)."""
        handle = self._handles.pop(trial.id, None)
        if handle is None:
            return
        if trial.objective_status == SUCCEEDED and trial.objective_value is not None and not trial.early_stopped:
            self.study.tell(handle, trial.objective_value)
        elif trial.early_stopped:
            self.study.tell(handle, state=TrialState.PRUNED)
        else:
            self.study.tell(handle, state=TrialState.FAIL)

    # ---- rebuilding after a restart, warm start --------------------------------------------------------

    def _frozen_trial(self, trial: TrialRecord, state: TrialState, values: dict[int, float] | None,
                      fit_only: bool = False) -> optuna.trial.FrozenTrial:
        distributions = self._distributions() if self.strategy != GRID else {}
        params = {k: v for k, v in trial.search_params.items() if k in distributions}
        if fit_only:
            params = {k: v for k, v in params.items() if _fits(distributions[k], v)}
        return create_trial(
            state=state, params=params, distributions={k: distributions[k] for k in params},
            value=trial.objective_value if state == TrialState.COMPLETE else None,
            intermediate_values=values, system_attrs=trial.search_attrs)

    def _restore(self, trial: TrialRecord, values: list[float]) -> None:
        intermediate = dict(enumerate(values)) or None
        if trial.ended:
            self.study.add_trial(self._frozen_trial(trial, _state_of(trial), intermediate))
            return
        # Still running: its values so far were judged before the restart; the next ones will be.
        self.study.add_trial(self._frozen_trial(trial, TrialState.RUNNING, intermediate))
        self._handles[trial.id] = optuna.Trial(self.study, self.study.trials[-1]._trial_id)
        self._reported[trial.id] = len(values)

    def _warm_start(self, parent: TuningJobRecord) -> None:
        """A parent tuning job's scored trials seed the study (values outside this job's ranges left out)."""
        if self.strategy == GRID:
            return
        for trial in parent.trials:
            if trial.objective_status == SUCCEEDED and trial.objective_value is not None:
                self.study.add_trial(self._frozen_trial(trial, TrialState.COMPLETE, None, fit_only=True))


def _state_of(trial: TrialRecord) -> TrialState:
    if trial.early_stopped:
        return TrialState.PRUNED
    if trial.objective_status == SUCCEEDED and trial.objective_value is not None:
        return TrialState.COMPLETE
    return TrialState.FAIL


def _fits(distribution: BaseDistribution, value: Any) -> bool:
    try:
        return distribution._contains(distribution.to_internal_repr(value))
    except (ValueError, TypeError):
        return False
