"""smlocal's own operations: a spot interruption on demand, a job's progress beyond DescribeTrainingJob, and
a way into a running host (ExecuteCommand, StartSession: server.services.smlocal.host_access)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from server.aws.context import RequestContext
from server.services.smlocal.host_access import HostAccess
from smlocal.core.jobspec import JobSpec
from smlocal.core.lifecycle import Lifecycle, training_job_arn

# The runner's view of a job it drives (server.app.JobRunner.progress): None when it does not drive it.
Progress = Callable[[str], "list[dict[str, Any]] | None"]


class Control:
    def __init__(self, lifecycle: Lifecycle, progress: Progress, hosts: HostAccess) -> None:
        self._lifecycle = lifecycle
        self._progress = progress
        self._hosts = hosts

    def handlers(self) -> dict[str, Callable[[RequestContext, dict[str, Any]], dict[str, Any]]]:
        return {"InterruptTrainingJob": self.interrupt, "DescribeTrainingJobProgress": self.progress,
                **self._hosts.handlers()}

    def interrupt(self, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
        job = self._lifecycle.request_interrupt(training_job_arn(ctx.region, ctx.account_id, params["TrainingJobName"]))
        return {"TrainingJobArn": job.arn}

    def progress(self, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
        arn = training_job_arn(ctx.region, ctx.account_id, params["TrainingJobName"])
        job = self._lifecycle.get(arn)  # ValidationException "Requested resource not found." as SageMaker's
        spec = JobSpec.from_job(job)
        out: dict[str, Any] = {
            "TrainingJobName": job.name, "TrainingJobArn": job.arn, "Attempt": job.attempt,
            "MaximumRetryAttempts": spec.max_retry_attempts, "Interruptions": job.interruptions,
            "InterruptRequested": job.interrupt_requested_at is not None,
        }
        folders = self._progress(arn)
        if folders is not None:
            out["SyncedFolders"] = folders
        return out
