"""Moving what the algorithm saved to S3 (model, output data, checkpoints) and checkpoints back in.

The container owns the /opt/ml tree, so nothing here follows a symlink found in it: a link is packed
as a link or skipped, never resolved on the host.

Several hosts: their folders are merged into one model.tar.gz (one output.tar.gz, one prefix with
CompressionType NONE, one checkpoint URI). Of two hosts' entries with the same path the lower-numbered
host's wins (algo-1 over algo-2); folders of the same path merge.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from minio import Minio
from minio.error import S3Error

from runner.layout import HostLayout, is_real_dir
from runner.s3 import S3Location, parse_s3_uri


class UploadError(Exception):
    """Artifacts could not be stored; `reason` is the job's FailureReason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def output_location(request: dict[str, Any], job_name: str) -> S3Location:
    """`<S3OutputPath>/<job>/output/`, where model.tar.gz and output.tar.gz go."""
    base = parse_s3_uri(request["OutputDataConfig"]["S3OutputPath"])
    return base.child(job_name, "output")


def _regular_files(root: Path, opt_ml: Path) -> Iterator[tuple[Path, str]]:
    """(path, posix path relative to root) of regular files under root, without following links."""
    if not is_real_dir(root, opt_ml):
        return
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for f in sorted(filenames):
            path = Path(dirpath) / f
            if path.is_symlink() or not path.is_file():
                continue
            yield path, path.relative_to(root).as_posix()
        dirnames.sort()


def _merged_files(folders: list[tuple[Path, Path]]) -> Iterator[tuple[Path, str]]:
    """`_regular_files` of several hosts' (folder, opt_ml); a path already given by an earlier host is skipped."""
    seen: set[str] = set()
    for root, opt_ml in folders:
        for path, rel in _regular_files(root, opt_ml):
            if rel not in seen:
                seen.add(rel)
                yield path, rel


def _has_content(folders: list[tuple[Path, Path]]) -> bool:
    return any(is_real_dir(root, opt_ml) and any(root.iterdir()) for root, opt_ml in folders)


def _add(tar: tarfile.TarFile, path: Path, arcname: str, added: dict[str, bool]) -> None:
    """tar.add(recursive=True), except that a name already in the tar is skipped (folders merge)."""
    is_dir = path.is_dir() and not path.is_symlink()
    if arcname not in added:
        tar.add(path, arcname=arcname, recursive=False)
        added[arcname] = is_dir
    elif not (is_dir and added[arcname]):
        return
    if is_dir:
        for child in sorted(os.listdir(path)):
            _add(tar, path / child, f"{arcname}/{child}", added)


def _tar(folders: list[tuple[Path, Path]], dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    added: dict[str, bool] = {}  # name in the tar -> is a folder
    with tarfile.open(dest, "w:gz") as tar:
        for root, opt_ml in folders:
            if is_real_dir(root, opt_ml):
                for child in sorted(root.iterdir()):
                    # Members sit at the top level, as in SageMaker's model.tar.gz.
                    _add(tar, child, child.name, added)


def _put(client: Minio, loc: S3Location, path: Path) -> None:
    try:
        client.fput_object(loc.bucket, loc.key, str(path))
    except S3Error as e:
        raise UploadError(f"ClientError: Artifact upload to {loc} failed: {e.code}: {e.message}") from None


def upload_outputs(client: Minio, request: dict[str, Any], job_name: str,
                   layouts: Sequence[HostLayout], *, always_model: bool) -> None:
    """Upload /opt/ml/model and /opt/ml/output/data (of every host, merged).

    `always_model` uploads model.tar.gz even when the folder is empty (a Completed job always has
    ModelArtifacts); otherwise only folders with content are uploaded (what a failed job left).
    """
    hosts = list(layouts)
    out = output_location(request, job_name)
    compressed = (request.get("OutputDataConfig") or {}).get("CompressionType", "GZIP") != "NONE"
    for folders, name, always in (([(h.model_dir, h.opt_ml) for h in hosts], "model", always_model),
                                  ([(h.output_data_dir, h.opt_ml) for h in hosts], "output", False)):
        if not (always or _has_content(folders)):
            continue
        if compressed:
            tarball = hosts[0].staging_dir / f"{name}.tar.gz"
            _tar(folders, tarball)
            _put(client, out.child(f"{name}.tar.gz"), tarball)
            tarball.unlink()
        else:
            prefix = out.child("model" if name == "model" else "data")
            for path, rel in _merged_files(folders):
                _put(client, prefix.child(rel), path)


def download_checkpoints(client: Minio, request: dict[str, Any], layout: HostLayout) -> None:
    """Copy the S3 checkpoints into the local checkpoint folder (a restarted job resumes from them)."""
    cc = request.get("CheckpointConfig")
    if not cc:
        return
    loc = parse_s3_uri(cc["S3Uri"])
    prefix = loc.key if not loc.key or loc.key.endswith("/") else loc.key + "/"
    try:
        objects = [o for o in client.list_objects(loc.bucket, prefix=prefix, recursive=True)
                   if not o.object_name.endswith("/")]
        for obj in objects:
            rel = obj.object_name[len(prefix):]
            parts = [p for p in rel.split("/") if p not in ("", ".")]
            if not parts or ".." in parts:
                continue
            dest = layout.checkpoints_dir.joinpath(*parts)
            dest.parent.mkdir(parents=True, exist_ok=True)
            client.fget_object(loc.bucket, obj.object_name, str(dest))
            os.chmod(dest, 0o666)
        for dirpath, dirnames, _ in os.walk(layout.checkpoints_dir):
            for d in dirnames:
                os.chmod(os.path.join(dirpath, d), 0o777)
    except S3Error as e:
        if e.code == "NoSuchBucket":
            raise UploadError(f"ClientError: Checkpoint bucket {loc.bucket} does not exist.") from None
        raise UploadError(
            f"ClientError: Checkpoint download from {loc} failed: {e.code}: {e.message}"
        ) from None


def upload_checkpoints(client: Minio, request: dict[str, Any], layouts: Sequence[HostLayout]) -> None:
    cc = request.get("CheckpointConfig")
    if not cc:
        return
    loc = parse_s3_uri(cc["S3Uri"])
    for path, rel in _merged_files([(h.checkpoints_dir, h.opt_ml) for h in list(layouts)]):
        _put(client, loc.child(rel), path)
