"""What the console's tuning pages show, computed from DescribeHyperParameterTuningJob and
ListTrainingJobsForHyperParameterTuningJob answers (no HTML here; the templates escape)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from server.console.views import duration, epoch, when
from smlocal.core.tuning.lifecycle import TERMINAL

# ListHyperParameterTuningJobs' StatusEquals values a person filters by (Deleting and DeleteFailed are passing).
TUNING_STATUSES = ("InProgress", "Completed", "Failed", "Stopping", "Stopped")


def number(value: Any) -> str:
    """An objective value as the API gives it: Python's shortest round-trip text (`0.348148`), so the page
    says what a client reads, digit for digit."""
    if value is None:
        return ""
    value = float(value)
    return repr(value) if math.isfinite(value) else str(value)


def is_terminal(job: dict[str, Any]) -> bool:
    return job.get("HyperParameterTuningJobStatus") in TERMINAL


def strategy(job: dict[str, Any]) -> str:
    return (job.get("HyperParameterTuningJobConfig") or {}).get("Strategy", "")


def objective(job: dict[str, Any]) -> dict[str, str]:
    """{Type, MetricName}; with TrainingJobDefinitions each may have its own, so the first definition's."""
    found = (job.get("HyperParameterTuningJobConfig") or {}).get("HyperParameterTuningJobObjective")
    if found:
        return found
    for definition in job.get("TrainingJobDefinitions") or []:
        if definition.get("TuningObjective"):
            return definition["TuningObjective"]
    return {}


def best_value(job: dict[str, Any]) -> str:
    best = job.get("BestTrainingJob") or {}
    return number((best.get("FinalHyperParameterTuningJobObjectiveMetric") or {}).get("Value"))


@dataclass(frozen=True)
class Counters:
    """TrainingJobStatusCounters as four numbers: a failure is one whether or not it may be retried."""

    completed: int
    in_progress: int
    failed: int
    stopped: int
    retryable: int
    non_retryable: int


def counters(job: dict[str, Any]) -> Counters:
    found = job.get("TrainingJobStatusCounters") or {}
    retryable, non_retryable = int(found.get("RetryableError", 0)), int(found.get("NonRetryableError", 0))
    return Counters(completed=int(found.get("Completed", 0)), in_progress=int(found.get("InProgress", 0)),
                    failed=retryable + non_retryable, stopped=int(found.get("Stopped", 0)),
                    retryable=retryable, non_retryable=non_retryable)


@dataclass(frozen=True)
class TuningRow:
    name: str
    status: str
    strategy: str
    counters: Counters
    best: str
    created: str
    ended: str


def tuning_row(job: dict[str, Any]) -> TuningRow:
    """A row of the tuning job list, from DescribeHyperParameterTuningJob (the list's summary has no best)."""
    return TuningRow(name=job["HyperParameterTuningJobName"], status=job["HyperParameterTuningJobStatus"],
                     strategy=strategy(job), counters=counters(job), best=best_value(job),
                     created=when(job.get("CreationTime")), ended=when(job.get("HyperParameterTuningEndTime")))


def elapsed(job: dict[str, Any], now: float) -> str:
    """Creation to the end (to now while it runs)."""
    created = epoch(job.get("CreationTime")) or now
    return duration((epoch(job.get("HyperParameterTuningEndTime")) or now) - created)


def limits_text(job: dict[str, Any]) -> str:
    """ResourceLimits in a line: `4 training jobs, 2 at a time, at most 1 h 00 min`."""
    limits = (job.get("HyperParameterTuningJobConfig") or {}).get("ResourceLimits") or {}
    parts = []
    if "MaxNumberOfTrainingJobs" in limits:
        parts.append(f"{limits['MaxNumberOfTrainingJobs']} training jobs")
    if "MaxParallelTrainingJobs" in limits:
        parts.append(f"{limits['MaxParallelTrainingJobs']} at a time")
    if limits.get("MaxRuntimeInSeconds"):
        parts.append(f"at most {duration(limits['MaxRuntimeInSeconds'])}")
    return ", ".join(parts)


def completion_rows(job: dict[str, Any]) -> list[tuple[str, str]]:
    """TuningJobCompletionDetails and the TuningJobCompletionCriteria they are measured against."""
    details = job.get("TuningJobCompletionDetails") or {}
    criteria = (job.get("HyperParameterTuningJobConfig") or {}).get("TuningJobCompletionCriteria") or {}
    rows = [
        ("Target objective value", number(criteria.get("TargetObjectiveMetricValue"))),
        ("Stop when not improving for",
         f"{criteria['BestObjectiveNotImproving'].get('MaxNumberOfTrainingJobsNotImproving')} training jobs"
         if criteria.get("BestObjectiveNotImproving") else ""),
        ("Complete on convergence", (criteria.get("ConvergenceDetected") or {}).get("CompleteOnConvergence", "")),
        ("Training jobs not improving the objective",
         str(details.get("NumberOfTrainingJobsObjectiveNotImproving", ""))),
        ("Convergence detected", when(details.get("ConvergenceDetectedTime"))),
    ]
    return [(label, value) for label, value in rows if value]


def config_rows(job: dict[str, Any]) -> list[tuple[str, str]]:
    """The request's settings that are not on the summary, as label and text."""
    config = job.get("HyperParameterTuningJobConfig") or {}
    definitions = definition_list(job)
    rows = [
        ("ARN", job.get("HyperParameterTuningJobArn", "")),
        ("Early stopping", config.get("TrainingJobEarlyStoppingType", "")),
        ("Random seed", str(config["RandomSeed"]) if "RandomSeed" in config else ""),
        ("Image", ", ".join(sorted({(d.get("AlgorithmSpecification") or {}).get("TrainingImage", "")
                                    for d in definitions} - {""}))),
        ("Warm start", ", ".join(p.get("HyperParameterTuningJobName", "") for p in
                                 (job.get("WarmStartConfig") or {}).get("ParentHyperParameterTuningJobs", []))),
    ]
    return [(label, value) for label, value in rows if value]


def definition_list(job: dict[str, Any]) -> list[dict[str, Any]]:
    if job.get("TrainingJobDefinition"):
        return [job["TrainingJobDefinition"]]
    return list(job.get("TrainingJobDefinitions") or [])


@dataclass(frozen=True)
class RangeRow:
    definition: str
    name: str
    kind: str
    values: str
    scaling: str


def range_rows(job: dict[str, Any]) -> list[RangeRow]:
    """The tuned hyperparameters' ranges: the config's ParameterRanges, or each definition's."""
    sources = [("", (job.get("HyperParameterTuningJobConfig") or {}).get("ParameterRanges"))]
    sources += [(d.get("DefinitionName", ""), d.get("HyperParameterRanges")) for d in definition_list(job)]
    rows = []
    for definition, ranges in sources:
        for kind, key in (("integer", "IntegerParameterRanges"), ("continuous", "ContinuousParameterRanges")):
            rows += [RangeRow(definition, r["Name"], kind, f"{r['MinValue']} … {r['MaxValue']}",
                              r.get("ScalingType", "")) for r in (ranges or {}).get(key, [])]
        rows += [RangeRow(definition, r["Name"], "categorical", ", ".join(r.get("Values", [])), "")
                 for r in (ranges or {}).get("CategoricalParameterRanges", [])]
    return rows


def static_hyperparameters(job: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(definition, name, value) of every definition's StaticHyperParameters."""
    return [(d.get("DefinitionName", ""), k, v) for d in definition_list(job)
            for k, v in sorted((d.get("StaticHyperParameters") or {}).items())]


@dataclass(frozen=True)
class TrialRow:
    """One training job of the tuning job, with its tuned values in `tuned_names` order."""

    name: str
    definition: str
    values: list[str]
    status: str
    objective: str
    objective_status: str
    started: str
    ended: str
    failure: str
    best: bool


def tuned_names(trials: list[dict[str, Any]]) -> list[str]:
    """One column per tuned hyperparameter: every name any trial was given, sorted."""
    return sorted({k for t in trials for k in t.get("TunedHyperParameters") or {}})


def trial_rows(trials: list[dict[str, Any]], names: list[str], best_name: str | None) -> list[TrialRow]:
    return [TrialRow(
        name=t["TrainingJobName"], definition=t.get("TrainingJobDefinitionName", ""),
        values=[(t.get("TunedHyperParameters") or {}).get(n, "") for n in names], status=t["TrainingJobStatus"],
        objective=number((t.get("FinalHyperParameterTuningJobObjectiveMetric") or {}).get("Value")),
        objective_status=t.get("ObjectiveStatus", ""), started=when(t.get("TrainingStartTime")),
        ended=when(t.get("TrainingEndTime")), failure=t.get("FailureReason", ""),
        best=t["TrainingJobName"] == best_name,
    ) for t in trials]


def describe_json(job: dict[str, Any]) -> str:
    return json.dumps(job, indent=2, sort_keys=True, default=str)


def tuning_job_name(training_job: dict[str, Any]) -> str | None:
    """The tuning job a trial belongs to, from its TuningJobArn.

    The ARN has the name in lower case (as SageMaker writes it); a trial's own name starts with the tuning
    job's as it was given (`<tuning job>-NNN-<8 hex>`), so that spelling is used when it matches."""
    arn = training_job.get("TuningJobArn")
    if not arn:
        return None
    in_arn = arn.rsplit("/", 1)[-1]
    prefix = training_job.get("TrainingJobName", "").rsplit("-", 2)[0]
    return prefix if prefix.lower() == in_arn else in_arn
