"""S3 addressing for the runner: URI parsing and the minio client bound to smlocal's S3 store."""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit

import certifi
import urllib3
from minio import Minio
from urllib3.util import Retry, Timeout

from smlocal.core.settings import Settings

# A store that does not answer (the embedded one restarting, back within a second or two; an external one
# being restarted) is tried again with backoff, about 40 s in all (0, 1, 2, 4, 8, 8, 8, 8 s), before a
# transfer fails. minio's own default gives up after ~6 s, and waits 5 minutes to connect to an address
# that never answers.
STORE_RETRIES = Retry(total=8, backoff_factor=0.5, backoff_max=8, status_forcelist=[500, 502, 503, 504])
STORE_TIMEOUT = Timeout(connect=10, read=300)
# A transfer whose connection broke mid-body (urllib3 retries only before a response) is started again
# this many times in all.
TRANSFER_TRIES = 3
BROKEN_MIDWAY = (urllib3.exceptions.ProtocolError, urllib3.exceptions.UnrewindableBodyError)
# What minio raises when the store does not answer at all (after STORE_RETRIES) or broke off.
TRANSFER_ERRORS = (urllib3.exceptions.HTTPError,)


def unreachable(e: BaseException) -> str:
    """Why a transfer failed when the store did not answer, for a FailureReason."""
    cause = getattr(e, "reason", None) or e
    return f"the S3 store did not answer (tried again for about 40 s): {cause}"


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
        http_client=urllib3.PoolManager(
            timeout=STORE_TIMEOUT, maxsize=10, retries=STORE_RETRIES, cert_reqs="CERT_REQUIRED",
            ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where()),
    )
