"""FastFile mode end to end: the channel is an rclone mount of the S3 prefix, read-only, fetched when read.

Real containers read the mount; a real S3 server (moto) is behind it, through a proxy that can make
chosen objects crawl (tests/support/slow_s3.py). Every end path must leave no mount and no rclone
process behind: completion, failure, stop, and a server restart (adopted, and not adoptable).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import docker
import pytest

from runner.inputs.fastfile import FUSE_DEVICE_ENV
from runner.mounts import mounts_under
from tests.support.fastfile import rclone_mounts_of
from tests.support.jobs import wait_recording
from tests.support.logs import stream_files
from tests.support.pipe_jobs import completed, ended
from tests.support.runner_jobs import (
    FINAL,
    INPUT_BUCKET,
    build_test_images,
    leftovers,
    log_messages,
    model_files,
    s3_client,
    settle,
    sh_job,
    wait_until,
)
from tests.support.s3server import S3Server
from tests.support.slow_s3 import SlowS3Proxy
from tests.support.smlocal import SmlocalServer

DATA = "/opt/ml/input/data/train"


def fastfile_channel(uri: str, **extra: Any) -> dict[str, Any]:
    return {"ChannelName": "train", "InputMode": "FastFile", "DataSource": {"S3DataSource": {
        "S3DataType": "S3Prefix", "S3Uri": uri, "S3DataDistributionType": "FullyReplicated"}}, **extra}


def nothing_mounted(server: SmlocalServer) -> bool:
    return mounts_under(server.data_dir) == [] and rclone_mounts_of(server.data_dir) == []


@pytest.fixture(scope="module")
def slow_s3(s3_server: S3Server) -> Iterator[SlowS3Proxy]:
    proxy = SlowS3Proxy(s3_server.endpoint, s3_server.host, rate=64 * 1024).start()
    yield proxy
    proxy.stop()


@pytest.fixture()
def server(smlocal_factory: Callable[..., SmlocalServer], slow_s3: SlowS3Proxy, docker_engine: docker.DockerClient
           ) -> Iterator[SmlocalServer]:
    build_test_images(docker_engine)
    server = smlocal_factory("--stop-grace-seconds", "1", "--s3-endpoint", slow_s3.endpoint)
    s3_client(server)
    yield server
    if server.process is not None and server.process.poll() is not None:
        server.start()  # a test that failed while the server was down
    settle(server, docker_engine)
    assert wait_until(lambda: nothing_mounted(server), 30, "no mount left")


def put(s3: Any, prefix: str, objects: dict[str, bytes]) -> None:
    for key, body in objects.items():
        s3.put_object(Bucket=INPUT_BUCKET, Key=f"{prefix}/{key}", Body=body)


# ---- what the container sees ---------------------------------------------------------------------


def test_the_prefix_is_mounted_read_only_at_the_file_mode_path(
        server: SmlocalServer, unique_name: Callable[[str], str], docker_engine: docker.DockerClient) -> None:
    sm, s3 = server.client(), s3_client(server)
    name = unique_name("ff-mount")
    objects = {"a.csv": b"1,2\n", "sub/b.csv": os.urandom(300_000), "sub/deeper/c.bin": os.urandom(5)}
    put(s3, f"{name}/data", objects)
    s3.put_object(Bucket=INPUT_BUCKET, Key=f"{name}/other/not-shown", Body=b"x")
    script = (f"cd {DATA} && find . -type f | sort | xargs sha256sum > /opt/ml/model/sums; "
              f"grep ' {DATA} ' /proc/mounts > /opt/ml/model/mount; "
              f"echo new 2> /opt/ml/model/write_error > {DATA}/new; echo $? > /opt/ml/model/write_rc")
    sm.create_training_job(**sh_job(name, script, s3=s3,
                                    InputDataConfig=[fastfile_channel(f"s3://{INPUT_BUCKET}/{name}/data/")]))
    job, seen = wait_recording(sm, name, FINAL)
    completed(job, seen)
    files = model_files(s3, name)
    assert files["sums"].decode().splitlines() == [
        f"{hashlib.sha256(objects[k]).hexdigest()}  ./{k}" for k in sorted(objects)]
    mount = files["mount"].decode().split()
    assert mount[2] == "fuse.rclone" and "ro" in mount[3].split(",")
    assert files["write_rc"] == b"1\n" and b"Read-only file system" in files["write_error"]
    # As on SageMaker: the Downloading phase says nothing more for a channel served as asked.
    assert job["SecondaryStatusTransitions"][1]["StatusMessage"] == "Downloading input data"
    assert wait_until(lambda: leftovers(docker_engine, server, name) == [] and nothing_mounted(server), 30,
                      "cleanup and unmount")


@pytest.mark.parametrize(("prefix", "expected"), [
    # The slash left out: the folder's content, as File mode lays it out.
    ("data", b"./test.csv\n./train.csv\n./train/part-1\n./training/x\n"),
    # Keys that merely start with the prefix: their paths from its last `/` on.
    ("data/train", b"./train.csv\n./train/part-1\n./training/x\n"),
], ids=["folder-without-slash", "partial-name"])
def test_a_prefix_that_is_not_a_folder_shows_what_it_matches(
        server: SmlocalServer, unique_name: Callable[[str], str], prefix: str, expected: bytes) -> None:
    sm, s3 = server.client(), s3_client(server)
    name = unique_name(f"ff-{prefix.replace('/', '-')}")
    put(s3, f"{name}/data", {"train.csv": b"a\n", "train/part-1": b"b\n", "training/x": b"c\n", "test.csv": b"d\n"})
    script = f"cd {DATA} && find . -type f | sort > /opt/ml/model/files"
    sm.create_training_job(**sh_job(name, script,
                                    InputDataConfig=[fastfile_channel(f"s3://{INPUT_BUCKET}/{name}/{prefix}")]))
    job, seen = wait_recording(sm, name, FINAL)
    completed(job, seen)
    assert model_files(s3, name)["files"] == expected


def test_one_small_file_of_a_large_prefix_is_read_before_the_rest_could_have_been_fetched(
        server: SmlocalServer, slow_s3: SlowS3Proxy, unique_name: Callable[[str], str]) -> None:
    sm, s3 = server.client(), s3_client(server)
    name = unique_name("ff-lazy")
    small = {f"small-{i:04d}.txt": f"row {i}\n".encode() for i in range(300)}
    big = {f"big-{i}.bin": os.urandom(4 * 2**20) for i in range(4)}
    put(s3, f"{name}/data", {**small, **big})
    # Through the proxy, the big objects come at 64 KiB/s: all of them would take 256 s.
    slow_s3.slow_down(f"{name}/data/big-")
    rest_seconds = sum(map(len, big.values())) / slow_s3.rate
    script = f"cat {DATA}/small-0123.txt > /opt/ml/model/row; date +%s > /opt/ml/model/read_at"
    try:
        sm.create_training_job(**sh_job(name, script,
                                        InputDataConfig=[fastfile_channel(f"s3://{INPUT_BUCKET}/{name}/data/")]))
        job, seen = wait_recording(sm, name, FINAL, timeout=60)
    finally:
        slow_s3.release(f"{name}/data/big-")
    completed(job, seen)
    assert model_files(s3, name)["row"] == b"row 123\n"
    # The timeline: the data phase took no time, the file was read within seconds of the creation, and the
    # whole job ended long before the rest of the prefix could have crossed the wire.
    timeline = {t["Status"]: t for t in job["SecondaryStatusTransitions"]}
    created = job["CreationTime"].timestamp()
    read_at = int(model_files(s3, name)["read_at"])  # whole seconds (busybox's date)
    downloading = (timeline["Downloading"]["EndTime"] - timeline["Downloading"]["StartTime"]).total_seconds()
    ended = job["TrainingEndTime"].timestamp() - created
    print(f"timeline: Downloading {downloading:.2f} s; the small file read {read_at - created:.0f} s and the job "
          f"ended {ended:.2f} s after creation; the big objects would take {rest_seconds:.0f} s")
    assert read_at - created < rest_seconds / 10 and ended < rest_seconds / 10
    assert not [path for path in slow_s3.slowed if "big-" in path]  # never asked for


# ---- every end path ---------------------------------------------------------------------------------


@pytest.mark.parametrize("end", ["failed", "stopped", "restart-adopted", "restart-abandoned"])
def test_the_mount_is_gone_after_every_end(
        server: SmlocalServer, unique_name: Callable[[str], str], docker_engine: docker.DockerClient,
        end: str) -> None:
    sm, s3 = server.client(), s3_client(server)
    name = unique_name(f"ff-{end}")
    put(s3, f"{name}/data", {"first": b"one\n", "second": b"two\n"})
    script = {
        "failed": f"cat {DATA}/first; while [ ! -e /tmp/go ]; do sleep 0.1; done; exit 3",
        "stopped": f"trap 'exit 0' TERM; cat {DATA}/first; while true; do sleep 0.1; done",
    }.get(end, f"cat {DATA}/first; while [ ! -e /tmp/go ]; do sleep 0.1; done; cat {DATA}/second > /opt/ml/model/s")
    sm.create_training_job(**sh_job(name, script,
                                    InputDataConfig=[fastfile_channel(f"s3://{INPUT_BUCKET}/{name}/data/")]))
    wait_until(lambda: "one" in log_messages(server, name), 60, "the algorithm to read the mount")
    assert mounts_under(server.data_dir) and rclone_mounts_of(server.data_dir)
    expected = {"failed": "Failed", "stopped": "Stopped", "restart-adopted": "Completed",
                "restart-abandoned": "Failed"}[end]
    if end == "failed":
        [container] = docker_engine.containers.list(filters={"label": f"smlocal.job-name={name}"})
        container.exec_run(["touch", "/tmp/go"])
    elif end == "stopped":
        sm.stop_training_job(TrainingJobName=name)
    elif end.startswith("restart"):
        server.stop(kill=True)
        # The mount outlives the server: the container still reads it.
        assert mounts_under(server.data_dir) and rclone_mounts_of(server.data_dir)
        [container] = docker_engine.containers.list(all=True, filters={"label": f"smlocal.job-name={name}"})
        if end == "restart-abandoned":
            container.remove(force=True)
        server.start()
        if end == "restart-adopted":
            container.exec_run(["touch", "/tmp/go"])
    job, seen = wait_recording(server.client(), name, FINAL, timeout=60)
    ended(job, seen, expected)
    if end == "restart-adopted":
        assert model_files(s3, name) == {"s": b"two\n"}  # read through the mount after the restart
    assert wait_until(lambda: leftovers(docker_engine, server, name) == [] and nothing_mounted(server), 30,
                      "cleanup and unmount")


# ---- no FUSE -------------------------------------------------------------------------------------


def test_without_fuse_the_channel_is_downloaded_and_the_job_says_so(
        smlocal_factory: Callable[..., SmlocalServer], s3_server: S3Server, unique_name: Callable[[str], str],
        docker_engine: docker.DockerClient) -> None:
    server = smlocal_factory("--stop-grace-seconds", "1", env={FUSE_DEVICE_ENV: "/nonexistent/fuse"})
    try:
        sm, s3 = server.client(), s3_client(server)
        name = unique_name("ff-nofuse")
        put(s3, f"{name}/data", {"a.csv": b"1\n", "sub/b.csv": b"2\n"})
        script = f"cd {DATA} && find . -type f | sort > /opt/ml/model/files && cat a.csv sub/b.csv"
        sm.create_training_job(**sh_job(name, script,
                                        InputDataConfig=[fastfile_channel(f"s3://{INPUT_BUCKET}/{name}/data/")]))
        job, seen = wait_recording(sm, name, FINAL, timeout=60)
        completed(job, seen)
        notice = ("FastFile channel 'train' is downloaded as in File mode: FUSE is not available here "
                  "(/nonexistent/fuse: No such file or directory).")
        downloading = job["SecondaryStatusTransitions"][1]
        assert (downloading["Status"], downloading["StatusMessage"]) == (
            "Downloading", f"Downloading input data; {notice}")
        assert log_messages(server, name) == [notice, "1", "2"]
        assert model_files(s3, name)["files"] == b"./a.csv\n./sub/b.csv\n"
        assert len(stream_files(server.data_dir, name)) == 1
        # No FUSE mount was made: the only mount is the host's volume (VolumeSizeInGB), which goes with the job.
        assert rclone_mounts_of(server.data_dir) == []
        assert [p.name for p in mounts_under(server.data_dir)] in ([], ["algo-1"])
        assert wait_until(lambda: nothing_mounted(server), 30, "no mount left")
    finally:
        settle(server, docker_engine)


def test_fastfile_mounts_need_root_and_fusermount3() -> None:
    # What `make test` installs for FastFile (scripts/ensure-fuse.sh): without it every FastFile test above
    # would silently test the download fallback instead.
    from runner.inputs.fastfile import fuse_problem

    assert fuse_problem() is None
    assert subprocess.run(["fusermount3", "--version"], capture_output=True).returncode == 0
