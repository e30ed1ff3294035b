"""FileSystemDataSource's provider: the folder standing for an EFS or FSx for Lustre file system (`serve
--file-system FS_ID=DIR`, smlocal.core.file_systems), bind-mounted at the channel's `/opt/ml/input/data/<channel>`.

As on SageMaker, nothing is downloaded: the channel is the file system's directory itself, read-only or
read-write as FileSystemAccessMode says (the API reference: "A directory can be mounted either in ro (read-only)
or rw (read-write) mode"), the same directory for every host. DirectoryPath was checked when the job was created;
it is resolved again right before the containers are made (links followed, never out of the mapped folder), and
the folder it leads to is what is mounted, so a link changed in between is not followed by the engine.
"""

from __future__ import annotations

from pathlib import Path

from runner.inputs.errors import DataDownloadError
from runner.inputs.provider import Cancelled, InputContext, InputProvider
from runner.layout import CONTAINER_ROOT
from smlocal.core.file_systems import FileSystemRefused, FileSystems
from smlocal.core.jobspec import ChannelSpec

READ_WRITE = "rw"


class FileSystemInput(InputProvider):
    """A FileSystemDataSource channel: a bind mount of the mapped folder, whatever the input mode."""

    def __init__(self, channel: ChannelSpec, host: str, context: InputContext) -> None:
        super().__init__(channel, host, context)
        assert channel.file_system is not None
        self.source = channel.file_system
        self._folder: Path | None = None
        self._refusal: str | None = None

    @property
    def container_path(self) -> str:
        return f"{CONTAINER_ROOT}/input/data/{self.channel.name}"

    @property
    def read_only(self) -> bool:
        return self.source.access_mode != READ_WRITE

    def _resolve(self) -> Path | None:
        settings = self.context.settings
        file_systems = FileSystems.of(settings.file_systems if settings is not None else {},
                                      settings.data_dir if settings is not None else None)
        try:
            folder = file_systems.resolve(self.source.file_system_id, self.source.file_system_type,
                                          self.source.directory_path)
        except FileSystemRefused as e:
            self._refusal = f"ClientError: channel '{self.channel.name}': {e.reason}."
            return None
        if not folder.is_dir():
            self._refusal = (f"ClientError: channel '{self.channel.name}': DirectoryPath "
                             f"'{self.source.directory_path}' is not a directory of file system "
                             f"{self.source.file_system_id}.")
            return None
        return folder

    def mounts(self) -> dict[str, str]:
        # Made when the container is; a refusal is kept for `prepare`, which fails the job before it starts.
        self._folder = self._resolve()
        return {str(self._folder): self.container_path} if self._folder is not None else {}

    def read_only_mounts(self) -> set[str]:
        return {self.container_path} if self.read_only and self._folder is not None else set()

    def prepare(self, cancelled: Cancelled) -> None:
        if self._folder is None and self._refusal is None:
            self._folder = self._resolve()  # the containers are made after the download (image not local yet)
        if self._refusal is not None:
            raise DataDownloadError(self._refusal)
