"""Which provider serves a channel: `PROVIDERS` maps its input mode (the channel's InputMode, else the
job's TrainingInputMode) to a provider class, and `make_providers` makes every host's providers.

The seam itself (`InputProvider`, `InputContext`: what a provider is asked to do, and when) is
runner.inputs.provider; the providers are `FileInput` (runner.inputs.file: a download), `PipeInput`
(runner.inputs.pipe: a FIFO writer per epoch) and `FastFileInput` (runner.inputs.fastfile: a read-only FUSE mount);
`SOURCE_PROVIDERS` maps a data source other than S3 to its provider, whatever the mode: `FileSystemInput`
(runner.inputs.file_system: a folder standing for an EFS or FSx file system, bind-mounted). A channel limited to
instance groups (InstanceGroupNames) gets providers on those groups' hosts only.
"""

from __future__ import annotations

from runner.inputs.fastfile import FastFileInput
from runner.inputs.file import FileInput
from runner.inputs.file_system import FileSystemInput
from runner.inputs.pipe import PipeInput
from runner.inputs.provider import (
    Cancelled,
    DataDownloadError,
    DownloadCancelled,
    InputContext,
    InputProvider,
)

__all__ = ["Cancelled", "DataDownloadError", "DownloadCancelled", "FastFileInput", "FileInput", "FileSystemInput",
           "InputContext", "InputProvider", "PROVIDERS", "PipeInput", "SOURCE_PROVIDERS", "make_providers"]

PROVIDERS: dict[str, type[InputProvider]] = {
    "File": FileInput,
    "Pipe": PipeInput,
    "FastFile": FastFileInput,
}
# Data sources that are not S3 are served by their own provider, whatever the input mode.
SOURCE_PROVIDERS: dict[str, type[InputProvider]] = {
    "FileSystemDataSource": FileSystemInput,
}


def make_providers(context: InputContext) -> dict[str, list[InputProvider]]:
    """Every host's providers (host -> one per channel, in channel order)."""
    providers: dict[str, list[InputProvider]] = {layout.host: [] for layout in context.layouts}
    for channel in context.spec.channels:
        kind = SOURCE_PROVIDERS.get(channel.source_kind) or PROVIDERS.get(channel.input_mode, FileInput)
        # Only the hosts that get the channel (InstanceGroupNames): the others have no folder, FIFO or mount for it.
        for provider in kind.for_hosts(channel, context.local_hosts(channel), context):
            providers[provider.host].append(provider)
    return providers
