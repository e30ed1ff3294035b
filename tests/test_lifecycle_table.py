"""The job state machine, without HTTP: every (status, secondary) pair against every SecondaryStatus.

The expected moves are written here from what SageMaker shows (the developer guide's
SecondaryStatusTransitions), not copied from smlocal.core.lifecycle, and every SecondaryStatus the botocore
model knows is tried from every state a job can be in.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import botocore.session
import pytest

from smlocal.core.errors import ApiError
from smlocal.core.lifecycle import IllegalTransition, Lifecycle, training_job_arn
from smlocal.core.store import JobRecord, Store

ACCOUNT, REGION = "123456789012", "us-east-1"

# What SageMaker can show next, from each (TrainingJobStatus, SecondaryStatus) smlocal uses:
# the phases in order, a failure from any phase, a stop from any phase that ends Stopped or
# MaxRuntimeExceeded, and Training's message changing in place ("Downloading the training image..."
# -> "Training image download completed. Training in progress.").
# Back to Starting from a later phase: RetryStrategy's retry ("When the job is retried, its SecondaryStatus
# is changed to STARTING", API reference) and a managed spot job's restart after Interrupted (the developer
# guide's spot sequence). Pending: waiting for capacity (here, a slot of the server).
EXPECTED_NEXT: dict[tuple[str, str], set[str]] = {
    # Starting changes its message in place (waiting for a free network, then not: runner.subnets).
    ("InProgress", "Starting"): {"Starting", "Pending", "Downloading", "Stopping", "Failed"},
    ("InProgress", "Pending"): {"Starting", "Stopping", "Failed"},
    ("InProgress", "Downloading"): {"Starting", "Training", "Stopping", "Failed"},
    ("InProgress", "Training"): {"Starting", "Training", "Interrupted", "Uploading", "Stopping", "Failed"},
    ("InProgress", "Interrupted"): {"Starting", "Pending", "Stopping", "Failed"},
    ("InProgress", "Uploading"): {"Completed", "Stopping", "Failed"},
    ("Stopping", "Stopping"): {"Stopped", "MaxRuntimeExceeded", "MaxWaitTimeExceeded"},
    ("Completed", "Completed"): set(),
    ("Failed", "Failed"): set(),
    ("Stopped", "Stopped"): set(),
    ("Stopped", "MaxRuntimeExceeded"): set(),
    ("Stopped", "MaxWaitTimeExceeded"): set(),
}
PRIMARY = {"Stopping": "Stopping", "Stopped": "Stopped", "MaxRuntimeExceeded": "Stopped",
           "MaxWaitTimeExceeded": "Stopped", "Completed": "Completed", "Failed": "Failed"}


def _model_enum(shape: str) -> list[str]:
    model = botocore.session.get_session().get_service_model("sagemaker")
    return list(model.shape_for(shape).enum)


ALL_SECONDARY = _model_enum("SecondaryStatus")


@pytest.fixture(scope="module")
def lifecycle(tmp_path_factory: pytest.TempPathFactory) -> Lifecycle:
    return Lifecycle(Store(tmp_path_factory.mktemp("lifecycle") / "smlocal.db"))


_names = itertools.count()


def _new_job(lifecycle: Lifecycle) -> str:
    name = f"job-{next(_names)}"
    lifecycle.create(account_id=ACCOUNT, region=REGION, name=name, request={"TrainingJobName": name}, tags=[])
    return training_job_arn(REGION, ACCOUNT, name)


# How a job gets to each state, through the same calls the runner and the API make.
Step = Callable[[Lifecycle, str], Any]
_claim: Step = lambda lc, arn: lc.claim(arn)  # noqa: E731
PATHS: dict[tuple[str, str], list[Step]] = {
    ("InProgress", "Starting"): [_claim],
    ("InProgress", "Pending"): [lambda lc, a: lc.mark_pending(a)],
    ("InProgress", "Interrupted"): [_claim, lambda lc, a: lc.advance(a, "Downloading"),
                                    lambda lc, a: lc.advance(a, "Training"),
                                    lambda lc, a: lc.set_runner_state(a, "running"), lambda lc, a: lc.interrupted(a)],
    ("InProgress", "Downloading"): [_claim, lambda lc, a: lc.advance(a, "Downloading")],
    ("InProgress", "Training"): [_claim, lambda lc, a: lc.advance(a, "Downloading"),
                                 lambda lc, a: lc.advance(a, "Training")],
    ("InProgress", "Uploading"): [_claim, lambda lc, a: lc.advance(a, "Downloading"),
                                  lambda lc, a: lc.advance(a, "Training"), lambda lc, a: lc.advance(a, "Uploading")],
    ("Stopping", "Stopping"): [_claim, lambda lc, a: lc.advance(a, "Downloading"), lambda lc, a: lc.request_stop(a)],
    ("Completed", "Completed"): [_claim, lambda lc, a: lc.advance(a, "Downloading"),
                                 lambda lc, a: lc.advance(a, "Training"), lambda lc, a: lc.advance(a, "Uploading"),
                                 lambda lc, a: lc.end(a, "Completed")],
    ("Failed", "Failed"): [_claim, lambda lc, a: lc.end(a, "Failed", "ClientError: x")],
    ("Stopped", "Stopped"): [lambda lc, a: lc.request_stop(a)],
    ("Stopped", "MaxRuntimeExceeded"): [_claim, lambda lc, a: lc.advance(a, "Downloading"),
                                        lambda lc, a: lc.stop_at_deadline(a), lambda lc, a: lc.end(a, "Completed")],
    ("Stopped", "MaxWaitTimeExceeded"): [_claim, lambda lc, a: lc.stop_at_deadline(a, "MaxWaitTimeExceeded"),
                                         lambda lc, a: lc.end(a, "Completed")],
}


def _job_in(lifecycle: Lifecycle, state: tuple[str, str]) -> str:
    arn = _new_job(lifecycle)
    for step in PATHS[state]:
        step(lifecycle, arn)
    job = lifecycle.get(arn)
    assert (job.status, job.secondary_status) == state
    return arn


def _snapshot(job: JobRecord) -> tuple[Any, ...]:
    return (job.status, job.secondary_status, job.runner_state, job.last_modified_time, job.transitions,
            job.failure_reason, job.stop_target)


def test_every_state_smlocal_uses_is_covered() -> None:
    assert set(PATHS) == set(EXPECTED_NEXT)
    assert {"Starting", "Downloading", "Training", "Uploading", "Stopping", "Stopped", "MaxRuntimeExceeded",
            "Completed", "Failed"} <= set(ALL_SECONDARY)


@pytest.mark.parametrize("state", list(EXPECTED_NEXT), ids=lambda s: f"{s[0]}-{s[1]}")
@pytest.mark.parametrize("target", ALL_SECONDARY)
def test_each_move_is_allowed_or_refused_as_sagemaker_shows(lifecycle: Lifecycle, state: tuple[str, str],
                                                           target: str) -> None:
    arn = _job_in(lifecycle, state)
    before = lifecycle.get(arn)
    if target in EXPECTED_NEXT[state]:
        after = lifecycle.advance(arn, target, "a message")
        assert after.secondary_status == target
        assert after.status == PRIMARY.get(target, "InProgress")
        assert after.transitions[-1].status == target and after.transitions[-1].message == "a message"
        assert lifecycle.get(arn) == after  # persisted
        if target == state[1]:
            assert len(after.transitions) == len(before.transitions)  # one entry per status, updated in place
        else:
            assert len(after.transitions) == len(before.transitions) + 1
            assert before.transitions[-1].end_time is None or before.status == "Stopping"
            assert after.transitions[-2].end_time == after.transitions[-1].start_time
        if after.status in ("Completed", "Failed", "Stopped"):
            assert after.runner_state == "done" and after.transitions[-1].end_time is not None
    else:
        with pytest.raises(IllegalTransition):
            lifecycle.advance(arn, target)
        assert _snapshot(lifecycle.get(arn)) == _snapshot(before)


@pytest.mark.parametrize("state", list(EXPECTED_NEXT), ids=lambda s: f"{s[0]}-{s[1]}")
def test_stop_training_job_from_each_state(lifecycle: Lifecycle, state: tuple[str, str]) -> None:
    arn = _job_in(lifecycle, state)
    if state[0] != "InProgress":
        with pytest.raises(ApiError) as err:
            lifecycle.request_stop(arn)
        assert (err.value.code, err.value.message) == (
            "ValidationException", f"The request was rejected because the training job is in status {state[0]}.")
        return
    queued = lifecycle.get(arn).runner_state == "queued"
    job = lifecycle.request_stop(arn)
    if queued:  # waiting for a slot or a restart: nothing runs, the stop ends it at once
        assert (job.status, job.secondary_status) == ("Stopped", "Stopped")
        assert [t.status for t in job.transitions[-2:]] == ["Stopping", "Stopped"]
        return
    assert (job.status, job.secondary_status, job.stop_target) == ("Stopping", "Stopping", "Stopped")
    assert job.transitions[-1].message == "Stopping the training job"


def test_a_queued_job_is_stopped_at_once_and_a_second_stop_is_refused(lifecycle: Lifecycle) -> None:
    arn = _new_job(lifecycle)
    job = lifecycle.request_stop(arn)
    assert (job.status, job.secondary_status, job.runner_state) == ("Stopped", "Stopped", "done")
    assert [t.status for t in job.transitions] == ["Starting", "Stopping", "Stopped"]
    with pytest.raises(ApiError, match="is in status Stopped."):
        lifecycle.request_stop(arn)

    running = _job_in(lifecycle, ("InProgress", "Training"))
    lifecycle.request_stop(running)
    with pytest.raises(ApiError) as err:
        lifecycle.request_stop(running)
    assert err.value.message == "The request was rejected because the training job is in status Stopping."


def test_a_stopping_job_reads_stopping_while_it_uploads_and_ends_as_its_stop_says(lifecycle: Lifecycle) -> None:
    arn = _job_in(lifecycle, ("InProgress", "Training"))
    lifecycle.request_stop(arn)
    # The runner saves the model: no Uploading shows, the job stays Stopping/Stopping.
    with pytest.raises(IllegalTransition):
        lifecycle.advance(arn, "Uploading")
    assert (lifecycle.get(arn).status, lifecycle.get(arn).secondary_status) == ("Stopping", "Stopping")
    # The deadline passing now does not change how the stop ends.
    assert lifecycle.stop_at_deadline(arn).stop_target == "Stopped"
    # However the algorithm ended, a stopped job is Stopped.
    job = lifecycle.end(arn, "Completed")
    assert (job.status, job.secondary_status, job.failure_reason) == ("Stopped", "Stopped", None)
    assert [t.status for t in job.transitions] == ["Starting", "Downloading", "Training", "Stopping", "Stopped"]
    # Ending again changes nothing (a restarted server may finish a job twice).
    assert lifecycle.end(arn, "Failed", "late") == job


def test_the_deadline_stops_with_max_runtime_exceeded_even_during_upload(lifecycle: Lifecycle) -> None:
    arn = _job_in(lifecycle, ("InProgress", "Uploading"))
    job = lifecycle.stop_at_deadline(arn)
    assert (job.status, job.secondary_status, job.stop_target) == ("Stopping", "Stopping", "MaxRuntimeExceeded")
    job = lifecycle.end(arn, "Failed", "AlgorithmError: killed")
    assert (job.status, job.secondary_status) == ("Stopped", "MaxRuntimeExceeded")
    # A job that ended is left alone by a late deadline.
    assert lifecycle.stop_at_deadline(arn) == job


def test_finish_stop_ends_a_stop_as_it_was_asked_for(lifecycle: Lifecycle) -> None:
    deadline = _job_in(lifecycle, ("InProgress", "Training"))
    lifecycle.stop_at_deadline(deadline)
    assert lifecycle.finish_stop(deadline).secondary_status == "MaxRuntimeExceeded"
    asked = _job_in(lifecycle, ("InProgress", "Downloading"))
    lifecycle.request_stop(asked)
    assert lifecycle.finish_stop(asked).secondary_status == "Stopped"
    running = _job_in(lifecycle, ("InProgress", "Training"))
    with pytest.raises(IllegalTransition):
        lifecycle.finish_stop(running)  # nobody asked it to stop
    assert lifecycle.get(running).status == "InProgress"


def test_training_message_changes_in_place_and_times_follow_the_phases(lifecycle: Lifecycle) -> None:
    arn = _job_in(lifecycle, ("InProgress", "Downloading"))
    downloading = lifecycle.get(arn)
    assert downloading.training_start_time == downloading.transitions[-1].start_time
    lifecycle.advance(arn, "Training", "Downloading the training image...")
    job = lifecycle.advance(arn, "Training")
    assert [(t.status, t.message) for t in job.transitions] == [
        ("Starting", "Preparing the instances for training"), ("Downloading", "Downloading input data"),
        ("Training", "Training image download completed. Training in progress.")]
    job = lifecycle.end(lifecycle.advance(arn, "Uploading").arn, "Completed")
    assert job.training_end_time == job.transitions[-1].start_time == job.last_modified_time
    for before, after in zip(job.transitions, job.transitions[1:], strict=False):
        assert before.end_time == after.start_time


RUNNER_STATES = ["queued", "preparing", "running", "terminating"]
EXPECTED_RUNNER_NEXT = {
    "queued": {"preparing"},  # claim (and done, only by ending)
    "preparing": {"running", "queued"},  # containers started, or back to the queue after a restart
    "running": {"terminating"},
    "terminating": set(),
}


@pytest.mark.parametrize("state", RUNNER_STATES)
@pytest.mark.parametrize("target", RUNNER_STATES + ["done"])
def test_runner_progress_moves_only_forward(lifecycle: Lifecycle, state: str, target: str) -> None:
    arn = _new_job(lifecycle)
    for step in RUNNER_STATES[1:RUNNER_STATES.index(state) + 1]:
        lifecycle.claim(arn) if step == "preparing" else lifecycle.set_runner_state(arn, step)
    assert lifecycle.get(arn).runner_state == state
    if target == state:
        assert lifecycle.set_runner_state(arn, target).runner_state == state  # no change
    elif target in EXPECTED_RUNNER_NEXT[state]:
        job = lifecycle.set_runner_state(arn, target)
        assert job.runner_state == target and job.runner_since is not None
    else:
        with pytest.raises(IllegalTransition):
            lifecycle.set_runner_state(arn, target)
        assert lifecycle.get(arn).runner_state == state


def test_claim_takes_only_a_queued_in_progress_job(lifecycle: Lifecycle) -> None:
    arn = _new_job(lifecycle)
    assert lifecycle.claim(arn).runner_state == "preparing"
    assert lifecycle.claim(arn) is None
    stopped = _new_job(lifecycle)
    lifecycle.request_stop(stopped)
    assert lifecycle.claim(stopped) is None


def test_listeners_hear_of_a_change_after_it_is_committed(tmp_path: Path) -> None:
    lifecycle = Lifecycle(Store(tmp_path / "smlocal.db"))
    heard: list[tuple[str, str, str]] = []

    def listener(job: JobRecord) -> None:
        # What the listener is told is what any reader already sees.
        stored = lifecycle.get(job.arn)
        assert (stored.status, stored.secondary_status) == (job.status, job.secondary_status)
        heard.append((job.status, job.secondary_status, job.runner_state))

    lifecycle.subscribe(listener)
    arn = _new_job(lifecycle)
    lifecycle.claim(arn)
    lifecycle.request_stop(arn)
    assert heard == [("InProgress", "Starting", "queued"), ("InProgress", "Starting", "preparing"),
                     ("Stopping", "Stopping", "preparing")]
