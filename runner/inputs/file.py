"""File mode's provider: the channel's objects are downloaded into its folder before the container starts.

The staging itself is runner.inputs.file_staging; one download per channel serves all its hosts.
"""

from __future__ import annotations

import threading

from runner.inputs.file_staging import stage_channel
from runner.inputs.provider import Cancelled, InputContext, InputProvider
from smlocal.core.jobspec import ChannelSpec


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
            here = set(self.context.local_hosts(self.channel))
            # A host whose tree is elsewhere (another node's) keeps its place in the shards, and gets nothing here.
            dirs = [self.context.layout(h).channel_dir(self.channel.name) if h in here else None
                    for h in self.context.channel_hosts(self.channel)]
            stage_channel(self.channel, dirs, self.context.s3, spec.region, spec.role_arn, cancelled,
                          self.context.local_roots)
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
