"""Which folders on this machine a `file://` channel may name.

smlocal reads the host's disk for whoever reaches its port, so local channels are opt-in: the operator
names the roots (`--local-channel-root DIR`), everything else is refused. A path is judged by where it
really leads (symbolic links resolved), never by how it is spelled, when the job is created and again
when its data is staged. smlocal's own data dir (other jobs' data, the database) is never a channel, even
under a root.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT_FLAG = "--local-channel-root"
SCHEME = "file://"


def is_local_uri(uri: str) -> bool:
    return uri.startswith(SCHEME)


def local_path(uri: str) -> Path:
    """The path a `file:///...` URI names, as spelled (percent-escapes decoded, nothing resolved)."""
    return Path(unquote(urlsplit(uri).path))


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _under(path: Path, folders: Iterable[Path]) -> bool:
    return any(path.is_relative_to(folder) for folder in folders)


@dataclass(frozen=True)
class LocalChannelRoots:
    """The allowed roots and the folders excluded from them, all resolved and absolute."""

    roots: tuple[Path, ...] = ()
    excluded: tuple[Path, ...] = ()

    @classmethod
    def of(cls, roots: Iterable[Path | str], data_dir: Path | str | None = None) -> LocalChannelRoots:
        return cls(tuple(_real(Path(r)) for r in roots), (_real(Path(data_dir)),) if data_dir is not None else ())

    def resolve(self, path: Path) -> Path | None:
        """Where `path` really leads, when that is inside a root (and not smlocal's data dir); else None."""
        real = _real(path)
        return real if _under(real, self.roots) and not self.is_excluded(real) else None

    def is_excluded(self, real: Path) -> bool:
        return _under(real, self.excluded)

    def refusal(self, path: Path) -> str | None:
        """Why a channel may not name `path` (a sentence without its final period), or None when it may."""
        if not self.roots:
            return (f"file:// channels are disabled on this server; smlocal must be started with {ROOT_FLAG} DIR "
                    "to allow folders under DIR")
        real, spelled = _real(path), Path(os.path.normpath(path))
        if self.is_excluded(real) or self.is_excluded(spelled):
            return f"{path} is inside smlocal's data dir, which is never a channel"
        if any(folder.is_relative_to(real) for folder in self.excluded):
            return f"{path} contains smlocal's data dir, which is never a channel"
        if _under(real, self.roots):
            return None
        if _under(spelled, self.roots):
            return f"{path} leads out of the allowed local channel roots through a symbolic link"
        return (f"{path} is not under an allowed local channel root "
                f"({ROOT_FLAG}: {', '.join(str(r) for r in self.roots)})")
