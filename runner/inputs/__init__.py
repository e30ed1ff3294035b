"""Which provider serves a channel: `PROVIDERS` maps its input mode (the channel's InputMode, else the
job's TrainingInputMode) to a provider class, and `make_providers` makes every host's providers.

The seam itself (`InputProvider`, `InputContext`: what a provider is asked to do, and when) is
runner.inputs.provider; the providers are `FileInput` (runner.inputs.file: a download), `PipeInput`
(runner.inputs.pipe: a FIFO writer per epoch) and `FastFileInput` (runner.inputs.fastfile: a read-only FUSE mount).
"""

from __future__ import annotations

from runner.inputs.fastfile import FastFileInput
from runner.inputs.file import FileInput
from runner.inputs.pipe import PipeInput
from runner.inputs.provider import (
    Cancelled,
    DataDownloadError,
    DownloadCancelled,
    InputContext,
    InputProvider,
)

__all__ = ["Cancelled", "DataDownloadError", "DownloadCancelled", "FastFileInput", "FileInput", "InputContext",
           "InputProvider", "PROVIDERS", "PipeInput", "make_providers"]

PROVIDERS: dict[str, type[InputProvider]] = {
    "File": FileInput,
    "Pipe": PipeInput,
    "FastFile": FastFileInput,
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
