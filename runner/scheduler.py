"""The Runner: picks queued jobs up to the concurrency cap and runs each in its own thread.

Status changes all go through smlocal.core.lifecycle; the runner never writes a job row itself. It hears of
new jobs and stops from the lifecycle's listeners (at once, no polling), and of container exits from
its executions. When the container engine does not answer, jobs keep their state: the runner retries
with backoff, and once the engine answers it recovers what was in flight (as after a restart).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

from runner.backend import (
    LABEL_DATA_DIR,
    LABEL_JOB_ARN,
    LABEL_MANAGED,
    Backend,
    BackendUnavailable,
    ContainerGone,
    ContainerNotRunning,
    ContainerRef,
    ExecSession,
)
from runner.docker_backend import DockerBackend
from runner.execution import JobExecution, data_dir_label
from runner.layout import job_folder_name
from runner.mounts import remove_tree
from runner.networks import LABEL_NETWORK, NetworkPool
from runner.spot_drill import SpotDrill
from runner.subnets import SubnetAllocator, host_routes, resolve_job_subnets
from runner.time_limits import next_limit, warm_pool_expiry
from smlocal.core.jobspec import JobSpec
from smlocal.core.lifecycle import DOWNLOADING, IN_PROGRESS, PENDING, PREPARING, QUEUED, STOPPING, Lifecycle
from smlocal.core.settings import Settings
from smlocal.core.store import JobRecord
from smlocal.core.warm_pools import CACHE_FOLDER

log = logging.getLogger("smlocal.runner")

_ADOPTABLE_STATES = frozenset({"running", "exited", "paused"})
# Backoff between tries to reach an engine that does not answer.
BACKOFF_START = 1.0
BACKOFF_MAX = 30.0
# A safety net only: every change that matters wakes the runner.
IDLE_WAKE_SECONDS = 30.0
# How many queued jobs one look at the queue considers (the rest are looked at once these move on).
QUEUE_LOOK_AHEAD = 1000


class Runner:
    """Runs training jobs in the background.

    `start()` returns at once: recovery of jobs a previous process left and the scheduling loop run in
    a background thread. `shutdown()` stops following jobs but leaves their containers running for the
    next process to adopt.
    """

    def __init__(self, settings: Settings, lifecycle: Lifecycle, *, backend: Backend | None = None) -> None:
        self.settings = settings
        self.lifecycle = lifecycle
        self.backend = backend or DockerBackend(max_pool_size=max(10, 4 * settings.max_concurrent_jobs + 8))
        self._wake = threading.Event()
        self._shutdown = threading.Event()
        self._lock = threading.Lock()
        self._active: dict[str, tuple[JobExecution, threading.Thread]] = {}
        self._thread: threading.Thread | None = None
        # The engine's health, as last seen. Unknown (None) until the first check.
        self._engine_ok: bool | None = None
        # When the engine was last found gone, and the last outage (gone, back) in epoch seconds: a job's
        # container that exited in it was stopped by the engine, not by its algorithm (JobExecution.outage).
        self._engine_lost_at: float | None = None
        self._outage: tuple[float, float] | None = None
        self._engine_error: str | None = None
        self._engine_checked_at: float | None = None
        self._engine_lost = threading.Event()
        self.networks = NetworkPool(self.backend, data_dir_label(settings), SubnetAllocator(self._job_subnets()))
        self.spot_drill = SpotDrill(settings.spot_interruptions_per_hour, lifecycle, self._spot_jobs, self._shutdown)
        lifecycle.subscribe(self._on_job_change)

    def _job_subnets(self) -> IPv4Network:
        """The range job networks are carved from: as `serve` checked it, or chosen now (Settings made in code)."""
        if self.settings.job_subnets:
            return IPv4Network(self.settings.job_subnets)
        try:
            engine_networks = self.backend.networks()
        except BackendUnavailable:
            engine_networks = []
        return resolve_job_subnets(None, host_routes(), engine_networks)

    # ---- public API -------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._main, name="smlocal-runner", daemon=True)
        self._thread.start()
        self.spot_drill.start()

    def wake(self) -> None:
        self._wake.set()

    def shutdown(self, timeout: float = 10.0) -> None:
        self._shutdown.set()
        self._wake.set()
        with self._lock:
            active = list(self._active.values())
        for execution, _ in active:
            execution.wake.set()
        deadline = time.monotonic() + timeout
        if self._thread is not None:
            self._thread.join(timeout)
        for _, thread in active:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.networks.close()

    def _spot_jobs(self) -> list[str]:
        with self._lock:
            return [arn for arn, (execution, _) in self._active.items() if execution.spec.spot]

    def active_jobs(self) -> list[str]:
        """ARNs of the jobs this runner is driving right now."""
        with self._lock:
            return list(self._active)

    def check_engine(self) -> str | None:
        """Ask the engine now; None if it answers, else what is wrong."""
        try:
            self.backend.ping()
        except BackendUnavailable as e:
            return str(e)
        return None

    def progress(self, arn: str) -> list[dict[str, Any]] | None:
        """The folders a job this runner drives syncs to S3, per host (None: it does not drive the job)."""
        with self._lock:
            entry = self._active.get(arn)
        if entry is None:
            return None
        folders = []
        for host, folder, status in entry[0].sync_status():
            item: dict[str, Any] = {"Host": host, "Kind": folder.kind, "LocalPath": folder.local_path,
                                    "S3Uri": folder.s3_uri, "Files": status.files, "Bytes": status.bytes,
                                    "Pending": status.pending, "Mode": status.mode}
            if status.last_sync_at is not None:
                item["LastSyncTime"] = status.last_sync_at
            if status.last_error:
                item["LastError"] = status.last_error
            folders.append(item)
        return folders

    def exec_in_host(self, arn: str, host: str, command: list[str], *, tty: bool, stdin: bool,
                     environment: dict[str, str] | None = None) -> ExecSession | None:
        """`command` started in `host`'s container of a job this runner drives (`smlocal shell`); None while
        that container does not run (not started yet, exited, or the job is not this runner's)."""
        with self._lock:
            entry = self._active.get(arn)
        found = next((h for h in entry[0].hosts if h.name == host), None) if entry is not None else None
        if found is None or found.container is None or found.container.started_at is None or found.exited.is_set():
            return None
        try:
            return self.backend.exec(found.container, command, tty=tty, stdin=stdin, environment=environment)
        except (ContainerNotRunning, ContainerGone):
            return None  # it exited (or went) since we looked

    def health(self) -> dict[str, Any]:
        with self._lock:
            running = len(self._active)
        reachable = self._engine_ok
        return {
            "engine": {
                "name": self.backend.name,
                "reachable": reachable,
                "error": self._engine_error,
                "checkedAt": self._engine_checked_at,
            },
            "jobsRunning": running,
            "jobsQueued": self.lifecycle.counts().get(QUEUED, 0),
            "maxConcurrentJobs": self.settings.max_concurrent_jobs,
            # The network made in advance for the next job (runner.networks).
            "spareNetwork": self.networks.spare,
            "jobSubnets": str(self.networks.subnets.pool),
        }

    # ---- events -----------------------------------------------------------------------------

    def _on_job_change(self, job: JobRecord) -> None:
        """Called by the lifecycle after every committed change."""
        with self._lock:
            entry = self._active.get(job.arn)
        if job.status == STOPPING:
            if entry is not None:
                entry[0].request_stop()
        elif job.status == IN_PROGRESS and job.interrupt_requested_at is not None:
            if entry is not None:
                entry[0].request_interrupt()
        elif job.status == IN_PROGRESS and (job.runner_state == QUEUED
                                            or job.secondary_status in (DOWNLOADING, PENDING)):
            # A job to run, or a clock that starts now (TrainingStartTime, Pending): the loop looks again.
            self._wake.set()

    def _lost_engine(self) -> None:
        """An execution found the engine gone: check it, and recover once it is back."""
        self._engine_lost_at = self._engine_lost_at or time.time()
        self._engine_lost.set()
        self._wake.set()

    # ---- the loop ---------------------------------------------------------------------------

    def _main(self) -> None:
        backoff = BACKOFF_START
        while not self._shutdown.is_set():
            # Cleared before looking so a wake() during the look is not lost.
            self._wake.clear()
            # The clocks run whether or not the engine answers.
            idle = min(IDLE_WAKE_SECONDS, self._enforce_time_limits())
            if self._engine_ok is not True or self._engine_lost.is_set():
                self._engine_lost.clear()
                if not self._engine_answers():
                    self._wake.wait(min(backoff, idle))
                    backoff = min(backoff * 2, BACKOFF_MAX)
                    continue
                backoff = BACKOFF_START
                try:
                    self._recover()
                except BackendUnavailable:
                    self._set_engine(False, "the engine went away during recovery")
                    continue
                except Exception:
                    log.exception("recovery of interrupted training jobs failed")
            try:
                self._fill_slots()
            except BackendUnavailable:
                self._engine_lost.set()
                continue
            except Exception:
                log.exception("could not start queued training jobs")
            self._wake.wait(idle)

    def _enforce_time_limits(self) -> float:
        """End every InProgress job whose StoppingCondition clock ran out (runner.time_limits); the seconds
        until the next one runs out."""
        now = time.time()
        wait = IDLE_WAKE_SECONDS
        try:
            jobs = self.lifecycle.in_progress_jobs()
        except Exception:
            log.exception("could not read the jobs' time limits")
            return wait
        for job in jobs:
            limit = next_limit(job, JobSpec.from_job(job))
            if limit is None:
                continue
            if limit.at > now:
                wait = min(wait, limit.at - now)
                continue
            log.info("training job %s reached its time limit: it ends %s", job.name, limit.target)
            try:
                self.lifecycle.stop_at_deadline(job.arn, limit.target, limit.message)
            except Exception:
                log.exception("could not stop %s at its time limit", job.name)
        return max(0.05, min(wait, self._expire_warm_pools(now)))

    def _expire_warm_pools(self, now: float) -> float:
        """Terminate the warm pools whose keep-alive is over and remove their caches; seconds to the next."""
        wait, ended = IDLE_WAKE_SECONDS, False
        try:
            pools = self.lifecycle.available_warm_pools()
        except Exception:
            log.exception("could not read the warm pools")
            return wait
        for job in pools:
            ends = warm_pool_expiry(job)
            if ends is None:
                continue
            if ends > now:
                wait = min(wait, ends - now)
                continue
            log.info("the warm pool of training job %s expired", job.name)
            ended = self.lifecycle.expire_warm_pool(job.arn) is not None or ended
        if ended:
            self._sweep_warm_pool_caches()
        return wait

    def _sweep_warm_pool_caches(self) -> None:
        """Remove the cache folders of pools no job runs on or keeps Available any more."""
        root = Path(self.settings.data_dir).resolve() / CACHE_FOLDER
        if not root.is_dir():
            return
        live = self.lifecycle.live_warm_pool_ids()
        for folder in root.iterdir():
            if folder.name not in live:
                remove_tree(folder)

    def _engine_answers(self) -> bool:
        error = self.check_engine()
        self._set_engine(error is None, error)
        return error is None

    def _set_engine(self, ok: bool, error: str | None) -> None:
        if ok and self._engine_ok is False:
            log.warning("the container engine answers again: taking up the jobs in flight")
            if self._engine_lost_at is not None:
                self._outage = (self._engine_lost_at, time.time())
            self._engine_lost_at = None
        elif not ok and self._engine_ok is not False:
            self._engine_lost_at = self._engine_lost_at or time.time()
            log.warning("%s. Jobs stay InProgress; smlocal retries with backoff (up to every %.0f s).",
                        error, BACKOFF_MAX)
        self._engine_ok, self._engine_error, self._engine_checked_at = ok, error, time.time()

    def _fill_slots(self) -> None:
        # A job takes one slot, however many hosts it runs.
        with self._lock:
            free = self.settings.max_concurrent_jobs - len(self._active)
        for job in self.lifecycle.queued_jobs(QUEUE_LOOK_AHEAD):
            if self._shutdown.is_set() or self._engine_lost.is_set():
                return
            if free <= 0:
                # No slot for it: SageMaker's Pending, "waiting for compute capacity".
                if job.secondary_status != PENDING:
                    self.lifecycle.mark_pending(job.arn)
                continue
            claimed = self.lifecycle.claim(job.arn)
            if claimed is None:
                continue  # stopped while queued, or taken by someone else
            free -= 1
            execution = self._execution(claimed)
            self._launch(execution, execution.run_new)

    def _execution(self, job: JobRecord) -> JobExecution:
        return JobExecution(job, self.settings, self.lifecycle, self.backend, self.networks, self._shutdown,
                            self._lost_engine)

    def _launch(self, execution: JobExecution, body: Callable[[], None]) -> None:
        arn = execution.arn

        def run() -> None:
            try:
                body()
            finally:
                with self._lock:
                    # A job run again (a retry, a spot restart) may already have its next execution here.
                    if self._active.get(arn, (None, None))[0] is execution:
                        del self._active[arn]
                self.wake()  # a slot is free

        thread = threading.Thread(target=run, name=f"smlocal-job-{execution.job.name}", daemon=True)
        with self._lock:
            self._active[arn] = (execution, thread)
        thread.start()

    # ---- recovery ---------------------------------------------------------------------------

    def _recover(self) -> None:
        """Take up the jobs in flight that no thread of this process drives (after a restart, or the engine's
        return), then sweep what no job owns.

        - containers never started (preparing): back to the queue, after its folder and containers are
          removed (a job being stopped ends Stopped instead);
        - every host's container started: adopted, running or exited;
        - a host's container missing: a platform fault. The job runs again if its RetryStrategy allows (a
          spot job being interrupted is Interrupted and runs again), else fails (or ends Stopped if it
          was being stopped).
        """
        mine = data_dir_label(self.settings)
        kept: set[str] = set()
        for job in self.lifecycle.unfinished_jobs():
            with self._lock:
                if job.arn in self._active:
                    kept.add(job.arn)
                    continue
            execution = self._execution(job)
            if job.runner_state == PREPARING:
                if job.status == STOPPING:
                    log.info("training job %s was being stopped before it started: it is stopped", job.name)
                    execution.abandon()
                else:
                    log.info("training job %s was interrupted before its containers started: it runs again",
                             job.name)
                    execution.requeue()
                continue
            found: dict[str, ContainerRef] = {}
            for c in self.backend.containers({LABEL_JOB_ARN: job.arn, LABEL_DATA_DIR: mine}):
                if c.host in execution.host_names and c.state in _ADOPTABLE_STATES and c.started_at is not None:
                    found.setdefault(c.host, c)
            if execution.host_names and set(found) == set(execution.host_names):
                kept.add(job.arn)
                execution.outage = self._outage
                self._launch(execution, lambda e=execution, c=found: e.run_adopted(c))
            else:
                log.info("training job %s lost its containers when smlocal restarted", job.name)
                execution.abandon()
        self._sweep(mine, kept)
        self._sweep_warm_pool_caches()
        self.networks.refill()
        self._wake.set()

    def _sweep(self, mine: str, kept: set[str]) -> None:
        """Remove containers, networks and job folders no job in flight owns (e.g. after a crash)."""
        with self._lock:
            kept = kept | set(self._active)
            active_jobs = [e.job for e, _ in self._active.values()]
        labels = {LABEL_MANAGED: "true", LABEL_DATA_DIR: mine}
        with self.networks.owned() as networks_in_use:
            for c in self.backend.containers(labels):
                if c.labels.get(LABEL_JOB_ARN) in kept:
                    networks_in_use.add(c.labels.get(LABEL_NETWORK, ""))
                else:
                    self.backend.remove(c)
            for n in self.backend.networks(labels):
                if n.name not in networks_in_use and n.labels.get(LABEL_JOB_ARN) not in kept:
                    self.backend.remove_network(n)
        # A cluster job's volumes on this node (those on other nodes go with the job's own cleanup).
        for arn in self.backend.volume_job_arns(labels) - kept:
            self.backend.remove_volumes({LABEL_JOB_ARN: arn, LABEL_DATA_DIR: mine})
        kept_folders = {job_folder_name(j.name, j.region, j.account_id, j.creation_time) for j in active_jobs}
        jobs_dir = Path(self.settings.data_dir).resolve() / "jobs"
        if jobs_dir.is_dir():
            for d in jobs_dir.iterdir():
                if d.name not in kept_folders:
                    remove_tree(d)
