"""Drives one claimed job from Starting to a terminal status, or adopts one a previous process started.

A job runs one container per host (`algo-1` .. `algo-N`) on a network of its own. `run_new` reads as
the phase order; the policies (stop, deadline, failure, grace) are small objects in runner.policies.
Nothing here sleeps or polls: container exits, stop requests, the deadline and a shutdown all set the
execution's `wake` event.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from minio import Minio

from runner import artifacts
from runner.backend import (
    LABEL_DATA_DIR,
    LABEL_JOB_ARN,
    Backend,
    BackendUnavailable,
    ContainerGone,
    ContainerRef,
    ContainerSpec,
    ImageUnavailable,
    NetworkRef,
    container_command,
    job_labels,
    resource_name,
)
from runner.environment import container_environment, cpu_count_mounts, instance_resources
from runner.failure import algorithm_error, failure_reason
from runner.folder_sync import FolderSync, SyncStatus
from runner.host_address import container_s3_endpoint
from runner.inputs import DataDownloadError, DownloadCancelled, InputContext, InputProvider, make_providers
from runner.layout import WRITABLE_DIR, HostLayout, container_mounts, job_root, make_private_dir
from runner.layout import prepare as prepare_layout
from runner.log_follower import LogFollower
from runner.metrics import MetricCollector, final_of_all
from runner.mounts import mounts_under, remove_tree
from runner.networks import LABEL_NETWORK, NetworkPool, host_addresses
from runner.node_data import AgentFailed, NodeData
from runner.notices import no_s3_endpoint_notice, platform_notices
from runner.policies import Detach, FailurePolicy, GracePolicy, InterruptPolicy, StopPolicy, StopRequested
from runner.s3 import make_client, parse_s3_uri
from runner.subnets import NoFreeSubnet, RangeTooSmall
from runner.volumes import attach_volume, not_enforced_notice
from runner.vpc import GatewayUnavailable, start_gateway, uses_vpc
from smlocal.core.jobspec import JobSpec, SyncedFolder
from smlocal.core.lifecycle import (
    DEFAULT_MESSAGES,
    DOWNLOADING,
    FAILED,
    INTERRUPTED,
    PENDING,
    PULLING_IMAGE_MESSAGE,
    QUEUED,
    RUNNING,
    STARTING,
    STOPPING,
    TERMINAL_STATUSES,
    TERMINATING,
    TRAINING,
    UPLOADING,
    WAITING_FOR_NETWORK_MESSAGE,
    IllegalTransition,
    Lifecycle,
    phase_reached,
    restart_message,
)
from smlocal.core.local_channels import LocalChannelRoots
from smlocal.core.logstore import JobLogKey, LogStreamWriter, list_streams, stream_path
from smlocal.core.metric_series import MetricSeriesWriter
from smlocal.core.settings import Settings
from smlocal.core.store import JobRecord
from smlocal.core.warm_pools import CACHE_FOLDER, CACHE_PATH

log = logging.getLogger("smlocal.runner")

RESTART_FAILURE = "InternalServerError: the training job was interrupted when smlocal restarted"
# After SIGKILL, how long to wait for the engine to report the exits.
KILL_WAIT_SECONDS = 30.0
LOG_DRAIN_SECONDS = 10.0
# A job waiting for a free network tries again this often (a release by this server wakes it at once).
NETWORK_RETRY_SECONDS = 2.0
# A job's end that could not be written (a full disk) is tried again this many times, this far apart.
END_TRIES = 5
END_RETRY_SECONDS = 2.0
# An engine found gone some time after it stopped answering: its containers may have exited this much before.
OUTAGE_SLACK_SECONDS = 5.0
# The phases whose StatusMessage changes in place: Starting (waiting for a network, then not) and
# Training (the image download, then the algorithm).
_MESSAGE_CHANGES_IN_PLACE = (STARTING, TRAINING)


def data_dir_label(settings: Settings) -> str:
    return str(Path(settings.data_dir).resolve())


class _JobFailed(Exception):
    """The job fails for a reason that is the user's (bad data, missing image...)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Host:
    """One instance of the job: its /opt/ml tree, inputs, container, log follower and how it ended."""

    def __init__(self, layout: HostLayout, labels: dict[str, str], inputs: list[InputProvider]) -> None:
        self.layout = layout
        self.labels = labels
        self.inputs = inputs
        self.container: ContainerRef | None = None
        self.follower: LogFollower | None = None
        self.metrics = MetricCollector(None)
        self.series: MetricSeriesWriter | None = None  # the metrics' points over time, to the store
        self.exit_code: int | None = None
        self.error: Exception | None = None  # waiting failed: the container was removed, or the engine went away
        self.exited = threading.Event()
        self.volume_notice: str | None = None  # VolumeSizeInGB is not enforced for it, and why (runner.volumes)

    @property
    def name(self) -> str:
        return self.layout.host

    def watch(self, backend: Backend, on_exit: Callable[[_Host], None]) -> None:
        """Follow the log and wait for the exit in the background."""
        assert self.container is not None and self.follower is not None
        self.follower.start()
        container = self.container

        def wait_for_exit() -> None:
            try:
                self.exit_code = backend.wait(container)
            except Exception as e:
                self.error = e
            finally:
                self.exited.set()
                on_exit(self)

        threading.Thread(target=wait_for_exit, name=f"smlocal-wait-{container.name}", daemon=True).start()


class JobExecution:
    def __init__(self, job: JobRecord, settings: Settings, lifecycle: Lifecycle, backend: Backend,
                 networks: NetworkPool, shutdown: threading.Event,
                 on_backend_lost: Callable[[], None] = lambda: None) -> None:
        self.job = job
        self.spec = JobSpec.from_job(job)
        self.arn = job.arn
        self.settings = settings
        self.lifecycle = lifecycle
        self.backend = backend
        self.networks = networks
        self._on_backend_lost = on_backend_lost
        self.data_dir = Path(settings.data_dir).resolve()
        self.root = job_root(self.data_dir, job.name, job.region, job.account_id, job.creation_time)
        self.log_key = JobLogKey.of(job.account_id, job.region, job.name, job.creation_time)
        label = data_dir_label(settings)
        self.labels = job_labels(job.name, job.arn, None, label)
        self._s3: Minio | None = None
        self.wake = threading.Event()
        layouts = [HostLayout(self.root, host) for host in self.spec.hosts]
        providers = make_providers(InputContext(
            self.spec, layouts, self._s3_client, LocalChannelRoots.of(settings.local_channel_roots, self.data_dir),
            settings, on_failure=lambda reason: self.wake.set()))
        self.hosts = [_Host(layout, job_labels(job.name, job.arn, layout.host, label), providers[layout.host])
                      for layout in layouts]
        self.shutdown = shutdown
        self.stop = StopPolicy(self.wake, shutdown)
        self.interrupt = InterruptPolicy(self.wake)
        self.failures = FailurePolicy()
        self.grace = GracePolicy(settings.stop_grace_seconds, self._record_terminating)
        self._exits: list[_Host] = []  # in the order they happened
        self._exits_lock = threading.Lock()
        self.network: NetworkRef | None = None  # the job's network, once it has one
        self.outage: tuple[float, float] | None = None  # the engine's last absence, when adopted after it
        self._network_notices: tuple[str, ...] = ()  # a VPC job without its S3 endpoint says why (runner.vpc)
        self._current = job  # the job as last written by this execution
        self._cleaned = False
        # The folders synced to S3 while the job runs (checkpoints, TensorBoard, Debugger), per host.
        self.syncs: list[tuple[str, SyncedFolder, FolderSync]] = []
        # The job runs again (a retry, a spot restart): persisted once this run is cleaned up, so the next
        # run's containers and folder are never those this cleanup removes.
        self._again: Callable[[], None] | None = None
        # On a cluster the data moves on the nodes (runner.node_data), not through this machine's disk.
        self.node_data = (NodeData(job, self.spec, settings, backend, layouts, self.labels,
                                   settings.agent_image or "smlocal/service:dev")
                          if backend.stages_on_node else None)

    @property
    def host_names(self) -> list[str]:
        return [h.name for h in self.hosts]

    # ---- entry points -----------------------------------------------------------------------

    def run_new(self) -> None:
        """A claimed job, from its current phase (a job run again after a restart does not go back)."""
        self._run(self._phases)

    def _phases(self) -> None:
        self._prepare_hosts()       # Starting: /opt/ml trees, the network, containers if the image is local
        self._stage_inputs()        # Downloading: every host's inputs, before any algorithm starts
        self._pull_image()          # Training: "Downloading the training image...", then the containers
        self._start_containers()    # Training: the algorithms run
        self._watch_and_finish()    # exits, stop, deadline -> Uploading -> terminal status

    def run_adopted(self, containers: dict[str, ContainerRef]) -> None:
        """Continue a job whose started containers (host -> container) a previous process left."""
        def body() -> None:
            self._adopt(containers)
            self._watch_and_finish()
        self._run(body)

    def request_stop(self) -> None:
        """The job went to Stopping (StopTrainingJob or its deadline): stop now, whatever the phase."""
        self.stop.request()

    def request_interrupt(self) -> None:
        """A spot interruption was asked for (persisted): SIGTERM, the grace, a last sync, then a new run."""
        self.interrupt.request()

    def sync_status(self) -> list[tuple[str, SyncedFolder, SyncStatus]]:
        """Each synced folder's state, per host (the console shows it)."""
        return [(host, folder, sync.status()) for host, folder, sync in self.syncs]

    def requeue(self) -> None:
        """Interrupted before its containers started: clean up, and back to the queue to run again."""
        self._cleanup()
        self.lifecycle.set_runner_state(self.arn, QUEUED)

    def abandon(self) -> None:
        """A previous process ran the job and left nothing to adopt (its containers are gone): what the
        algorithm saved is synced from the folders left on disk, then the job runs again (an interruption
        under way, or a retry RetryStrategy allows) or ends (failed, or as its stop says)."""
        try:
            if self.job.status == STOPPING:
                self.stop.request()
            self._make_syncs()
            for _, _, sync in self.syncs:
                sync.resume()
            if self.job.interrupt_requested_at is not None and not self.stop.requested:
                self._finish_interrupted()
            else:
                self._sync_quietly()
                self._fault(RESTART_FAILURE)
        except Exception:
            log.exception("could not end training job %s", self.job.name)
        finally:
            self._cleanup()
            self._run_again()

    def _run(self, body: Callable[[], None]) -> None:
        detached = False
        try:
            current = self.lifecycle.refresh(self.arn)
            if current is None:
                raise IllegalTransition(f"job {self.arn} no longer exists")
            self._current = current
            if current.status == STOPPING:
                self.stop.request()  # it came before this execution could hear of it
            if current.interrupt_requested_at is not None:
                self.interrupt.request()
            body()
        except Detach:
            detached = True
        except BackendUnavailable as e:
            log.warning("training job %s: %s; it is taken up again when the engine answers", self.job.name, e)
            detached = True
            self._on_backend_lost()
        except StopRequested:
            self._end_safely(self._end_stopped)
        except _JobFailed as e:
            self._end_safely(partial(self._end, FAILED, e.reason))
        except Exception as e:
            # A platform fault (the engine refused a container, a host's container vanished, the store did
            # not answer): SageMaker's InternalServerError, which RetryStrategy retries.
            log.exception("training job %s failed inside smlocal", self.job.name)
            try:
                self._sync_quietly()
            except Detach:
                detached = True  # shutting down: the next process takes the job up
            else:
                self._end_safely(partial(self._fault, f"InternalServerError: {type(e).__name__}: {e}"))
        finally:
            if detached:
                self._stop_followers()
                self._stop_syncs()  # the next process resumes them from their state files
            else:
                self._cleanup()
                self._run_again()

    # ---- phases -----------------------------------------------------------------------------

    def _prepare_hosts(self) -> None:
        if self._current.secondary_status == INTERRUPTED:  # a spot job's new run, on fresh containers
            self._enter(STARTING, restart_message(self._current.interruptions))
        elif self._current.secondary_status == PENDING:  # a slot took it
            self._enter(STARTING)
        if not self.hosts:
            raise _JobFailed("ClientError: the training job needs at least one instance "
                             "(ResourceConfig.InstanceCount).")
        image = self.spec.algorithm.image
        if not image:
            raise _JobFailed("ClientError: smlocal runs TrainingImage containers only; "
                             f"AlgorithmName {self.spec.algorithm.algorithm_name!r} is not supported.")
        if self.node_data is not None:
            unreachable = [c.name for c in self.spec.channels if c.source_kind == "FileSystemDataSource"]
            if unreachable:
                raise _JobFailed(f"ClientError: channels {', '.join(unreachable)} name a FileSystemDataSource, a "
                                 "folder of smlocal's machine that the nodes of the swarm cannot read.")
            self.node_data.place()  # the trees are made on the nodes, by the agent (`stage`)
        else:
            make_private_dir(self.data_dir / "jobs")
            make_private_dir(self.root)
            for host in self.hosts:
                self._attach_volume(host)
                prepare_layout(host.layout, self.spec)
        self.stop.check()
        self._take_network()
        if self.node_data is not None and self.network is not None and not (
                self.spec.network_isolation or uses_vpc(self.spec)):
            self.node_data.network = self.network.name
        if self.backend.has_image(image):
            # Created before staging: Docker syncs the page cache when it creates a container, and after
            # a large download that costs ~0.4 s per GiB of freshly written data.
            self._create_containers(image)

    def _attach_volume(self, host: _Host) -> None:
        """The host's folder on a file system of VolumeSizeInGB (runner.volumes), or a line saying why not."""
        size = self.spec.volume_size_gb
        if not size or not self.backend.sizes_volumes:
            return
        if not self.settings.enforce_volume_size:
            host.volume_notice = not_enforced_notice(size, "smlocal serve runs with --no-enforce-volume-size")
            return
        folder = host.layout.job_root / host.name
        if mounts_under(folder):
            return  # mounted already (by this job, whose run this is again): nothing to make
        why = self.backend.why_mounts_unseen() or attach_volume(folder, size)
        if why is not None:
            host.volume_notice = not_enforced_notice(size, why)

    def _take_network(self) -> None:
        """The job's network; while the subnet range has none free, the job waits in Starting and says so."""
        waiting = False
        while True:
            self.wake.clear()
            # Before asking, so a release between the refusal and the wait is not missed.
            self.networks.notify_on_release(self.wake)
            try:
                # Kept at once: the cleanup releases it whatever happens next.
                # A VPC job's network is internal too, with room for its S3 gateway (runner.vpc).
                vpc = uses_vpc(self.spec)
                self.network = self.networks.take(len(self.hosts) + (1 if vpc else 0),
                                                  internal=self.spec.network_isolation or vpc)
                break
            except NoFreeSubnet as e:
                if not waiting:
                    log.info("training job %s waits for a free network: %s", self.job.name, e)
                    self._enter(STARTING, WAITING_FOR_NETWORK_MESSAGE)
                    waiting = True
                # Woken by a release here; another server's (same range, same engine) is seen on the next try.
                self.wake.wait(NETWORK_RETRY_SECONDS)
                self.stop.check()
            except RangeTooSmall as e:
                raise _JobFailed(str(e)) from None
            finally:
                self.networks.stop_notifying(self.wake)
        if waiting:
            self._enter(STARTING)  # the message changes back in place

    def _stage_inputs(self) -> None:
        if self.node_data is not None:
            self._stage_on_nodes()
            return
        # SageMaker's "Downloading input data", and what is not served as asked (a FastFile channel without FUSE).
        notices = dict.fromkeys(p.notice for h in self.hosts for p in h.inputs if p.notice)
        self._enter(DOWNLOADING, "; ".join([DEFAULT_MESSAGES[DOWNLOADING], *notices]) if notices else None)
        try:
            for host in self.hosts:
                for provider in host.inputs:
                    provider.prepare(self.stop.cancelled)
            self._make_syncs()
            for host, folder, sync in self.syncs:
                if folder.restore:  # checkpoints: what S3 has is copied in before the algorithm starts
                    destination = self._host(host).layout.synced_dir(folder)
                    artifacts.restore_folder(self._s3_client(), folder.s3_uri, destination)
                sync.seed()
                sync.start()
        except DownloadCancelled:
            self.stop.check()
            raise
        except (DataDownloadError, artifacts.UploadError) as e:
            raise _JobFailed(e.reason) from None
        self.stop.check()

    def _stage_on_nodes(self) -> None:
        """Every host's inputs staged on its node by the agent; a channel it cannot serve as asked is said."""
        assert self.node_data is not None

        def downloading(notices: list[str]) -> None:
            self._enter(DOWNLOADING, "; ".join([DEFAULT_MESSAGES[DOWNLOADING], *notices]) if notices else None)
            self._network_notices += tuple(notices)  # in the hosts' logs too, as with one engine

        try:
            self.node_data.stage(self.stop.cancelled, downloading)
        except AgentFailed as e:
            self.stop.check()
            if e.platform:
                raise RuntimeError(e.reason) from None
            raise _JobFailed(e.reason) from None
        self.stop.check()

    def _pull_image(self) -> None:
        image = self.spec.algorithm.image
        assert image is not None
        if all(h.container is not None for h in self.hosts):
            self._enter(TRAINING)
            return
        self._enter(TRAINING, PULLING_IMAGE_MESSAGE)
        self._cancellable(lambda: self.backend.pull_image(image))
        self._create_containers(image)
        self._enter(TRAINING)  # the message changes in place: "Training image download completed. ..."

    def _start_containers(self) -> None:
        self.stop.check()
        if self.node_data is not None:
            self.node_data.start_sidecars(self.stop.cancelled)  # Pipe FIFOs fed and folders synced on the nodes
        for host in self.hosts:
            assert host.container is not None
            host.container = self.backend.start(host.container)
        self.lifecycle.set_runner_state(self.arn, RUNNING)
        for host in self.hosts:
            for provider in host.inputs if self.node_data is None else ():
                provider.start()
            assert host.container is not None and host.container.started_at is not None
            self._follow(host, self._stream_path(host.name, host.container.started_at), resume=False)

    def _adopt(self, containers: dict[str, ContainerRef]) -> None:
        log.info("adopting training job %s (containers %s)", self.job.name,
                 ", ".join(c.name for c in containers.values()))
        if self.job.runner_state == TERMINATING and self.job.runner_since is not None:
            self.grace.resume(self.job.runner_since)
        streams = list_streams(self.data_dir, self.log_key)
        self._make_syncs()
        for _, _, sync in self.syncs:
            sync.resume()
        if self.node_data is not None:
            self.node_data.adopt(self.backend.containers({LABEL_JOB_ARN: self.arn,
                                                         LABEL_DATA_DIR: self.labels[LABEL_DATA_DIR]}))
        for host in self.hosts:
            host.container = containers[host.name]
            if self._stopped_by_engine(host.container):
                raise ContainerGone(f"{host.container.name} was stopped while the Docker engine was away (exit "
                                    f"code {host.container.exit_code}): the engine restarted or went away while "
                                    "the job ran")
            for provider in host.inputs if self.node_data is None else ():
                provider.resume()
            mine = [s for s in streams if s.name.startswith(host.name + "-")]
            # Keep appending to the stream the previous process opened.
            started = host.container.started_at or time.time()
            self._follow(host, mine[-1].path if mine else self._stream_path(host.name, started), resume=True)

    def _stopped_by_engine(self, container: ContainerRef) -> bool:
        """A container that exited, not cleanly, while the engine was away (a restart stops them all)."""
        if self.outage is None or container.finished_at is None or not container.exit_code:
            return False
        gone, back = self.outage
        return gone - OUTAGE_SLACK_SECONDS <= container.finished_at <= back

    def _watch_and_finish(self) -> None:
        for host in self.hosts:
            host.watch(self.backend, self._on_exit)
        failed = self._watch()
        for host in self.hosts:
            assert host.follower is not None
            host.follower.join(LOG_DRAIN_SECONDS)
        errors = [h.error for h in self.hosts if h.error is not None]
        if any(isinstance(e, BackendUnavailable) for e in errors):
            raise next(e for e in errors if isinstance(e, BackendUnavailable))
        if errors:
            raise errors[0]
        # Interrupted: the hosts were signalled for it (one that finished first just completes).
        if self.interrupt.requested and self.grace.signalled and not self.stop.requested:
            self._finish_interrupted()
            return
        self._close_series()  # every point is stored before the job's end is
        if self.spec.algorithm.metric_definitions:
            self.lifecycle.set_final_metrics(self.arn, final_of_all([h.metrics for h in self.hosts]))
        self._stop_inputs()
        if self.stop.requested:
            self._upload_quietly()  # as SageMaker does for a stopped job; the job still reads Stopping
            self._end_stopped()
        elif (input_failure := self._input_failure()) is not None:  # its hosts were stopped for it
            self._upload_quietly()
            self._end(FAILED, input_failure)
        elif failed is None:
            self._finish_completed()
        else:
            assert failed.follower is not None and failed.exit_code is not None
            if self.node_data is None:
                reason = failure_reason(failed.layout, failed.exit_code, list(failed.follower.last_lines),
                                        name_host=len(self.hosts) > 1)
                self._upload_quietly()
            else:  # the failure file is on the node: the agent's upload reads it
                written = self._upload_quietly().get(failed.name)
                reason = algorithm_error(failed.exit_code, list(failed.follower.last_lines),
                                         failed.name if len(self.hosts) > 1 else None, written)
            self._end(FAILED, reason)

    def _watch(self) -> _Host | None:
        """Wait until every host exited; the first host to fail or a stop terminates the others."""
        while True:
            self.wake.clear()
            if self.stop.detaching():
                raise Detach()
            if all(h.exited.is_set() for h in self.hosts):
                return self._first_failed()
            failed = self._first_failed()
            # A host whose wait failed (its container removed from outside) is a platform fault: the
            # others are stopped as for a failure.
            lost = any(h.error is not None for h in self.hosts if h.exited.is_set())
            if (failed is not None or lost or self.stop.requested or self.interrupt.requested
                    or self.grace.signalled or self._input_failure()):
                self._terminate()
                return self._first_failed()
            self.wake.wait()

    def _terminate(self) -> None:
        """SIGTERM to every running host, then SIGKILL once the grace period (time to save the model) is over."""
        if not self.grace.signalled:
            self.grace.begin()
            for host in self.hosts:
                if not host.exited.is_set():
                    assert host.container is not None
                    self.backend.signal(host.container, "SIGTERM")
        while True:
            self.wake.clear()
            if all(h.exited.is_set() for h in self.hosts):
                return
            if self.stop.detaching():
                raise Detach()
            remaining = self.grace.remaining()
            if remaining <= 0:
                break
            self.wake.wait(remaining)
        for host in self.hosts:
            if not host.exited.is_set():
                assert host.container is not None
                self.backend.signal(host.container, "SIGKILL")
        killed_by = time.monotonic() + KILL_WAIT_SECONDS
        for host in self.hosts:
            host.exited.wait(max(0.0, killed_by - time.monotonic()))

    def _finish_completed(self) -> None:
        try:
            self._enter(UPLOADING)
        except StopRequested:
            pass  # stopped as it finished: still upload what it made, and end as the stop says
        try:
            if self.node_data is not None:
                self.node_data.stop_sidecars()
                self.node_data.upload(True, self.stop.detaching)
            else:
                client = self._s3_client()
                self._final_syncs()
                artifacts.upload_outputs(client, self.spec, self._layouts(), always_model=True,
                                         cancelled=self.stop.detaching)
        except artifacts.TransferCancelled:
            raise Detach() from None
        except artifacts.UploadError as e:
            self._end(FAILED, e.reason)
            return
        except AgentFailed as e:
            if e.platform:
                raise RuntimeError(e.reason) from None
            self._end(FAILED, e.reason)
            return
        self._end("Completed")

    def _upload_quietly(self) -> dict[str, str]:
        """What the algorithm left, saved; on a cluster, each host's failure file text (the agent reads it)."""
        # A failed or stopped job keeps its status even when saving its leftovers fails.
        self._sync_quietly()
        try:
            if self.node_data is not None:
                return self.node_data.upload(False, self.stop.detaching)
            client = self._s3_client()
            artifacts.upload_outputs(client, self.spec, self._layouts(), always_model=False,
                                     cancelled=self.stop.detaching)
        except artifacts.TransferCancelled:
            raise Detach() from None
        except Exception as e:
            log.warning("could not upload artifacts of %s: %s", self.job.name, e)
        return {}

    # ---- helpers ----------------------------------------------------------------------------

    def _enter(self, secondary: str, message: str | None = None) -> None:
        """Show a phase (not again if the job is past it); StopRequested if a stop is under way."""
        if self.stop.requested:
            raise StopRequested()
        current = self._current
        if phase_reached(current, secondary) and not (secondary in _MESSAGE_CHANGES_IN_PLACE
                                                      and secondary == current.secondary_status):
            return
        try:
            self._current = self.lifecycle.advance(self.arn, secondary, message)
        except IllegalTransition:
            latest = self.lifecycle.refresh(self.arn)
            if latest is not None and latest.status == STOPPING:
                self.stop.request()
                raise StopRequested() from None
            raise

    def _cancellable(self, work: Callable[[], None]) -> None:
        """Run `work` (an image pull) in the background; a stop, the deadline or a shutdown stops waiting for it."""
        done = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                work()
            except BaseException as e:
                failure.append(e)
            finally:
                done.set()
                self.wake.set()

        threading.Thread(target=run, name=f"smlocal-pull-{self.job.name}", daemon=True).start()
        while True:
            self.wake.clear()
            if done.is_set():
                break
            self.stop.check()
            self.wake.wait()
        if failure:
            if isinstance(failure[0], ImageUnavailable):
                raise _JobFailed(failure[0].reason)
            raise failure[0]

    def _create_containers(self, image: str) -> None:
        """One container per host on the job's network; each resolves the others by host name (its alias)."""
        assert self.network is not None
        name = resource_name(self.job.name)
        entrypoint, command = container_command(self.spec.algorithm.entrypoint, self.spec.algorithm.arguments)
        environment = container_environment(self.spec, self.settings)
        addresses = host_addresses(self.network, self.host_names)
        endpoint_hosts = self._start_s3_gateway(name)
        for index, host in enumerate(self.hosts):
            resources = instance_resources(self.spec, self.settings, host.name, index, self.backend.gpus())
            mounts, read_only, volumes = self._host_mounts(host, resources)
            host.container = self.backend.create(ContainerSpec(
                image=image, name=f"{name}-{host.name}", network=self.network.name, host=host.name,
                labels={**host.labels, LABEL_NETWORK: self.network.name}, environment=dict(environment),
                entrypoint=entrypoint, command=command,
                mounts=mounts, address=addresses.get(host.name),
                peers={**endpoint_hosts, **{h: a for h, a in addresses.items() if h != host.name}},
                isolated=self.spec.network_isolation, read_only=read_only,
                shm_size=resources.shm_size, gpus=resources.gpus, cpuset=resources.cpuset, memory=resources.memory,
                volumes=volumes, node=self.node_data.nodes.get(host.name) if self.node_data is not None else None,
            ))

    def _host_mounts(self, host: _Host, resources: Any) -> tuple[dict[str, str], set[str], dict[str, str]]:
        """(bind mounts, their read-only container paths, named volumes) of a host's container. On a cluster its
        folders are volumes on its node (runner.node_data); channels reach it through them."""
        if self.node_data is not None:
            return {}, set(), self.node_data.algorithm_volumes(host.name)
        mounts = container_mounts(host.layout, self.spec)
        read_only: set[str] = set()
        for provider in host.inputs:
            mounts.update(provider.mounts())
            read_only |= provider.read_only_mounts()
        cache = self._warm_pool_cache(host.name)
        if cache is not None:
            mounts[str(cache)] = CACHE_PATH
        mounts.update(cpu_count_mounts(host.layout, resources))
        return mounts, read_only, {}

    def _start_s3_gateway(self, name: str) -> dict[str, str]:
        """A VPC job's S3 gateway (runner.vpc), labelled as the job's: the names its hosts resolve to it. None for
        other jobs, or when it cannot be made: the job runs without it, and its log says why."""
        if not uses_vpc(self.spec):
            return {}
        if self.node_data is not None:
            # The gateway is a container of this machine's engine; hosts on other nodes could not reach it.
            self._network_notices = (no_s3_endpoint_notice("smlocal makes no S3 gateway on a swarm"),)
            return {}
        assert self.network is not None
        try:
            return start_gateway(self.backend, self.network, {**self.labels, LABEL_NETWORK: self.network.name},
                                 container_s3_endpoint(self.settings), name)
        except GatewayUnavailable as e:
            log.warning("training job %s gets no S3 endpoint on its private subnet: %s", self.job.name, e)
            self._network_notices = (no_s3_endpoint_notice(str(e)),)
            return {}

    def _warm_pool_cache(self, host: str) -> Path | None:
        """The host's folder of the warm pool's persistent cache (kept for the next job on the pool), if the
        job runs on one: `<data-dir>/warm-pools/<pool>/<host>`, writable by any uid as the rest of the tree."""
        pool = self._current.warm_pool_id
        if pool is None:
            return None
        folder = self.data_dir / CACHE_FOLDER / pool / host
        make_private_dir(folder.parent)
        folder.mkdir(exist_ok=True)
        os.chmod(folder, WRITABLE_DIR)
        return folder

    def _follow(self, host: _Host, stream: Path, *, resume: bool) -> None:
        assert host.container is not None
        definitions = self.spec.algorithm.metric_definitions
        host.series = (MetricSeriesWriter(self.lifecycle.store, self.arn, self.job.creation_time, host.name)
                       if definitions else None)
        host.metrics = MetricCollector(definitions, sink=host.series.add if host.series is not None else None)
        # Input notices (a FastFile channel that fell back to File) come after the platform's own.
        input_notices = tuple(dict.fromkeys(p.notice for p in host.inputs if p.notice))
        host.follower = LogFollower(self.backend, host.container,
                                    LogStreamWriter(stream, self.settings.max_log_bytes_per_host), host.metrics,
                                    platform_notices(self.spec, host.name, self.backend.gpus())
                                    + self._network_notices + input_notices
                                    + ((host.volume_notice,) if host.volume_notice else ()))
        if resume:
            host.follower.resume_from_file()
        else:
            host.follower.write_notices()

    def _stream_path(self, host: str, started_at: float) -> Path:
        return stream_path(self.data_dir, self.log_key, host, started_at)

    def _on_exit(self, host: _Host) -> None:
        with self._exits_lock:
            self._exits.append(host)
        self.wake.set()

    def _first_failed(self) -> _Host | None:
        with self._exits_lock:
            exits = [h for h in self._exits if h.error is None]
        failed = self.failures.first_failed(exits)
        return failed if isinstance(failed, _Host) else None

    def _input_failure(self) -> str | None:
        """The FailureReason of a channel whose data broke off while the algorithm ran (Pipe)."""
        if self.node_data is not None:
            return self.node_data.input_failure()
        return next((p.failure for h in self.hosts for p in h.inputs if p.failure), None)

    def _record_terminating(self) -> float:
        return self.lifecycle.set_runner_state(self.arn, TERMINATING).runner_since or time.time()

    def _layouts(self) -> list[HostLayout]:
        return [h.layout for h in self.hosts]

    def _s3_client(self) -> Minio:
        if self._s3 is None:
            self._s3 = make_client(self.settings, self.job.region)
        return self._s3

    def _end(self, secondary: str, failure_reason: str | None = None) -> None:
        """Write the terminal status (before any cleanup: the job's end is on record first).

        A job being stopped ends as its stop says, whatever `secondary` is."""
        job = self.lifecycle.end(self.arn, secondary, failure_reason)
        if job.status not in TERMINAL_STATUSES:
            raise IllegalTransition(f"{self.arn} did not end: {job.status}/{job.secondary_status}")

    def _end_stopped(self) -> None:
        self.lifecycle.finish_stop(self.arn)

    def _end_safely(self, end: Callable[[], None]) -> None:
        try:
            end()
            return
        except Exception as e:
            # Most often a full disk, which the job's own data may have filled: its containers and folders go
            # first, then its end is written again (the store gave its reserve up for it), a few times.
            log.warning("could not record the end of training job %s (%s): it is written again once the job's "
                        "folders are removed", self.job.name, e)
        self._cleanup()
        for attempt in range(END_TRIES):
            try:
                end()
                return
            except Exception:
                if attempt == END_TRIES - 1 or self.shutdown.wait(END_RETRY_SECONDS):
                    log.exception("could not record the end of training job %s", self.job.name)
                    return

    def _stop_inputs(self) -> None:
        for host in self.hosts:
            for provider in host.inputs:
                try:
                    provider.stop()
                except Exception:
                    log.exception("could not stop input %s of %s", provider.channel.name, self.job.name)

    def _cleanup(self) -> None:
        if self._cleaned:
            return
        self._cleaned = True
        self._stop_syncs()
        self._stop_followers()
        self._stop_inputs()
        try:
            self._remove_containers_and_network()
        except BackendUnavailable as e:
            log.warning("could not remove the containers of %s (%s): they go at the next recovery", self.job.name, e)
            if self.network is not None:
                self.networks.abandon(self.network.name)
            self._on_backend_lost()
        except Exception as e:
            log.warning("could not remove the containers of %s: %s", self.job.name, e)
        if self.node_data is not None:
            try:
                self.node_data.wipe()
            except Exception as e:
                log.warning("could not remove the volumes of %s: %s", self.job.name, e)
        remove_tree(self.root)
        # The next job's network, made now: made while this job's containers start or stop, it would
        # slow them down (the engine serializes network changes).
        self.networks.refill()

    def _remove_containers_and_network(self) -> None:
        mine = {LABEL_JOB_ARN: self.arn, LABEL_DATA_DIR: self.labels[LABEL_DATA_DIR]}
        containers = self.backend.containers(mine)
        networks = {c.labels[LABEL_NETWORK] for c in containers if c.labels.get(LABEL_NETWORK)}
        if self.network is not None:
            networks.add(self.network.name)
        for container in containers:
            self.backend.remove(container)
        for network in networks:
            self.networks.release(network)
        for labelled in self.backend.networks(mine):  # a job's own network, as older versions made them
            self.backend.remove_network(labelled)

    # ---- synced folders, retries, interruptions -------------------------------------------------

    def _host(self, name: str) -> _Host:
        return next(h for h in self.hosts if h.name == name)

    def _make_syncs(self) -> None:
        """One FolderSync per host and synced folder (every host syncs its own folder to the one URI, as on
        SageMaker); each keeps what it sent in a state file outside the container's tree."""
        folders = self.spec.synced_folders()
        if self.syncs or not folders or self.node_data is not None:  # on a cluster the sidecars sync
            return
        client = self._s3_client()
        for host in self.hosts:
            for folder in folders:
                self.syncs.append((host.name, folder, FolderSync(
                    host.layout.synced_dir(folder), parse_s3_uri(folder.s3_uri), client,
                    host.layout.staging_dir / f"sync-{host.name}-{folder.kind}.json",
                    label=f"{self.job.name}/{host.name}/{folder.kind}", delete=folder.delete)))

    def _final_syncs(self) -> None:
        """Every synced folder once more, after the algorithm exited; UploadError if S3 refuses.

        Hosts share one URI, and a name two hosts wrote holds the last writer's file (SageMaker asks
        scripts to name files per host); in reverse host order here, so of what no host synced while
        running, algo-1's copy is the one left, as in the model's merge."""
        for _, _, sync in reversed(self.syncs):
            sync.final_sync(self.stop.detaching)

    def _sync_quietly(self) -> None:
        # A job that failed, stopped or was interrupted keeps its status even when this last sync fails.
        if self.node_data is not None:
            self.node_data.stop_sidecars()  # their last sync, on the nodes
            return
        try:
            self._final_syncs()
        except artifacts.TransferCancelled:
            raise Detach() from None
        except Exception as e:
            log.warning("could not sync the folders of %s: %s", self.job.name, e)

    def _stop_syncs(self) -> None:
        for _, _, sync in self.syncs:
            sync.stop()

    def _fault(self, reason: str) -> None:
        """A platform fault ended this run: it runs again if RetryStrategy allows, else the job fails."""
        retries = self.spec.max_retry_attempts
        if retries and not self.stop.requested and self._current.attempt <= retries:
            self._again = partial(self._retry, reason)
            return
        self._end(FAILED, reason)

    def _retry(self, reason: str) -> None:
        if self.lifecycle.retry(self.arn, reason, self.spec.max_retry_attempts) is None:
            self._end(FAILED, reason)  # stopped meanwhile: it ends as its stop says
        else:
            log.info("training job %s runs again after a platform fault: %s", self.job.name, reason)

    def _finish_interrupted(self) -> None:
        """The interrupted run's hosts exited: a last sync (the checkpoints the next run starts from)."""
        self._stop_inputs()
        self._sync_quietly()
        self._again = self._record_interrupted

    def _record_interrupted(self) -> None:
        try:
            self.lifecycle.interrupted(self.arn)
        except IllegalTransition:
            latest = self.lifecycle.refresh(self.arn)
            if latest is not None and latest.status == STOPPING:
                self._end_stopped()  # a stop came during the grace: it wins
            return
        log.info("training job %s was interrupted: it runs again", self.job.name)

    def _run_again(self) -> None:
        again, self._again = self._again, None
        if again is not None:
            self._end_safely(again)

    def _stop_followers(self) -> None:
        for host in self.hosts:
            if host.follower is not None:
                host.follower.stop()
        self._close_series()

    def _close_series(self) -> None:
        for host in self.hosts:
            if host.series is not None:
                host.series.close()
