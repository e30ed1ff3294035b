"""Moving what the algorithm saved to S3 (model, output data, checkpoints) and checkpoints back in.

The container owns the /opt/ml tree, so nothing here follows a symlink found in it: a link is packed
as a link or skipped, never resolved on the host.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator
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


def _has_content(root: Path, opt_ml: Path) -> bool:
    return is_real_dir(root, opt_ml) and any(root.iterdir())


def _tar(root: Path, opt_ml: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dest, "w:gz") as tar:
        if is_real_dir(root, opt_ml):
            for child in sorted(root.iterdir()):
                # Members sit at the top level, as in SageMaker's model.tar.gz.
                tar.add(child, arcname=child.name, recursive=True)


def _put(client: Minio, loc: S3Location, path: Path) -> None:
    try:
        client.fput_object(loc.bucket, loc.key, str(path))
    except S3Error as e:
        raise UploadError(f"ClientError: Artifact upload to {loc} failed: {e.code}: {e.message}") from None


def upload_outputs(client: Minio, request: dict[str, Any], job_name: str, layout: HostLayout, *,
                   always_model: bool) -> None:
    """Upload /opt/ml/model and /opt/ml/output/data.

    `always_model` uploads model.tar.gz even when the folder is empty (a Completed job always has
    ModelArtifacts); otherwise only folders with content are uploaded (what a failed job left).
    """
    out = output_location(request, job_name)
    compressed = (request.get("OutputDataConfig") or {}).get("CompressionType", "GZIP") != "NONE"
    for folder, name, always in ((layout.model_dir, "model", always_model),
                                 (layout.output_data_dir, "output", False)):
        if not (always or _has_content(folder, layout.opt_ml)):
            continue
        if compressed:
            tarball = layout.staging_dir / f"{name}.tar.gz"
            _tar(folder, layout.opt_ml, tarball)
            _put(client, out.child(f"{name}.tar.gz"), tarball)
            tarball.unlink()
        else:
            prefix = out.child("model" if name == "model" else "data")
            for path, rel in _regular_files(folder, layout.opt_ml):
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


def upload_checkpoints(client: Minio, request: dict[str, Any], layout: HostLayout) -> None:
    cc = request.get("CheckpointConfig")
    if not cc:
        return
    loc = parse_s3_uri(cc["S3Uri"])
    for path, rel in _regular_files(layout.checkpoints_dir, layout.opt_ml):
        _put(client, loc.child(rel), path)
