"""Which folders of this machine stand for the EFS and FSx for Lustre file systems jobs name
(FileSystemDataSource), and where a channel's DirectoryPath leads in them.

There is no EFS or FSx here: the operator maps a file system id to a folder (`serve --file-system
FS_ID=DIR`), and a channel of that file system is the folder its DirectoryPath names there, mounted at the
channel's `/opt/ml/input/data/<channel>` (runner.inputs.file_system). An id nobody mapped is refused when the
job is created, never found missing later. DirectoryPath is read as SageMaker reads it:

- EFS: the path in the file system (`/` its root), as it would be mounted (SDK v2 `FileSystemInput`:
  "Absolute or normalized path to the root directory (mount point) in the file system");
- FSx for Lustre: `/<MountName>/<path in the file system>` (SDK v2 `FileSystemInput`, aws/sagemaker-python-sdk
  #4257: "For the FSxLustre the directory_path = f"/{MountName}/{FileSystemPath}""). The folder stands for the
  mounted file system, so the first segment (the mount name, which smlocal cannot know) is dropped.

A path is judged by where it really leads (links resolved), when the job is created and again right before
its containers are made: one that leads out of the mapped folder (`..`, a link) is refused. smlocal's data dir
(other jobs' data, the database) is never a file system, as for `file://` channels (smlocal.core.local_channels).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

FLAG = "--file-system"
EFS = "EFS"
FSX_LUSTRE = "FSxLustre"
# FileSystemId as the botocore model has it (min 11, max 21, pattern `fs-[0-9a-f]{8,}`).
_ID = re.compile(r"fs-[0-9a-f]{8,18}")


class FileSystemMapError(ValueError):
    """A `--file-system` value that cannot be used (the sentence says why)."""


class FileSystemRefused(Exception):  # noqa: N818 - a refusal, with its sentence
    """A channel's file system or DirectoryPath cannot be served; `reason` says why (no final period)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def parse_mapping(text: str) -> tuple[str, Path]:
    """`fs-0123abcd=/srv/efs` -> ("fs-0123abcd", its folder, resolved); FileSystemMapError when it is not one."""
    fs_id, sep, folder = text.partition("=")
    fs_id = fs_id.strip()
    if not sep or not folder:
        raise FileSystemMapError(f"{text!r} is not FS_ID=DIR (e.g. fs-0123456789abcdef0=/srv/efs)")
    if not _ID.fullmatch(fs_id):
        raise FileSystemMapError(f"{fs_id!r} is not a file system id (fs- and 8 to 18 lowercase hex digits)")
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise FileSystemMapError(f"{folder} is not a folder")
    return fs_id, _real(path)


def directory_parts(file_system_type: str, directory_path: str) -> tuple[str, ...]:
    """The folders DirectoryPath names below the file system's root, as spelled (not resolved)."""
    parts = [p for p in PurePosixPath(directory_path or "/").parts if p not in ("/", ".")]
    if file_system_type == FSX_LUSTRE:
        if not parts:
            raise FileSystemRefused(f"DirectoryPath '{directory_path}' of an FSx for Lustre file system must start "
                                    "with its mount name (/<MountName>/<path>)")
        parts = parts[1:]
    return tuple(parts)


@dataclass(frozen=True)
class FileSystems:
    """The mapped file systems (id -> resolved folder) and the folders none may be in or hold."""

    folders: Mapping[str, Path] = field(default_factory=dict)
    excluded: tuple[Path, ...] = ()

    @classmethod
    def of(cls, folders: Mapping[str, Path | str], data_dir: Path | str | None = None) -> FileSystems:
        return cls({k: _real(Path(v)) for k, v in folders.items()},
                   (_real(Path(data_dir)),) if data_dir is not None else ())

    def check_folders(self) -> None:
        """FileSystemMapError when a mapped folder is smlocal's data dir, inside it or holds it."""
        for fs_id, folder in self.folders.items():
            for excluded in self.excluded:
                if folder.is_relative_to(excluded) or excluded.is_relative_to(folder):
                    raise FileSystemMapError(f"{fs_id}: {folder} overlaps smlocal's data dir ({excluded}), which is "
                                             "never a file system")

    def resolve(self, file_system_id: str, file_system_type: str, directory_path: str) -> Path:
        """The folder a channel's DirectoryPath leads to, links resolved; FileSystemRefused if it may not be served."""
        root = self.folders.get(file_system_id)
        if root is None:
            mapped = ", ".join(sorted(self.folders)) or "none"
            raise FileSystemRefused(f"file system {file_system_id} is not mapped to a folder on this server "
                                    f"(mapped: {mapped}); start smlocal with {FLAG} {file_system_id}=DIR")
        parts = directory_parts(file_system_type, directory_path)
        depth = 0
        for part in parts:
            depth += -1 if part == ".." else 1
            if depth < 0:
                raise FileSystemRefused(f"DirectoryPath '{directory_path}' climbs out of the file system with '..'")
        real = _real(root.joinpath(*parts))
        if not real.is_relative_to(root) or any(real.is_relative_to(e) for e in self.excluded):
            raise FileSystemRefused(f"DirectoryPath '{directory_path}' leads out of file system {file_system_id} "
                                    "through a symbolic link")
        return real

    def ids(self) -> Iterable[str]:
        return self.folders.keys()
