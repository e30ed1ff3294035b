"""The data dir: private to smlocal's user, and used by one server at a time.

Two servers on one data dir would adopt, sweep and run each other's jobs, so `serve` takes an
exclusive lock (fcntl) on `<data-dir>/smlocal.lock` for as long as it runs; the kernel drops it when the
process ends, however it ends.
"""

from __future__ import annotations

import fcntl
import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("smlocal.server")

LOCK_FILE = "smlocal.lock"


class DataDirInUse(RuntimeError):
    """Another smlocal server holds the data dir."""


def make_private(data_dir: Path) -> None:
    """Create the data dir 0700, or take group and other access away from one that is ours.

    A shared folder (someone else's, or sticky like /tmp) is left alone, with a warning."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = data_dir.stat()
    if stat.S_IMODE(st.st_mode) & 0o077 == 0:
        return
    if st.st_uid == os.geteuid() and not st.st_mode & stat.S_ISVTX:
        os.chmod(data_dir, 0o700)
        log.info("made the data dir %s private (0700)", data_dir)
    else:
        log.warning("the data dir %s is open to other users; jobs' trees and logs below it are private anyway",
                    data_dir)


class DataDirLock:
    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirInUse(
                f"another smlocal server (pid {holder}) is using the data dir {self.path.parent.resolve()}. "
                "Stop it first, or give this server a --data-dir of its own.") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
