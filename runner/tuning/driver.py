"""The tuner: drives every unfinished tuning job, one step at a time, in one background thread.

A step of a tuning job (`_step`):
1. trials whose training jobs ended: their outcome (status, objective: the final value of the objective metric
   in FinalMetricDataList) is copied and the search learns it;
2. running trials: their objective values so far go to the search, which may stop them early (Auto early
   stopping, Hyperband);
3. the tuning job's end: StopHyperParameterTuningJob, MaxRuntimeInSeconds, a TuningJobCompletionCriteria, or no
   trial succeeded after the first few: the running trials are stopped and, once none runs, the tuning job ends;
4. new trials, while fewer than MaxParallelTrainingJobs run and fewer than MaxNumberOfTrainingJobs were launched.

Trials are training jobs like any other: the runner runs them, their statuses change in smlocal.core.lifecycle.
The tuner hears of their changes from the lifecycle's listeners and wakes; a short tick reads the metric values of
running trials when something judges them.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from smlocal.core.lifecycle import TERMINAL_STATUSES, Lifecycle, training_job_arn
from smlocal.core.metric_series import points
from smlocal.core.store import JobRecord, Store
from smlocal.core.tuning import lifecycle as tuning_states
from smlocal.core.tuning.lifecycle import (
    COMPLETED,
    FAILED,
    IN_PROGRESS,
    STOPPING,
    SUCCEEDED,
    TrialRecord,
    TuningJobRecord,
    TuningLifecycle,
    best_trial,
)
from smlocal.core.tuning.limits import effective_max_jobs, target_reached
from smlocal.core.tuning.trials import trial_name, trial_request

if TYPE_CHECKING:  # optuna, which search imports, is ~0.15 s of every server start; loaded with the first tuning job
    from runner.tuning.search import Search

log = logging.getLogger("smlocal.tuning")

# How often running trials' metric values are read while something judges them (early stopping, Hyperband).
METRICS_TICK_SECONDS = 1.0
IDLE_TICK_SECONDS = 5.0
# SageMaker fails a tuning job none of whose first trials succeeded: "No training job succeeded after 5 attempts."
FAILED_ATTEMPTS_LIMIT = 5
# A retryable failure (the platform's) launches another trial in its place, up to this many in one tuning job.
MAX_RETRYABLE_FAILURES = 10


class Tuner:
    def __init__(self, tuning: TuningLifecycle, jobs: Lifecycle, store: Store) -> None:
        self.tuning = tuning
        self.jobs = jobs
        self.store = store
        self._searches: dict[str, Search] = {}
        self._trial_jobs: set[str] = set()
        self._wake = threading.Event()
        self._shutdown = threading.Event()
        self._thread: threading.Thread | None = None
        jobs.subscribe(self._on_training_job)
        tuning.subscribe(lambda _job: self._wake.set())

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._main, name="smlocal-tuner", daemon=True)
            self._thread.start()

    def shutdown(self, timeout: float = 10.0) -> None:
        self._shutdown.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _on_training_job(self, job: JobRecord) -> None:
        if job.arn in self._trial_jobs:
            self._wake.set()

    def _main(self) -> None:
        while not self._shutdown.is_set():
            tick = IDLE_TICK_SECONDS
            try:
                for job in self.tuning.unfinished():
                    if self._shutdown.is_set():
                        break
                    try:
                        if self._step(job):
                            tick = METRICS_TICK_SECONDS
                    except Exception:  # one tuning job's trouble must not stop the others
                        log.exception("tuning job %s: step failed", job.name)
                        tick = METRICS_TICK_SECONDS
            except Exception:
                log.exception("the tuner could not read its tuning jobs")
            self._wake.wait(tick)
            self._wake.clear()

    # ---- one step of one tuning job ------------------------------------------------------------------

    def _search(self, job: TuningJobRecord) -> Search:
        search = self._searches.get(job.arn)
        if search is None:
            parents = []
            for parent in (job.request.get("WarmStartConfig") or {}).get("ParentHyperParameterTuningJobs", []):
                found = self.tuning.find(job.account_id, job.region, parent["HyperParameterTuningJobName"])
                if found is not None:
                    parents.append(found)
            from runner.tuning.search import Search

            search = self._searches[job.arn] = Search(job, parents, lambda trial: self._values(job, trial))
        return search

    def _step(self, job: TuningJobRecord) -> bool:
        """Moves one tuning job on; True while its running trials are judged by their metric values."""
        search = self._search(job)
        self._trial_jobs.update(t.training_job_arn for t in job.trials)
        if self._take_ended_trials(job, search):
            job = self.tuning.get(job.arn)
        running = [t for t in job.trials if t.training_status not in TERMINAL_STATUSES and not t.ended]
        judged = search.judges_running_trials()
        if judged:
            for trial in running:
                self._judge(job, search, trial)
        reason = self._end_reason(job)
        if reason is not None:
            status, failure = reason
            for trial in running:
                self._stop_trial(trial)
            if not running:
                self.tuning.end(job.arn, status, failure)
                self._forget(job)
            return False
        self._launch(job, search, len(running))
        return judged and bool(running)

    def _forget(self, job: TuningJobRecord) -> None:
        self._searches.pop(job.arn, None)
        self._trial_jobs.difference_update(t.training_job_arn for t in job.trials)

    def _take_ended_trials(self, job: TuningJobRecord, search: Search) -> bool:
        changed = False
        for trial in job.trials:
            if trial.ended or trial.training_status not in TERMINAL_STATUSES:
                continue
            metric = job.objective(trial.definition_name)["MetricName"]
            value = next((m["Value"] for m in trial.final_metrics or [] if m.get("MetricName") == metric), None)
            objective_status = SUCCEEDED if value is not None else tuning_states.FAILED
            self.tuning.trial_ended(
                trial.id, training_status=trial.training_status, failure_reason=trial.failure_reason,
                start=trial.training_start_time, end=trial.training_end_time, objective_status=objective_status,
                objective_value=value, direction=job.direction)
            search.finish(self._ended_copy(trial, objective_status, value))
            changed = True
        return changed

    @staticmethod
    def _ended_copy(trial: TrialRecord, objective_status: str, value: float | None) -> TrialRecord:
        return replace(trial, ended=True, objective_status=objective_status, objective_value=value)

    def _values(self, job: TuningJobRecord, trial: TrialRecord) -> list[float]:
        """A trial's objective values so far, in order (one per epoch, as its first host logged them)."""
        metric = job.objective(trial.definition_name)["MetricName"]
        return [p.value for p in points(self.store, job.account_id, job.region, trial.training_job_name,
                                        metric_name=metric, host="algo-1")]

    def _judge(self, job: TuningJobRecord, search: Search, trial: TrialRecord) -> None:
        if trial.training_status != "InProgress" or trial.early_stopped:
            return
        stop, attrs = search.report(trial, self._values(job, trial))
        if attrs is not None:
            self.tuning.save_search_attrs(trial.id, attrs)
        if stop:
            log.info("tuning job %s: stopping trial %s early", job.name, trial.training_job_name)
            self.tuning.mark_early_stopped(trial.id)
            self._stop_trial(trial)

    def _stop_trial(self, trial: TrialRecord) -> None:
        current = self.jobs.refresh(trial.training_job_arn)
        if current is not None and current.status == "InProgress":
            try:
                self.jobs.request_stop(trial.training_job_arn)
            except Exception:  # it ended meanwhile
                log.debug("trial %s ended before its stop", trial.training_job_name, exc_info=True)

    # ---- when a tuning job ends -------------------------------------------------------------------------

    def _end_reason(self, job: TuningJobRecord) -> tuple[str, str | None] | None:
        """(status, FailureReason) the tuning job ends with once its running trials stop; None: it goes on."""
        if job.status == STOPPING:
            return tuning_states.STOPPED, None
        ended = [t for t in job.trials if t.ended]
        succeeded = [t for t in ended if t.objective_status == SUCCEEDED]
        if not succeeded and len([t for t in ended if t.training_status == "Failed"]) >= FAILED_ATTEMPTS_LIMIT:
            return FAILED, (f"No training job succeeded after {FAILED_ATTEMPTS_LIMIT} attempts. Please take a look at "
                            "the training job failures to get more details.")
        max_runtime = job.limit("MaxRuntimeInSeconds")
        if max_runtime and time.time() - job.creation_time >= max_runtime:
            return COMPLETED, None
        criteria = job.config.get("TuningJobCompletionCriteria") or {}
        best = best_trial(job)
        if best is not None and target_reached(job.direction, best.objective_value, criteria):
            return COMPLETED, None
        not_improving = (criteria.get("BestObjectiveNotImproving") or {}).get("MaxNumberOfTrainingJobsNotImproving")
        if not_improving and job.not_improving >= not_improving:
            return COMPLETED, None
        if (criteria.get("ConvergenceDetected") or {}).get("CompleteOnConvergence") == "Enabled":
            if job.convergence_time is not None or self._converged(job):
                return COMPLETED, None
        if self._launched_all(job) and all(t.ended for t in job.trials):
            return COMPLETED, None
        return None

    def _converged(self, job: TuningJobRecord) -> bool:
        """Convergence (SageMaker's own rule is not published): the best objective has not improved by 1% over
        the last tenth of the budget (at least 10 trials); recorded as ConvergenceDetectedTime."""
        window = max(10, effective_max_jobs(job) // 10)
        if job.not_improving >= window:
            self.tuning.converged(job.arn)
            return True
        return False

    def _launched_all(self, job: TuningJobRecord) -> bool:
        return self._budget_left(job) <= 0 or (
            job.config["Strategy"] == "Grid" and len(self._counted(job)) >= effective_max_jobs(job))

    @staticmethod
    def _counted(job: TuningJobRecord) -> list[TrialRecord]:
        """The trials that count against MaxNumberOfTrainingJobs: all but those that failed for the platform's
        sake (another trial takes their place, up to MAX_RETRYABLE_FAILURES)."""
        retryable = [t for t in job.trials if t.ended and t.training_status == "Failed"
                     and tuning_states.is_retryable(t.failure_reason)]
        replaced = {t.id for t in retryable[:MAX_RETRYABLE_FAILURES]}
        return [t for t in job.trials if t.id not in replaced]

    def _budget_left(self, job: TuningJobRecord) -> int:
        return effective_max_jobs(job) - len(self._counted(job))

    # ---- launching trials --------------------------------------------------------------------------------

    def _launch(self, job: TuningJobRecord, search: Search, running: int) -> None:
        if job.status != IN_PROGRESS:
            return
        slots = min(job.limit("MaxParallelTrainingJobs") or 1, self._budget_left(job)) - running
        number = max((t.number for t in job.trials), default=0)
        for _ in range(max(0, slots)):
            number += 1
            proposal = search.propose(number, taken=[(t.definition_name, t.tuned) for t in self._counted(job)])
            if proposal is None:
                return
            definition = next(d for d in job.definitions if d.get("DefinitionName") == proposal.definition_name)
            name = trial_name(job.name, number)
            request = trial_request(definition, {**proposal.tuned, **self._objective_hyperparameter(
                job, proposal.definition_name)}, name)
            launched = self.tuning.launch_trial(
                job, number=number, training_job_name=name, request=request, tags=self._tags(job),
                tuned=proposal.tuned, search_params=proposal.search_params, definition_name=proposal.definition_name)
            if launched is None:
                search.dropped(proposal)
                return
            search.launched(launched, proposal)
            self._trial_jobs.add(training_job_arn(job.region, job.account_id, name))
            log.info("tuning job %s: trial %s launched with %s", job.name, name, proposal.tuned)
            job = self.tuning.get(job.arn)

    @staticmethod
    def _objective_hyperparameter(job: TuningJobRecord, definition_name: str | None) -> dict[str, str]:
        """SageMaker tells every trial its objective in the hyperparameter `_tuning_objective_metric`."""
        return {"_tuning_objective_metric": job.objective(definition_name)["MetricName"]}

    def _tags(self, job: TuningJobRecord) -> list[dict[str, Any]]:
        """The tuning job's tags go onto every training job it launches."""
        return self.tuning.tags_of(job.arn)

