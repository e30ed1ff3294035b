"""The training-job state machine: the only place a job's status changes.

The machine is data: `TRANSITIONS` says which SecondaryStatus a job in a (TrainingJobStatus,
SecondaryStatus) pair may move to; the TrainingJobStatus always follows from the SecondaryStatus
(`PRIMARY_OF`). Beside the statuses a client sees, each job carries the runner's own progress
(`RUNNER_TRANSITIONS`: queued -> preparing -> running -> terminating -> done), which tells a restarted
server whether to run a job again (its containers never started), adopt it or end it. A job is `done`
exactly when its status is terminal.

Every change is persisted (with its SecondaryStatusTransitions entry) in one transaction before any
caller can report it; listeners (the runner) hear of it only after the commit.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from smlocal.core import warm_pools
from smlocal.core.errors import ApiError
from smlocal.core.store import JobRecord, JobRow, Store, TagRow, TransitionRow, read_job

log = logging.getLogger("smlocal.lifecycle")

IN_PROGRESS = "InProgress"
COMPLETED = "Completed"
FAILED = "Failed"
STOPPING = "Stopping"
STOPPED = "Stopped"
TERMINAL_STATUSES = frozenset({COMPLETED, FAILED, STOPPED})

# SecondaryStatus values smlocal shows.
STARTING = "Starting"
PENDING = "Pending"
DOWNLOADING = "Downloading"
TRAINING = "Training"
UPLOADING = "Uploading"
INTERRUPTED = "Interrupted"
MAX_RUNTIME_EXCEEDED = "MaxRuntimeExceeded"
MAX_WAIT_TIME_EXCEEDED = "MaxWaitTimeExceeded"

# SecondaryStatus -> TrainingJobStatus, for every SecondaryStatus SageMaker has.
PRIMARY_OF = {
    "Starting": IN_PROGRESS,
    "Pending": IN_PROGRESS,
    "LaunchingMLInstances": IN_PROGRESS,
    "PreparingTrainingStack": IN_PROGRESS,
    "Downloading": IN_PROGRESS,
    "DownloadingTrainingImage": IN_PROGRESS,
    "Training": IN_PROGRESS,
    "Interrupted": IN_PROGRESS,
    "Restarting": IN_PROGRESS,
    "Updating": IN_PROGRESS,
    "Uploading": IN_PROGRESS,
    "Stopping": STOPPING,
    "Stopped": STOPPED,
    "MaxRuntimeExceeded": STOPPED,
    "MaxWaitTimeExceeded": STOPPED,
    "Completed": COMPLETED,
    "Failed": FAILED,
}

# The state machine. Key: where a job is; value: the SecondaryStatus values it may move to.
# Moving to the SecondaryStatus a job already has updates the StatusMessage of its transition in place
# (SageMaker's Training entry starts as "Downloading the training image..." and becomes "Training image
# download completed. Training in progress."): that is allowed only where listed.
#
# Back to Starting: a retry after a platform fault (RetryStrategy), or a spot job's new run after it was
# Interrupted. Pending: waiting for one of the server's job slots (--max-concurrent-jobs), SageMaker's
# "waiting for compute capacity".
TRANSITIONS: dict[tuple[str, str], frozenset[str]] = {
    (IN_PROGRESS, STARTING): frozenset({STARTING, PENDING, DOWNLOADING, STOPPING, FAILED}),
    (IN_PROGRESS, PENDING): frozenset({STARTING, STOPPING, FAILED}),
    (IN_PROGRESS, DOWNLOADING): frozenset({STARTING, TRAINING, STOPPING, FAILED}),
    (IN_PROGRESS, TRAINING): frozenset({STARTING, TRAINING, INTERRUPTED, UPLOADING, STOPPING, FAILED}),
    (IN_PROGRESS, INTERRUPTED): frozenset({STARTING, PENDING, STOPPING, FAILED}),
    (IN_PROGRESS, UPLOADING): frozenset({COMPLETED, FAILED, STOPPING}),
    # Once Stopping, a job reads Stopping until the stop ends, even while it saves what the algorithm
    # left: the upload is not a visible transition then. Which of the two it ends in is fixed when the
    # stop starts (`stop_target`): a StopTrainingJob (or MaxPendingTimeInSeconds), MaxRuntimeInSeconds,
    # or MaxWaitTimeInSeconds.
    (STOPPING, STOPPING): frozenset({STOPPED, MAX_RUNTIME_EXCEEDED, MAX_WAIT_TIME_EXCEEDED}),
    (COMPLETED, COMPLETED): frozenset(),
    (FAILED, FAILED): frozenset(),
    (STOPPED, STOPPED): frozenset(),
    (STOPPED, MAX_RUNTIME_EXCEEDED): frozenset(),
    (STOPPED, MAX_WAIT_TIME_EXCEEDED): frozenset(),
}

# The phases of an InProgress job in order; a job run again after a restart does not go back.
PHASE_ORDER = (STARTING, DOWNLOADING, TRAINING, UPLOADING)

# The runner's progress. queued: waiting for a slot. preparing: claimed, its containers not started yet
# (a restart puts it back in the queue). running: containers started (a restart adopts them).
# terminating: SIGTERM sent, the grace period runs (a restart continues it without signalling again).
# Back to queued from running or terminating: the job runs again on fresh containers (a retry, a spot
# interruption).
QUEUED, PREPARING, RUNNING, TERMINATING, DONE = "queued", "preparing", "running", "terminating", "done"
RUNNER_TRANSITIONS: dict[str, frozenset[str]] = {
    QUEUED: frozenset({PREPARING, DONE}),
    PREPARING: frozenset({RUNNING, QUEUED, DONE}),
    RUNNING: frozenset({TERMINATING, DONE, QUEUED}),
    TERMINATING: frozenset({DONE, QUEUED}),
    DONE: frozenset(),
}
UNFINISHED_RUNNER_STATES = (PREPARING, RUNNING, TERMINATING)

# The messages SageMaker shows in SecondaryStatusTransitions.
DEFAULT_MESSAGES = {
    "Starting": "Preparing the instances for training",
    "Pending": "Waiting for an instance to become available",
    "Downloading": "Downloading input data",
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
PULLING_IMAGE_MESSAGE = "Downloading the training image..."
# smlocal's own, in SageMaker's words: every address block for job networks is in use (runner.subnets).
WAITING_FOR_NETWORK_MESSAGE = f"{DEFAULT_MESSAGES[STARTING]}: waiting for a free network"
PENDING_TOO_LONG_MESSAGE = "Training job stopped: it was pending longer than MaxPendingTimeInSeconds"


def retry_message(attempt: int, max_retries: int, reason: str) -> str:
    """Starting's message on a retry: which attempt, and the platform fault that caused it."""
    return f"{DEFAULT_MESSAGES[STARTING]} (attempt {attempt} of {max_retries + 1}, after: {reason})"[:1024]


def restart_message(interruptions: int) -> str:
    """Starting's message when a spot job runs again after an interruption."""
    return f"{DEFAULT_MESSAGES['Restarting']} after spot interruption {interruptions}"


def training_job_arn(region: str, account_id: str, name: str) -> str:
    # SageMaker lower-cases the name in training-job ARNs, which also makes names unique
    # regardless of case.
    return f"arn:aws:sagemaker:{region}:{account_id}:training-job/{name.lower()}"


class IllegalTransition(RuntimeError):
    """The runner asked for a change the state machine forbids (e.g. anything after a terminal status)."""


def allowed(status: str, secondary: str, new_secondary: str) -> bool:
    """Whether the table lets a job in (status, secondary) move to `new_secondary`."""
    return new_secondary in TRANSITIONS.get((status, secondary), frozenset())


def phase_reached(job: JobRecord, secondary: str) -> bool:
    """True if an InProgress job is at `secondary` or past it (a job run again does not go back)."""
    if secondary not in PHASE_ORDER or job.secondary_status not in PHASE_ORDER:
        return False
    return PHASE_ORDER.index(job.secondary_status) >= PHASE_ORDER.index(secondary)


def _record_transition(row: JobRow, secondary: str, message: str | None, now: float) -> None:
    message = message or DEFAULT_MESSAGES.get(secondary, secondary)
    if row.transitions and row.transitions[-1].status == secondary:
        row.transitions[-1].message = message  # one entry per status; its message changes in place
        return
    if row.transitions:
        last = row.transitions[-1]
        if last.end_time is None:
            last.end_time = now
    terminal = PRIMARY_OF[secondary] in TERMINAL_STATUSES
    row.transitions.append(TransitionRow(status=secondary, start_time=now, end_time=now if terminal else None,
                                         message=message))


def _set_runner_state(row: JobRow, state: str, now: float) -> None:
    if state == row.runner_state:
        return
    if state not in RUNNER_TRANSITIONS.get(row.runner_state, frozenset()):
        raise IllegalTransition(f"{row.arn}: runner {row.runner_state} -> {state}")
    row.runner_state = state
    row.runner_since = now


def _move(row: JobRow, secondary: str, *, message: str | None = None, failure_reason: str | None = None,
          stop_target: str | None = None, now: float) -> None:
    """The one function that changes a job's status, after checking the table."""
    if secondary not in PRIMARY_OF or not allowed(row.status, row.secondary_status, secondary):
        raise IllegalTransition(f"{row.arn}: {row.status}/{row.secondary_status} -> {secondary}")
    new_status = PRIMARY_OF[secondary]
    if secondary in (DOWNLOADING, TRAINING) and row.training_start_time is None:
        row.training_start_time = now
    if new_status in TERMINAL_STATUSES:
        _set_runner_state(row, DONE, now)
        row.interrupt_requested_at = None  # an interruption that came too late has nothing left to do
        if row.training_start_time is not None:
            row.training_end_time = now
    if new_status == STOPPING:
        row.stop_target = stop_target or STOPPED
    if failure_reason is not None:
        row.failure_reason = failure_reason[:1024]
    if new_status in TERMINAL_STATUSES and row.warm_pool_status == warm_pools.IN_USE:
        _leave_warm_pool(row, secondary, now)
    row.status = new_status
    row.secondary_status = secondary
    row.last_modified_time = now
    _record_transition(row, secondary, message, now)


def _leave_warm_pool(row: JobRow, secondary: str, now: float) -> None:
    """The job ended on a pool: the pool stays Available for KeepAlivePeriodInSeconds, or ends here."""
    young = row.warm_pool_born is not None and now - row.warm_pool_born < warm_pools.MAX_POOL_SECONDS
    if (row.keep_alive_seconds or 0) > 0 and young and warm_pools.kept_after(
            secondary, row.failure_reason, row.training_start_time is not None):
        row.warm_pool_status, row.warm_pool_since = warm_pools.AVAILABLE, now
    else:
        row.warm_pool_status, row.warm_pool_retained_seconds = warm_pools.TERMINATED, 0


def _end_warm_pool(row: JobRow, now: float, *, expired: bool = False) -> None:
    """Terminated; ResourceRetainedBillableTimeInSeconds is the time it was kept (all of KeepAlive if it expired)."""
    since = row.warm_pool_since or now
    kept = min(now - since, row.keep_alive_seconds or 0) if expired else now - since
    row.warm_pool_status = warm_pools.TERMINATED
    row.warm_pool_retained_seconds = max(0, math.ceil(kept))
    row.last_modified_time = now


def _take_warm_pool(s: Any, row: JobRow, now: float) -> None:
    """At claim: a job asking for a warm pool runs on the oldest Available one that matches (that job's
    pool becomes Reused), or on a new one."""
    if (row.keep_alive_seconds or 0) <= 0 or row.warm_pool_id is not None:
        return  # no pool asked for, or one taken already (a retry, a spot restart keeps it)
    donor = s.scalars(
        select(JobRow).where(JobRow.account_id == row.account_id, JobRow.region == row.region,
                             JobRow.warm_pool_status == warm_pools.AVAILABLE, JobRow.match_key == row.match_key,
                             JobRow.id != row.id)
        .order_by(JobRow.warm_pool_since, JobRow.id)).first()
    if donor is not None and donor.warm_pool_since is not None:
        donor.warm_pool_status, donor.warm_pool_reused_by = warm_pools.REUSED, row.name
        donor.warm_pool_retained_seconds = max(0, math.ceil(now - donor.warm_pool_since))
        donor.last_modified_time = now
        row.warm_pool_id, row.warm_pool_born = donor.warm_pool_id, donor.warm_pool_born
    else:
        row.warm_pool_id, row.warm_pool_born = uuid.uuid4().hex, now
    row.warm_pool_status = warm_pools.IN_USE


def training_seconds(job: JobRecord) -> int | None:
    if job.training_start_time is None or job.training_end_time is None:
        return None
    return max(1, math.ceil(job.training_end_time - job.training_start_time))


def interrupted_seconds(job: JobRecord, now: float | None = None) -> float:
    """Time a spot job spent reclaimed: from each Interrupted to the next Downloading (the instances are
    back), or to the job's end if it never came back."""
    total, since = 0.0, None
    for t in job.transitions:
        if t.status == INTERRUPTED and since is None:
            since = t.start_time
        elif since is not None and t.status in (DOWNLOADING, TRAINING):
            total += t.start_time - since
            since = None
    if since is not None:
        total += (job.training_end_time or now or time.time()) - since
    return total


def billable_seconds(job: JobRecord) -> int | None:
    """BillableTimeInSeconds: the training time less the time between an interruption and the restart."""
    seconds = training_seconds(job)
    if seconds is None:
        return None
    return max(1, math.ceil(seconds - interrupted_seconds(job)))


Listener = Callable[[JobRecord], None]


class Lifecycle:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._listeners: list[Listener] = []
        self._listeners_lock = threading.Lock()

    def subscribe(self, listener: Listener) -> None:
        """Call `listener(job)` after every committed change (creation, stop, status, runner state)."""
        with self._listeners_lock:
            self._listeners.append(listener)

    def _notify(self, job: JobRecord) -> None:
        with self._listeners_lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(job)
            except Exception:  # a listener's bug must not turn a committed change into an API error
                log.exception("listener failed for %s", job.arn)

    def _change(self, arn: str, change: Callable[[JobRow, float], None]) -> JobRecord:
        """Read-modify-write one job under the write lock, then tell the listeners."""
        with self.store.transaction() as s:
            row = s.scalars(select(JobRow).where(JobRow.arn == arn)).first()
            if row is None:
                raise IllegalTransition(f"job {arn} no longer exists")
            change(row, time.time())
            job = JobRecord.from_row(row)
        self._notify(job)
        return job

    # ---- API side -------------------------------------------------------------------------

    def create(self, *, account_id: str, region: str, name: str, request: dict[str, Any],
               tags: list[dict[str, str]], failure_reason: str | None = None,
               with_job: Callable[[Any], None] | None = None) -> JobRecord:
        """A new job, Starting; with `failure_reason` it fails in Starting in the same transaction, before any
        runner can claim it (a scripted CapacityError: SageMaker found no instances for it). `with_job(session)`
        adds what must exist exactly when the job does (a tuning job's trial row) in the same transaction."""
        arn = training_job_arn(region, account_id, name)
        now = time.time()
        try:
            with self.store.transaction() as s:
                row = JobRow(
                    account_id=account_id, region=region, name=name, arn=arn,
                    request_json=json.dumps(request), status=IN_PROGRESS, secondary_status=STARTING,
                    creation_time=now, last_modified_time=now, runner_state=QUEUED, runner_since=now,
                    keep_alive_seconds=warm_pools.keep_alive(request), match_key=warm_pools.match_key(request),
                )
                _record_transition(row, STARTING, None, now)
                if failure_reason is not None:
                    _move(row, FAILED, failure_reason=failure_reason, now=now)
                s.add(row)
                for tag in tags:
                    s.add(TagRow(resource_arn=arn, key=tag["Key"], value=tag.get("Value", "")))
                if with_job is not None:
                    with_job(s)
                s.flush()
                job = JobRecord.from_row(row)
        except IntegrityError:
            raise ApiError(
                "ResourceInUse", f"Training job names must be unique within an AWS account and region, "
                f"and a training job with this name already exists ({arn})"
            ) from None
        self._notify(job)
        return job

    def request_stop(self, arn: str) -> JobRecord:
        """StopTrainingJob: InProgress -> Stopping; a job still queued has nothing to wait for and is Stopped."""
        with self.store.transaction() as s:
            row = self._get_row(s, arn)
            if row.status != IN_PROGRESS:
                raise ApiError(
                    "ValidationException",
                    f"The request was rejected because the training job is in status {row.status}.",
                )
            now = time.time()
            _move(row, STOPPING, stop_target=STOPPED, now=now)
            if row.runner_state == QUEUED:
                _move(row, STOPPED, now=now)
            job = JobRecord.from_row(row)
        self._notify(job)
        return job

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
        # In plain SQL: DescribeTrainingJob is the API's most frequent call (clients poll it).
        with self.store.snapshot() as conn:
            job = read_job(conn, arn)
        if job is None:
            raise ApiError("ValidationException", "Requested resource not found.")
        return job

    def exists(self, arn: str) -> bool:
        with self.store.read() as s:
            return s.scalars(select(JobRow.id).where(JobRow.arn == arn)).first() is not None

    @staticmethod
    def _get_row(s: Any, arn: str) -> JobRow:
        row = s.scalars(select(JobRow).where(JobRow.arn == arn)).first()
        if row is None:
            raise ApiError("ValidationException", "Requested resource not found.")
        return row

    def queue_depth(self) -> tuple[int, int]:
        """(jobs waiting for a runner, jobs a runner has taken and not finished): what --max-waiting-jobs counts."""
        with self.store.read() as s:
            queued = s.scalar(select(func.count()).select_from(JobRow).where(
                JobRow.runner_state == QUEUED, JobRow.status == IN_PROGRESS)) or 0
            active = s.scalar(select(func.count()).select_from(JobRow).where(
                JobRow.runner_state.in_(UNFINISHED_RUNNER_STATES))) or 0
        return queued, active

    # ---- runner side ----------------------------------------------------------------------

    def queued_jobs(self, limit: int) -> list[JobRecord]:
        """Jobs waiting for a runner, oldest first."""
        with self.store.read() as s:
            rows = s.scalars(
                select(JobRow)
                .where(JobRow.runner_state == QUEUED, JobRow.status == IN_PROGRESS)
                .order_by(JobRow.creation_time, JobRow.id)
                .limit(limit)
            ).all()
            return [JobRecord.from_row(r) for r in rows]

    def unfinished_jobs(self) -> list[JobRecord]:
        """Jobs a runner had taken and not finished: what a restarted server must run again, adopt or end."""
        with self.store.read() as s:
            rows = s.scalars(select(JobRow).where(JobRow.runner_state.in_(UNFINISHED_RUNNER_STATES))
                             .order_by(JobRow.creation_time, JobRow.id)).all()
            return [JobRecord.from_row(r) for r in rows]

    def claim(self, arn: str) -> JobRecord | None:
        """Take a queued job for running (on a warm pool if it asks for one); None if someone else took it
        or it was stopped meanwhile."""
        with self.store.transaction() as s:
            row = s.scalars(select(JobRow).where(JobRow.arn == arn)).first()
            if row is None or row.runner_state != QUEUED or row.status != IN_PROGRESS:
                return None
            now = time.time()
            _set_runner_state(row, PREPARING, now)
            _take_warm_pool(s, row, now)
            job = JobRecord.from_row(row)
        self._notify(job)
        return job

    def set_runner_state(self, arn: str, state: str) -> JobRecord:
        """The runner's own progress: containers started (running), SIGTERM sent (terminating), or back
        to the queue (a restart interrupted it before its containers started)."""
        def change(row: JobRow, now: float) -> None:
            if state == QUEUED and row.status != IN_PROGRESS:
                raise IllegalTransition(f"{arn}: a {row.status} job cannot be queued again")
            if state == QUEUED and row.runner_state not in (QUEUED, PREPARING):
                # A job whose containers started runs again only as a retry or after an interruption.
                raise IllegalTransition(f"{arn}: runner {row.runner_state} -> queued outside retry / interrupted")
            if state == DONE:
                raise IllegalTransition("a job is done when it ends (end / finish_stop)")
            _set_runner_state(row, state, now)
        return self._change(arn, change)

    def advance(self, arn: str, secondary: str, message: str | None = None, *,
                failure_reason: str | None = None) -> JobRecord:
        """Move a job to a SecondaryStatus if the table allows it (the primary status follows from it)."""
        return self._change(arn, lambda row, now: _move(row, secondary, message=message,
                                                        failure_reason=failure_reason, now=now))

    def stop_at_deadline(self, arn: str, target: str = MAX_RUNTIME_EXCEEDED,
                         message: str | None = None) -> JobRecord:
        """A time limit is over: Stopping, to end in `target` (MaxRuntimeExceeded, MaxWaitTimeExceeded, or
        Stopped for MaxPendingTimeInSeconds, with `message` as the end's StatusMessage). A job in the queue
        has nothing to stop and ends at once. A stop already under way keeps its own end; an ended job is
        left alone."""
        def change(row: JobRow, now: float) -> None:
            if row.status == IN_PROGRESS:
                _move(row, STOPPING, stop_target=target, now=now)
                if row.runner_state == QUEUED:
                    _move(row, target, message=message, now=now)
        return self._change(arn, change)

    # ---- retries, spot interruptions, waiting for a slot ----------------------------------------

    def retry(self, arn: str, reason: str, max_retries: int) -> JobRecord | None:
        """A platform fault ended this run: if RetryStrategy allows another, back to Starting (the attempt
        in its message) and to the queue; None when no retry is left (or the job is being stopped)."""
        retried: list[bool] = []

        def change(row: JobRow, now: float) -> None:
            if row.status != IN_PROGRESS or (row.attempt or 1) > max_retries:
                return
            row.attempt = (row.attempt or 1) + 1
            row.interrupt_requested_at = None
            _move(row, STARTING, message=retry_message(row.attempt, max_retries, reason), now=now)
            _set_runner_state(row, QUEUED, now)
            retried.append(True)
        job = self._change(arn, change)
        return job if retried else None

    def _api_change(self, arn: str, change: Callable[[JobRow, float], None]) -> JobRecord:
        """As _change, for an API call: an unknown job is SageMaker's "Requested resource not found." """
        with self.store.transaction() as s:
            row = self._get_row(s, arn)
            change(row, time.time())
            job = JobRecord.from_row(row)
        self._notify(job)
        return job

    def request_interrupt(self, arn: str) -> JobRecord:
        """InterruptTrainingJob (smlocal's own API): a capacity reclaim for a spot job that is Training.

        Persisted first; the runner hears of it from the listeners and carries it out (SIGTERM, the grace,
        checkpoints synced, Interrupted, then a new run)."""
        def change(row: JobRow, now: float) -> None:
            if not json.loads(row.request_json).get("EnableManagedSpotTraining"):
                raise ApiError("ValidationException", f"Training job {row.name} is not a managed spot training "
                               "job (EnableManagedSpotTraining): only spot capacity can be interrupted.")
            # Training: its containers are made, or running (an interruption before they start takes them
            # down as soon as they do).
            if row.status != IN_PROGRESS or row.secondary_status != TRAINING:
                raise ApiError("ValidationException", f"Training job {row.name} can be interrupted only while "
                               f"it is Training; it is {row.status} ({row.secondary_status}).")
            if row.interrupt_requested_at is None:
                row.interrupt_requested_at = row.last_modified_time = now
        return self._api_change(arn, change)

    def update_remote_debug(self, arn: str, enabled: bool) -> JobRecord:
        """UpdateTrainingJob's RemoteDebugConfig: "You can update the remote debugging configuration when the
        SecondaryStatus of the job is Downloading or Training" (API reference). Kept in the stored request, so
        DescribeTrainingJob echoes it and `smlocal shell` sees it at once."""
        def change(row: JobRow, now: float) -> None:
            if row.status != IN_PROGRESS or row.secondary_status not in (DOWNLOADING, TRAINING):
                raise ApiError("ValidationException", "The remote debugging configuration can be updated only "
                               f"while the training job's SecondaryStatus is {DOWNLOADING} or {TRAINING}; "
                               f"training job {row.name} is {row.status} ({row.secondary_status}).")
            request = json.loads(row.request_json)
            request["RemoteDebugConfig"] = {**(request.get("RemoteDebugConfig") or {}), "EnableRemoteDebug": enabled}
            row.request_json = json.dumps(request)
            row.last_modified_time = now
        return self._api_change(arn, change)

    def interrupted(self, arn: str) -> JobRecord:
        """The interrupted run is over (its hosts exited, checkpoints synced): Interrupted, back to the queue."""
        def change(row: JobRow, now: float) -> None:
            if row.status != IN_PROGRESS:
                raise IllegalTransition(f"{arn}: a {row.status} job is not interrupted")
            row.interruptions = (row.interruptions or 0) + 1
            row.interrupt_requested_at = None
            _move(row, INTERRUPTED, now=now)
            _set_runner_state(row, QUEUED, now)
        return self._change(arn, change)

    def mark_pending(self, arn: str) -> JobRecord | None:
        """A queued job found no free slot: Pending, until a slot takes it (then Starting again)."""
        def change(row: JobRow, now: float) -> None:
            if (row.status == IN_PROGRESS and row.runner_state == QUEUED
                    and row.secondary_status in (STARTING, INTERRUPTED)):
                _move(row, PENDING, now=now)
        try:
            return self._change(arn, change)
        except IllegalTransition:
            return None

    # ---- warm pools ---------------------------------------------------------------------------

    def update_keep_alive(self, arn: str, seconds: int) -> JobRecord:
        """UpdateTrainingJob's ResourceConfig.KeepAlivePeriodInSeconds: for a job still running, or one whose
        pool is Available (0 terminates it; the new period counts from when the pool became Available)."""
        def change(row: JobRow, now: float) -> None:
            if row.status in TERMINAL_STATUSES and row.warm_pool_status != warm_pools.AVAILABLE:
                raise ApiError("ValidationException", f"The warm pool of training job {row.name} is not "
                               f"available (WarmPoolStatus: {row.warm_pool_status or 'none'}): only a running job "
                               "or an Available warm pool can be updated.")
            if (seconds > 0 and row.status not in TERMINAL_STATUSES and row.warm_pool_id is None
                    and row.runner_state != QUEUED):
                raise ApiError("ValidationException", f"Training job {row.name} was started without a warm pool "
                               "(ResourceConfig.KeepAlivePeriodInSeconds); it cannot ask for one now.")
            row.keep_alive_seconds = seconds
            row.last_modified_time = now
            if row.warm_pool_status == warm_pools.AVAILABLE and seconds == 0:
                _end_warm_pool(row, now)
        return self._api_change(arn, change)

    def expire_warm_pool(self, arn: str) -> JobRecord | None:
        """The pool's KeepAlivePeriodInSeconds (or its 7 days) is over: Terminated. None if it moved on."""
        def change(row: JobRow, now: float) -> None:
            if row.warm_pool_status == warm_pools.AVAILABLE:
                _end_warm_pool(row, now, expired=True)
        try:
            return self._change(arn, change)
        except IllegalTransition:
            return None

    def available_warm_pools(self) -> list[JobRecord]:
        with self.store.read() as s:
            rows = s.scalars(select(JobRow).where(JobRow.warm_pool_status == warm_pools.AVAILABLE)).all()
            return [JobRecord.from_row(r, with_transitions=False) for r in rows]

    def live_warm_pool_ids(self) -> set[str]:
        """Pools a job runs on or keeps Available: their cache folders stay."""
        with self.store.read() as s:
            return set(s.scalars(select(JobRow.warm_pool_id).where(
                JobRow.warm_pool_status.in_((warm_pools.IN_USE, warm_pools.AVAILABLE)))).all()) - {None}

    def in_progress_jobs(self) -> list[JobRecord]:
        """Every InProgress job, queued or running (the runner checks their time limits)."""
        with self.store.read() as s:
            rows = s.scalars(select(JobRow).where(JobRow.status == IN_PROGRESS)
                             .order_by(JobRow.creation_time, JobRow.id)).all()
            return [JobRecord.from_row(r) for r in rows]

    def end(self, arn: str, secondary: str, failure_reason: str | None = None) -> JobRecord:
        """End a job in `secondary` (Completed or Failed); a job being stopped ends as its stop says instead.

        Ending a job that already ended changes nothing (a restarted server may finish twice)."""
        def change(row: JobRow, now: float) -> None:
            if row.status in TERMINAL_STATUSES:
                return
            if row.status == STOPPING:
                _move(row, row.stop_target or STOPPED, now=now)
            else:
                _move(row, secondary, failure_reason=failure_reason, now=now)
        return self._change(arn, change)

    def finish_stop(self, arn: str) -> JobRecord:
        """A job being stopped has stopped: it ends as its stop says (Stopped or MaxRuntimeExceeded)."""
        def change(row: JobRow, now: float) -> None:
            if row.status != STOPPING:
                raise IllegalTransition(f"{arn}: {row.status} is not being stopped")
            _move(row, row.stop_target or STOPPED, now=now)
        return self._change(arn, change)

    def refresh(self, arn: str) -> JobRecord | None:
        with self.store.read() as s:
            row = s.scalars(select(JobRow).where(JobRow.arn == arn)).first()
            return JobRecord.from_row(row) if row else None

    def set_final_metrics(self, arn: str, metrics: list[dict[str, Any]]) -> None:
        with self.store.transaction() as s:
            row = s.scalars(select(JobRow).where(JobRow.arn == arn)).first()
            if row is not None:
                row.final_metrics_json = json.dumps(metrics[:40])

    def counts(self) -> dict[str, int]:
        """Jobs per runner state (for the health route)."""
        with self.store.read() as s:
            return dict(s.execute(select(JobRow.runner_state, func.count()).group_by(JobRow.runner_state)).all())
