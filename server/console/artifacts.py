"""The job's model.tar.gz and output.tar.gz, streamed from the S3 store through the console.

Where they are comes only from DescribeTrainingJob: `ModelArtifacts.S3ModelArtifacts` and its sibling
`output.tar.gz` (`<S3OutputPath>/<job>/output/`), the places the job uploads to. The browser names the
job and one of two fixed file names, nothing else, so no request can reach another object, and the
store is read through its S3 API (never its folder), so no host file either. A file is offered only when
the job has ended and the object is there, written after this job was created (an object left by an
earlier job of the same name is not this job's).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from minio import Minio
from minio.error import S3Error
from urllib3.exceptions import HTTPError

from smlocal.core.lifecycle import TERMINAL_STATUSES
from smlocal.core.settings import Settings

ARTIFACT_NAMES = ("model.tar.gz", "output.tar.gz")
CHUNK = 256 * 1024
# Last-Modified has whole seconds.
_CLOCK_SLACK_SECONDS = 1.0


@dataclass(frozen=True)
class ObjectRef:
    bucket: str
    key: str


@dataclass(frozen=True)
class Artifact:
    name: str
    ref: ObjectRef
    size: int


def _parse(uri: str) -> ObjectRef | None:
    """`s3://bucket/key` or the https forms the model allows (path style, or virtual-hosted on AWS)."""
    parts = urlsplit(uri)
    path = parts.path.lstrip("/")
    if parts.scheme == "s3" and parts.netloc:
        return ObjectRef(parts.netloc, path)
    if parts.scheme == "https":
        labels = (parts.hostname or "").split(".")
        if len(labels) > 3 and labels[1].startswith("s3") and (parts.hostname or "").endswith(".amazonaws.com"):
            return ObjectRef(labels[0], path)
        bucket, _, key = path.partition("/")
        return ObjectRef(bucket, key) if bucket else None
    return None


def artifact_refs(job: dict[str, Any]) -> dict[str, ObjectRef]:
    """name -> where the job puts it; empty with CompressionType NONE (plain files under a prefix)."""
    model_uri = (job.get("ModelArtifacts") or {}).get("S3ModelArtifacts", "")
    if not model_uri.endswith("/output/model.tar.gz"):
        return {}
    model = _parse(model_uri)
    if model is None:
        return {}
    folder = model.key.rsplit("/", 1)[0]
    return {"model.tar.gz": model, "output.tar.gz": ObjectRef(model.bucket, f"{folder}/output.tar.gz")}


class ArtifactStore:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def _client(self, region: str) -> Minio | None:
        if not self.settings.s3_endpoint:
            return None
        endpoint = self.settings.s3_endpoint
        parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
        # With the region given, minio asks no GetBucketLocation (which some stores answer oddly).
        return Minio(parts.netloc, access_key=self.settings.s3_access_key, secret_key=self.settings.s3_secret_key,
                     secure=parts.scheme == "https", region=region)

    def available(self, region: str, job: dict[str, Any]) -> list[Artifact]:
        """The job's artifacts that are really there, in ARTIFACT_NAMES order."""
        if job.get("TrainingJobStatus") not in TERMINAL_STATUSES:
            return []
        client = self._client(region)
        if client is None:
            return []
        created = job["CreationTime"]
        created = created.timestamp() if isinstance(created, dt.datetime) else float(created)
        found = []
        for name, ref in artifact_refs(job).items():
            try:
                stat = client.stat_object(ref.bucket, ref.key)
            except (S3Error, ValueError, OSError, HTTPError):
                continue  # not there, or the store does not answer: no link either way
            modified = stat.last_modified.timestamp() if stat.last_modified else 0.0
            if modified + _CLOCK_SLACK_SECONDS >= created:
                found.append(Artifact(name, ref, stat.size or 0))
        return found

    def stream(self, region: str, artifact: Artifact) -> Iterator[bytes]:
        client = self._client(region)
        assert client is not None
        response = client.get_object(artifact.ref.bucket, artifact.ref.key)
        try:
            yield from response.stream(CHUNK)
        finally:
            response.close()
            response.release_conn()
