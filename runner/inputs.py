"""Input channels as providers: one `InputProvider` per channel per host, living as long as the host.

A provider's life, driven by `runner.execution`:
- `mounts()` when the host's container is created: extra bind mounts it needs (host path -> container
  path, below the channel's `/opt/ml/input/data/<channel>`), known before anything is fetched;
- `prepare(cancelled)` before the container starts: File mode downloads the data; Pipe would create the
  first epoch's FIFO; FastFile would mount the S3 view at the channel's folder;
- `start()` once the container runs: Pipe would start its FIFO writers here; `resume()` instead when
  a restarted server adopts a running container (the provider never prepared in this process);
- `stop()` before the job's folder is cleaned up, on every end path (completion, failure, stop,
  restart recovery): writers stopped, mounts unmounted. Idempotent; also called on a provider that
  never prepared. As a last guard, the folder is never deleted while anything below it is mounted
  (`runner.mounts.remove_tree`).

`cancelled()` turns true on a stop, the deadline or a server shutdown; a long `prepare` looks at it
often and raises `DownloadCancelled`. A failure that is the job's fault raises
`DataDownloadError(reason)`, whose reason becomes the FailureReason.

`PROVIDERS` maps a channel's input mode to its provider class: Pipe and FastFile are staged as File
mode until they get providers of their own (FIFO writers, a FUSE mount).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from minio import Minio

from runner.channels import DataDownloadError, DownloadCancelled, stage_channel
from runner.layout import HostLayout
from runner.spec import ChannelSpec, JobSpec
from server.local_channels import LocalChannelRoots

__all__ = ["DataDownloadError", "DownloadCancelled", "FileInput", "InputContext", "InputProvider", "PROVIDERS",
           "make_providers"]

Cancelled = Callable[[], bool]


@dataclass
class InputContext:
    """What the providers of one job share: the job, every host's tree and the S3 client."""

    spec: JobSpec
    layouts: list[HostLayout]
    s3: Callable[[], Minio]
    # The folders `file://` channels may be copied from (`--local-channel-root`); none: none allowed.
    local_roots: LocalChannelRoots | None = None

    def layout(self, host: str) -> HostLayout:
        return next(layout for layout in self.layouts if layout.host == host)


class InputProvider(ABC):
    """One channel's data on one host."""

    def __init__(self, channel: ChannelSpec, host: str, context: InputContext) -> None:
        self.channel = channel
        self.host = host
        self.context = context

    @property
    def folder(self) -> Path:
        """The channel's folder in this host's tree."""
        return self.context.layout(self.host).channel_dir(self.channel.name)

    @classmethod
    def for_hosts(cls, channel: ChannelSpec, hosts: list[str], context: InputContext) -> list[InputProvider]:
        """One provider per host for this channel (a class may share work between them, as File mode does)."""
        return [cls(channel, host, context) for host in hosts]

    def mounts(self) -> dict[str, str]:
        return {}

    @abstractmethod
    def prepare(self, cancelled: Cancelled) -> None: ...

    def start(self) -> None:  # noqa: B027 - most providers have nothing to do while the container runs
        """The container runs."""

    def resume(self) -> None:  # noqa: B027
        """A restarted server adopted the running container: take up what `start` had begun (never prepared
        in this process)."""

    def stop(self) -> None:  # noqa: B027
        """The host is done (or the job is being cleaned up): release whatever `prepare`/`start` took."""


class _SharedStaging:
    """One channel's download for all its hosts: the first host to prepare fetches each object once."""

    def __init__(self, channel: ChannelSpec, context: InputContext) -> None:
        self.channel = channel
        self.context = context
        self._lock = threading.Lock()
        self._done = False

    def ensure(self, cancelled: Cancelled) -> None:
        with self._lock:
            if self._done:
                return
            spec = self.context.spec
            stage_channel(self.channel, [layout.channel_dir(self.channel.name) for layout in self.context.layouts],
                          self.context.s3, spec.region, spec.role_arn, cancelled, self.context.local_roots)
            self._done = True


class FileInput(InputProvider):
    """File mode: the channel's objects are in /opt/ml/input/data/<channel>/ before the container starts.

    FullyReplicated: every host gets every object (downloaded once, copied to the others);
    ShardedByS3Key: host i of n gets the objects i, i+n, ... of the key-sorted list."""

    def __init__(self, channel: ChannelSpec, host: str, context: InputContext,
                 staging: _SharedStaging | None = None) -> None:
        super().__init__(channel, host, context)
        self._staging = staging or _SharedStaging(channel, context)

    @classmethod
    def for_hosts(cls, channel: ChannelSpec, hosts: list[str], context: InputContext) -> list[InputProvider]:
        staging = _SharedStaging(channel, context)
        return [cls(channel, host, context, staging) for host in hosts]

    def prepare(self, cancelled: Cancelled) -> None:
        self._staging.ensure(cancelled)


PROVIDERS: dict[str, type[InputProvider]] = {
    "File": FileInput,
    "Pipe": FileInput,  # until Pipe has its FIFO writers
    "FastFile": FileInput,  # until FastFile has its mount
}


def make_providers(context: InputContext) -> dict[str, list[InputProvider]]:
    """Every host's providers (host -> one per channel, in channel order)."""
    hosts = [layout.host for layout in context.layouts]
    providers: dict[str, list[InputProvider]] = {host: [] for host in hosts}
    for channel in context.spec.channels:
        kind = PROVIDERS.get(channel.input_mode, FileInput)
        for provider in kind.for_hosts(channel, hosts, context):
            providers[provider.host].append(provider)
    return providers
