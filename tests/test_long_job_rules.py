"""The rules of long jobs without containers: retries, interruptions, billable time and the clocks."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest

from runner.time_limits import next_limit
from smlocal.core.errors import ApiError
from smlocal.core.jobspec import JobSpec
from smlocal.core.lifecycle import Lifecycle, billable_seconds, interrupted_seconds, training_job_arn
from smlocal.core.store import JobRecord, Store, Transition

ACCOUNT, REGION = "123456789012", "us-east-1"
_names = itertools.count()


@pytest.fixture()
def lifecycle(tmp_path: Path) -> Lifecycle:
    return Lifecycle(Store(tmp_path / "smlocal.db"))


def _job(lifecycle: Lifecycle, **request: object) -> str:
    name = f"job-{next(_names)}"
    lifecycle.create(account_id=ACCOUNT, region=REGION, name=name, request={"TrainingJobName": name, **request},
                     tags=[])
    return training_job_arn(REGION, ACCOUNT, name)


def _training(lifecycle: Lifecycle, arn: str) -> None:
    lifecycle.claim(arn)
    lifecycle.advance(arn, "Downloading")
    lifecycle.advance(arn, "Training")
    lifecycle.set_runner_state(arn, "running")


def test_a_retry_counts_attempts_and_stops_when_none_is_left(lifecycle: Lifecycle) -> None:
    arn = _job(lifecycle)
    _training(lifecycle, arn)
    job = lifecycle.retry(arn, "InternalServerError: ContainerGone: x", max_retries=1)
    assert job is not None
    assert (job.secondary_status, job.runner_state, job.attempt) == ("Starting", "queued", 2)
    assert job.transitions[-1].message == (
        "Preparing the instances for training (attempt 2 of 2, after: InternalServerError: ContainerGone: x)")
    _training(lifecycle, arn)
    assert lifecycle.retry(arn, "again", max_retries=1) is None  # the one retry was used
    assert lifecycle.get(arn).attempt == 2
    # A job being stopped is never retried.
    stopping = _job(lifecycle)
    _training(lifecycle, stopping)
    lifecycle.request_stop(stopping)
    assert lifecycle.retry(stopping, "fault", max_retries=3) is None


def test_an_interruption_is_asked_for_then_carried_out(lifecycle: Lifecycle) -> None:
    arn = _job(lifecycle, EnableManagedSpotTraining=True)
    with pytest.raises(ApiError, match="can be interrupted only while it is Training; it is InProgress "
                                       r"\(Starting\)"):
        lifecycle.request_interrupt(arn)
    _training(lifecycle, arn)
    asked = lifecycle.request_interrupt(arn)
    assert asked.interrupt_requested_at is not None and asked.secondary_status == "Training"
    assert lifecycle.request_interrupt(arn).interrupt_requested_at == asked.interrupt_requested_at  # once
    job = lifecycle.interrupted(arn)
    assert (job.secondary_status, job.runner_state, job.interruptions, job.interrupt_requested_at) == (
        "Interrupted", "queued", 1, None)
    on_demand = _job(lifecycle)
    _training(lifecycle, on_demand)
    with pytest.raises(ApiError, match="is not a managed spot training job"):
        lifecycle.request_interrupt(on_demand)


def test_a_started_job_is_queued_again_only_by_a_retry_or_an_interruption(lifecycle: Lifecycle) -> None:
    from smlocal.core.lifecycle import IllegalTransition
    arn = _job(lifecycle)
    _training(lifecycle, arn)
    with pytest.raises(IllegalTransition):
        lifecycle.set_runner_state(arn, "queued")


def _record(transitions: list[tuple[str, float]], start: float | None, end: float | None) -> JobRecord:
    return JobRecord(name="j", arn="a", account_id=ACCOUNT, region=REGION, request={}, status="Completed",
                     secondary_status="Completed", failure_reason=None, creation_time=0.0, last_modified_time=0.0,
                     training_start_time=start, training_end_time=end, runner_state="done",
                     transitions=[Transition(s, t, None, "") for s, t in transitions])


def test_billable_time_leaves_out_each_interruption_until_the_restart_downloads() -> None:
    job = _record([("Starting", 0), ("Downloading", 1), ("Training", 2), ("Interrupted", 10), ("Starting", 11),
                   ("Downloading", 14.5), ("Training", 15), ("Interrupted", 20), ("Starting", 20.2),
                   ("Downloading", 21), ("Training", 22), ("Uploading", 40), ("Completed", 41)], 1, 41)
    assert interrupted_seconds(job) == pytest.approx(4.5 + 1.0)
    assert billable_seconds(job) == math.ceil(40 - 5.5)
    plain = _record([("Starting", 0), ("Downloading", 1), ("Training", 2), ("Completed", 9.2)], 1, 9.2)
    assert billable_seconds(plain) == 9  # as TrainingTimeInSeconds when never interrupted
    # Ended while waiting to come back (MaxWaitTimeExceeded): the wait to the end is left out.
    waited = _record([("Starting", 0), ("Downloading", 1), ("Training", 2), ("Interrupted", 5), ("Stopping", 8),
                      ("MaxWaitTimeExceeded", 8)], 1, 8)
    assert billable_seconds(waited) == 4


def _spec(**request: object) -> JobSpec:
    return JobSpec.from_request({"ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1}, **request})


def test_the_clock_that_runs_out_first_ends_the_job() -> None:
    created = _record([("Starting", 100)], None, None)
    created = JobRecord(**{**created.__dict__, "creation_time": 100.0, "status": "InProgress",
                           "secondary_status": "Starting"})
    assert next_limit(created, _spec()) is None  # no clock runs before training starts
    training = JobRecord(**{**created.__dict__, "training_start_time": 103.0})
    assert next_limit(training, _spec(StoppingCondition={"MaxRuntimeInSeconds": 60})).at == 163.0
    spot = _spec(EnableManagedSpotTraining=True,
                 StoppingCondition={"MaxRuntimeInSeconds": 60, "MaxWaitTimeInSeconds": 60})
    limit = next_limit(training, spot)
    assert (limit.at, limit.target) == (160.0, "MaxWaitTimeExceeded")  # from CreationTime
    pending = JobRecord(**{**created.__dict__, "secondary_status": "Pending",
                           "transitions": [Transition("Starting", 100, 101, ""), Transition("Pending", 101, None, "")]})
    stopping = {"StoppingCondition": {"MaxRuntimeInSeconds": 60, "MaxPendingTimeInSeconds": 7200}}
    gpu = _spec(**stopping, ResourceConfig={"InstanceType": "ml.g5.xlarge", "InstanceCount": 1})
    limit = next_limit(pending, gpu)
    assert (limit.at, limit.target, limit.message) == (
        7301.0, "Stopped", "Training job stopped: it was pending longer than MaxPendingTimeInSeconds")
    # CPU-only instance types: MaxPendingTimeInSeconds has no effect (API reference).
    assert next_limit(pending, _spec(**stopping)) is None
