"""What bounds a tuning job: its number of trials (written once here) and the target that ends it."""

from __future__ import annotations

from typing import Any

from smlocal.core.tuning.lifecycle import MINIMIZE, TuningJobRecord
from smlocal.core.tuning.ranges import grid_size, parse_ranges

# SageMaker's default quota of training jobs per tuning job (Random, Bayesian, Hyperband and Grid alike): the
# number a tuning job launches at most when ResourceLimits.MaxNumberOfTrainingJobs is not given.
MAX_TRAINING_JOBS = 750
# The highest MaxParallelTrainingJobs SageMaker's quota can be raised to.
MAX_PARALLEL_TRAINING_JOBS = 100


def definitions_grid_size(config: dict[str, Any], definitions: list[dict[str, Any]]) -> int:
    """How many points a Grid search over these definitions runs (each definition's grid, one after another)."""
    return sum(grid_size(parse_ranges(d.get("HyperParameterRanges") or config.get("ParameterRanges"),
                                      d.get("StaticHyperParameters"))) for d in definitions)


def max_jobs(config: dict[str, Any], definitions: list[dict[str, Any]]) -> int:
    """MaxNumberOfTrainingJobs in effect: as given; a Grid search's grid size; else SageMaker's quota."""
    given = (config.get("ResourceLimits") or {}).get("MaxNumberOfTrainingJobs")
    if given is not None:
        return int(given)
    if config.get("Strategy") == "Grid":
        return definitions_grid_size(config, definitions)
    return MAX_TRAINING_JOBS


def effective_max_jobs(job: TuningJobRecord) -> int:
    return max_jobs(job.config, job.definitions)


def target_reached(direction: str, best: float | None, criteria: dict[str, Any]) -> bool:
    """TargetObjectiveMetricValue: the best objective so far is at least as good as the target."""
    target = criteria.get("TargetObjectiveMetricValue")
    if target is None or best is None:
        return False
    return best <= target if direction == MINIMIZE else best >= target


# The static hyperparameters SageMaker reads Hyperband's MaxResource from when HyperbandStrategyConfig has none.
EPOCH_KEYS = ("epochs", "numepochs", "n-epochs", "n_epochs", "num_epochs")


def infer_max_resource(definitions: list[dict[str, Any]]) -> int | None:
    for definition in definitions:
        static = definition.get("StaticHyperParameters") or {}
        for key in EPOCH_KEYS:
            if key in static:
                try:
                    return int(float(static[key]))
                except ValueError:
                    return None
    return None
