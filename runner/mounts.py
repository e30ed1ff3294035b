"""Mount points inside a job's folder, and removing a job's folder without reaching through one.

Inputs may mount filesystems inside a host's tree (a FUSE view of S3 for FastFile). Deleting a folder
through a mount would delete what the mount shows (the user's data), so a job folder is removed only
after everything mounted below it is unmounted, and not at all if something stays mounted.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger("smlocal.runner")

_MNT_DETACH = 2


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts_under(path: Path) -> list[Path]:
    """Mount points at or below `path`, deepest first."""
    root = os.path.realpath(path)
    found = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4:
                    point = _unescape(fields[4])
                    if point == root or point.startswith(root.rstrip("/") + "/"):
                        found.append(Path(point))
    except OSError:
        return []
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def unmount(point: Path) -> bool:
    """Detach a mount (lazily, as `umount -l`); True if it is gone."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.umount2(str(point).encode(), _MNT_DETACH) != 0:
        err = ctypes.get_errno()
        log.warning("could not unmount %s: %s", point, os.strerror(err))
        return False
    return True


def remove_tree(path: Path) -> bool:
    """Unmount whatever is mounted below `path`, then delete it; False (and nothing deleted) if a mount stays."""
    if not path.exists() and not path.is_symlink():
        return True
    for point in mounts_under(path):
        unmount(point)
    left = mounts_under(path)
    if left:
        log.error("not removing %s: still mounted below it: %s", path, ", ".join(map(str, left)))
        return False
    shutil.rmtree(path, ignore_errors=True)
    return not path.exists()
