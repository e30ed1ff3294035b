"""FastFile's traces on the host, for tests: the rclone mount processes a data dir has."""

from __future__ import annotations

import os
from pathlib import Path


def rclone_mounts_of(data_dir: Path) -> list[str]:
    """rclone mount processes whose mount point is below this data dir."""
    found = []
    root = str(data_dir.resolve())
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                argv = Path(f"/proc/{entry.name}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if len(argv) > 3 and argv[1] in (b"mount", b"mount2") and argv[3].decode(errors="replace").startswith(root):
                found.append(entry.name)
    return found
