"""The tuning-job state machine and its trials: the only place a tuning job's status or a trial's outcome changes.

A tuning job is InProgress until its driver (runner/tuning) ends it: Completed (its budget is spent, or a
TuningJobCompletionCriteria held), Failed, or, after StopHyperParameterTuningJob, Stopping and then Stopped once
its running trials have stopped. Every change is committed before listeners (the driver) hear of it.

A trial is a training job and a row here, made in one transaction (`launch_trial`): a restarted server finds every
trial it launched and launches none twice. Its outcome (status, objective) is copied when its training job ends.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from smlocal.core.errors import ApiError
from smlocal.core.lifecycle import Lifecycle, training_job_arn
from smlocal.core.store import JobRow, Store, TagRow, TrialRow, TuningJobRow

log = logging.getLogger("smlocal.tuning")

IN_PROGRESS, COMPLETED, FAILED, STOPPING, STOPPED = "InProgress", "Completed", "Failed", "Stopping", "Stopped"
TERMINAL = frozenset({COMPLETED, FAILED, STOPPED})
# Where a tuning job may go from where it is. Stopping ends Stopped; a tuning job whose last trials end as the
# stop comes in is still Stopped, as the client asked.
TRANSITIONS: dict[str, frozenset[str]] = {
    IN_PROGRESS: frozenset({STOPPING, COMPLETED, FAILED}),
    STOPPING: frozenset({STOPPED, FAILED}),
    COMPLETED: frozenset(),
    FAILED: frozenset(),
    STOPPED: frozenset(),
}

# DescribeTrainingJob's TuningJobArn (TuningLifecycle.tuning_job_of).
_TUNING_JOB_OF = (f"SELECT t.arn FROM {TuningJobRow.__tablename__} t JOIN {TrialRow.__tablename__} r "
                  "ON r.tuning_job_id = t.id WHERE r.training_job_arn = ? LIMIT 1")

# ObjectiveStatus of a trial.
PENDING, SUCCEEDED = "Pending", "Succeeded"
MINIMIZE, MAXIMIZE = "Minimize", "Maximize"


def tuning_job_arn(region: str, account_id: str, name: str) -> str:
    # As for training jobs, SageMaker lower-cases the name in the ARN.
    return f"arn:aws:sagemaker:{region}:{account_id}:hyper-parameter-tuning-job/{name.lower()}"


def is_retryable(failure_reason: str | None) -> bool:
    """A trial that failed for the platform's sake (SageMaker's InternalServerError, CapacityError) may be retried;
    one the algorithm or its input failed (ClientError, AlgorithmError) may not."""
    return bool(failure_reason) and failure_reason.split(":", 1)[0] in ("InternalServerError", "CapacityError")


@dataclass(frozen=True)
class TrialRecord:
    """A trial as its tuning job sees it: the row, with its training job's live status while it runs."""

    id: int
    number: int
    training_job_name: str
    training_job_arn: str
    definition_name: str | None
    tuned: dict[str, str]
    search_params: dict[str, Any]
    creation_time: float
    training_status: str
    # Ended: the training job ended and the outcome below was copied (the driver has taken it into account).
    ended: bool
    failure_reason: str | None
    training_start_time: float | None
    training_end_time: float | None
    objective_status: str
    objective_value: float | None
    early_stopped: bool
    search_attrs: dict[str, Any]
    # The training job's FinalMetricDataList and SecondaryStatus while it lives (None once deleted).
    final_metrics: list[dict[str, Any]] | None = None
    secondary_status: str | None = None


@dataclass(frozen=True)
class TuningJobRecord:
    """A detached snapshot of one tuning job and its trials."""

    id: int
    name: str
    arn: str
    account_id: str
    region: str
    request: dict[str, Any]
    status: str
    failure_reason: str | None
    creation_time: float
    last_modified_time: float
    end_time: float | None
    not_improving: int
    convergence_time: float | None
    trials: list[TrialRecord] = field(default_factory=list)

    @property
    def config(self) -> dict[str, Any]:
        return self.request["HyperParameterTuningJobConfig"]

    @property
    def definitions(self) -> list[dict[str, Any]]:
        """The training job definitions: TrainingJobDefinition, or each of TrainingJobDefinitions."""
        if self.request.get("TrainingJobDefinition"):
            return [self.request["TrainingJobDefinition"]]
        return list(self.request.get("TrainingJobDefinitions") or [])

    def objective(self, definition_name: str | None = None) -> dict[str, str]:
        """The objective {Type, MetricName} a trial of `definition_name` is judged by."""
        for definition in self.definitions:
            if definition.get("DefinitionName") == definition_name and definition.get("TuningObjective"):
                return definition["TuningObjective"]
        if self.config.get("HyperParameterTuningJobObjective"):
            return self.config["HyperParameterTuningJobObjective"]
        return self.definitions[0]["TuningObjective"]

    @property
    def direction(self) -> str:
        return self.objective(self.definitions[0].get("DefinitionName"))["Type"]

    def limit(self, name: str) -> int | None:
        return (self.config.get("ResourceLimits") or {}).get(name)


def better(direction: str, a: float, b: float) -> bool:
    """Whether objective `a` beats `b`."""
    return a < b if direction == MINIMIZE else a > b


def improves(direction: str, value: float, best: float) -> bool:
    """Whether `value` improves on `best` by 1% or more (SageMaker's measure for BestObjectiveNotImproving)."""
    margin = abs(best) * 0.01
    return value < best - margin if direction == MINIMIZE else value > best + margin


def best_trial(job: TuningJobRecord) -> TrialRecord | None:
    """BestTrainingJob: the trial with the best objective among those that have one (the first on a tie)."""
    best: TrialRecord | None = None
    for trial in job.trials:
        if trial.objective_status == SUCCEEDED and trial.objective_value is not None and (
                best is None or better(job.direction, trial.objective_value, best.objective_value)):  # type: ignore[arg-type]
            best = trial
    return best


def status_counters(job: TuningJobRecord) -> dict[str, int]:
    """TrainingJobStatusCounters: trials by where they ended (a failure split by whether it may be retried)."""
    counters = {"Completed": 0, "InProgress": 0, "RetryableError": 0, "NonRetryableError": 0, "Stopped": 0}
    for trial in job.trials:
        if trial.training_status in ("InProgress", "Stopping"):
            counters["InProgress"] += 1
        elif trial.training_status == "Failed":
            counters["RetryableError" if is_retryable(trial.failure_reason) else "NonRetryableError"] += 1
        elif trial.training_status in counters:
            counters[trial.training_status] += 1
    return counters


def objective_counters(job: TuningJobRecord) -> dict[str, int]:
    counters = {"Succeeded": 0, "Pending": 0, "Failed": 0}
    for trial in job.trials:
        counters[trial.objective_status] += 1
    return counters


def runtime_seconds(job: TuningJobRecord, now: float | None = None) -> int:
    """ConsumedResources.RuntimeInSeconds: the tuning job's wall-clock time so far."""
    return max(0, math.ceil((job.end_time or now or time.time()) - job.creation_time))


def _trial_record(row: TrialRow, job: JobRow | None) -> TrialRecord:
    ended = row.training_status is not None
    return TrialRecord(
        id=row.id, number=row.number, training_job_name=row.training_job_name, training_job_arn=row.training_job_arn,
        definition_name=row.definition_name, tuned=json.loads(row.tuned_json),
        search_params=json.loads(row.search_params_json),
        creation_time=job.creation_time if job is not None else (row.training_start_time or 0.0),
        training_status=row.training_status or (job.status if job is not None else "Failed"),
        ended=ended,
        failure_reason=row.failure_reason if ended else (job.failure_reason if job is not None else None),
        training_start_time=row.training_start_time if ended else (job.training_start_time if job else None),
        training_end_time=row.training_end_time if ended else (job.training_end_time if job else None),
        objective_status=row.objective_status, objective_value=row.objective_value,
        early_stopped=bool(row.early_stopped), search_attrs=json.loads(row.search_attrs_json or "{}"),
        final_metrics=json.loads(job.final_metrics_json) if job is not None and job.final_metrics_json else None,
        secondary_status=job.secondary_status if job is not None else None,
    )


def _record(s: Any, row: TuningJobRow, with_trials: bool = True) -> TuningJobRecord:
    trials: list[TrialRecord] = []
    if with_trials:
        jobs = {j.arn: j for j in s.scalars(select(JobRow).join(TrialRow, TrialRow.training_job_arn == JobRow.arn)
                                             .where(TrialRow.tuning_job_id == row.id))}
        trials = [_trial_record(t, jobs.get(t.training_job_arn)) for t in row.trials]
    return TuningJobRecord(
        id=row.id, name=row.name, arn=row.arn, account_id=row.account_id, region=row.region,
        request=json.loads(row.request_json), status=row.status, failure_reason=row.failure_reason,
        creation_time=row.creation_time, last_modified_time=row.last_modified_time, end_time=row.end_time,
        not_improving=row.not_improving or 0, convergence_time=row.convergence_time, trials=trials,
    )


def _move(row: TuningJobRow, status: str, now: float, failure_reason: str | None = None) -> None:
    """The one function that changes a tuning job's status, after checking the table."""
    if status not in TRANSITIONS.get(row.status, frozenset()):
        raise ApiError("ValidationException", f"Hyperparameter tuning job {row.name} is {row.status}; it cannot "
                       f"become {status}.")
    row.status = status
    row.last_modified_time = now
    if status in TERMINAL:
        row.end_time = now
    if failure_reason is not None:
        row.failure_reason = failure_reason[:1024]


Listener = Callable[[TuningJobRecord], None]


class TuningLifecycle:
    def __init__(self, store: Store, jobs: Lifecycle) -> None:
        self.store = store
        self.jobs = jobs
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()

    def subscribe(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def _notify(self, job: TuningJobRecord) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(job)
            except Exception:  # a listener's bug must not turn a committed change into an API error
                log.exception("tuning listener failed for %s", job.arn)

    @staticmethod
    def _row(s: Any, arn: str) -> TuningJobRow:
        row = s.scalars(select(TuningJobRow).where(TuningJobRow.arn == arn)).first()
        if row is None:
            raise ApiError("ResourceNotFound", f"Amazon SageMaker can't find a tuning job with name "
                           f"{arn.rsplit('/', 1)[-1]}")
        return row

    def _change(self, arn: str, change: Callable[[TuningJobRow, float], None]) -> TuningJobRecord:
        with self.store.transaction() as s:
            row = self._row(s, arn)
            change(row, time.time())
            job = _record(s, row)
        self._notify(job)
        return job

    # ---- API side -------------------------------------------------------------------------------

    def create(self, *, account_id: str, region: str, name: str, request: dict[str, Any],
               tags: list[dict[str, str]]) -> TuningJobRecord:
        arn = tuning_job_arn(region, account_id, name)
        now = time.time()
        try:
            with self.store.transaction() as s:
                row = TuningJobRow(account_id=account_id, region=region, name=name, arn=arn,
                                   request_json=json.dumps(request), status=IN_PROGRESS, creation_time=now,
                                   last_modified_time=now, not_improving=0)
                s.add(row)
                for tag in tags:
                    s.add(TagRow(resource_arn=arn, key=tag["Key"], value=tag.get("Value", "")))
                s.flush()
                job = _record(s, row)
        except IntegrityError:
            raise ApiError("ResourceInUse", "Hyperparameter tuning job names must be unique within an AWS account and "
                           f"region, and a hyperparameter tuning job with this name already exists ({arn})") from None
        self._notify(job)
        return job

    def get(self, arn: str) -> TuningJobRecord:
        with self.store.read() as s:
            return _record(s, self._row(s, arn))

    def find(self, account_id: str, region: str, name: str) -> TuningJobRecord | None:
        with self.store.read() as s:
            row = s.scalars(select(TuningJobRow).where(TuningJobRow.arn == tuning_job_arn(region, account_id, name)
                                                       )).first()
            return _record(s, row) if row is not None else None

    def request_stop(self, arn: str) -> TuningJobRecord:
        """StopHyperParameterTuningJob: Stopping; the driver stops the running trials and then ends it Stopped."""
        def change(row: TuningJobRow, now: float) -> None:
            if row.status != IN_PROGRESS:
                raise ApiError("ValidationException", f"The request was rejected because the hyperparameter tuning "
                               f"job is in status {row.status}.")
            _move(row, STOPPING, now)
        return self._change(arn, change)

    def delete(self, arn: str) -> None:
        """DeleteHyperParameterTuningJob: an ended tuning job and its tags go; its training jobs stay."""
        with self.store.transaction() as s:
            row = self._row(s, arn)
            if row.status not in TERMINAL:
                raise ApiError("ValidationException", f"The request was rejected because the hyperparameter tuning "
                               f"job is in status {row.status}.")
            s.query(TagRow).filter(TagRow.resource_arn == row.arn).delete()
            s.delete(row)

    def tuning_job_of(self, training_job_arn: str) -> str | None:
        """The ARN of the tuning job that launched a training job (DescribeTrainingJob's TuningJobArn)."""
        # In plain SQL: asked by every DescribeTrainingJob (Store.snapshot).
        with self.store.snapshot() as conn:
            found = conn.execute(_TUNING_JOB_OF, (training_job_arn,)).fetchone()
        return found[0] if found else None

    # ---- driver side ----------------------------------------------------------------------------

    def unfinished(self) -> list[TuningJobRecord]:
        """Tuning jobs still InProgress or Stopping, oldest first."""
        with self.store.read() as s:
            rows = s.scalars(select(TuningJobRow).where(TuningJobRow.status.in_((IN_PROGRESS, STOPPING)))
                             .order_by(TuningJobRow.creation_time, TuningJobRow.id)).all()
            return [_record(s, r) for r in rows]

    def launch_trial(self, job: TuningJobRecord, *, number: int, training_job_name: str, request: dict[str, Any],
                     tags: list[dict[str, str]], tuned: dict[str, str], search_params: dict[str, Any],
                     definition_name: str | None) -> int | None:
        """A trial: its training job and its row, in one transaction (none without the other). Its id, or None
        when the tuning job is no longer InProgress."""
        arn_holder: list[str] = []
        ids: list[int] = []

        def add_trial(s: Any) -> None:
            # A tuning job stopped or deleted meanwhile launches nothing.
            row = s.scalars(select(TuningJobRow).where(TuningJobRow.id == job.id)).first()
            if row is None or row.status != IN_PROGRESS:
                raise _NotLaunched
            trial = TrialRow(tuning_job_id=job.id, number=number, training_job_name=training_job_name,
                             training_job_arn=arn_holder[0], definition_name=definition_name,
                             tuned_json=json.dumps(tuned), search_params_json=json.dumps(search_params),
                             objective_status=PENDING, early_stopped=0)
            s.add(trial)
            row.last_modified_time = time.time()
            s.flush()
            ids.append(trial.id)

        arn_holder.append(training_job_arn(job.region, job.account_id, training_job_name))
        try:
            self.jobs.create(account_id=job.account_id, region=job.region, name=training_job_name, request=request,
                             tags=tags, with_job=add_trial)
        except _NotLaunched:
            return None
        return ids[0]

    def tags_of(self, arn: str) -> list[dict[str, str]]:
        with self.store.read() as s:
            return [{"Key": t.key, "Value": t.value}
                    for t in s.scalars(select(TagRow).where(TagRow.resource_arn == arn).order_by(TagRow.id))]

    def trial_ended(self, trial_id: int, *, training_status: str, failure_reason: str | None,
                    start: float | None, end: float | None, objective_status: str, objective_value: float | None,
                    direction: str) -> None:
        """A trial's training job ended: its outcome is copied, and the count of trials since the best objective
        last improved moves on (TuningJobCompletionDetails)."""
        with self.store.transaction() as s:
            row = s.get(TrialRow, trial_id)
            if row is None or row.training_status is not None:
                return
            parent = row.tuning_job
            previous = [t.objective_value for t in parent.trials
                        if t.id != row.id and t.objective_status == SUCCEEDED and t.objective_value is not None]
            row.training_status, row.failure_reason = training_status, failure_reason
            row.training_start_time, row.training_end_time = start, end
            row.objective_status, row.objective_value = objective_status, objective_value
            if objective_status == SUCCEEDED and objective_value is not None:
                best = (min(previous) if direction == MINIMIZE else max(previous)) if previous else 0.0
                improved = not previous or improves(direction, objective_value, best)
                parent.not_improving = 0 if improved else (parent.not_improving or 0) + 1
            parent.last_modified_time = time.time()

    def save_search_attrs(self, trial_id: int, attrs: dict[str, Any]) -> None:
        with self.store.transaction() as s:
            row = s.get(TrialRow, trial_id)
            if row is not None:
                row.search_attrs_json = json.dumps(attrs)

    def mark_early_stopped(self, trial_id: int) -> None:
        with self.store.transaction() as s:
            row = s.get(TrialRow, trial_id)
            if row is not None:
                row.early_stopped = 1

    def converged(self, arn: str) -> None:
        def change(row: TuningJobRow, now: float) -> None:
            if row.convergence_time is None:
                row.convergence_time = row.last_modified_time = now
        self._change(arn, change)

    def end(self, arn: str, status: str, failure_reason: str | None = None) -> TuningJobRecord:
        """The driver ends a tuning job: Completed or Failed (a Stopping job ends Stopped whatever is asked)."""
        def change(row: TuningJobRow, now: float) -> None:
            if row.status in TERMINAL:
                return
            target = STOPPED if row.status == STOPPING and status != FAILED else status
            _move(row, target, now, failure_reason)
        return self._change(arn, change)


class _NotLaunched(Exception):
    """The tuning job stopped between the driver's decision and the trial's transaction."""
