"""The embedded S3 stores (`--s3-store files|memory`) against the clients users and the runner drive.

Each store runs inside a real `smlocal serve` (API only) and is driven by boto3, the aws CLI and the
runner's own minio client. Where rclone (the files store) differs from S3, the test says so with a
strict xfail: it documents the difference and fails loudly once rclone fixes it.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError
from minio.error import S3Error

from runner.s3 import make_client
from smlocal.core.settings import Settings
from tests.support.smlocal import STORE_KEY, SmlocalServer

MiB = 1024 * 1024


@pytest.fixture(scope="module", params=["files", "memory"])
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmlocalServer]:
    server = SmlocalServer(tmp_path_factory.mktemp(f"store-{request.param}"), None,
                           ["--no-run-jobs", "--s3-store", request.param]).start()
    server.kind = request.param
    yield server
    server.stop()


@pytest.fixture()
def s3(store: SmlocalServer) -> Any:
    return store.client("s3")


@pytest.fixture()
def bucket(s3: Any, unique_name: Callable[[str], str]) -> str:
    name = unique_name("b").lower()[:50]
    s3.create_bucket(Bucket=name)
    return name


def _keys(listing: dict[str, Any]) -> list[str]:
    return [o["Key"] for o in listing.get("Contents", [])]


def _error_code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return exc.value.response["Error"]["Code"]


def _files_store_differs(request: pytest.FixtureRequest, store: SmlocalServer, why: str) -> None:
    """Strict xfail on the files store: the body still runs, so a fixed rclone turns it into a failure."""
    if store.kind == "files":
        request.applymarker(pytest.mark.xfail(strict=True, reason=why))


def test_buckets_are_created_listed_and_deleted(s3: Any, unique_name: Callable[[str], str]) -> None:
    name = unique_name("bk").lower()[:50]
    s3.create_bucket(Bucket=name)
    assert name in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert s3.head_bucket(Bucket=name)["ResponseMetadata"]["HTTPStatusCode"] == 200
    s3.put_object(Bucket=name, Key="k", Body=b"v")
    with pytest.raises(ClientError) as exc:
        s3.delete_bucket(Bucket=name)
    assert _error_code(exc) == "BucketNotEmpty"
    s3.delete_object(Bucket=name, Key="k")
    s3.delete_bucket(Bucket=name)
    assert name not in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    with pytest.raises(ClientError) as exc:
        s3.delete_bucket(Bucket=name)
    assert _error_code(exc) == "NoSuchBucket"
    with pytest.raises(ClientError) as exc:
        s3.head_bucket(Bucket=name)
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_objects_read_after_write_and_missing_ones_get_s3_errors(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="dir/a.txt", Body=b"hello", ContentType="text/plain")
    # Read after write, list after write: no cache in between.
    assert s3.get_object(Bucket=bucket, Key="dir/a.txt")["Body"].read() == b"hello"
    assert _keys(s3.list_objects_v2(Bucket=bucket)) == ["dir/a.txt"]
    head = s3.head_object(Bucket=bucket, Key="dir/a.txt")
    assert head["ContentLength"] == 5
    assert head["ETag"] == f'"{hashlib.md5(b"hello").hexdigest()}"'
    s3.put_object(Bucket=bucket, Key="dir/empty.bin", Body=b"")
    assert s3.get_object(Bucket=bucket, Key="dir/empty.bin")["Body"].read() == b""

    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="dir/missing")
    assert _error_code(exc) == "NoSuchKey"
    with pytest.raises(ClientError) as exc:
        s3.head_object(Bucket=bucket, Key="dir/missing")
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket + "-none", Key="k")
    assert _error_code(exc) == "NoSuchBucket"
    with pytest.raises(ClientError) as exc:
        s3.list_objects_v2(Bucket=bucket + "-none")
    assert _error_code(exc) == "NoSuchBucket"

    s3.delete_object(Bucket=bucket, Key="dir/a.txt")
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="dir/a.txt")
    assert _error_code(exc) == "NoSuchKey"
    s3.copy_object(Bucket=bucket, Key="copy.bin", CopySource={"Bucket": bucket, "Key": "dir/empty.bin"})
    assert s3.head_object(Bucket=bucket, Key="copy.bin")["ContentLength"] == 0


def test_listing_with_prefixes_delimiters_and_pages(s3: Any, bucket: str) -> None:
    keys = ["a/1.txt", "a/2.txt", "a/b/3.txt", "a/b/c/4.txt", "ab.txt", "z.txt"]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    assert _keys(s3.list_objects_v2(Bucket=bucket)) == sorted(keys)
    assert _keys(s3.list_objects_v2(Bucket=bucket, Prefix="a/")) == ["a/1.txt", "a/2.txt", "a/b/3.txt", "a/b/c/4.txt"]
    # A prefix that is not a folder name.
    assert _keys(s3.list_objects_v2(Bucket=bucket, Prefix="a")) == sorted(k for k in keys if k.startswith("a"))
    top = s3.list_objects_v2(Bucket=bucket, Delimiter="/")
    assert _keys(top) == ["ab.txt", "z.txt"]
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["a/"]
    inner = s3.list_objects_v2(Bucket=bucket, Prefix="a/", Delimiter="/")
    assert _keys(inner) == ["a/1.txt", "a/2.txt"] and [p["Prefix"] for p in inner["CommonPrefixes"]] == ["a/b/"]
    assert _keys(s3.list_objects_v2(Bucket=bucket, StartAfter="a/b/c/4.txt")) == ["ab.txt", "z.txt"]

    paged, token, pages = [], None, 0
    while True:
        page = s3.list_objects_v2(Bucket=bucket, MaxKeys=2, **({"ContinuationToken": token} if token else {}))
        paged += _keys(page)
        pages += 1
        if not page["IsTruncated"]:
            break
        token = page["NextContinuationToken"]
    assert paged == sorted(keys) and pages == 3
    # ListObjects (v1) and the paginator the aws CLI uses.
    assert _keys(s3.list_objects(Bucket=bucket, Prefix="a/b/")) == ["a/b/3.txt", "a/b/c/4.txt"]
    assert [k for p in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, PaginationConfig={"PageSize": 4})
            for k in _keys(p)] == sorted(keys)


def test_ranged_gets_through_the_runners_client(store: SmlocalServer, bucket: str, s3: Any) -> None:
    body = bytes(range(256)) * 64
    s3.put_object(Bucket=bucket, Key="r.bin", Body=body)
    minio = make_client(Settings(s3_endpoint=store.s3_endpoint), "eu-west-1")
    response = minio.get_object(bucket, "r.bin", offset=100, length=1000)
    try:
        assert response.read() == body[100:1100]
    finally:
        response.close()
        response.release_conn()


def test_ranged_gets_through_boto3(store: SmlocalServer, bucket: str, s3: Any) -> None:
    body = os.urandom(10_000)
    # Without the checksum boto3 adds to a PUT by default (an upload by the aws CLI, minio, or `cp`).
    plain = store.client("s3", request_checksum_calculation="when_required")
    plain.put_object(Bucket=bucket, Key="plain.bin", Body=body)
    assert s3.get_object(Bucket=bucket, Key="plain.bin", Range="bytes=10-19")["Body"].read() == body[10:20]
    assert s3.get_object(Bucket=bucket, Key="plain.bin", Range="bytes=-5")["Body"].read() == body[-5:]


def test_ranged_get_of_an_object_put_with_a_checksum(request: pytest.FixtureRequest, store: SmlocalServer,
                                                     bucket: str, s3: Any) -> None:
    _files_store_differs(
        request, store, "rclone 1.75 answers a ranged GET with the whole object's x-amz-checksum-crc32 (kept in "
        "memory since the PUT), which boto3 >= 1.36 checks against the range and rejects; set "
        "AWS_RESPONSE_CHECKSUM_VALIDATION=when_required, or restart smlocal (the checksum is forgotten)")
    body = os.urandom(10_000)
    s3.put_object(Bucket=bucket, Key="crc.bin", Body=body)
    assert s3.get_object(Bucket=bucket, Key="crc.bin", Range="bytes=10-19")["Body"].read() == body[10:20]


def test_ranged_get_of_a_checksummed_object_with_validation_when_required(store: SmlocalServer, bucket: str,
                                                                          s3: Any) -> None:
    """The workaround docs/s3-store.md gives for the files store works."""
    body = os.urandom(10_000)
    s3.put_object(Bucket=bucket, Key="crc.bin", Body=body)
    lenient = store.client("s3", response_checksum_validation="when_required")
    assert lenient.get_object(Bucket=bucket, Key="crc.bin", Range="bytes=10-19")["Body"].read() == body[10:20]


def test_creating_ones_own_bucket_again(request: pytest.FixtureRequest, store: SmlocalServer, bucket: str,
                                        s3: Any) -> None:
    _files_store_differs(request, store, "rclone 1.75 answers BucketAlreadyExists (someone else's bucket) where "
                         "S3 answers 200 in us-east-1 and BucketAlreadyOwnedByYou elsewhere; catch both")
    # us-east-1: S3 keeps its legacy answer, 200 and nothing changes.
    s3.create_bucket(Bucket=bucket)
    assert bucket in [b["Name"] for b in s3.list_buckets()["Buckets"]]


def test_folder_marker_objects(request: pytest.FixtureRequest, store: SmlocalServer, bucket: str,
                               s3: Any) -> None:
    _files_store_differs(
        request, store, "rclone 1.75 stores `data/` as a file `data` (listed without its slash) and then refuses "
        "keys below it with a 500; upload files directly, S3 needs no folder objects")
    s3.put_object(Bucket=bucket, Key="data/", Body=b"")
    s3.put_object(Bucket=bucket, Key="data/x.txt", Body=b"x")
    assert _keys(s3.list_objects_v2(Bucket=bucket, Prefix="data")) == ["data/", "data/x.txt"]


def test_multipart_uploads_from_boto3_and_minio(store: SmlocalServer, bucket: str, s3: Any,
                                                tmp_path: Path) -> None:
    body = os.urandom(12 * MiB + 123)
    parts = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    s3.upload_fileobj(io.BytesIO(body), bucket, "big/boto3.bin", Config=parts)
    back = io.BytesIO()
    s3.download_fileobj(bucket, "big/boto3.bin", back, Config=parts)  # ranged GETs in parallel
    assert back.getvalue() == body
    assert s3.head_object(Bucket=bucket, Key="big/boto3.bin")["ContentLength"] == len(body)

    # The runner uploads artifacts with fput_object: over 5 MiB that is a multipart upload.
    source = tmp_path / "model.tar.gz"
    source.write_bytes(os.urandom(7 * MiB + 5))
    minio = make_client(Settings(s3_endpoint=store.s3_endpoint), "us-east-1")
    minio.fput_object(bucket, "big/minio.bin", str(source), part_size=5 * MiB)
    minio.fget_object(bucket, "big/minio.bin", str(tmp_path / "back.bin"))
    assert (tmp_path / "back.bin").read_bytes() == source.read_bytes()
    stream = minio.put_object(bucket, "big/stream.bin", io.BytesIO(body), -1, part_size=5 * MiB)
    assert stream.object_name == "big/stream.bin"
    assert s3.get_object(Bucket=bucket, Key="big/stream.bin")["Body"].read() == body


def test_the_runners_minio_client_sees_missing_buckets_and_keys(store: SmlocalServer, bucket: str) -> None:
    # Given the region (runner/s3.py always passes the job's), minio never asks GetBucketLocation,
    # whose answer for a missing bucket rclone words in a way minio cannot parse.
    minio = make_client(Settings(s3_endpoint=store.s3_endpoint), "ap-south-1")
    assert minio.bucket_exists(bucket) and not minio.bucket_exists(bucket + "-none")
    with pytest.raises(S3Error) as exc:
        minio.stat_object(bucket, "missing")
    assert exc.value.code == "NoSuchKey"
    assert list(minio.list_objects(bucket, prefix="nothing/", recursive=True)) == []


def test_keys_are_required_by_the_files_store(store: SmlocalServer) -> None:
    stranger = store.client("s3", access_key="someone", secret_key="else")
    if store.kind == "memory":
        stranger.list_buckets()  # moto checks no keys; the memory store is for tests
        return
    with pytest.raises(ClientError) as exc:
        stranger.list_buckets()
    assert _error_code(exc) == "InvalidAccessKeyId"
    wrong_secret = store.client("s3", access_key=STORE_KEY, secret_key="wrong")
    with pytest.raises(ClientError) as exc:
        wrong_secret.list_buckets()
    assert _error_code(exc) == "SignatureDoesNotMatch"


def test_presigned_urls(store: SmlocalServer, bucket: str, s3: Any) -> None:
    import urllib.request

    s3.put_object(Bucket=bucket, Key="shared.txt", Body=b"shared")
    signer = boto3.client("s3", endpoint_url=store.s3_endpoint, region_name="us-east-1",
                          aws_access_key_id=STORE_KEY, aws_secret_access_key=STORE_KEY,
                          config=Config(signature_version="s3v4"))
    url = signer.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "shared.txt"})
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"shared"


def test_aws_cli_mb_cp_ls_sync_rb(store: SmlocalServer, unique_name: Callable[[str], str], tmp_path: Path) -> None:
    name = unique_name("cli").lower()[:50]
    env = {**store.cli_env(), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}

    def aws(*args: str) -> str:
        quiet = ["--only-show-errors"] if args[0] in ("cp", "sync") else []
        result = subprocess.run(["aws", "s3", *args, *quiet], env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"aws s3 {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a\n")
    (src / "sub" / "b.txt").write_text("b\n")
    (src / "big.bin").write_bytes(os.urandom(10 * MiB))  # over the CLI's 8 MiB: multipart, both ways
    aws("mb", f"s3://{name}")
    aws("cp", str(src / "big.bin"), f"s3://{name}/big.bin")
    aws("sync", str(src), f"s3://{name}/synced")
    # Nothing changed: the second sync uploads nothing (size and time compare equal).
    again = subprocess.run(["aws", "s3", "sync", str(src), f"s3://{name}/synced"], env=env, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0 and "upload:" not in again.stdout, again.stdout + again.stderr
    listing = aws("ls", "--recursive", f"s3://{name}/")
    assert [line.split()[-1] for line in listing.splitlines()] == [
        "big.bin", "synced/a.txt", "synced/big.bin", "synced/sub/b.txt"]
    assert "PRE synced/" in aws("ls", f"s3://{name}/")
    aws("cp", f"s3://{name}/big.bin", str(tmp_path / "big.back"))
    assert (tmp_path / "big.back").read_bytes() == (src / "big.bin").read_bytes()
    aws("sync", f"s3://{name}/synced", str(tmp_path / "back"))
    assert sorted(str(p.relative_to(tmp_path / "back")) for p in (tmp_path / "back").rglob("*") if p.is_file()) == [
        "a.txt", "big.bin", "sub/b.txt"]
    aws("rb", f"s3://{name}", "--force")
    assert name not in aws("ls")
