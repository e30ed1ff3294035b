"""Reading what a container left in its /opt/ml tree without letting it reach anything outside.

The container owns the tree: any name in it may be a symlink to a host path, a FIFO that blocks a
reader for ever, or a device node. So every read here walks from the tree's root with directory file
descriptors, opens each component with O_NOFOLLOW, opens files with O_NONBLOCK and uses only what
`fstat` says is a regular file or a directory. A link is reported as a link (never resolved), and
anything else is skipped.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

log = logging.getLogger("smlocal.runner")

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# Deeper trees are cut (with a warning) rather than holding one descriptor per level.
MAX_DEPTH = 64


def open_dir(root: Path, rel: str | PurePosixPath = "") -> int:
    """A descriptor of `root/rel`, reached without following a link; OSError when it is not a real folder."""
    fd = os.open(root, _DIR_FLAGS)
    try:
        for part in PurePosixPath(rel).parts:
            if part in ("/", ".", ".."):
                raise OSError(f"bad path component {part!r}")
            next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_regular(name: str, dir_fd: int) -> tuple[int, os.stat_result] | None:
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError:
        return None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return None
    return fd, st


def _parent_fd(root: Path, rel: str) -> tuple[int, str] | None:
    """A descriptor of the folder holding `root/rel` (reached without following a link) and the last name."""
    path = PurePosixPath(rel)
    try:
        return open_dir(root, "" if str(path.parent) == "." else path.parent), path.name
    except OSError:
        return None


def stat_file(root: Path, rel: str) -> os.stat_result | None:
    """The lstat of `root/rel` if it is a regular file (nothing is opened, no link followed); None otherwise."""
    parent = _parent_fd(root, rel)
    if parent is None:
        return None
    dir_fd, name = parent
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return None
    finally:
        os.close(dir_fd)
    return st if stat.S_ISREG(st.st_mode) else None


def open_file(root: Path, rel: str) -> tuple[BinaryIO, os.stat_result] | None:
    """The regular file `root/rel` open for reading, with its fstat; None if it is missing, a link, a FIFO, a device...

    The name is lstat'ed first, so that a FIFO is not even opened (opening one, even non-blocking, would release a
    writer blocked in its own open()); the fstat after the open settles a swap in between.
    """
    parent = _parent_fd(root, rel)
    if parent is None:
        return None
    dir_fd, name = parent
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        opened = _open_regular(name, dir_fd) if stat.S_ISREG(st.st_mode) else None
    except OSError:
        opened = None
    finally:
        os.close(dir_fd)
    if opened is None:
        return None
    fd, st = opened
    return os.fdopen(fd, "rb"), st


def read_regular(root: Path, rel: str, limit: int) -> bytes | None:
    """At most `limit` bytes of the regular file `root/rel`; None if it is missing, a link, a FIFO, a device..."""
    opened = open_file(root, rel)
    if opened is None:
        return None
    f, _ = opened
    with f:
        return f.read(limit)


@dataclass
class Entry:
    """One name under a walked folder. `path` is posix, relative to the folder."""

    path: str
    kind: str  # "dir" | "file" | "link"
    mode: int
    mtime: float
    size: int = 0
    link_target: str = ""
    _dir_fd: int = -1
    _name: str = ""
    mtime_ns: int = 0  # exact, for telling a changed file from an unchanged one (mtime is a float)

    def open(self) -> BinaryIO | None:
        """The file's content (only while the walk is at this entry); None if it changed into something else."""
        opened = _open_regular(self._name, self._dir_fd)
        if opened is None:
            return None
        fd, st = opened
        if st.st_size != self.size:
            self.size = st.st_size
        return os.fdopen(fd, "rb")


def walk(root: Path, rel: str = "") -> Iterator[Entry]:
    """Every dir, regular file and symlink below `root/rel`, depth first in name order, links not followed.

    Yields nothing when `root/rel` is not a real folder (missing, or a link the container planted).
    """
    try:
        fd = open_dir(root, rel)
    except OSError:
        return
    try:
        yield from _walk(fd, "", 0)
    finally:
        os.close(fd)


def _walk(dir_fd: int, prefix: str, depth: int) -> Iterator[Entry]:
    try:
        names = sorted(os.listdir(dir_fd))
    except OSError:
        return
    for name in names:
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            continue
        path = prefix + name
        if stat.S_ISDIR(st.st_mode):
            if depth >= MAX_DEPTH:
                log.warning("not reading below %s: more than %d levels deep", path, MAX_DEPTH)
                continue
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
            except OSError:
                continue
            try:
                yield Entry(path, "dir", stat.S_IMODE(st.st_mode), st.st_mtime)
                yield from _walk(child, path + "/", depth + 1)
            finally:
                os.close(child)
        elif stat.S_ISLNK(st.st_mode):
            try:
                target = os.readlink(name, dir_fd=dir_fd)
            except OSError:
                continue
            yield Entry(path, "link", 0o777, st.st_mtime, link_target=target)
        elif stat.S_ISREG(st.st_mode):
            yield Entry(path, "file", stat.S_IMODE(st.st_mode), st.st_mtime, st.st_size, _dir_fd=dir_fd, _name=name,
                        mtime_ns=st.st_mtime_ns)
        # FIFOs, sockets and device nodes are never read.


def has_content(root: Path, rel: str = "") -> bool:
    try:
        fd = open_dir(root, rel)
    except OSError:
        return False
    try:
        return bool(os.listdir(fd))
    finally:
        os.close(fd)
