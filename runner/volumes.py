"""The instance's ML storage volume: ResourceConfig.VolumeSizeInGB as a file system of that size per host.

On SageMaker each instance's /opt/ml lives on an EBS volume of VolumeSizeInGB: a job whose data, model or
scratch files outgrow it fails ("ClientError: Data download failed:Insufficient disk space", the
algorithm's own "No space left on device", "Artifact upload failed:Insufficient disk space"). Here each
host's folder is an ext4 file system of that size, made in a sparse file beside it and loop-mounted:
measured on this project's machine, making, mounting and unmounting a 30 GiB one takes ~45 ms and 4 MiB
of disk, and it holds only what the job writes. (The model's tarball is packed beside the hosts' folders,
not on their volumes.)

It needs root (mount) and mkfs.ext4, an engine that sees smlocal's mounts (Backend.why_mounts_unseen); and a
data dir with room for the whole volume, since a sparse file
that cannot grow makes the file system fail with I/O errors rather than "no space". Where one of these is
missing the host gets a plain folder, and the first line of its log says VolumeSizeInGB is not enforced
and why. `remove_tree` (runner.mounts) unmounts the volume with the job's folder; the loop device goes
with the last unmount.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

IMAGE_SUFFIX = ".volume"
GIB = 1024**3


def not_enforced_notice(size_gb: int, why: str) -> str:
    return f"smlocal: VolumeSizeInGB ({size_gb} GB) is not enforced for this host: {why}."


def attach_volume(folder: Path, size_gb: int) -> str | None:
    """Mount a new, empty ext4 file system of `size_gb` GiB at `folder` (made if missing); None once done,
    else why it could not be (the caller says so in the host's log)."""
    image = folder.with_name(folder.name + IMAGE_SUFFIX)
    if os.geteuid() != 0:
        return "smlocal does not run as root, so it cannot mount a file system of that size"
    mkfs = shutil.which("mkfs.ext4")
    if mkfs is None:
        return "mkfs.ext4 is not installed (Debian's e2fsprogs)"
    free = shutil.disk_usage(folder.parent).free
    if free < size_gb * GIB:
        return (f"the data dir's file system has {free / GIB:.1f} GiB free, less than the volume: the job is "
                "limited by that file system instead")
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with open(image, "wb") as f:
            f.truncate(size_gb * GIB)  # sparse: only what the job writes takes room
        # No journal and lazy tables: a scratch volume that lives as long as the job, made in milliseconds.
        subprocess.run([mkfs, "-q", "-F", "-m", "0", "-O", "^has_journal",
                        "-E", "lazy_itable_init=1,lazy_journal_init=1", str(image)],
                       check=True, capture_output=True, timeout=60)
        subprocess.run(["mount", "-o", "loop,nosuid,nodev", str(image), str(folder)],
                       check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        detail = getattr(e, "stderr", b"") or b""
        image.unlink(missing_ok=True)
        return f"the volume could not be made ({e}{': ' + detail.decode(errors='replace').strip() if detail else ''})"
    finally:
        # The mount holds the file open: its name is not needed any more, and nothing is left to clean up.
        image.unlink(missing_ok=True)
    (folder / "lost+found").rmdir()  # mkfs's, not the job's
    return None
