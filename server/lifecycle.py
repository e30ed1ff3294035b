"""The training-job state machine: the only place a job's status changes.

Every change is persisted (with its SecondaryStatusTransitions entry) in one transaction before any
caller can report it.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from server.errors import ApiError
from server.store import JobRecord, JobRow, Store, TagRow, TransitionRow

IN_PROGRESS = "InProgress"
COMPLETED = "Completed"
FAILED = "Failed"
STOPPING = "Stopping"
STOPPED = "Stopped"
TERMINAL_STATUSES = frozenset({COMPLETED, FAILED, STOPPED})

# SecondaryStatus -> TrainingJobStatus.
PRIMARY_OF = {
    "Starting": IN_PROGRESS,
    "Pending": IN_PROGRESS,
    "Downloading": IN_PROGRESS,
    "DownloadingTrainingImage": IN_PROGRESS,
    "Training": IN_PROGRESS,
    "Interrupted": IN_PROGRESS,
    "Restarting": IN_PROGRESS,
    "Uploading": IN_PROGRESS,
    "Stopping": STOPPING,
    "Stopped": STOPPED,
    "MaxRuntimeExceeded": STOPPED,
    "MaxWaitTimeExceeded": STOPPED,
    "Completed": COMPLETED,
    "Failed": FAILED,
}

# The messages SageMaker shows in SecondaryStatusTransitions.
DEFAULT_MESSAGES = {
    "Starting": "Preparing the instances for training",
    "Pending": "Waiting for an instance to become available",
    "Downloading": "Downloading input data",
    "DownloadingTrainingImage": "Downloading the training image",
    "Training": "Training image download completed. Training in progress.",
    "Uploading": "Uploading generated training model",
    "Completed": "Training job completed",
    "Failed": "Training job failed",
    "Stopping": "Stopping the training job",
    "Stopped": "Training job stopped",
    "MaxRuntimeExceeded": "Training job stopped: it exceeded MaxRuntimeInSeconds",
    "MaxWaitTimeExceeded": "Training job stopped: it exceeded MaxWaitTimeInSeconds",
    "Interrupted": "Training job interrupted",
    "Restarting": "Restarting the training job",
}

_TRAINING_STARTED = frozenset({"Downloading", "Training"})


def training_job_arn(region: str, account_id: str, name: str) -> str:
    # SageMaker lower-cases the name in training-job ARNs, which also makes names unique
    # regardless of case.
    return f"arn:aws:sagemaker:{region}:{account_id}:training-job/{name.lower()}"


class IllegalTransition(RuntimeError):
    """The runner asked for a change the state machine forbids (e.g. anything after a terminal status)."""


def _allowed(current_status: str, new_secondary: str) -> bool:
    new_status = PRIMARY_OF[new_secondary]
    if current_status in TERMINAL_STATUSES:
        return False
    if current_status == STOPPING:
        # Once a stop is asked for, the job can only end (or keep uploading what it saved).
        return new_status in TERMINAL_STATUSES or new_secondary == "Uploading"
    return True


def _record_transition(row: JobRow, secondary: str, message: str | None, now: float) -> None:
    if row.transitions:
        last = row.transitions[-1]
        if last.end_time is None:
            last.end_time = now
    terminal = PRIMARY_OF[secondary] in TERMINAL_STATUSES
    row.transitions.append(
        TransitionRow(
            status=secondary,
            start_time=now,
            end_time=now if terminal else None,
            message=message or DEFAULT_MESSAGES.get(secondary, secondary),
        )
    )


def _apply(row: JobRow, secondary: str, message: str | None, failure_reason: str | None, now: float) -> None:
    new_status = PRIMARY_OF[secondary]
    if secondary in _TRAINING_STARTED and row.training_start_time is None:
        row.training_start_time = now
    if new_status in TERMINAL_STATUSES:
        row.runner_state = "done"
        if row.training_start_time is not None:
            row.training_end_time = now
    if failure_reason is not None:
        row.failure_reason = failure_reason[:1024]
    row.status = new_status
    # While Stopping, SageMaker keeps SecondaryStatus Stopping even as it saves the model.
    if not (row.status == STOPPING and secondary == "Uploading"):
        row.secondary_status = secondary
    row.last_modified_time = now
    _record_transition(row, secondary, message, now)


def training_seconds(job: JobRecord) -> int | None:
    if job.training_start_time is None or job.training_end_time is None:
        return None
    return max(1, math.ceil(job.training_end_time - job.training_start_time))


class Lifecycle:
    def __init__(self, store: Store) -> None:
        self.store = store

    # ---- API side -------------------------------------------------------------------------

    def create(self, *, account_id: str, region: str, name: str, request: dict[str, Any],
               tags: list[dict[str, str]]) -> JobRecord:
        arn = training_job_arn(region, account_id, name)
        now = time.time()
        try:
            with self.store.transaction() as s:
                row = JobRow(
                    account_id=account_id, region=region, name=name, arn=arn,
                    request_json=json.dumps(request), status=IN_PROGRESS, secondary_status="Starting",
                    creation_time=now, last_modified_time=now, runner_state="queued",
                )
                _record_transition(row, "Starting", None, now)
                s.add(row)
                for tag in tags:
                    s.add(TagRow(resource_arn=arn, key=tag["Key"], value=tag.get("Value", "")))
                s.flush()
                return JobRecord.from_row(row)
        except IntegrityError:
            raise ApiError(
                "ResourceInUse", f"Training job names must be unique within an AWS account and region, "
                f"and a training job with this name already exists ({arn})"
            ) from None

    def request_stop(self, arn: str) -> JobRecord:
        with self.store.transaction() as s:
            row = self._get_row(s, arn)
            if row.status != IN_PROGRESS:
                raise ApiError(
                    "ValidationException",
                    f"The request was rejected because the training job is in status {row.status}.",
                )
            now = time.time()
            _apply(row, "Stopping", None, None, now)
            if row.runner_state == "queued":
                # Nothing runs yet, so there is nothing to wait for.
                _apply(row, "Stopped", None, None, now)
            return JobRecord.from_row(row)

    def delete(self, arn: str) -> None:
        with self.store.transaction() as s:
            row = self._get_row(s, arn)
            if row.status not in TERMINAL_STATUSES:
                raise ApiError(
                    "ValidationException",
                    f"The request was rejected because the training job is in status {row.status}.",
                )
            s.query(TagRow).filter(TagRow.resource_arn == row.arn).delete()
            s.delete(row)

    def get(self, arn: str) -> JobRecord:
        with self.store.transaction() as s:
            return JobRecord.from_row(self._get_row(s, arn))

    def exists(self, arn: str) -> bool:
        with self.store.transaction() as s:
            return s.scalars(select(JobRow.id).where(JobRow.arn == arn)).first() is not None

    @staticmethod
    def _get_row(s: Any, arn: str) -> JobRow:
        row = s.scalars(select(JobRow).where(JobRow.arn == arn)).first()
        if row is None:
            raise ApiError("ValidationException", "Requested resource not found.")
        return row

    # ---- runner side ----------------------------------------------------------------------

    def queued_jobs(self, limit: int) -> list[JobRecord]:
        """Jobs waiting for a runner, oldest first."""
        with self.store.transaction() as s:
            rows = s.scalars(
                select(JobRow)
                .where(JobRow.runner_state == "queued", JobRow.status == IN_PROGRESS)
                .order_by(JobRow.creation_time, JobRow.id)
                .limit(limit)
            ).all()
            return [JobRecord.from_row(r) for r in rows]

    def claimed_jobs(self) -> list[JobRecord]:
        """Jobs a runner had taken and not finished: what a restarted server must adopt or fail."""
        with self.store.transaction() as s:
            rows = s.scalars(select(JobRow).where(JobRow.runner_state == "claimed")).all()
            return [JobRecord.from_row(r) for r in rows]

    def claim(self, arn: str) -> JobRecord | None:
        """Take a queued job for running; None if someone else took it or it was stopped meanwhile."""
        with self.store.transaction() as s:
            row = s.scalars(select(JobRow).where(JobRow.arn == arn)).first()
            if row is None or row.runner_state != "queued" or row.status != IN_PROGRESS:
                return None
            row.runner_state = "claimed"
            return JobRecord.from_row(row)

    def advance(self, arn: str, secondary: str, message: str | None = None, *,
                failure_reason: str | None = None) -> JobRecord:
        """Move a job to a SecondaryStatus (the primary status follows from it)."""
        if secondary not in PRIMARY_OF:
            raise IllegalTransition(f"unknown secondary status {secondary!r}")
        with self.store.transaction() as s:
            row = s.scalars(select(JobRow).where(JobRow.arn == arn)).first()
            if row is None:
                raise IllegalTransition(f"job {arn} no longer exists")
            if not _allowed(row.status, secondary):
                raise IllegalTransition(f"{arn}: {row.status}/{row.secondary_status} -> {secondary}")
            _apply(row, secondary, message, failure_reason, time.time())
            return JobRecord.from_row(row)

    def refresh(self, arn: str) -> JobRecord | None:
        with self.store.transaction() as s:
            row = s.scalars(select(JobRow).where(JobRow.arn == arn)).first()
            return JobRecord.from_row(row) if row else None

    def set_final_metrics(self, arn: str, metrics: list[dict[str, Any]]) -> None:
        with self.store.transaction() as s:
            row = s.scalars(select(JobRow).where(JobRow.arn == arn)).first()
            if row is not None:
                row.final_metrics_json = json.dumps(metrics[:40])
