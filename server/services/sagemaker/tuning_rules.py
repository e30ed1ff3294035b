"""CreateHyperParameterTuningJob's rules beyond the botocore model, in SageMaker's words.

Each training job definition is also checked as the training jobs it will launch: a sample trial's
CreateTrainingJob request meets every rule a training job does (`check_training`), so a tuning job never
launches trials that fail validation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from smlocal.core.errors import ApiError
from smlocal.core.tuning.lifecycle import TERMINAL, TuningJobRecord
from smlocal.core.tuning.limits import (
    EPOCH_KEYS,
    MAX_PARALLEL_TRAINING_JOBS,
    MAX_TRAINING_JOBS,
    definitions_grid_size,
    infer_max_resource,
)
from smlocal.core.tuning.ranges import CATEGORICAL, CONTINUOUS, INTEGER, Param, parse_ranges
from smlocal.core.tuning.trials import resource_config, trial_request

# Static and tuned hyperparameters together, `_tuning_objective_metric` included (SageMaker's limit).
MAX_HYPERPARAMETERS = 100
MAX_HYPERBAND_RESOURCE = 20_000


def _invalid(message: str) -> ApiError:
    return ApiError("ValidationException", message)


def definitions_of(params: dict[str, Any]) -> list[dict[str, Any]]:
    if ("TrainingJobDefinition" in params) == ("TrainingJobDefinitions" in params):
        raise _invalid("Exactly one of TrainingJobDefinition or TrainingJobDefinitions must be specified.")
    if "TrainingJobDefinition" in params:
        return [params["TrainingJobDefinition"]]
    definitions = params["TrainingJobDefinitions"]
    names = [d.get("DefinitionName") for d in definitions]
    if None in names:
        raise _invalid("Each of TrainingJobDefinitions must have a DefinitionName.")
    if len(set(names)) != len(names):
        raise _invalid("The DefinitionName of each of TrainingJobDefinitions must be unique.")
    return definitions


def _objective(config: dict[str, Any], definition: dict[str, Any], several: bool) -> dict[str, str]:
    objective = definition.get("TuningObjective") or config.get("HyperParameterTuningJobObjective")
    if objective is None:
        where = "each of TrainingJobDefinitions (TuningObjective)" if several else "HyperParameterTuningJobConfig"
        raise _invalid(f"A tuning objective is required: specify HyperParameterTuningJobObjective in {where}.")
    return objective


def _ranges(config: dict[str, Any], definition: dict[str, Any], several: bool) -> list[Param]:
    ranges = definition.get("HyperParameterRanges")
    if several and ranges is None:
        raise _invalid("Each of TrainingJobDefinitions must specify its HyperParameterRanges.")
    if ranges is not None and config.get("ParameterRanges") is not None:
        raise _invalid("Specify the parameter ranges either in HyperParameterTuningJobConfig (ParameterRanges) or "
                       "in the training job definition (HyperParameterRanges), not both.")
    params = parse_ranges(ranges if ranges is not None else config.get("ParameterRanges"),
                          definition.get("StaticHyperParameters"))
    if not params:
        raise _invalid("At least one hyperparameter range must be specified to tune.")
    return params


def _check_definition(config: dict[str, Any], definition: dict[str, Any], several: bool,
                      check_training: Callable[[dict[str, Any]], None],
                      tags: list[dict[str, str]]) -> tuple[list[Param], dict[str, str]]:
    objective = _objective(config, definition, several)
    params = _ranges(config, definition, several)
    metrics = [m["Name"] for m in definition["AlgorithmSpecification"].get("MetricDefinitions", [])]
    if objective["MetricName"] not in metrics:
        raise _invalid("A metric is required for this hyperparameter tuning job objective. Provide a metric in the "
                       "metric definitions.")
    static = definition.get("StaticHyperParameters") or {}
    if len(static) + len(params) + 1 > MAX_HYPERPARAMETERS:
        raise _invalid(f"A training job can have at most {MAX_HYPERPARAMETERS} hyperparameters, static and tuned "
                       "together, _tuning_objective_metric included.")
    if resource_config(definition) is None:
        raise _invalid("Either ResourceConfig or HyperParameterTuningResourceConfig must be specified in the "
                       "training job definition.")
    # The trial's request with a value of each range and the tags trials get, judged as a CreateTrainingJob
    # request is (a bad smlocal:* tag is refused here, not in every trial).
    sample = {p.name: p.values[0] if p.kind == CATEGORICAL else p.format(p.low) for p in params}
    check_training({**trial_request(definition, sample, "sample-trial"), "Tags": tags})
    return params, objective


def _combinations(params: list[Param]) -> float:
    """How many distinct trials the ranges allow (infinite with a continuous range)."""
    if any(p.kind == CONTINUOUS for p in params):
        return math.inf
    return math.prod(len(p.values) if p.kind == CATEGORICAL else int(p.high - p.low) + 1 for p in params)


def check_tuning_request(params: dict[str, Any], check_training: Callable[[dict[str, Any]], None],
                         parents: Callable[[str], TuningJobRecord | None]) -> None:
    config = params["HyperParameterTuningJobConfig"]
    if params.get("Autotune"):
        raise _invalid("smlocal does not run Autotune: give the strategy, ranges and resource limits yourself.")
    definitions = definitions_of(params)
    several = "TrainingJobDefinitions" in params
    checked = [_check_definition(config, d, several, check_training, params.get("Tags", [])) for d in definitions]
    strategy = config["Strategy"]
    limits = config["ResourceLimits"]
    max_jobs = limits.get("MaxNumberOfTrainingJobs")
    parallel = limits["MaxParallelTrainingJobs"]
    if parallel > MAX_PARALLEL_TRAINING_JOBS:
        raise ApiError("ResourceLimitExceeded", f"MaxParallelTrainingJobs ({parallel}) exceeds the limit of "
                       f"{MAX_PARALLEL_TRAINING_JOBS} concurrent training jobs per tuning job.")
    if max_jobs is not None and max_jobs > MAX_TRAINING_JOBS:
        raise ApiError("ResourceLimitExceeded", f"MaxNumberOfTrainingJobs ({max_jobs}) exceeds the limit of "
                       f"{MAX_TRAINING_JOBS} training jobs per tuning job.")
    if config.get("StrategyConfig") and strategy != "Hyperband":
        raise _invalid("StrategyConfig should be provided only if the Strategy is Hyperband.")
    if strategy == "Grid":
        _check_grid(config, definitions, [p for p, _ in checked], max_jobs)
    else:
        combinations = sum(_combinations(p) for p, _ in checked)
        if max_jobs is not None and combinations < max_jobs:
            raise _invalid("You don't have enough combinations of hyperparameter ranges. The total number of "
                           f"hyperparameter combinations for the provided ranges [{float(combinations)}] must be "
                           f"equal or greater than the value of MaxNumberOfJobs, [{max_jobs}]. Provide additional "
                           "ranges.")
    if strategy == "Hyperband":
        _check_hyperband(config, definitions)
    criteria = config.get("TuningJobCompletionCriteria") or {}
    not_improving = (criteria.get("BestObjectiveNotImproving") or {}).get("MaxNumberOfTrainingJobsNotImproving")
    if not_improving is not None and not_improving < 3:
        raise _invalid("MaxNumberOfTrainingJobsNotImproving must be at least 3.")
    if params.get("WarmStartConfig"):
        _check_warm_start(params, [o for _, o in checked], definitions, parents)


def _check_grid(config: dict[str, Any], definitions: list[dict[str, Any]], spaces: list[list[Param]],
                max_jobs: int | None) -> None:
    if any(p.kind != CATEGORICAL for params in spaces for p in params):
        raise _invalid("The Grid search strategy supports only categorical parameters: specify every range in "
                       "CategoricalParameterRanges.")
    size = definitions_grid_size(config, definitions)
    if size > MAX_TRAINING_JOBS:
        raise ApiError("ResourceLimitExceeded", f"The grid has {size} combinations of hyperparameter values; a Grid "
                       f"search can run at most {MAX_TRAINING_JOBS} training jobs.")
    if max_jobs is not None and max_jobs != size:
        raise _invalid(f"For the Grid search strategy, MaxNumberOfTrainingJobs ({max_jobs}) must equal the number of "
                       f"distinct combinations of the categorical parameter values ({size}), or be left out.")
    if config.get("TrainingJobEarlyStoppingType", "Off") != "Off":
        raise _invalid("TrainingJobEarlyStoppingType must be Off for the Grid search strategy.")


def _check_hyperband(config: dict[str, Any], definitions: list[dict[str, Any]]) -> None:
    if config.get("TrainingJobEarlyStoppingType", "Off") != "Off":
        raise _invalid("TrainingJobEarlyStoppingType must be OFF to use Hyperband; Hyperband stops training jobs "
                       "early by its own internal mechanism.")
    hyperband = (config.get("StrategyConfig") or {}).get("HyperbandStrategyConfig") or {}
    max_resource = hyperband.get("MaxResource")
    if max_resource is None:
        max_resource = infer_max_resource(definitions)
        if max_resource is None:
            raise _invalid("MaxResource of HyperbandStrategyConfig is required: it could not be inferred from the "
                           f"static hyperparameters ({', '.join(EPOCH_KEYS)}).")
    if not 1 <= max_resource <= MAX_HYPERBAND_RESOURCE:
        raise _invalid(f"MaxResource must be between 1 and {MAX_HYPERBAND_RESOURCE}.")
    if hyperband.get("MinResource", 1) > max_resource:
        raise _invalid(f"MinResource ({hyperband['MinResource']}) must be less than or equal to MaxResource "
                       f"({max_resource}).")


def _names(definition: dict[str, Any], config: dict[str, Any]) -> dict[str, str]:
    """Every hyperparameter name of a definition with its kind (static, or the range's kind)."""
    ranges = definition.get("HyperParameterRanges") or config.get("ParameterRanges") or {}
    kinds = {"IntegerParameterRanges": INTEGER, "ContinuousParameterRanges": CONTINUOUS,
             "CategoricalParameterRanges": CATEGORICAL}
    names = {k: "Static" for k in (definition.get("StaticHyperParameters") or {}) if k != "_tuning_objective_metric"}
    for key, kind in kinds.items():
        names.update({r["Name"]: kind for r in ranges.get(key, [])})
    return names


def _check_warm_start(params: dict[str, Any], objectives: list[dict[str, str]], definitions: list[dict[str, Any]],
                      parents: Callable[[str], TuningJobRecord | None]) -> None:
    config = params["HyperParameterTuningJobConfig"]
    warm = params["WarmStartConfig"]
    for i, entry in enumerate(warm["ParentHyperParameterTuningJobs"], 1):
        name = entry.get("HyperParameterTuningJobName")
        if name is None:
            # Optional in the model, needed by SageMaker: a parent is named or it is nothing (found by the fuzz,
            # tests/test_fuzz_api.py; it was an InternalFailure).
            raise ApiError("ValidationException", "1 validation error detected: Value null at "
                           f"'warmStartConfig.parentHyperParameterTuningJobs.{i}.member.hyperParameterTuningJobName' "
                           "failed to satisfy constraint: Member must not be null")
        parent = parents(name)
        if parent is None:
            raise ApiError("ResourceNotFound", f"Amazon SageMaker can't find a tuning job with name {name}")
        if parent.status not in TERMINAL:
            raise _invalid(f"The parent hyperparameter tuning job {name} is {parent.status}: a parent must be "
                           "Completed, Stopped or Failed.")
        parent_objective = parent.objective(parent.definitions[0].get("DefinitionName"))
        if parent_objective["MetricName"] != objectives[0]["MetricName"] or (
                parent_objective["Type"] != objectives[0]["Type"]):
            raise _invalid(f"The objective metric of the parent hyperparameter tuning job {name} must be the same as "
                           "the objective metric of this tuning job.")
        mine, theirs = _names(definitions[0], config), _names(parent.definitions[0], parent.config)
        if set(mine) != set(theirs):
            raise _invalid("The set of tunable plus static HyperParameter names is not the same across current and "
                           "parent tuning jobs. Please ensure this set is constant when warm starting. Note that "
                           "previously static HyperParameters can be tuned in warm start jobs and vice versa.")
        changed = [n for n in mine if "Static" not in (mine[n], theirs[n]) and mine[n] != theirs[n]]
        if changed:
            raise _invalid(f"The type of hyperparameters {', '.join(sorted(changed))} differs from the parent "
                           f"hyperparameter tuning job {name}; a hyperparameter keeps its type when warm starting.")
        if warm["WarmStartType"] == "IdenticalDataAndAlgorithm":
            _check_identical(definitions[0], parent.definitions[0], name)


# IdenticalDataAndAlgorithm: what must stay as the parent had it (the data and the algorithm).
_IDENTICAL = (("AlgorithmSpecification", "TrainingImage"), ("InputDataConfig", None))


def _check_identical(definition: dict[str, Any], parent: dict[str, Any], name: str) -> None:
    for member, key in _IDENTICAL:
        mine, theirs = definition.get(member), parent.get(member)
        if key is not None:
            mine, theirs = (mine or {}).get(key), (theirs or {}).get(key)
        if mine != theirs:
            raise _invalid(f"WarmStartType IdenticalDataAndAlgorithm needs the same input data and training image as "
                           f"the parent hyperparameter tuning job {name}; {member} differs. Use TransferLearning.")
