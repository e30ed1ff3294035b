"""Channel staging and artifact upload in-process, against the real S3 test server (no containers)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
from minio import Minio

from runner import artifacts
from runner.inputs.errors import DataDownloadError, DownloadCancelled
from runner.inputs.file_staging import stage_channels
from runner.layout import HostLayout, prepare
from smlocal.core.jobspec import JobSpec
from smlocal.core.local_channels import LocalChannelRoots
from tests.support.s3server import S3Server

BUCKET = "smlocal-test-staging"


@pytest.fixture(scope="module")
def s3(s3_server: S3Server) -> Any:
    return s3_server.client_with_bucket(BUCKET)


def _layout(tmp_path: Path, request: dict[str, Any]) -> HostLayout:
    layout = HostLayout(tmp_path / "job")
    prepare(layout, JobSpec.from_request(request))
    return layout


def _channel(uri: str, data_type: str = "S3Prefix", name: str = "train") -> dict[str, Any]:
    return {"ChannelName": name, "DataSource": {"S3DataSource": {"S3DataType": data_type, "S3Uri": uri}}}


def _stage(request: dict[str, Any], layout: HostLayout, minio: Minio, stop: bool = False) -> None:
    stage_channels(JobSpec.from_request(request), [layout], lambda: minio, lambda: stop)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_prefix_without_trailing_slash_keeps_names_relative_to_its_folder(
        tmp_path: Path, s3: Any, minio: Minio) -> None:
    for key in ("p1/data/train.csv", "p1/data/train/a.csv", "p1/data/training/b.csv", "p1/data/other.csv"):
        s3.put_object(Bucket=BUCKET, Key=key, Body=key.encode())
    request = {"InputDataConfig": [_channel(f"s3://{BUCKET}/p1/data/train")]}
    layout = _layout(tmp_path, request)
    _stage(request, layout, minio)
    assert _files(layout.channel_dir("train")) == {
        "a.csv": b"p1/data/train/a.csv", "train.csv": b"p1/data/train.csv",
        "training/b.csv": b"p1/data/training/b.csv"}


def test_a_single_object_uri_lands_under_its_own_name(tmp_path: Path, s3: Any, minio: Minio) -> None:
    s3.put_object(Bucket=BUCKET, Key="p2/deep/file.parquet", Body=b"pq")
    request = {"InputDataConfig": [_channel(f"s3://{BUCKET}/p2/deep/file.parquet")]}
    layout = _layout(tmp_path, request)
    _stage(request, layout, minio)
    assert _files(layout.channel_dir("train")) == {"file.parquet": b"pq"}
    assert (layout.channel_dir("train") / "file.parquet").stat().st_mode & 0o777 == 0o644


def test_a_stop_request_cancels_the_download(tmp_path: Path, s3: Any, minio: Minio) -> None:
    s3.put_object(Bucket=BUCKET, Key="p3/x", Body=b"x")
    request = {"InputDataConfig": [_channel(f"s3://{BUCKET}/p3/")]}
    layout = _layout(tmp_path, request)
    with pytest.raises(DownloadCancelled):
        _stage(request, layout, minio, stop=True)
    assert _files(layout.channel_dir("train")) == {}


@pytest.mark.parametrize(("body", "message"), [
    (b"not json", "is not JSON"),
    (json.dumps({"prefix": "s3://b/"}).encode(), "must be a JSON list"),
    (json.dumps([{"prefix": "s3://b/"}, 3]).encode(), "must be a JSON list"),
    (json.dumps([{"prefix": "s3://b/p/"}]).encode(), 'No S3 objects found under S3 URL "s3://b/p/"'),
    (json.dumps([{"prefix": f"s3://{BUCKET}/p4/"}, "../../outside"]).encode(), "not inside the channel folder"),
    (json.dumps([{"prefix": f"s3://{BUCKET}/p4/"}, "missing.csv"]).encode(), "NoSuchKey"),
])
def test_bad_manifests_fail_with_a_client_error(tmp_path: Path, s3: Any, minio: Minio, body: bytes,
                                                message: str) -> None:
    s3.put_object(Bucket=BUCKET, Key="p4/bad.manifest", Body=body)
    request = {"InputDataConfig": [_channel(f"s3://{BUCKET}/p4/bad.manifest", "ManifestFile")]}
    with pytest.raises(DataDownloadError) as err:
        _stage(request, _layout(tmp_path, request), minio)
    assert err.value.reason.startswith("ClientError: Data download failed:")
    assert message in err.value.reason


def test_file_uris_copy_a_local_folder(tmp_path: Path, minio: Minio) -> None:
    source = tmp_path / "local-data"
    (source / "sub").mkdir(parents=True)
    (source / "a.txt").write_text("a")
    (source / "sub" / "b.txt").write_text("b")
    request = {"InputDataConfig": [_channel(f"file://{source}")]}
    layout = _layout(tmp_path, request)
    stage_channels(JobSpec.from_request(request), [layout], lambda: minio, lambda: False,
                   LocalChannelRoots.of([source]))
    assert _files(layout.channel_dir("train")) == {"a.txt": b"a", "sub/b.txt": b"b"}


def test_unsupported_sources_say_so(tmp_path: Path, minio: Minio) -> None:
    # CreateTrainingJob refuses it first (tests/test_api_validation.py); staging still says so, not a crash.
    request = {"InputDataConfig": [
        {"ChannelName": "hub", "DataSource": {"DatasetSource": {"DatasetArn": "arn:aws:sagemaker:x"}}}]}
    with pytest.raises(DataDownloadError, match="DatasetSource is not supported"):
        _stage(request, _layout(tmp_path, request), minio)


def test_model_folder_replaced_by_a_symlink_uploads_an_empty_model(
        tmp_path: Path, s3: Any, minio: Minio) -> None:
    request = {"OutputDataConfig": {"S3OutputPath": f"s3://{BUCKET}/out"}}
    layout = _layout(tmp_path, request)
    host_dir = tmp_path / "host-dir"
    host_dir.mkdir()
    (host_dir / "secret").write_text("host only")
    # What a hostile algorithm could do to the tree it owns.
    layout.model_dir.rmdir()
    layout.model_dir.symlink_to(host_dir)
    layout.output_data_dir.rmdir()
    layout.output_data_dir.symlink_to(host_dir)
    artifacts.upload_outputs(minio, JobSpec.from_request(request, name="symlinked"), [layout], always_model=True)
    body = s3.get_object(Bucket=BUCKET, Key="out/symlinked/output/model.tar.gz")["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        assert tar.getnames() == []
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix="out/symlinked/output/output")


def test_failed_job_with_empty_folders_uploads_nothing(tmp_path: Path, s3: Any, minio: Minio) -> None:
    request = {"OutputDataConfig": {"S3OutputPath": f"s3://{BUCKET}/out"}}
    artifacts.upload_outputs(minio, JobSpec.from_request(request, name="empty"), [_layout(tmp_path, request)],
                             always_model=False)
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix="out/empty/")
