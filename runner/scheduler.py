"""The Runner: picks queued jobs up to the concurrency cap and runs each in its own thread.

Status changes all go through server.lifecycle; the runner never writes a job row itself.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from docker.errors import DockerException
from docker.models.containers import Container

from runner.docker_backend import (
    LABEL_DATA_DIR,
    LABEL_HOST,
    LABEL_JOB_ARN,
    LABEL_MANAGED,
    DockerBackend,
    started_at,
)
from runner.execution import JobExecution, data_dir_label
from runner.layout import job_folder_name
from server.config import Settings
from server.lifecycle import Lifecycle
from server.store import JobRecord

log = logging.getLogger("smlocal.runner")

_ADOPTABLE_STATES = frozenset({"running", "exited", "paused"})


class Runner:
    """Runs training jobs in the background.

    `start()` returns at once: recovery of jobs a previous process left and the polling loop run in a
    background thread. `wake()` makes the loop look for queued jobs now. `shutdown()` stops following
    jobs but leaves their containers running for the next process to adopt.
    """

    def __init__(self, settings: Settings, lifecycle: Lifecycle, *, backend: DockerBackend | None = None,
                 poll_interval: float = 1.0) -> None:
        self.settings = settings
        self.lifecycle = lifecycle
        self.poll_interval = poll_interval
        self.backend = backend or DockerBackend(max_pool_size=max(10, 4 * settings.max_concurrent_jobs + 8))
        self._wake = threading.Event()
        self._shutdown = threading.Event()
        self._lock = threading.Lock()
        self._active: dict[str, threading.Thread] = {}
        self._thread: threading.Thread | None = None

    # ---- public API -------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._main, name="smlocal-runner", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def shutdown(self, timeout: float = 10.0) -> None:
        self._shutdown.set()
        self._wake.set()
        deadline = time.monotonic() + timeout
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            threads = list(self._active.values())
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def active_jobs(self) -> list[str]:
        """ARNs of the jobs this runner is driving right now."""
        with self._lock:
            return list(self._active)

    # ---- internals --------------------------------------------------------------------------

    def _main(self) -> None:
        try:
            self._recover()
        except Exception:
            log.exception("recovery of interrupted training jobs failed")
        while not self._shutdown.is_set():
            # Cleared before looking so a wake() during the look is not lost.
            self._wake.clear()
            try:
                self._fill_slots()
            except Exception:
                log.exception("could not start queued training jobs")
            self._wake.wait(self.poll_interval)

    def _fill_slots(self) -> None:
        # A job takes one slot, however many hosts it runs.
        with self._lock:
            free = self.settings.max_concurrent_jobs - len(self._active)
        if free <= 0:
            return
        for job in self.lifecycle.queued_jobs(free):
            if self._shutdown.is_set():
                return
            claimed = self.lifecycle.claim(job.arn)
            if claimed is None:
                continue  # stopped while queued, or taken by someone else
            execution = self._execution(claimed)
            self._launch(claimed, execution.run_new)

    def _execution(self, job: JobRecord) -> JobExecution:
        return JobExecution(job, self.settings, self.lifecycle, self.backend, self._shutdown)

    def _launch(self, job: JobRecord, body: Callable[[], None]) -> None:
        def run() -> None:
            try:
                body()
            finally:
                with self._lock:
                    self._active.pop(job.arn, None)
                self.wake()  # a slot is free

        thread = threading.Thread(target=run, name=f"smlocal-job-{job.name}", daemon=True)
        with self._lock:
            self._active[job.arn] = thread
        thread.start()

    def _recover(self) -> None:
        """Adopt the containers of jobs a previous process was running; end the rest; sweep leftovers.

        A job is adopted only when every one of its hosts has a container that started; a job with a host
        missing (or never started) cannot go on and fails.
        """
        mine = data_dir_label(self.settings)
        kept: dict[str, str] = {}  # arn -> job folder name
        for job in self.lifecycle.claimed_jobs():
            execution = self._execution(job)
            found: dict[str, Container] = {}  # host -> container
            try:
                for c in self.backend.containers({LABEL_JOB_ARN: job.arn, LABEL_DATA_DIR: mine}):
                    host = c.labels.get(LABEL_HOST)
                    if host in execution.host_names and c.status in _ADOPTABLE_STATES and started_at(c) is not None:
                        found.setdefault(host, c)
            except DockerException as e:
                log.warning("cannot look for the containers of %s: %s", job.name, e)
            if execution.host_names and set(found) == set(execution.host_names):
                kept[job.arn] = job_folder_name(job.name, job.region, job.account_id)
                self._launch(job, lambda e=execution, c=found: e.run_adopted(c))
            else:
                log.info("training job %s was interrupted by a restart", job.name)
                execution.abandon()
        self._sweep(mine, kept)

    def _sweep(self, mine: str, kept: dict[str, str]) -> None:
        """Remove containers, networks and job folders no running job owns (e.g. after a crash)."""
        labels = {LABEL_MANAGED: "true", LABEL_DATA_DIR: mine}
        try:
            for c in self.backend.containers(labels):
                if c.labels.get(LABEL_JOB_ARN) not in kept:
                    self.backend.remove_container(c)
            for n in self.backend.networks(labels):
                if (n.attrs.get("Labels") or {}).get(LABEL_JOB_ARN) not in kept:
                    self.backend.remove_network(n)
        except DockerException as e:
            log.warning("could not sweep leftover containers: %s", e)
        kept_names = set(kept.values())
        jobs_dir = Path(self.settings.data_dir).resolve() / "jobs"
        if jobs_dir.is_dir():
            for d in jobs_dir.iterdir():
                if d.name not in kept_names:
                    shutil.rmtree(d, ignore_errors=True)
