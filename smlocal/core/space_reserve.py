"""Room kept on the database's file system for the writes that end jobs.

When a job's data fills the data dir's file system, SQLite answers every write with "database or disk is
full", the job's terminal status among them: the job would stay InProgress for ever. So the store keeps a
file of reserved blocks beside the database, given up when a write finds the file system (nearly) full or is
refused for want of room (the caller tries again: `Store.transaction` says so with `DiskFull`), and made
again once the file system has room to spare.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

log = logging.getLogger("smlocal.store")

RESERVE_BYTES = 8 * 1024 * 1024
RESERVE_NAME = ".smlocal-space-reserve"
# The reserve is made again only with this many times its size free (not to be given up at once again),
# and looked for at most this often (a statvfs per write would be cheap, but there is no need).
REMAKE_FREE_FACTOR = 4
REMAKE_CHECK_SECONDS = 5.0
# Less than this free before a write: the reserve is given up for it (a status change takes a few KiB).
LOW_FREE_BYTES = 1024 * 1024


class SpaceReserve:
    def __init__(self, folder: Path, size: int = RESERVE_BYTES) -> None:
        self.path = folder / RESERVE_NAME
        self.size = size
        self._lock = threading.Lock()
        self._checked = float("-inf")

    @property
    def held(self) -> bool:
        return self.path.is_file()

    def balance(self) -> None:
        """Before a write: give the reserve up if the file system is (nearly) full, so the write fits; make it
        again once there is room to spare (looked for every few seconds)."""
        try:
            stat = os.statvfs(self.path.parent)
        except OSError:
            return
        free = stat.f_bavail * stat.f_frsize
        if free < LOW_FREE_BYTES:
            self.release()
            return
        now = time.monotonic()
        if now - self._checked < REMAKE_CHECK_SECONDS or free < REMAKE_FREE_FACTOR * self.size:
            return
        with self._lock:
            self._checked = now
            if self.held:
                return
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
                try:
                    # Blocks really allocated (a sparse file would free nothing when removed).
                    os.posix_fallocate(fd, 0, self.size)
                finally:
                    os.close(fd)
            except OSError as e:
                self.path.unlink(missing_ok=True)
                log.warning("could not reserve %d MiB beside the database: %s", self.size >> 20, e)

    def release(self) -> bool:
        """Give the reserve up (a write was refused for want of room); False if there was none to give."""
        with self._lock:
            if not self.held:
                return False
            self.path.unlink(missing_ok=True)
            self._checked = time.monotonic()
        log.warning("the data dir's file system is full: the %d MiB kept for job statuses are given up; "
                    "free some room", self.size >> 20)
        return True
