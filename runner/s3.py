"""S3 addressing for the runner: URI parsing and the minio client bound to smlocal's S3 store."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from minio import Minio

from smlocal.core.settings import Settings


class S3NotConfigured(RuntimeError):
    """smlocal was started without an S3 endpoint, so no channel or artifact can be transferred."""


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def child(self, *parts: str) -> S3Location:
        """The location of `parts` below this one, treating this key as a folder."""
        base = self.key.rstrip("/")
        tail = "/".join(p.strip("/") for p in parts if p.strip("/"))
        key = f"{base}/{tail}" if base and tail else base or tail
        return S3Location(self.bucket, key)


def parse_s3_uri(uri: str) -> S3Location:
    """Parse `s3://bucket/key` or the https forms the API model allows (virtual-hosted or path style)."""
    parts = urlsplit(uri)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ValueError(f"S3 URI {uri!r} has no bucket")
        return S3Location(parts.netloc, parts.path.lstrip("/"))
    if parts.scheme == "https":
        host = parts.hostname or ""
        path = parts.path.lstrip("/")
        labels = host.split(".")
        # bucket.s3.amazonaws.com / bucket.s3.<region>.amazonaws.com / bucket.s3-<region>.amazonaws.com
        if len(labels) > 3 and labels[1].startswith("s3") and host.endswith(".amazonaws.com"):
            return S3Location(labels[0], path)
        bucket, _, key = path.partition("/")
        if not bucket:
            raise ValueError(f"S3 URI {uri!r} has no bucket")
        return S3Location(bucket, key)
    raise ValueError(f"unsupported S3 URI {uri!r}")


def make_client(settings: Settings, region: str) -> Minio:
    if not settings.s3_endpoint:
        raise S3NotConfigured("smlocal has no S3 endpoint configured (settings.s3_endpoint)")
    endpoint = settings.s3_endpoint if "://" in settings.s3_endpoint else f"http://{settings.s3_endpoint}"
    parts = urlsplit(endpoint)
    # Passing the region spares minio a GetBucketLocation round trip per bucket.
    return Minio(
        parts.netloc,
        access_key=settings.s3_access_key,
        secret_key=settings.s3_secret_key,
        secure=parts.scheme == "https",
        region=region,
    )
