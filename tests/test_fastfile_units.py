"""FastFile's provider in-process, against a real S3 server and a real rclone mount: the fallback when a
mount fails, the shard a host sees, and a stop that leaves no mount and no rclone process behind.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from minio import Minio

from runner.inputs.fastfile import FUSE_DEVICE_ENV, FastFileInput, fuse_problem
from runner.inputs.provider import InputContext
from runner.layout import HostLayout
from runner.layout import prepare as prepare_layout
from runner.mounts import mounts_under
from smlocal.core.jobspec import JobSpec
from smlocal.core.settings import Settings
from tests.support.fastfile import rclone_mounts_of
from tests.support.s3server import S3Server

BUCKET = "smlocal-test-fastfile-units"


@pytest.fixture()
def make(tmp_path: Path, s3_server: S3Server, minio: Minio) -> Iterator[Any]:
    raw = s3_server.client_with_bucket(BUCKET)
    for i in range(5):
        raw.put_object(Bucket=BUCKET, Key=f"data/part-{i}", Body=f"part {i}\n".encode())
    made: list[FastFileInput] = []

    def providers(hosts: int = 1, distribution: str = "FullyReplicated") -> list[FastFileInput]:
        request = {"TrainingJobName": "units", "AlgorithmSpecification": {"TrainingInputMode": "FastFile"},
                   "ResourceConfig": {"InstanceCount": hosts},
                   "InputDataConfig": [{"ChannelName": "train", "DataSource": {"S3DataSource": {
                       "S3DataType": "S3Prefix", "S3Uri": f"s3://{BUCKET}/data/",
                       "S3DataDistributionType": distribution}}}]}
        spec = JobSpec.from_request(request)
        layouts = [HostLayout(tmp_path / "job", host) for host in spec.hosts]
        for layout in layouts:
            prepare_layout(layout, spec)
        context = InputContext(spec, layouts, lambda: minio, settings=Settings(s3_endpoint=s3_server.endpoint,
                                                                              s3_access_key="test",
                                                                              s3_secret_key="test"))
        found = FastFileInput.for_hosts(spec.channels[0], spec.hosts, context)
        made.extend(p for p in found if isinstance(p, FastFileInput))
        return found  # type: ignore[return-value]

    yield providers
    for provider in made:
        provider.stop()
    assert mounts_under(tmp_path) == [] and rclone_mounts_of(tmp_path) == []


def test_each_host_of_a_sharded_channel_sees_its_shard_only(make: Any) -> None:
    providers = make(hosts=2, distribution="ShardedByS3Key")
    for provider in providers:
        provider.prepare(lambda: False)
    assert [sorted(os.listdir(p.folder)) for p in providers] == [
        ["part-0", "part-2", "part-4"], ["part-1", "part-3"]]
    assert (providers[1].folder / "part-3").read_bytes() == b"part 3\n"


def test_a_stop_unmounts_and_ends_rclone_even_from_another_provider(make: Any, tmp_path: Path) -> None:
    [mounted] = make()
    mounted.prepare(lambda: False)
    assert mounts_under(tmp_path) and rclone_mounts_of(tmp_path)
    # A provider that never mounted (what a restarted server has) finds the mount and its process.
    stranger = FastFileInput(mounted.channel, mounted.host, mounted.context, mounted.plan)
    stranger.stop()
    assert mounts_under(tmp_path) == [] and rclone_mounts_of(tmp_path) == []
    stranger.stop()  # idempotent


def test_a_mount_that_fails_falls_back_to_a_download_and_says_why(make: Any) -> None:
    [provider] = make()
    provider.folder.joinpath("in-the-way").write_text("x")  # rclone does not mount over a non-empty folder
    provider.prepare(lambda: False)
    assert mounts_under(provider.folder) == []
    assert sorted(os.listdir(provider.folder)) == ["in-the-way"] + [f"part-{i}" for i in range(5)]
    assert provider.notice is not None
    assert provider.notice.startswith("FastFile channel 'train' is downloaded as in File mode: it could not be "
                                      "mounted (rclone exited with")


def test_without_the_fuse_device_fastfile_is_a_download(make: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FUSE_DEVICE_ENV, "/nonexistent/fuse")
    assert fuse_problem() == "/nonexistent/fuse: No such file or directory"
    [provider] = make()
    assert not isinstance(provider, FastFileInput)
    provider.prepare(lambda: False)
    assert sorted(os.listdir(provider.folder)) == [f"part-{i}" for i in range(5)]
    assert provider.notice == ("FastFile channel 'train' is downloaded as in File mode: FUSE is not available "
                               "here (/nonexistent/fuse: No such file or directory).")
