"""The StoppingCondition's clocks, for every InProgress job whether it runs or waits in the queue.

- MaxRuntimeInSeconds counts from TrainingStartTime, across retries and spot interruptions (the API
  reference: it covers all attempts); it ends the job in MaxRuntimeExceeded.
- MaxWaitTimeInSeconds (managed spot only) counts from CreationTime, the time waiting for spot capacity
  included; it ends the job in MaxWaitTimeExceeded.
- MaxPendingTimeInSeconds counts the time a job waits in Pending for a slot. The API reference: it
  "takes effect only for jobs that request accelerated computing instance types, such as instances in the
  ml.p, ml.g, and ml.trn families. It has no effect on jobs that request CPU-only instance types." A job
  past it is stopped (TrainingJobStatus Stopped) before it ever ran.

Beside them, a warm pool's KeepAlivePeriodInSeconds counts from when the pool became Available (and a pool
lives 7 days at most): `warm_pool_expiry`.

The runner asks `next_limit` for each job and acts when one is due; these are pure functions of the job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from smlocal.core import warm_pools
from smlocal.core.jobspec import JobSpec
from smlocal.core.lifecycle import (
    MAX_RUNTIME_EXCEEDED,
    MAX_WAIT_TIME_EXCEEDED,
    PENDING,
    PENDING_TOO_LONG_MESSAGE,
    STOPPED,
)
from smlocal.core.store import JobRecord

# ml.p*, ml.g* and ml.trn* (the accelerated families the API reference names), ml.inf* too.
_ACCELERATED = re.compile(r"ml\.(p|g|trn|inf)\d")


@dataclass(frozen=True)
class Limit:
    at: float  # epoch seconds when it is reached
    target: str  # the SecondaryStatus the job ends in
    message: str | None = None  # the end's StatusMessage, when not the target's default


def accelerated(spec: JobSpec) -> bool:
    return any(_ACCELERATED.match(g.instance_type) for g in spec.instance_groups)


def pending_since(job: JobRecord) -> float | None:
    """When the job last became Pending, if it is Pending now."""
    if job.secondary_status != PENDING or not job.transitions or job.transitions[-1].status != PENDING:
        return None
    return job.transitions[-1].start_time


def limits(job: JobRecord, spec: JobSpec) -> list[Limit]:
    """Every clock that runs for this job now."""
    found: list[Limit] = []
    if job.training_start_time is not None:
        found.append(Limit(job.training_start_time + spec.max_runtime_seconds, MAX_RUNTIME_EXCEEDED))
    if spec.spot and spec.max_wait_seconds is not None:
        found.append(Limit(job.creation_time + spec.max_wait_seconds, MAX_WAIT_TIME_EXCEEDED))
    since = pending_since(job)
    if since is not None and spec.max_pending_seconds is not None and accelerated(spec):
        found.append(Limit(since + spec.max_pending_seconds, STOPPED, PENDING_TOO_LONG_MESSAGE))
    return found


def next_limit(job: JobRecord, spec: JobSpec) -> Limit | None:
    """The clock that runs out first (the earliest; MaxRuntime before MaxWait at the same instant)."""
    found = limits(job, spec)
    return min(found, key=lambda limit: limit.at) if found else None


def warm_pool_expiry(job: JobRecord) -> float | None:
    """When an Available warm pool ends: KeepAlivePeriodInSeconds after it became Available, or at 7 days."""
    if job.warm_pool_status != warm_pools.AVAILABLE or job.warm_pool_since is None:
        return None
    ends = job.warm_pool_since + job.keep_alive_seconds
    if job.warm_pool_born is not None:
        ends = min(ends, job.warm_pool_born + warm_pools.MAX_POOL_SECONDS)
    return ends
