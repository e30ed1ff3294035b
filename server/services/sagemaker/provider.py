"""The SageMaker operations smlocal serves: each takes validated input and returns the output dict."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.aws.context import RequestContext
from server.services.sagemaker.faults import CreateFaults
from server.services.sagemaker.listing import list_training_jobs
from server.services.sagemaker.rules import (
    check_create_rules,
    check_file_systems,
    check_host_limit,
    check_instance_fit,
    check_local_channels,
    check_waiting_limit,
)
from server.services.sagemaker.tagging import Tags, check_arn_scope, check_tag_keys
from server.services.sagemaker.tuning import TuningOperations
from smlocal.core import warm_pools
from smlocal.core.errors import ApiError
from smlocal.core.file_systems import FileSystems
from smlocal.core.jobspec import DEFAULT_MAX_RUNTIME, model_artifacts_uri
from smlocal.core.lifecycle import Lifecycle, billable_seconds, training_job_arn, training_seconds
from smlocal.core.local_channels import LocalChannelRoots
from smlocal.core.logstore import JobLogKey, remove_job_logs
from smlocal.core.settings import default_max_hosts_per_job
from smlocal.core.simulation import check_tags
from smlocal.core.store import JobRecord, Store
from smlocal.core.tuning.lifecycle import TuningLifecycle

# The seed's required set for container jobs: recent models relaxed these for serverless jobs.
CREATE_REQUIRED = ("AlgorithmSpecification", "ResourceConfig", "StoppingCondition")


@dataclass(frozen=True)
class JobLimits:
    """What this server lets one job ask for (`--max-hosts-per-job`, `--local-channel-root`, `--file-system`)."""

    max_hosts_per_job: int = field(default_factory=default_max_hosts_per_job)
    local_roots: LocalChannelRoots = field(default_factory=LocalChannelRoots)
    file_systems: FileSystems = field(default_factory=FileSystems)
    # `--enforce-instance-resources`: this machine's (cores, memory GiB) every instance of a job must fit.
    machine: tuple[int, float] | None = None
    # `--max-concurrent-jobs` and `--max-waiting-jobs` of a server that runs jobs; None: nothing runs, so
    # every job waits and none is refused for it (--no-run-jobs).
    max_concurrent_jobs: int | None = None
    max_waiting_jobs: int | None = None


class Operations:
    """The SageMaker provider: one method per served operation."""

    extra_required = {"CreateTrainingJob": CREATE_REQUIRED}
    # Served on the event loop (server/app.py): a job and its transitions in plain SQL from a WAL snapshot on the
    # loop thread's own connection (Store.snapshot), so nothing it does waits for a writer or the pool.
    on_event_loop = frozenset({"DescribeTrainingJob"})

    def __init__(self, store: Store, lifecycle: Lifecycle, data_dir: Path | None = None,
                 limits: JobLimits | None = None, faults: CreateFaults | None = None,
                 tuning: TuningLifecycle | None = None) -> None:
        self.store = store
        self.lifecycle = lifecycle
        self.tuning = tuning or TuningLifecycle(store, lifecycle)
        self.tuning_operations = TuningOperations(store, self.tuning, self.check_training_request)
        # Where the jobs' log streams live (DeleteTrainingJob removes them).
        self.data_dir = data_dir
        self.tags = Tags(store)
        self.limits = limits or JobLimits()
        self.faults = faults or CreateFaults()
        # Counting the waiting jobs and storing the new one are one step: two requests at once could both
        # see room for one.
        self._create_lock = threading.Lock()

    def handlers(self) -> dict[str, Callable[[RequestContext, dict[str, Any]], dict[str, Any]]]:
        return {
            "CreateTrainingJob": self.create_training_job,
            "DescribeTrainingJob": self.describe_training_job,
            "ListTrainingJobs": self.list_training_jobs,
            "StopTrainingJob": self.stop_training_job,
            "UpdateTrainingJob": self.update_training_job,
            "DeleteTrainingJob": self.delete_training_job,
            "AddTags": self.add_tags,
            "ListTags": self.list_tags,
            "DeleteTags": self.delete_tags,
            **self.tuning_operations.handlers(),
        }

    # ---- training jobs --------------------------------------------------------------------

    def check_training_request(self, params: dict[str, Any]) -> None:
        """Every rule a CreateTrainingJob request meets beyond the model (a tuning job's trials meet them too)."""
        check_create_rules(params)
        check_tag_keys(params.get("Tags", []))
        # The smlocal:* tags scripting a simulated job (smlocal.core.simulation): a bad value is refused here.
        check_tags({t["Key"]: t.get("Value", "") for t in params.get("Tags", [])},
                   spot=bool(params.get("EnableManagedSpotTraining")))
        check_local_channels(params, self.limits.local_roots)
        check_file_systems(params, self.limits.file_systems)
        check_host_limit(params, self.limits.max_hosts_per_job)
        if self.limits.machine is not None:
            check_instance_fit(params, *self.limits.machine)

    def create_training_job(self, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
        self.check_training_request(params)
        # A scripted fault (smlocal:create-error, --simulate-rules), once the request is known valid: an API error
        # raised here stores nothing; a CapacityError gives the reason the job is created Failed with.
        failure_reason = self.faults.check(params)
        request = {k: v for k, v in params.items() if k != "Tags"}
        with self._create_lock:
            if failure_reason is None:
                self._check_waiting()
            job = self.lifecycle.create(
                account_id=ctx.account_id, region=ctx.region, name=params["TrainingJobName"],
                request=request, tags=params.get("Tags", []), failure_reason=failure_reason,
            )
        return {"TrainingJobArn": job.arn}

    def _check_waiting(self) -> None:
        limits = self.limits
        if limits.max_waiting_jobs is None or limits.max_concurrent_jobs is None:
            return
        check_waiting_limit(*self.lifecycle.queue_depth(), limits.max_concurrent_jobs, limits.max_waiting_jobs)

    def describe_training_job(self, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
        out = describe(self.lifecycle.get(self._arn(ctx, params)))
        tuning_job = self.tuning.tuning_job_of(out["TrainingJobArn"])
        if tuning_job is not None:
            out["TuningJobArn"] = tuning_job
        return out

    def list_training_jobs(self, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
        return list_training_jobs(self.store, ctx.account_id, ctx.region, params)

    def stop_training_job(self, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
        self.lifecycle.request_stop(self._arn(ctx, params))
        return {}

    def update_training_job(self, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
        """UpdateTrainingJob: the warm pool's KeepAlivePeriodInSeconds, and RemoteDebugConfig. The profiler is
        not run by smlocal, so its settings are refused rather than accepted and ignored."""
        arn = self._arn(ctx, params)
        unsupported = [k for k in ("ProfilerConfig", "ProfilerRuleConfigurations") if k in params]
        if unsupported:
            raise ApiError("ValidationException", f"smlocal does not run SageMaker Debugger's profiler: "
                           f"{', '.join(unsupported)} cannot be updated.")
        job = self.lifecycle.get(arn)
        keep_alive = (params.get("ResourceConfig") or {}).get("KeepAlivePeriodInSeconds")
        if keep_alive is not None:
            job = self.lifecycle.update_keep_alive(arn, keep_alive)
        # Remote debugging (`smlocal shell`): on or off while the job is Downloading or Training.
        remote_debug = (params.get("RemoteDebugConfig") or {}).get("EnableRemoteDebug")
        if remote_debug is not None:
            job = self.lifecycle.update_remote_debug(arn, remote_debug)
        return {"TrainingJobArn": job.arn}

    def delete_training_job(self, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
        arn = self._arn(ctx, params)
        job = self.lifecycle.get(arn)
        # The job's metric points go with its row (the foreign key cascades).
        self.lifecycle.delete(arn)
        if self.data_dir is not None:
            remove_job_logs(self.data_dir, JobLogKey.of(job.account_id, job.region, job.name, job.creation_time))
        return {}

    @staticmethod
    def _arn(ctx: RequestContext, params: dict[str, Any]) -> str:
        return training_job_arn(ctx.region, ctx.account_id, params["TrainingJobName"])

    # ---- tags -----------------------------------------------------------------------------

    def add_tags(self, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
        check_arn_scope(params["ResourceArn"], ctx.region, ctx.account_id, "AddTags")
        return {"Tags": self.tags.add(params["ResourceArn"], params["Tags"])}

    def list_tags(self, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
        check_arn_scope(params["ResourceArn"], ctx.region, ctx.account_id, "ListTags")
        return self.tags.list(params["ResourceArn"], params.get("MaxResults"), params.get("NextToken"))

    def delete_tags(self, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
        check_arn_scope(params["ResourceArn"], ctx.region, ctx.account_id, "DeleteTags")
        self.tags.delete(params["ResourceArn"], params["TagKeys"])
        return {}


def _echoed_request(request: dict[str, Any]) -> dict[str, Any]:
    """The request as SageMaker echoes it, with the defaults it fills in.

    SDK v2's Estimator.attach reads OutputDataConfig.KmsKeyId and StoppingCondition.MaxRuntimeInSeconds
    without a default, as SageMaker always returns them.
    """
    echoed = dict(request)
    if "OutputDataConfig" in echoed:
        echoed["OutputDataConfig"] = {"KmsKeyId": "", **echoed["OutputDataConfig"]}
    if "StoppingCondition" in echoed:
        echoed["StoppingCondition"] = {"MaxRuntimeInSeconds": DEFAULT_MAX_RUNTIME, **echoed["StoppingCondition"]}
    return echoed


def describe(job: JobRecord) -> dict[str, Any]:
    """DescribeTrainingJob's answer: the echoed request plus everything the job has become."""
    out: dict[str, Any] = {
        "EnableNetworkIsolation": False,
        "EnableInterContainerTrafficEncryption": False,
        "EnableManagedSpotTraining": False,
        **_echoed_request(job.request),
        "TrainingJobName": job.name,
        "TrainingJobArn": job.arn,
        "ModelArtifacts": {"S3ModelArtifacts": model_artifacts_uri(job.request["OutputDataConfig"], job.name)},
        "TrainingJobStatus": job.status,
        "SecondaryStatus": job.secondary_status,
        "CreationTime": job.creation_time,
        "LastModifiedTime": job.last_modified_time,
        "SecondaryStatusTransitions": [
            {"Status": t.status, "StartTime": t.start_time, "StatusMessage": t.message}
            | ({"EndTime": t.end_time} if t.end_time is not None else {})
            for t in job.transitions
        ],
    }
    if job.failure_reason:
        out["FailureReason"] = job.failure_reason
    if job.training_start_time is not None:
        out["TrainingStartTime"] = job.training_start_time
    if job.training_end_time is not None:
        out["TrainingEndTime"] = job.training_end_time
    seconds = training_seconds(job)
    if seconds is not None:
        out["TrainingTimeInSeconds"] = seconds
        out["BillableTimeInSeconds"] = billable_seconds(job)
    if job.final_metrics:
        out["FinalMetricDataList"] = job.final_metrics
    if "ResourceConfig" in out and (job.keep_alive_seconds or "KeepAlivePeriodInSeconds" in out["ResourceConfig"]):
        # As UpdateTrainingJob last set it.
        out["ResourceConfig"] = {**out["ResourceConfig"], "KeepAlivePeriodInSeconds": job.keep_alive_seconds}
    pool = warm_pools.status_shape(job.warm_pool_status, job.warm_pool_retained_seconds, job.warm_pool_reused_by)
    if pool is not None:
        out["WarmPoolStatus"] = pool
    return out
