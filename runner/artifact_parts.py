"""One host's model and output data as a tar of its own (a part), and such a part unpacked without trusting it.

On a cluster each host's /opt/ml tree is on its own node (runner.agent), yet the job ends with one model.tar.gz
and one output.tar.gz merged from every host's folders (runner.artifacts). So every host but the first packs
its `model` and `output/data` into a part, the part goes through S3, and the first host unpacks the parts into
trees of their own and merges them all as `artifacts.upload_outputs` always does.

Packing reads the container's tree as runner.artifacts does (runner.tree: links packed as links, never
resolved; FIFOs and devices skipped). Members are named from /opt/ml: `model/...` and `output/data/...`.

Unpacking trusts nothing in the part (it is an S3 object, and the algorithm can write to the store): every
member must be a folder, a regular file or a symbolic link named below `model` or `output/data`, with no `..`
and no absolute name; each one is created relative to its parent's descriptor, every folder on the way opened
with O_NOFOLLOW, files created with O_EXCL, so neither a crafted name nor a link an earlier member planted leads
anywhere outside the destination. A link is created as the link it is (its target is text, never followed
here or by the upload). Anything else (a hard link, a device, a FIFO, a name given twice) refuses the whole part.
"""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from runner import tree
from runner.artifacts import MODEL, OUTPUT_DATA, TransferCancelled, add_entry

Cancelled = Callable[[], bool]
# The folders of /opt/ml a part holds (what upload_outputs uploads), as member name prefixes.
PART_FOLDERS = (MODEL, OUTPUT_DATA)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1024 * 1024


class PartRefused(Exception):
    """A part holds something it may not; `reason` says what (worded as a FailureReason's detail)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _never() -> bool:
    return False


def pack_part(opt_ml: Path, dest: Path, cancelled: Cancelled = _never) -> None:
    """`opt_ml`'s model and output/data folders into the tar `dest` (uncompressed: it is unpacked once, soon)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for folder in PART_FOLDERS:
            try:
                os.close(tree.open_dir(opt_ml, folder))
            except OSError:
                continue  # missing, or a link the container put there: empty, as runner.artifacts treats it
            top = tarfile.TarInfo(folder)
            top.type, top.mode = tarfile.DIRTYPE, 0o777
            tar.addfile(top)
            for entry in tree.walk(opt_ml, folder):
                if cancelled():
                    raise TransferCancelled()
                add_entry(tar, entry, f"{folder}/{entry.path}")


def _member_parts(name: str) -> list[str]:
    """A member's path components, checked: relative, no `..`, below one of PART_FOLDERS."""
    if name.startswith("/") or "\0" in name:
        raise PartRefused(f"the member {name!r} has an absolute name")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise PartRefused(f"the member {name!r} is not inside the part's folders")
    path = PurePosixPath(*parts)
    if not any(path == PurePosixPath(f) or PurePosixPath(f) in path.parents for f in PART_FOLDERS):
        raise PartRefused(f"the member {name!r} is not inside {' or '.join(PART_FOLDERS)}")
    return parts


def _open_folder(root_fd: int, parts: list[str], create: bool) -> int:
    """A descriptor of the folder `parts` below `root_fd`, made when `create` (mode 0777 as the tree's
    writable folders; set from the member later), never through a link."""
    fd = os.dup(root_fd)
    try:
        for part in parts:
            if create:
                try:
                    os.mkdir(part, 0o700, dir_fd=fd)
                except FileExistsError:
                    pass
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                raise PartRefused(f"{'/'.join(parts)}: {part!r} is not a folder ({e.strerror})") from None
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _write_file(tar: tarfile.TarFile, member: tarfile.TarInfo, dir_fd: int, name: str,
                cancelled: Cancelled) -> None:
    try:
        fd = os.open(name, _NEW_FILE_FLAGS, 0o600, dir_fd=dir_fd)
    except OSError as e:
        raise PartRefused(f"the member {member.name!r} cannot be created ({e.strerror})") from None
    with os.fdopen(fd, "wb") as out:
        source = tar.extractfile(member)
        if source is not None:
            with source:
                while chunk := source.read(_CHUNK):
                    if cancelled():
                        raise TransferCancelled()
                    out.write(chunk)
        os.fchmod(fd, stat.S_IMODE(member.mode) & 0o777)
        out.flush()
        os.utime(fd, (member.mtime, member.mtime))


def unpack_part(part: Path, dest: Path, cancelled: Cancelled = _never) -> None:
    """Unpack the part `part` into `dest` (a new folder standing for a host's /opt/ml); PartRefused, with
    nothing written outside `dest`, when any member is not what a part holds."""
    dest.mkdir(mode=0o700, parents=True)
    root_fd = os.open(dest, _DIR_FLAGS)
    folders: list[tuple[list[str], tarfile.TarInfo]] = []
    try:
        with tarfile.open(part, "r:") as tar:
            for member in tar:
                if cancelled():
                    raise TransferCancelled()
                parts = _member_parts(member.name)
                if member.isdir():
                    os.close(_open_folder(root_fd, parts, create=True))
                    folders.append((parts, member))
                    continue
                if not (member.isreg() or member.issym()):
                    raise PartRefused(f"the member {member.name!r} is neither a file, a folder nor a symbolic link")
                if "/".join(parts) in PART_FOLDERS:
                    raise PartRefused(f"the member {member.name!r} stands for a whole folder")
                dir_fd = _open_folder(root_fd, parts[:-1], create=True)
                try:
                    if member.issym():
                        try:
                            os.symlink(member.linkname, parts[-1], dir_fd=dir_fd)
                        except OSError as e:
                            raise PartRefused(f"the member {member.name!r} cannot be created ({e.strerror})") from None
                    else:
                        _write_file(tar, member, dir_fd, parts[-1], cancelled)
                finally:
                    os.close(dir_fd)
        # Folders last, deepest first: their modes and times as packed (a file written into one changes its time).
        for parts, member in reversed(folders):
            fd = _open_folder(root_fd, parts, create=False)
            try:
                os.fchmod(fd, stat.S_IMODE(member.mode) & 0o777 | 0o700)
                os.utime(fd, (member.mtime, member.mtime))
            finally:
                os.close(fd)
    except tarfile.TarError as e:
        raise PartRefused(f"it is not a readable tar ({e})") from None
    finally:
        os.close(root_fd)
