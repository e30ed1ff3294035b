"""smlocal's agent: a job host's inputs and outputs moved on the node that runs it (the Docker Swarm backend).

On a cluster a host's container may run on a node where the server's disk is not. Each folder the algorithm
would get as a bind mount (`runner.layout.container_mounts`: host path -> container path) is instead a
node-local named volume; the agent runs as a task of its own on that node, in the service image, with each
volume mounted AT THE HOST PATH (the very path string the server would use on its disk), while the algorithm's
task mounts it at the container path. So in here the runner's own code runs unchanged on
`HostLayout(job_root, host)`: `python -m runner.agent <command>`, the job in `SMLOCAL_AGENT_JOB`
(runner.agent_protocol: the JSON, the events printed, the exit codes).

- `stage`, before the algorithm starts (execution's Starting/Downloading): the host's /opt/ml tree
  (`layout.prepare`), then every input of this host (`prepare()`: File downloads, Pipe makes its first FIFO),
  the checkpoints copied in from S3, each synced folder's state seeded.
- `sidecar`, beside the algorithm until SIGTERM: Pipe channels fed (the providers `resume()`: this process did
  not prepare them), the synced folders (checkpoints, TensorBoard, Debugger) mirrored to S3; on SIGTERM the inputs
  stop and each folder gets its last sync.
- `upload`, after the algorithm exited: the failure file's text, then the model and output data. Several hosts
  end as one model.tar.gz and one output.tar.gz, merged as `artifacts.upload_outputs` merges them (the first
  host's entry wins): every other host uploads a part (runner.artifact_parts) to `<S3OutputPath>/<job>/
  .smlocal-parts/[<run>/]<host>.tar`; the first host's upload, run once every other one ended, unpacks the parts
  into trees of their own, uploads the merge and deletes the parts.

Where it differs from a run on one machine:
- FastFile channels are downloaded as in File mode: a FUSE mount made in the agent's task lives in that task's
  mount namespace and does not reach the algorithm's task through a volume (and `stage` ends before the
  algorithm starts); the notice says so, with `fuse_problem()`'s reason when FUSE is missing anyway.
- FileSystemDataSource channels are left to the backend (a folder mounted into the algorithm's task); `file://`
  channels fail the job (their folder is on the server's machine).
- The synced folders' state files are in `<job_root>/staging`: when the backend gives the agent's tasks a
  volume there too (`volume_paths`), the sidecar goes on from what `stage` seeded; otherwise it seeds when it
  starts, which is exact when it is ready before the algorithm starts.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import docker
import docker.errors
from minio import Minio
from minio.error import S3Error

from runner import artifacts, tree
from runner.agent_protocol import (
    ALWAYS_MODEL_FLAG,
    ENV_VAR,
    WIPE_LABELS_VAR,
    WIPE_NODE_VAR,
    AgentJob,
    Command,
    Event,
    Exit,
    S3Access,
    event_line,
)
from runner.artifact_parts import PartRefused, pack_part, unpack_part
from runner.failure import read_failure_file
from runner.folder_sync import FolderSync
from runner.inputs import (
    PROVIDERS,
    SOURCE_PROVIDERS,
    DataDownloadError,
    DownloadCancelled,
    FastFileInput,
    FileInput,
    InputContext,
    InputProvider,
)
from runner.inputs.fastfile import fuse_problem
from runner.layout import HostLayout, container_mounts, make_private_dir
from runner.layout import prepare as prepare_layout
from runner.s3 import S3Location, make_client, parse_s3_uri
from smlocal.core.jobspec import ChannelSpec, JobSpec, SyncedFolder, job_prefix_uri, model_artifacts_uri
from smlocal.core.settings import Settings
from smlocal.core.store import JobRecord

log = logging.getLogger("smlocal.agent")

# `<S3OutputPath>/<job>/<PARTS_LEAF>/`: where the hosts' parts wait for the first host's upload.
PARTS_LEAF = ".smlocal-parts"
_CHUNK = 1024 * 1024
_emit_lock = threading.Lock()


def agent_environment(job: JobRecord, host: str, job_root: Path | str, s3_settings: S3Access,
                      peers: Sequence[str], *, run: str | None = None, always_model: bool = False) -> dict[str, str]:
    """The environment of one agent task of `job`'s `host` (its other hosts in `peers`; `run` tells this run's
    parts from an earlier run's: the attempt, or any string unique per run)."""
    record = {"name": job.name, "arn": job.arn, "account_id": job.account_id, "region": job.region,
              "creation_time": job.creation_time, "request": job.request}
    config = AgentJob(job=record, host=host, job_root=str(job_root), s3=s3_settings, peers=tuple(peers), run=run,
                      always_model=always_model)
    return {ENV_VAR: config.to_json()}


def volume_paths(layout: HostLayout, spec: JobSpec) -> dict[str, str | None]:
    """The folders of a host that are node-local volumes: each one's path (on the server, and where the agent's
    tasks mount it) -> where the algorithm's task mounts it, or None for the agent's own staging folder (sync
    state, scratch space for tarballs), which the algorithm never sees."""
    return {**container_mounts(layout, spec), str(layout.staging_dir): None}


def parts_location(spec: JobSpec, run: str | None = None) -> S3Location:
    """The prefix the hosts' parts go to (deleted by the first host's upload)."""
    base = parse_s3_uri(job_prefix_uri(spec.output.s3_output_path, spec.name, PARTS_LEAF))
    return base.child(run) if run else base


def emit(event: Event, **fields: Any) -> None:
    with _emit_lock:
        sys.stdout.write(event_line(event, **fields) + "\n")
        sys.stdout.flush()


class PartMissing(Exception):
    """A host's part is not in S3 when the first host's upload collects it."""


class Agent:
    """One host of one job, as `SMLOCAL_AGENT_JOB` describes it."""

    def __init__(self, config: AgentJob, stopping: threading.Event) -> None:
        job = config.job
        self.config = config
        self.host = config.host
        self.spec = JobSpec.from_request(job["request"], name=job["name"], arn=job.get("arn", ""),
                                         region=job.get("region") or config.s3.region,
                                         account_id=job.get("account_id", ""))
        if self.host not in self.spec.hosts:
            raise ValueError(f"{self.host} is not a host of training job {self.spec.name} ({self.spec.hosts})")
        self.layout = HostLayout(Path(config.job_root), self.host)
        self.settings = Settings(s3_endpoint=config.s3.endpoint, s3_access_key=config.s3.access_key,
                                 s3_secret_key=config.s3.secret_key)
        self.stopping = stopping
        self._client: Minio | None = None

    def cancelled(self) -> bool:
        return self.stopping.is_set()

    def client(self) -> Minio:
        if self._client is None:
            self._client = make_client(self.settings, self.config.s3.region)
        return self._client

    # ---- the commands -------------------------------------------------------------------------

    def stage(self) -> None:
        prepare_layout(self.layout, self.spec)
        providers = self.providers()
        notices = list(dict.fromkeys(p.notice for p in providers if p.notice))
        emit(Event.STAGING, notices=notices)
        try:
            for provider in providers:
                provider.prepare(self.cancelled)
            for folder, sync in self.syncs():
                if folder.restore:  # checkpoints: what S3 has is copied in before the algorithm starts
                    artifacts.restore_folder(self.client(), folder.s3_uri, self.layout.synced_dir(folder))
                sync.seed()
        finally:
            # Pipe's writer began fetching in prepare(); the sidecar writes the FIFOs.
            _stop_inputs(providers)
        emit(Event.STAGED, notices=notices)

    def sidecar(self) -> None:
        providers = self.providers(on_failure=lambda reason: emit(Event.INPUT_FAILED, reason=reason))
        syncs = self.syncs()
        try:
            for folder, sync in syncs:
                if self._state_file(folder).exists():
                    sync.resume()  # what stage seeded; a scan first, for what changed since
                else:
                    sync.seed()
                    sync.start()
            for provider in providers:
                provider.resume()  # prepared by stage, in another process: Pipe writes from the newest FIFO on
            emit(Event.SIDECAR_READY)
            while not self.stopping.wait(1.0):
                pass
        finally:
            _stop_inputs(providers)
            for _, sync in syncs:
                sync.stop()
        # As execution's final syncs: in reverse host order, so that algo-1's copy of a name is left last.
        for _, sync in reversed(syncs):
            sync.final_sync()
        emit(Event.SYNCED)

    def upload(self, always_model: bool) -> None:
        text = read_failure_file(self.layout)
        if text is not None:
            emit(Event.FAILURE_FILE, text=text)
        if self.host != self.spec.hosts[0]:
            emit(Event.PART_UPLOADED, uri=str(self._upload_part()))
            return
        peers = [p for p in (self.config.peers or self.spec.hosts[1:]) if p != self.host]
        scratch = self.layout.staging_dir / "parts"
        try:
            layouts, missing = self._collect_parts(peers, scratch, always_model)
            model = self._model_uri(layouts, always_model)
            artifacts.upload_outputs(self.client(), self.spec, layouts, always_model=always_model,
                                     cancelled=self.cancelled)
        except (artifacts.TransferCancelled, DownloadCancelled):
            raise  # the parts stay for the upload that takes this one up
        except BaseException:
            self._remove_parts(peers)
            raise
        else:
            self._remove_parts(peers)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        emit(Event.UPLOADED, model=model, missing=missing)

    # ---- inputs and synced folders ------------------------------------------------------------

    def providers(self, on_failure: Callable[[str], None] = lambda reason: None) -> list[InputProvider]:
        """This host's providers, made as `make_providers` makes them (shards counted over all the job's hosts)."""
        context = InputContext(self.spec, [self.layout], self.client, None, self.settings, on_failure)
        made: list[InputProvider] = []
        for channel in self.spec.channels:
            if self.host not in context.local_hosts(channel) or channel.source_kind in SOURCE_PROVIDERS:
                continue  # another host's; a file system's folder is mounted by the backend, nothing to move
            if channel.s3 is not None and channel.s3.is_local:
                raise DataDownloadError(
                    f"ClientError: channel '{channel.name}': {channel.s3.uri} names a folder of smlocal's machine, "
                    f"which {self.host} does not run on: file:// channels are not available on a cluster.")
            kind = PROVIDERS.get(channel.input_mode, FileInput)
            if kind is FastFileInput:
                made += self._fastfile_as_file(channel, context)
            else:
                made += kind.for_hosts(channel, [self.host], context)
        return made

    def _fastfile_as_file(self, channel: ChannelSpec, context: InputContext) -> list[InputProvider]:
        problem = fuse_problem()
        why = (f"FUSE is not available here ({problem})" if problem else
               "a FUSE mount made on the node by smlocal's agent does not reach the training container")
        providers = FileInput.for_hosts(channel, [self.host], context)
        for provider in providers:
            provider.notice = f"FastFile channel '{channel.name}' is downloaded as in File mode: {why}."
        return providers

    def syncs(self) -> list[tuple[SyncedFolder, FolderSync]]:
        """This host's synced folders, as execution makes them (the same state file names)."""
        return [(folder, FolderSync(self.layout.synced_dir(folder), parse_s3_uri(folder.s3_uri), self.client(),
                                    self._state_file(folder), label=f"{self.spec.name}/{self.host}/{folder.kind}",
                                    delete=folder.delete))
                for folder in self.spec.synced_folders()]

    def _state_file(self, folder: SyncedFolder) -> Path:
        return self.layout.staging_dir / f"sync-{self.host}-{folder.kind}.json"

    # ---- parts --------------------------------------------------------------------------------

    def _part_location(self, host: str) -> S3Location:
        return parts_location(self.spec, self.config.run).child(f"{host}.tar")

    def _upload_part(self) -> S3Location:
        location = self._part_location(self.host)
        make_private_dir(self.layout.staging_dir)
        part = self.layout.staging_dir / f"part-{self.host}.tar"
        try:
            pack_part(self.layout.opt_ml, part, self.cancelled)
            artifacts.put_path(self.client(), location, part, self.cancelled)
        finally:
            part.unlink(missing_ok=True)
        return location

    def _collect_parts(self, peers: list[str], scratch: Path, always_model: bool
                       ) -> tuple[list[HostLayout], list[str]]:
        """This host's layout and one per peer whose part was there, unpacked below `scratch`; and the peers
        whose part was missing (an error when the job completed: its model would lack their files)."""
        shutil.rmtree(scratch, ignore_errors=True)
        make_private_dir(scratch)
        layouts, missing = [self.layout], []
        for peer in peers:
            part = scratch / f"{peer}.tar"
            location = self._part_location(peer)
            if not self._download(location, part):
                if always_model:
                    raise PartMissing(f"the output of {peer} is not in {location}")
                log.warning("no part of %s at %s: its model and output are left out", peer, location)
                missing.append(peer)
                continue
            peer_layout = HostLayout(scratch, peer)
            try:
                unpack_part(part, peer_layout.opt_ml, self.cancelled)
            except PartRefused as e:
                raise artifacts.UploadError(
                    f"ClientError: Artifact upload failed: the output of {peer} was refused: {e.reason}.") from None
            part.unlink()
            layouts.append(peer_layout)
        return layouts, missing

    def _download(self, location: S3Location, dest: Path) -> bool:
        try:
            response = self.client().get_object(location.bucket, location.key)
        except S3Error as e:
            if e.code == "NoSuchKey":
                return False
            raise
        try:
            with open(dest, "wb") as f:
                for chunk in response.stream(_CHUNK):
                    if self.cancelled():
                        raise artifacts.TransferCancelled()
                    f.write(chunk)
        finally:
            response.close()
            response.release_conn()
        return True

    def _remove_parts(self, peers: list[str]) -> None:
        for peer in peers:
            location = self._part_location(peer)
            try:
                self.client().remove_object(location.bucket, location.key)
            except Exception as e:  # noqa: BLE001 - a part left behind is only litter
                log.warning("could not delete %s: %s", location, e)

    def _model_uri(self, layouts: list[HostLayout], always_model: bool) -> str | None:
        if not (always_model or any(tree.has_content(layout.opt_ml, artifacts.MODEL) for layout in layouts)):
            return None
        config = {"S3OutputPath": self.spec.output.s3_output_path,
                  "CompressionType": "GZIP" if self.spec.output.compressed else "NONE"}
        return model_artifacts_uri(config, self.spec.name)


def _stop_inputs(providers: list[InputProvider]) -> None:
    for provider in providers:
        try:
            provider.stop()
        except Exception:
            log.exception("could not stop input %s", provider.channel.name)


def wipe(labels: dict[str, str], node: str) -> None:
    """A job's volumes on this node (a swarm's other node: the server's engine cannot remove them there).

    The socket mounted in is meant to be the node's own engine; one that is another node's (a machine whose
    engine listens elsewhere) would find nothing to remove and say it was done, so that is an error."""
    client = docker.from_env()
    engine_node = (client.info().get("Swarm") or {}).get("NodeID") or "none"
    if engine_node != node:
        raise RuntimeError(f"the engine at the mounted Docker socket is swarm node {engine_node}, not {node} "
                           "where this task runs: its volumes cannot be removed from here")
    removed = []
    deadline = time.monotonic() + 30
    for volume in client.volumes.list(filters={"label": [f"{k}={v}" for k, v in labels.items()]}):
        while True:
            try:
                volume.remove(force=True)
                break
            except docker.errors.APIError as e:
                # In use by the containers of services removed a moment ago: they go shortly.
                if e.status_code != 409 or time.monotonic() > deadline:
                    raise
                time.sleep(0.25)
        removed.append(volume.name)
    emit(Event.WIPED, volumes=removed)


def run_command(work: Callable[[], None]) -> int:
    """Run a command; its end as the protocol says (a `failed` or `cancelled` event, the exit code)."""
    try:
        work()
    except (DownloadCancelled, artifacts.TransferCancelled):
        emit(Event.CANCELLED)
        return Exit.CANCELLED
    except (DataDownloadError, artifacts.UploadError) as e:
        emit(Event.FAILED, reason=e.reason)
        return Exit.CLIENT_ERROR
    except Exception as e:
        log.exception("the agent failed")
        emit(Event.FAILED, reason=f"InternalServerError: {type(e).__name__}: {e}")
        return Exit.INTERNAL_ERROR
    return Exit.OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runner.agent",
                                     description=f"smlocal's agent on a Swarm node (the job in ${ENV_VAR}).")
    parser.add_argument("command", choices=[c.value for c in Command])
    parser.add_argument(ALWAYS_MODEL_FLAG, dest="always_model", action="store_true",
                        help="upload: model.tar.gz even when the model folder is empty (a completed job)")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())

    def work() -> None:
        if args.command == Command.WIPE:
            wipe(json.loads(os.environ[WIPE_LABELS_VAR]), os.environ[WIPE_NODE_VAR])
            return
        raw = os.environ.get(ENV_VAR)
        if not raw:
            raise ValueError(f"${ENV_VAR} is not set")
        config = AgentJob.from_json(raw)
        agent = Agent(config, stopping)
        command = Command(args.command)
        if command is Command.STAGE:
            agent.stage()
        elif command is Command.SIDECAR:
            agent.sidecar()
        else:
            agent.upload(args.always_model or config.always_model)

    return run_command(work)


if __name__ == "__main__":
    sys.exit(main())
