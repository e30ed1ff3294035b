"""The hyperparameter tuning operations: create, describe, list, list trials, stop, delete.

A tuning job's state lives in smlocal.core.tuning.lifecycle; runner/tuning drives it. This module checks requests
(tuning_rules) and shapes the answers as SageMaker does: the request echoed with the values SageMaker fills in
(`_tuning_objective_metric`, ScalingType Auto, TrainingJobEarlyStoppingType Off, MaxNumberOfTrainingJobs), the
counters, the best trial.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from sqlalchemy import select

from server.aws.context import RequestContext
from server.aws.pagination import decode_token, encode_token
from server.services.sagemaker.tagging import check_tag_keys
from server.services.sagemaker.tuning_rules import check_tuning_request
from smlocal.core.store import Store, TuningJobRow
from smlocal.core.tuning.lifecycle import (
    TrialRecord,
    TuningJobRecord,
    TuningLifecycle,
    best_trial,
    better,
    objective_counters,
    runtime_seconds,
    status_counters,
    tuning_job_arn,
)
from smlocal.core.tuning.limits import max_jobs
from smlocal.core.tuning.trials import resource_config


class TuningOperations:
    def __init__(self, store: Store, tuning: TuningLifecycle,
                 check_training: Callable[[dict[str, Any]], None]) -> None:
        self.store = store
        self.tuning = tuning
        # The CreateTrainingJob rules, applied to a sample trial of each training job definition.
        self.check_training = check_training

    def handlers(self) -> dict[str, Callable[[RequestContext, dict[str, Any]], dict[str, Any]]]:
        return {
            "CreateHyperParameterTuningJob": self.create,
            "DescribeHyperParameterTuningJob": self.describe,
            "ListHyperParameterTuningJobs": self.list,
            "ListTrainingJobsForHyperParameterTuningJob": self.list_trials,
            "StopHyperParameterTuningJob": self.stop,
            "DeleteHyperParameterTuningJob": self.delete,
        }

    @staticmethod
    def _arn(ctx: RequestContext, params: dict[str, Any]) -> str:
        return tuning_job_arn(ctx.region, ctx.account_id, params["HyperParameterTuningJobName"])

    def create(self, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
        check_tag_keys(params.get("Tags", []))
        check_tuning_request(params, self.check_training,
                             lambda name: self.tuning.find(ctx.account_id, ctx.region, name))
        request = {k: v for k, v in params.items() if k != "Tags"}
        job = self.tuning.create(account_id=ctx.account_id, region=ctx.region,
                                 name=params["HyperParameterTuningJobName"], request=request,
                                 tags=params.get("Tags", []))
        return {"HyperParameterTuningJobArn": job.arn}

    def describe(self, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
        job = self.tuning.get(self._arn(ctx, params))
        parents = [p for p in (self.tuning.find(ctx.account_id, ctx.region, e["HyperParameterTuningJobName"])
                               for e in (job.request.get("WarmStartConfig") or {}).get(
                                   "ParentHyperParameterTuningJobs", [])) if p is not None]
        return describe_tuning_job(job, parents)

    def list(self, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
        query_key = {k: v for k, v in params.items() if k not in ("NextToken", "MaxResults")}
        query_key.update(account=ctx.account_id, region=ctx.region)
        offset = decode_token(params.get("NextToken"), query_key)
        limit = params.get("MaxResults") or 10
        stmt = select(TuningJobRow.arn).where(TuningJobRow.account_id == ctx.account_id,
                                              TuningJobRow.region == ctx.region)
        for member, column, op in (("CreationTimeAfter", TuningJobRow.creation_time, "gt"),
                                   ("CreationTimeBefore", TuningJobRow.creation_time, "lt"),
                                   ("LastModifiedTimeAfter", TuningJobRow.last_modified_time, "gt"),
                                   ("LastModifiedTimeBefore", TuningJobRow.last_modified_time, "lt")):
            if member in params:
                stmt = stmt.where(column > params[member] if op == "gt" else column < params[member])
        if params.get("NameContains"):
            stmt = stmt.where(TuningJobRow.name.icontains(params["NameContains"], autoescape=True))
        if "StatusEquals" in params:
            stmt = stmt.where(TuningJobRow.status == params["StatusEquals"])
        column = {"Name": TuningJobRow.name, "Status": TuningJobRow.status,
                  "CreationTime": TuningJobRow.creation_time}[params.get("SortBy", "Name")]
        descending = params.get("SortOrder", "Ascending") == "Descending"
        stmt = stmt.order_by(column.desc() if descending else column.asc(),
                             TuningJobRow.id.desc() if descending else TuningJobRow.id.asc())
        with self.store.read() as s:
            arns = list(s.scalars(stmt.offset(offset).limit(limit + 1)))
        result: dict[str, Any] = {"HyperParameterTuningJobSummaries": [
            _tuning_summary(self.tuning.get(arn)) for arn in arns[:limit]]}
        if len(arns) > limit:
            result["NextToken"] = encode_token(offset + limit, query_key)
        return result

    def list_trials(self, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
        job = self.tuning.get(self._arn(ctx, params))
        query_key = {k: v for k, v in params.items() if k not in ("NextToken", "MaxResults")}
        offset = decode_token(params.get("NextToken"), query_key)
        limit = params.get("MaxResults") or 10
        trials = list(job.trials)
        if "StatusEquals" in params:
            trials = [t for t in trials if t.training_status == params["StatusEquals"]]
        sort_by = params.get("SortBy", "Name")
        descending = params.get("SortOrder", "Ascending") == "Descending"
        if sort_by == "FinalObjectiveMetricValue":
            # SageMaker leaves out the trials that have no objective value when sorting by it.
            trials = [t for t in trials if t.objective_value is not None]
        key = {"Name": lambda t: t.training_job_name, "CreationTime": lambda t: t.creation_time,
               "Status": lambda t: t.training_status,
               "FinalObjectiveMetricValue": lambda t: t.objective_value}[sort_by]
        trials.sort(key=lambda t: (key(t), t.number), reverse=descending)
        page = trials[offset:offset + limit]
        result: dict[str, Any] = {"TrainingJobSummaries": [trial_summary(job, t) for t in page]}
        if offset + limit < len(trials):
            result["NextToken"] = encode_token(offset + limit, query_key)
        return result

    def stop(self, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
        self.tuning.request_stop(self._arn(ctx, params))
        return {}

    def delete(self, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
        self.tuning.delete(self._arn(ctx, params))
        return {}


def trial_summary(job: TuningJobRecord, trial: TrialRecord) -> dict[str, Any]:
    """A HyperParameterTrainingJobSummary."""
    summary: dict[str, Any] = {
        "TrainingJobName": trial.training_job_name,
        "TrainingJobArn": trial.training_job_arn,
        "TuningJobName": job.name,
        "CreationTime": trial.creation_time,
        "TrainingJobStatus": trial.training_status,
        "TunedHyperParameters": trial.tuned,
        "ObjectiveStatus": trial.objective_status,
    }
    if trial.definition_name is not None:
        summary["TrainingJobDefinitionName"] = trial.definition_name
    if trial.training_start_time is not None:
        summary["TrainingStartTime"] = trial.training_start_time
    if trial.training_end_time is not None:
        summary["TrainingEndTime"] = trial.training_end_time
    if trial.failure_reason:
        summary["FailureReason"] = trial.failure_reason
    if trial.objective_value is not None:
        objective = job.objective(trial.definition_name)
        summary["FinalHyperParameterTuningJobObjectiveMetric"] = {
            "Type": objective["Type"], "MetricName": objective["MetricName"], "Value": trial.objective_value}
    return summary


def _echoed_ranges(ranges: dict[str, Any] | None) -> dict[str, Any] | None:
    """ParameterRanges as SageMaker echoes them: every list present, ScalingType Auto where none was given."""
    if ranges is None:
        return None
    echoed = {key: [{"ScalingType": "Auto", **r} for r in ranges.get(key, [])]
              for key in ("IntegerParameterRanges", "ContinuousParameterRanges")}
    echoed["CategoricalParameterRanges"] = list(ranges.get("CategoricalParameterRanges", []))
    return echoed


def _echoed(job: TuningJobRecord) -> dict[str, Any]:
    request = copy.deepcopy(job.request)
    config = request["HyperParameterTuningJobConfig"]
    config.setdefault("TrainingJobEarlyStoppingType", "Off")
    config["ResourceLimits"] = {**config["ResourceLimits"], "MaxNumberOfTrainingJobs": max_jobs(
        job.config, job.definitions)}
    if "ParameterRanges" in config:
        config["ParameterRanges"] = _echoed_ranges(config["ParameterRanges"])
    for key in ("TrainingJobDefinition", "TrainingJobDefinitions"):
        definitions = request.get(key)
        if definitions is None:
            continue
        for definition in definitions if isinstance(definitions, list) else [definitions]:
            # SageMaker tells every trial its objective in this static hyperparameter, and shows it here.
            objective = job.objective(definition.get("DefinitionName"))
            definition["StaticHyperParameters"] = {**(definition.get("StaticHyperParameters") or {}),
                                                   "_tuning_objective_metric": objective["MetricName"]}
            if "HyperParameterRanges" in definition:
                definition["HyperParameterRanges"] = _echoed_ranges(definition["HyperParameterRanges"])
            # SDK v2's tuner always sends HyperParameterTuningResourceConfig, and its HyperparameterTuner.attach
            # (and the warm-start helpers built on it) rebuild the estimator from this answer's ResourceConfig, so
            # the answer shows one: the ResourceConfig its trials get. With InstanceConfigs alone (an instance
            # chosen per trial) it stays as sent.
            tuning_resources = definition.get("HyperParameterTuningResourceConfig") or {}
            if "ResourceConfig" not in definition and "InstanceType" in tuning_resources:
                definition["ResourceConfig"] = resource_config(definition)
    return request


def describe_tuning_job(job: TuningJobRecord, parents: list[TuningJobRecord]) -> dict[str, Any]:
    out: dict[str, Any] = {
        **_echoed(job),
        "HyperParameterTuningJobName": job.name,
        "HyperParameterTuningJobArn": job.arn,
        "HyperParameterTuningJobStatus": job.status,
        "CreationTime": job.creation_time,
        "LastModifiedTime": job.last_modified_time,
        "TrainingJobStatusCounters": status_counters(job),
        "ObjectiveStatusCounters": objective_counters(job),
        "ConsumedResources": {"RuntimeInSeconds": runtime_seconds(job)},
        "TuningJobCompletionDetails": {"NumberOfTrainingJobsObjectiveNotImproving": job.not_improving},
    }
    if job.convergence_time is not None:
        out["TuningJobCompletionDetails"]["ConvergenceDetectedTime"] = job.convergence_time
    if job.end_time is not None:
        out["HyperParameterTuningEndTime"] = job.end_time
    if job.failure_reason:
        out["FailureReason"] = job.failure_reason
    best = best_trial(job)
    if best is not None:
        out["BestTrainingJob"] = trial_summary(job, best)
    warm = job.request.get("WarmStartConfig") or {}
    if warm.get("WarmStartType") == "IdenticalDataAndAlgorithm":
        # The best of this tuning job's trials and its parents' (only comparable when the data is the same).
        overall = [(j, t) for j in [job, *parents] if (t := best_trial(j)) is not None]
        if overall:
            winner = overall[0]
            for candidate in overall[1:]:
                if better(job.direction, candidate[1].objective_value, winner[1].objective_value):  # type: ignore[arg-type]
                    winner = candidate
            out["OverallBestTrainingJob"] = trial_summary(*winner)
    return out


def _tuning_summary(job: TuningJobRecord) -> dict[str, Any]:
    summary = {
        "HyperParameterTuningJobName": job.name,
        "HyperParameterTuningJobArn": job.arn,
        "HyperParameterTuningJobStatus": job.status,
        "Strategy": job.config["Strategy"],
        "CreationTime": job.creation_time,
        "LastModifiedTime": job.last_modified_time,
        "TrainingJobStatusCounters": status_counters(job),
        "ObjectiveStatusCounters": objective_counters(job),
        "ResourceLimits": {**job.config["ResourceLimits"], "MaxNumberOfTrainingJobs": max_jobs(job.config,
                                                                                                job.definitions)},
    }
    if job.end_time is not None:
        summary["HyperParameterTuningEndTime"] = job.end_time
    return summary

