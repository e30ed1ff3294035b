"""The input seam: one `InputProvider` per channel per host, living as long as the host.

A provider's life, driven by `runner.execution`:
- `mounts()` when the host's container is created: extra bind mounts it needs (host path -> container
  path, below the channel's `/opt/ml/input/data/<channel>`), known before anything is fetched, and
  `read_only_mounts()` which of them the container may not write (a FileSystemDataSource mounted `ro`);
- `prepare(cancelled)` before the container starts (containers are created before it when the image
  is local): File mode downloads the data; Pipe lists the channel and makes the first epoch's FIFO;
  FastFile mounts the S3 prefix at the channel's folder (a mount made before the start is carried
  into the container by its bind mount of /opt/ml/input; one made after is not);
- `start()` once the container runs: Pipe starts its FIFO writer; `resume()` instead when a restarted
  server adopts a running container (the provider never prepared in this process);
- `stop()` before the job's folder is cleaned up, on every end path (completion, failure, stop,
  restart recovery): writers stopped, mounts unmounted. Idempotent; also called on a provider that
  never prepared (it undoes what a previous process did). As a last guard, the folder is never deleted
  while anything below it is mounted (`runner.mounts.remove_tree`).

`cancelled()` turns true on a stop, the deadline or a server shutdown; a long `prepare` looks at it
often and raises `DownloadCancelled`. A failure that is the job's fault raises
`DataDownloadError(reason)`, whose reason becomes the FailureReason.

Two more things a provider may say: `notice`, a sentence for the job's log and Describe's Downloading
transition when the channel is not served as asked (a FastFile channel downloaded as in File mode where
FUSE is missing); and `failure`, the FailureReason when its data breaks off while the algorithm runs
(Pipe): it calls `context.on_failure(reason)` then, and the job stops its hosts and fails.

Which provider serves which input mode: runner.inputs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from minio import Minio

from runner.inputs.errors import DataDownloadError, DownloadCancelled
from runner.layout import HostLayout
from smlocal.core.jobspec import ChannelSpec, JobSpec
from smlocal.core.local_channels import LocalChannelRoots
from smlocal.core.settings import Settings

__all__ = ["Cancelled", "DataDownloadError", "DownloadCancelled", "InputContext", "InputProvider"]

Cancelled = Callable[[], bool]


@dataclass
class InputContext:
    """What the providers of one job share: the job, every host's tree and the S3 client."""

    spec: JobSpec
    layouts: list[HostLayout]
    s3: Callable[[], Minio]
    # The folders `file://` channels may be copied from (`--local-channel-root`); none: none allowed.
    local_roots: LocalChannelRoots | None = None
    # The S3 store the runner uses (endpoint, keys), for inputs that reach it by other means (a mount).
    settings: Settings | None = None
    # Called by a provider whose data breaks off while the algorithm runs (see `failure`).
    on_failure: Callable[[str], None] = lambda reason: None

    def layout(self, host: str) -> HostLayout:
        return next(layout for layout in self.layouts if layout.host == host)

    def channel_hosts(self, channel: ChannelSpec) -> list[str]:
        """The hosts of the job that get `channel`, in host order, whether their trees are in `layouts` or not:
        a ShardedByS3Key channel is dealt out among all of them."""
        return self.spec.channel_hosts(channel)

    def local_hosts(self, channel: ChannelSpec) -> list[str]:
        """Those of `channel_hosts` whose tree this context has (`layouts`), the hosts providers are made for:
        all of them on one machine; on a cluster a node's agent has its own host's tree only (runner.agent)."""
        mine = {layout.host for layout in self.layouts}
        return [host for host in self.channel_hosts(channel) if host in mine]


class InputProvider(ABC):
    """One channel's data on one host."""

    def __init__(self, channel: ChannelSpec, host: str, context: InputContext) -> None:
        self.channel = channel
        self.host = host
        self.context = context
        # Said in the job's log and in the Downloading transition when the channel is not served as asked.
        self.notice: str | None = None

    @property
    def failure(self) -> str | None:
        """The FailureReason, when the channel's data broke off while the algorithm ran."""
        return None

    @property
    def channel_hosts(self) -> list[str]:
        """The hosts that get this channel (InstanceGroupNames: only those groups' hosts; `JobSpec.channel_hosts`)."""
        return self.context.channel_hosts(self.channel)

    @property
    def host_index(self) -> int:
        """This host's place among the channel's hosts, from 0: which shard of a ShardedByS3Key channel it gets."""
        return self.channel_hosts.index(self.host)

    @property
    def host_count(self) -> int:
        """How many hosts a ShardedByS3Key channel is split among: those that get it."""
        return len(self.channel_hosts)

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

    def read_only_mounts(self) -> set[str]:
        """The container paths of `mounts()` that are mounted read-only (asked after `mounts()`)."""
        return set()

    @abstractmethod
    def prepare(self, cancelled: Cancelled) -> None: ...

    def start(self) -> None:  # noqa: B027 - most providers have nothing to do while the container runs
        """The container runs."""

    def resume(self) -> None:  # noqa: B027
        """A restarted server adopted the running container: take up what `start` had begun (never prepared
        in this process)."""

    def stop(self) -> None:  # noqa: B027
        """The host is done (or the job is being cleaned up): release whatever `prepare`/`start` took."""
