"""Drives one claimed job from Starting to a terminal status, or adopts one a previous process started."""

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
from runner.layout import CONTAINER_ROOT, DEFAULT_CHECKPOINT_PATH, HostLayout, checkpoint_config, job_root
from runner.layout import prepare as prepare_layout
from runner.log_follower import LogFollower
from runner.logs import LogStreamWriter, list_streams, logs_dir, stream_name
from runner.metrics import MetricCollector
from runner.s3 import make_client
from server.config import Settings
from server.lifecycle import STOPPING, TERMINAL_STATUSES, IllegalTransition, Lifecycle
from server.store import JobRecord

log = logging.getLogger("smlocal.runner")

HOST = "algo-1"
POLL_SECONDS = 0.5
DEFAULT_MAX_RUNTIME = 86400
RESTART_FAILURE = "InternalServerError: the training job was interrupted when smlocal restarted"


class _Shutdown(Exception):
    """The server is going down: leave the container running and the job claimed for the next process."""


class _StopRequested(Exception):
    """StopTrainingJob arrived before the container started."""


def data_dir_label(settings: Settings) -> str:
    return str(Path(settings.data_dir).resolve())


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
        self.layout = HostLayout(job_root(self.data_dir, job.name, job.region, job.account_id), HOST)
        self.labels = job_labels(job.name, job.arn, HOST, data_dir_label(settings))
        self._s3: Minio | None = None
        self._follower: LogFollower | None = None
        self._follower_metrics = MetricCollector(None)
        self._stop_cache: tuple[float, bool] = (0.0, False)
        self._cleaned = False

    # ---- entry points -----------------------------------------------------------------------

    def run_new(self) -> None:
        self._run(self._start_new)

    def run_adopted(self, container: Container) -> None:
        self._run(lambda: self._adopt(container))

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
        prepare_layout(self.layout, request)
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
        container = self._create_container(image, algorithm)

        self._advance("Downloading")
        try:
            stage_channels(request, self.layout, self._s3_client, self.job.region, self._stop_or_shutdown)
            if request.get("CheckpointConfig"):
                artifacts.download_checkpoints(self._s3_client(), request, self.layout)
        except DownloadCancelled:
            self._check_stop()
            raise
        except (DataDownloadError, artifacts.UploadError) as e:
            self._end("Failed", failure_reason=e.reason)
            return
        self._check_stop()

        container.start()
        # Training means the algorithm runs (a stop from here on goes through SIGTERM and the grace).
        try:
            self._advance("Training")
        except _StopRequested:
            pass  # the watch below sees Stopping and stops the algorithm gracefully
        container.reload()
        start = started_at(container) or time.time()
        writer = LogStreamWriter(logs_dir(self.data_dir, self.job.name) / stream_name(HOST, start))
        self._follower = LogFollower(container, writer, self._metrics())
        self._watch_and_finish(container, start)

    def _adopt(self, container: Container) -> None:
        start = started_at(container)
        if start is None:
            self._end("Failed", failure_reason=RESTART_FAILURE)
            return
        log.info("adopting training job %s (container %s)", self.job.name, container.name)
        streams = [s for s in list_streams(self.data_dir, self.job.name)
                   if s.name.startswith(HOST + "-")]
        # Keep appending to the stream the previous process opened.
        if streams:
            path = streams[-1].path
        else:
            path = logs_dir(self.data_dir, self.job.name) / stream_name(HOST, start)
        self._follower = LogFollower(container, LogStreamWriter(path), self._metrics())
        self._follower.resume_from_file()
        self._watch_and_finish(container, start)

    def _watch_and_finish(self, container: Container, start: float) -> None:
        assert self._follower is not None
        self._follower.start()
        stopping = self.job.request.get("StoppingCondition") or {}
        deadline = start + float(stopping.get("MaxRuntimeInSeconds") or DEFAULT_MAX_RUNTIME)
        exit_info: dict[str, Any] = {}
        exited = threading.Event()

        def wait_for_exit() -> None:
            try:
                exit_info["code"] = int(container.wait()["StatusCode"])
            except Exception as e:  # the container was removed under us or Docker went away
                exit_info["error"] = e
            finally:
                exited.set()

        threading.Thread(target=wait_for_exit, name=f"smlocal-wait-{container.name}", daemon=True).start()

        stop_as: str | None = None
        while not exited.wait(POLL_SECONDS):
            self._check_shutdown()
            stop_as = self._stop_kind(deadline)
            if stop_as is None and time.time() >= deadline:
                try:
                    self.lifecycle.advance(self.arn, "Stopping")
                except IllegalTransition:
                    pass  # a stop request won the race; the job is Stopping either way
                stop_as = "MaxRuntimeExceeded"
            if stop_as is not None:
                self._terminate(container, exited)
                break

        self._follower.join(timeout=10)
        if "error" in exit_info:
            raise exit_info["error"]
        exit_code = exit_info["code"]
        if self._metric_definitions():
            self.lifecycle.set_final_metrics(self.arn, self._follower_metrics.final())
        stop_as = stop_as or self._stop_kind(deadline)

        if stop_as is not None:
            self._finish_stopped(stop_as)
        elif exit_code == 0:
            self._finish_completed()
        else:
            reason = failure_reason(self.layout, exit_code, list(self._follower.last_lines))
            self._upload_quietly(always_model=False)
            self._end("Failed", failure_reason=reason)

    def _finish_completed(self) -> None:
        try:
            self.lifecycle.advance(self.arn, "Uploading")
        except IllegalTransition:
            pass  # stopped as it finished: still upload what it made
        try:
            client = self._s3_client()
            artifacts.upload_outputs(client, self.job.request, self.job.name, self.layout, always_model=True)
            artifacts.upload_checkpoints(client, self.job.request, self.layout)
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
            artifacts.upload_outputs(client, self.job.request, self.job.name, self.layout,
                                     always_model=always_model)
            artifacts.upload_checkpoints(client, self.job.request, self.layout)
        except Exception as e:
            log.warning("could not upload artifacts of %s: %s", self.job.name, e)

    def _terminate(self, container: Container, exited: threading.Event) -> None:
        """SIGTERM, then SIGKILL once the grace period (time to save the model) is over."""
        self.backend.signal(container, "SIGTERM")
        grace_end = time.monotonic() + self.settings.stop_grace_seconds
        while not exited.wait(min(POLL_SECONDS, max(0.0, grace_end - time.monotonic()))):
            self._check_shutdown()
            if time.monotonic() >= grace_end:
                self.backend.signal(container, "SIGKILL")
                exited.wait(30)
                return

    # ---- helpers ----------------------------------------------------------------------------

    def _create_container(self, image: str, algorithm: dict[str, Any]) -> Container:
        name = resource_name(self.job.name)
        network = self.backend.create_network(name, self.labels)
        entrypoint, command = container_command(algorithm)
        mounts = {str(self.layout.opt_ml): CONTAINER_ROOT}
        checkpoints = checkpoint_config(self.job.request)
        if checkpoints and checkpoints["LocalPath"].rstrip("/") != DEFAULT_CHECKPOINT_PATH:
            mounts[str(self.layout.checkpoints_dir)] = checkpoints["LocalPath"]
        return self.backend.create_container(ContainerSpec(
            image=image, name=f"{name}-{HOST}", network=network.name, host=HOST, labels=self.labels,
            environment=container_environment(self.job, self.settings), entrypoint=entrypoint,
            command=command, mounts=mounts,
        ))

    def _metrics(self) -> MetricCollector:
        self._follower_metrics = MetricCollector(self._metric_definitions())
        return self._follower_metrics

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
            if self._follower is not None:
                self._follower.stop()
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
        if self._follower is not None:
            self._follower.stop()
        try:
            self.backend.remove_job_resources({LABEL_JOB_ARN: self.arn,
                                                LABEL_DATA_DIR: self.labels[LABEL_DATA_DIR]})
        except Exception as e:
            log.warning("could not remove the containers of %s: %s", self.job.name, e)
        shutil.rmtree(self.layout.job_root, ignore_errors=True)
