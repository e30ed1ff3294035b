"""Drives one claimed job from Starting to a terminal status, or adopts one a previous process started.

A job runs one container per host (`algo-1` .. `algo-N`) on a network of its own; the job-level flow
works on the list of `_Host`s: every host's data is staged before any container starts, the job
completes only when every host exits 0, and the first host to fail (or a stop) stops the others.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from docker.models.containers import Container
from minio import Minio

from runner import artifacts
from runner.channels import DataDownloadError, DownloadCancelled, stage_channels
from runner.docker_backend import (
    LABEL_DATA_DIR,
    LABEL_JOB_ARN,
    ContainerSpec,
    DockerBackend,
    ImageUnavailable,
    container_command,
    job_labels,
    resource_name,
    started_at,
)
from runner.environment import container_environment
from runner.failure import failure_reason
from runner.layout import (
    HostLayout,
    all_hosts,
    checkpoint_config,
    container_mounts,
    job_root,
)
from runner.layout import prepare as prepare_layout
from runner.log_follower import LogFollower
from runner.logs import LogStreamWriter, list_streams, stream_path
from runner.metrics import MetricCollector, final_of_all
from runner.s3 import make_client
from server.config import Settings
from server.lifecycle import STOPPING, TERMINAL_STATUSES, IllegalTransition, Lifecycle
from server.local_channels import LocalChannelRoots
from server.logstore import JobLogKey
from server.metric_series import MetricSeriesWriter
from server.store import JobRecord

log = logging.getLogger("smlocal.runner")

POLL_SECONDS = 0.5
DEFAULT_MAX_RUNTIME = 86400
RESTART_FAILURE = "InternalServerError: the training job was interrupted when smlocal restarted"


class _Shutdown(Exception):
    """The server is going down: leave the containers running and the job claimed for the next process."""


class _StopRequested(Exception):
    """StopTrainingJob arrived before the containers started."""


def data_dir_label(settings: Settings) -> str:
    return str(Path(settings.data_dir).resolve())


class _Host:
    """One instance of the job: its /opt/ml tree, its container, the follower of its log and how it ended."""

    def __init__(self, layout: HostLayout, labels: dict[str, str]) -> None:
        self.layout = layout
        self.labels = labels
        self.container: Container | None = None
        self.follower: LogFollower | None = None
        self.metrics = MetricCollector(None)
        self.series: MetricSeriesWriter | None = None
        self.exit_code: int | None = None
        self.error: Exception | None = None  # waiting failed: the container was removed, or Docker went away
        self.exited = threading.Event()

    @property
    def name(self) -> str:
        return self.layout.host

    @property
    def failed(self) -> bool:
        return self.exited.is_set() and (self.error is not None or self.exit_code != 0)

    def follow(self, stream: Path, definitions: list[dict[str, Any]], series: MetricSeriesWriter | None, *,
               resume: bool = False) -> None:
        assert self.container is not None
        self.series = series
        self.metrics = MetricCollector(definitions, sink=series.add if series is not None else None)
        self.follower = LogFollower(self.container, LogStreamWriter(stream), self.metrics)
        if resume:
            self.follower.resume_from_file()

    def watch(self, exits: list[_Host], exit_seen: threading.Event) -> None:
        """Follow the log and wait for the exit in the background; on exit, join `exits` and set `exit_seen`."""
        assert self.container is not None and self.follower is not None
        self.follower.start()
        container = self.container

        def wait_for_exit() -> None:
            try:
                self.exit_code = int(container.wait()["StatusCode"])
            except Exception as e:  # the container was removed under us or Docker went away
                self.error = e
            finally:
                exits.append(self)  # before `exited`: whoever sees this host exited finds it in the list
                self.exited.set()
                exit_seen.set()

        threading.Thread(target=wait_for_exit, name=f"smlocal-wait-{container.name}", daemon=True).start()


class JobExecution:
    def __init__(self, job: JobRecord, settings: Settings, lifecycle: Lifecycle, backend: DockerBackend,
                 shutdown: threading.Event) -> None:
        self.job = job
        self.arn = job.arn
        self.settings = settings
        self.lifecycle = lifecycle
        self.backend = backend
        self._shutdown = shutdown
        self.data_dir = Path(settings.data_dir).resolve()
        self.root = job_root(self.data_dir, job.name, job.region, job.account_id)
        self.log_key = JobLogKey.of(job.account_id, job.region, job.name, job.creation_time)
        self.labels = job_labels(job.name, job.arn, None, data_dir_label(settings))
        self.hosts = [_Host(HostLayout(self.root, host), job_labels(job.name, job.arn, host, data_dir_label(settings)))
                      for host in all_hosts(job.request)]
        self._s3: Minio | None = None
        # Set whenever a host's container exits; the exits in the order they happened.
        self._exit_seen = threading.Event()
        self._exits: list[_Host] = []
        self._stop_cache: tuple[float, bool] = (0.0, False)
        self._cleaned = False

    # ---- entry points -----------------------------------------------------------------------

    def run_new(self) -> None:
        self._run(self._start_new)

    @property
    def host_names(self) -> list[str]:
        return [h.name for h in self.hosts]

    def run_adopted(self, containers: dict[str, Container]) -> None:
        """Continue a job whose containers (host name -> container, one per host) a previous process started."""
        self._run(lambda: self._adopt(containers))

    def abandon(self) -> None:
        """A previous process claimed the job and left nothing to adopt: end it and clean up."""
        current = self.lifecycle.refresh(self.arn)
        if current is not None and current.status == STOPPING:
            self._end_safely("Stopped")  # it was being stopped anyway
        else:
            self._end_safely("Failed", RESTART_FAILURE)

    def _run(self, body: Callable[[], None]) -> None:
        cleanup = True
        try:
            body()
        except _Shutdown:
            cleanup = False
        except _StopRequested:
            self._end_safely("Stopped")
        except Exception as e:
            log.exception("training job %s failed inside smlocal", self.job.name)
            self._end_safely("Failed", f"InternalServerError: {type(e).__name__}: {e}")
        finally:
            if cleanup:
                self._cleanup()

    def _end_safely(self, secondary: str, failure_reason: str | None = None) -> None:
        try:
            self._end(secondary, failure_reason)
        except Exception:
            log.exception("could not record the end of training job %s", self.job.name)

    # ---- phases -----------------------------------------------------------------------------

    def _start_new(self) -> None:
        request = self.job.request
        algorithm = request.get("AlgorithmSpecification") or {}
        if not self.hosts:
            self._end("Failed", failure_reason="ClientError: the training job needs at least one instance "
                      "(ResourceConfig.InstanceCount).")
            return
        for host in self.hosts:
            prepare_layout(host.layout, request)
        self._check_stop()
        image = algorithm.get("TrainingImage")
        if not image:
            self._end("Failed", failure_reason="ClientError: smlocal runs TrainingImage containers only; "
                      f"AlgorithmName {algorithm.get('AlgorithmName')!r} is not supported.")
            return
        try:
            self.backend.ensure_image(image)
        except ImageUnavailable as e:
            self._end("Failed", failure_reason=e.reason)
            return
        self._check_stop()
        # Created before staging: Docker syncs the page cache when it creates a container, and after
        # a large download that costs ~0.4 s per GiB of freshly written data.
        self._create_containers(image, algorithm)

        self._advance("Downloading")
        try:
            stage_channels(request, self._layouts(), self._s3_client, self.job.region, self._stop_or_shutdown,
                           LocalChannelRoots.of(self.settings.local_channel_roots, self.data_dir))
            if request.get("CheckpointConfig"):
                for host in self.hosts:  # all hosts share one checkpoint URI
                    artifacts.download_checkpoints(self._s3_client(), request, host.layout)
        except DownloadCancelled:
            self._check_stop()
            raise
        except (DataDownloadError, artifacts.UploadError) as e:
            self._end("Failed", failure_reason=e.reason)
            return
        self._check_stop()

        # Every host's data is in place before any algorithm starts.
        for host in self.hosts:
            assert host.container is not None
            host.container.start()
        # Training means the algorithms run (a stop from here on goes through SIGTERM and the grace).
        try:
            self._advance("Training")
        except _StopRequested:
            pass  # the watch below sees Stopping and stops the algorithms gracefully
        starts = []
        for host in self.hosts:
            assert host.container is not None
            host.container.reload()
            start = started_at(host.container) or time.time()
            starts.append(start)
            host.follow(stream_path(self.data_dir, self.log_key, host.name, start), self._metric_definitions(),
                        self._series(host))
        self._watch_and_finish(min(starts))

    def _adopt(self, containers: dict[str, Container]) -> None:
        starts = []
        for host in self.hosts:
            host.container = containers.get(host.name)
            start = started_at(host.container) if host.container is not None else None
            if start is None:
                self._end("Failed", failure_reason=RESTART_FAILURE)
                return
            starts.append(start)
        log.info("adopting training job %s (containers %s)", self.job.name,
                 ", ".join(h.container.name for h in self.hosts if h.container is not None))
        streams = list_streams(self.data_dir, self.log_key)
        for host, start in zip(self.hosts, starts, strict=True):
            mine = [s for s in streams if s.name.startswith(host.name + "-")]
            # Keep appending to the stream the previous process opened.
            path = mine[-1].path if mine else stream_path(self.data_dir, self.log_key, host.name, start)
            host.follow(path, self._metric_definitions(), self._series(host), resume=True)
        self._watch_and_finish(min(starts))

    def _watch_and_finish(self, start: float) -> None:
        for host in self.hosts:
            host.watch(self._exits, self._exit_seen)
        stopping = self.job.request.get("StoppingCondition") or {}
        deadline = start + float(stopping.get("MaxRuntimeInSeconds") or DEFAULT_MAX_RUNTIME)

        stop_as: str | None = None
        while not self._all_exited():
            if self._first_failed() is not None:
                # One host failed: the job fails, and the others are stopped as for a stop request.
                self._terminate()
                break
            if self._exit_seen.wait(POLL_SECONDS):
                self._exit_seen.clear()
                continue
            self._check_shutdown()
            stop_as = self._stop_kind(deadline)
            if stop_as is None and time.time() >= deadline:
                try:
                    self.lifecycle.advance(self.arn, "Stopping")
                except IllegalTransition:
                    pass  # a stop request won the race; the job is Stopping either way
                stop_as = "MaxRuntimeExceeded"
            if stop_as is not None:
                self._terminate()
                break

        for host in self.hosts:
            assert host.follower is not None
            host.follower.join(timeout=10)
        failed = self._first_failed()
        if failed is not None and failed.error is not None:
            raise failed.error
        if self._metric_definitions():
            self.lifecycle.set_final_metrics(self.arn, final_of_all([h.metrics for h in self.hosts]))
        stop_as = stop_as or self._stop_kind(deadline)

        if stop_as is not None:
            self._finish_stopped(stop_as)
        elif failed is None:
            self._finish_completed()
        else:
            assert failed.follower is not None and failed.exit_code is not None
            reason = failure_reason(failed.layout, failed.exit_code, list(failed.follower.last_lines),
                                    name_host=len(self.hosts) > 1)
            self._upload_quietly(always_model=False)
            self._end("Failed", failure_reason=reason)

    def _all_exited(self) -> bool:
        return all(h.exited.is_set() for h in self.hosts)

    def _first_failed(self) -> _Host | None:
        """The host that failed first (the others may fail only because it went away)."""
        return next((h for h in list(self._exits) if h.failed), None)

    def _finish_completed(self) -> None:
        try:
            self.lifecycle.advance(self.arn, "Uploading")
        except IllegalTransition:
            pass  # stopped as it finished: still upload what it made
        try:
            client = self._s3_client()
            artifacts.upload_outputs(client, self.job.request, self.job.name, self._layouts(), always_model=True)
            artifacts.upload_checkpoints(client, self.job.request, self._layouts())
        except artifacts.UploadError as e:
            self._end("Failed", failure_reason=e.reason)
            return
        self._end("Completed")

    def _finish_stopped(self, stop_as: str) -> None:
        try:
            self.lifecycle.advance(self.arn, "Uploading")
        except IllegalTransition:
            pass
        self._upload_quietly(always_model=False)
        self._end(stop_as)

    def _upload_quietly(self, *, always_model: bool) -> None:
        # A failed or stopped job keeps its status even when saving its leftovers fails.
        try:
            client = self._s3_client()
            artifacts.upload_outputs(client, self.job.request, self.job.name, self._layouts(),
                                     always_model=always_model)
            artifacts.upload_checkpoints(client, self.job.request, self._layouts())
        except Exception as e:
            log.warning("could not upload artifacts of %s: %s", self.job.name, e)

    def _terminate(self) -> None:
        """SIGTERM to every running host, then SIGKILL once the grace period (time to save the model) is over."""
        running = [h for h in self.hosts if not h.exited.is_set()]
        for host in running:
            assert host.container is not None
            self.backend.signal(host.container, "SIGTERM")
        grace_end = time.monotonic() + self.settings.stop_grace_seconds
        while not all(h.exited.is_set() for h in running):
            if self._exit_seen.wait(min(POLL_SECONDS, max(0.0, grace_end - time.monotonic()))):
                self._exit_seen.clear()
                continue
            self._check_shutdown()
            if time.monotonic() >= grace_end:
                for host in running:
                    if not host.exited.is_set():
                        assert host.container is not None
                        self.backend.signal(host.container, "SIGKILL")
                killed_by = time.monotonic() + 30
                for host in running:
                    host.exited.wait(max(0.0, killed_by - time.monotonic()))
                return

    # ---- helpers ----------------------------------------------------------------------------

    def _create_containers(self, image: str, algorithm: dict[str, Any]) -> None:
        """One container per host on the job's network; each resolves the others by host name (its alias)."""
        name = resource_name(self.job.name)
        network, addresses = self.backend.create_network(name, self.labels, self.host_names)
        entrypoint, command = container_command(algorithm)
        environment = container_environment(self.job, self.settings)
        checkpoints = checkpoint_config(self.job.request)
        for host in self.hosts:
            mounts = container_mounts(host.layout, checkpoints)
            host.container = self.backend.create_container(ContainerSpec(
                image=image, name=f"{name}-{host.name}", network=network.name, host=host.name,
                labels=host.labels, environment=dict(environment), entrypoint=entrypoint, command=command,
                mounts=mounts, address=addresses.get(host.name),
                peers={h: a for h, a in addresses.items() if h != host.name},
            ))

    def _layouts(self) -> list[HostLayout]:
        return [h.layout for h in self.hosts]

    def _series(self, host: _Host) -> MetricSeriesWriter | None:
        if not self._metric_definitions():
            return None
        return MetricSeriesWriter(self.lifecycle.store, self.arn, self.job.creation_time, host.name)

    def _metric_definitions(self) -> list[dict[str, Any]]:
        return (self.job.request.get("AlgorithmSpecification") or {}).get("MetricDefinitions") or []

    def _s3_client(self) -> Minio:
        if self._s3 is None:
            self._s3 = make_client(self.settings, self.job.region)
        return self._s3

    def _stop_kind(self, deadline: float) -> str | None:
        """How a requested stop ends: after the deadline it can only be the MaxRuntime stop."""
        current = self.lifecycle.refresh(self.arn)
        if current is None or current.status != STOPPING:
            return None
        return "MaxRuntimeExceeded" if time.time() >= deadline else "Stopped"

    def _stop_requested(self) -> bool:
        current = self.lifecycle.refresh(self.arn)
        return current is not None and current.status == STOPPING

    def _stop_or_shutdown(self) -> bool:
        # Called per downloaded object: look at the database at most twice a second.
        if self._shutdown.is_set():
            return True
        checked_at, value = self._stop_cache
        if time.monotonic() - checked_at > POLL_SECONDS:
            value = self._stop_requested()
            self._stop_cache = (time.monotonic(), value)
        return value

    def _check_shutdown(self) -> None:
        if self._shutdown.is_set():
            self._stop_followers()
            raise _Shutdown()

    def _check_stop(self) -> None:
        self._check_shutdown()
        if self._stop_requested():
            raise _StopRequested()

    def _advance(self, secondary: str) -> None:
        try:
            self.lifecycle.advance(self.arn, secondary)
        except IllegalTransition:
            if self._stop_requested():
                raise _StopRequested() from None
            raise

    def _end(self, secondary: str, failure_reason: str | None = None) -> None:
        # Clean up first, so a terminal status means the container, network and tree are gone.
        self._cleanup()
        try:
            self.lifecycle.advance(self.arn, secondary, failure_reason=failure_reason)
        except IllegalTransition as e:
            current = self.lifecycle.refresh(self.arn)
            if current is None or current.status not in TERMINAL_STATUSES:
                raise
            log.info("job %s already ended: %s", self.job.name, e)

    def _cleanup(self) -> None:
        if self._cleaned:
            return
        self._cleaned = True
        self._stop_followers()
        try:
            self.backend.remove_job_resources({LABEL_JOB_ARN: self.arn,
                                                LABEL_DATA_DIR: self.labels[LABEL_DATA_DIR]})
        except Exception as e:
            log.warning("could not remove the containers of %s: %s", self.job.name, e)
        shutil.rmtree(self.root, ignore_errors=True)

    def _stop_followers(self) -> None:
        for host in self.hosts:
            if host.follower is not None:
                host.follower.stop()
            if host.series is not None:
                host.series.close()  # every point is stored before the job's end is
