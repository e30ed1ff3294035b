"""Moving what the algorithm saved to S3 at the end (model, output data) and checkpoints back in.

The folders synced while the job runs (checkpoints, TensorBoard, Debugger) are runner.folder_sync's.

The container owns the /opt/ml tree, so everything read from it goes through `runner.tree`: a link is
packed as a link (never resolved on the host), FIFOs and devices are skipped, and a folder the container
replaced by a link is treated as empty.

Several hosts: their folders are merged into one model.tar.gz (one output.tar.gz, one prefix with
CompressionType NONE, one checkpoint URI). Of two hosts' entries with the same path the lower-numbered
host's wins (algo-1 over algo-2); folders of the same path merge.
"""

from __future__ import annotations

import os
import tarfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from minio import Minio
from minio.error import S3Error

from runner import tree
from runner.failure import UPLOAD_DISK_FULL, disk_full, disk_full_reason
from runner.layout import WRITABLE_DIR, WRITABLE_FILE, HostLayout
from runner.s3 import BROKEN_MIDWAY, TRANSFER_ERRORS, TRANSFER_TRIES, S3Location, parse_s3_uri, unreachable
from smlocal.core.jobspec import JobSpec, job_output_uri

# Folders of the tree that are uploaded, relative to /opt/ml.
MODEL = "model"
OUTPUT_DATA = "output/data"


class UploadError(Exception):
    """Artifacts could not be stored; `reason` is the job's FailureReason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TransferCancelled(Exception):
    """The server is shutting down in the middle of a transfer."""


Cancelled = Callable[[], bool]


def _never() -> bool:
    return False


class _CancellableReader:
    """A file whose reads stop the transfer when `cancelled()` says so."""

    def __init__(self, f: BinaryIO, cancelled: Cancelled) -> None:
        self._f = f
        self._cancelled = cancelled

    def read(self, size: int = -1) -> bytes:
        if self._cancelled():
            raise TransferCancelled()
        return self._f.read(size)


def output_location(spec: JobSpec) -> S3Location:
    """`<S3OutputPath>/<job>/output/`, where model.tar.gz and output.tar.gz go."""
    return parse_s3_uri(job_output_uri(spec.output.s3_output_path, spec.name))


def _files(folders: Sequence[tuple[Path, str]]) -> Iterator[tree.Entry]:
    """Regular files of several hosts' folders ((opt_ml, folder) pairs); a path an earlier host gave is skipped."""
    seen: set[str] = set()
    for root, rel in folders:
        for entry in tree.walk(root, rel):
            if entry.kind == "file" and entry.path not in seen:
                seen.add(entry.path)
                yield entry


def _tar(folders: Sequence[tuple[Path, str]], dest: Path, cancelled: Cancelled) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    added: dict[str, bool] = {}  # name in the tar -> is a folder
    with tarfile.open(dest, "w:gz", compresslevel=6) as tar:
        for root, rel in folders:
            skipped: str | None = None  # a folder whose path an earlier host gave as a non-folder
            for entry in tree.walk(root, rel):
                if cancelled():
                    raise TransferCancelled()
                if skipped is not None and entry.path.startswith(skipped):
                    continue
                skipped = None
                if entry.path in added:
                    if entry.kind == "dir" and not added[entry.path]:
                        skipped = entry.path + "/"
                    continue  # the earlier host's entry wins; folders of the same path merge
                # Members sit at the top level, as in SageMaker's model.tar.gz.
                if add_entry(tar, entry, entry.path):
                    added[entry.path] = entry.kind == "dir"


def add_entry(tar: tarfile.TarFile, entry: tree.Entry, name: str) -> bool:
    """Add one walked entry as `name`: a folder, a link as a link (never resolved), a regular file with its
    content; False when the file changed into something else since the walk saw it."""
    info = tarfile.TarInfo(name)
    info.mtime, info.mode = int(entry.mtime), entry.mode
    if entry.kind == "dir":
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    elif entry.kind == "link":
        info.type, info.linkname = tarfile.SYMTYPE, entry.link_target
        tar.addfile(info)
    else:
        f = entry.open()
        if f is None:
            return False
        with f:
            info.size = entry.size
            tar.addfile(info, f)
    return True


def _put_file(client: Minio, loc: S3Location, f: BinaryIO, size: int, cancelled: Cancelled) -> None:
    start = f.tell()
    for attempt in range(TRANSFER_TRIES):
        try:
            client.put_object(loc.bucket, loc.key, _CancellableReader(f, cancelled), size)  # type: ignore[arg-type]
            return
        except S3Error as e:
            raise UploadError(f"ClientError: Artifact upload to {loc} failed: {e.code}: {e.message}") from None
        except BROKEN_MIDWAY as e:
            # Broken off mid-object (the store restarted): the object again, from its start, a few times.
            if attempt == TRANSFER_TRIES - 1:
                raise UploadError(f"ClientError: Artifact upload to {loc} failed: {unreachable(e)}") from None
            time.sleep(2 ** attempt)
            f.seek(start)
        except TRANSFER_ERRORS as e:  # no answer, even after the client's own retries
            raise UploadError(f"ClientError: Artifact upload to {loc} failed: {unreachable(e)}") from None


def put_path(client: Minio, loc: S3Location, path: Path, cancelled: Cancelled = _never) -> None:
    """Upload a file; UploadError (worded as a FailureReason) when S3 refuses, TransferCancelled on `cancelled()`."""
    with open(path, "rb") as f:
        _put_file(client, loc, f, os.fstat(f.fileno()).st_size, cancelled)


def _put_tree_files(client: Minio, prefix: S3Location, folders: Sequence[tuple[Path, str]],
                    cancelled: Cancelled) -> None:
    for entry in _files(folders):
        f = entry.open()
        if f is None:
            continue
        with f:
            _put_file(client, prefix.child(entry.path), f, entry.size, cancelled)


def upload_outputs(client: Minio, spec: JobSpec, layouts: Sequence[HostLayout], *, always_model: bool,
                   cancelled: Cancelled = _never) -> None:
    """Upload /opt/ml/model and /opt/ml/output/data (of every host, merged).

    `always_model` uploads model.tar.gz even when the folder is empty (a Completed job always has
    ModelArtifacts); otherwise only folders with content are uploaded (what a failed job left).
    """
    hosts = list(layouts)
    out = output_location(spec)
    for rel, name, always in ((MODEL, "model", always_model), (OUTPUT_DATA, "output", False)):
        folders = [(h.opt_ml, rel) for h in hosts]
        if not (always or any(tree.has_content(root, r) for root, r in folders)):
            continue
        if spec.output.compressed:
            tarball = hosts[0].staging_dir / f"{name}.tar.gz"
            try:
                _tar(folders, tarball, cancelled)
                put_path(client, out.child(f"{name}.tar.gz"), tarball, cancelled)
            except OSError as e:
                if disk_full(e):
                    raise UploadError(disk_full_reason(UPLOAD_DISK_FULL, e)) from None
                raise
            finally:
                tarball.unlink(missing_ok=True)
        else:
            _put_tree_files(client, out.child("model" if name == "model" else "data"), folders, cancelled)


def restore_folder(client: Minio, s3_uri: str, dest: Path) -> None:
    """Copy what S3 has under `s3_uri` into `dest` (checkpoints: a new run resumes from them). Objects added
    to S3 later are not copied in (SageMaker copies them at the start only)."""
    loc = parse_s3_uri(s3_uri)
    prefix = loc.key if not loc.key or loc.key.endswith("/") else loc.key + "/"
    try:
        objects = [o for o in client.list_objects(loc.bucket, prefix=prefix, recursive=True)
                   if not o.object_name.endswith("/")]
        for obj in objects:
            rel = obj.object_name[len(prefix):]
            parts = [p for p in rel.split("/") if p not in ("", ".")]
            if not parts or ".." in parts:
                continue
            target = dest.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            client.fget_object(loc.bucket, obj.object_name, str(target))
            os.chmod(target, WRITABLE_FILE)
        # The algorithm may run as any uid and resumes by rewriting these.
        for dirpath, dirnames, _ in os.walk(dest):
            for d in dirnames:
                os.chmod(os.path.join(dirpath, d), WRITABLE_DIR)
    except S3Error as e:
        if e.code == "NoSuchBucket":
            raise UploadError(f"ClientError: Checkpoint bucket {loc.bucket} does not exist.") from None
        raise UploadError(
            f"ClientError: Checkpoint download from {loc} failed: {e.code}: {e.message}"
        ) from None
