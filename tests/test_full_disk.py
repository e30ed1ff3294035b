"""A full disk: smlocal's data dir on a 48 MiB tmpfs that a job fills, while staging, training and packing.

Each time the job fails with a FailureReason that names the cause (in SageMaker's words where SageMaker has
them), nothing half-written is left, the database takes the job's end and later writes, the server answers
throughout, and the next job runs once the room is back. The store is moto's (outside the tmpfs), so only
the job's own data fills it.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from runner.failure import DOWNLOAD_DISK_FULL, UPLOAD_DISK_FULL
from smlocal.core.space_reserve import RESERVE_NAME
from tests.support.jobs import wait_recording
from tests.support.runner_jobs import (
    FINAL,
    INPUT_BUCKET,
    OUTPUT_BUCKET,
    model_files,
    s3_channel,
    sh_job,
    wait_until,
)
from tests.support.smlocal import SmlocalServer

DISK_MIB = 48


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if shutil.which("mount") is None:
        pytest.fail("mount(8) is needed to make the small file system")
    folder = tmp_path_factory.mktemp("small-disk")
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MIB}m,mode=0700", "smlocal-small-disk", str(folder)],
                   check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture(scope="module")
def full_disk_server(small_disk: Path, module_smlocal_factory: Callable[..., SmlocalServer],
                     tmp_path_factory: pytest.TempPathFactory, docker_engine: docker.DockerClient
                     ) -> SmlocalServer:
    server = module_smlocal_factory("--stop-grace-seconds", "1", data_dir=small_disk / "data")
    # The server's own log is kept off the small disk (so that it tells what happened when the disk is full).
    log_dir = tmp_path_factory.mktemp("full-disk-log")
    server.stop()
    server.log_path = log_dir / "server.log"
    return server.start()


@pytest.fixture()
def sm(full_disk_server: SmlocalServer) -> Any:
    return full_disk_server.client()


@pytest.fixture()
def s3(full_disk_server: SmlocalServer) -> Any:
    client = full_disk_server.client("s3")
    for bucket in (INPUT_BUCKET, OUTPUT_BUCKET):
        try:
            client.create_bucket(Bucket=bucket)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
    return client


def _name(what: str) -> str:
    return f"disk-{what}-{uuid.uuid4().hex[:8]}"


def _free_mib(folder: Path) -> float:
    return shutil.disk_usage(folder).free / 2**20


def _assert_nothing_left(server: SmlocalServer, small_disk: Path) -> None:
    jobs = server.data_dir / "jobs"
    assert wait_until(lambda: not jobs.is_dir() or not any(jobs.iterdir()), 30, "job folders removed")
    # Everything the jobs wrote is gone again: only the database and the reserve kept beside it hold room.
    assert wait_until(lambda: _free_mib(small_disk) > DISK_MIB - 16, 30, "room back"), _free_mib(small_disk)


def _next_job_completes(server: SmlocalServer, sm: Any, s3: Any) -> None:
    """After a full disk: a normal job runs, end to end, and the reserve is made again."""
    name = _name("after")
    sm.create_training_job(**sh_job(name, "echo fine > /opt/ml/model/ok"))
    job, seen = wait_recording(sm, name, FINAL)
    assert job["TrainingJobStatus"] == "Completed", (seen, job.get("FailureReason"))
    assert model_files(s3, name) == {"ok": b"fine\n"}
    # The next test fills the disk again and needs the reserve for its job's end: without it that end cannot be
    # written (InternalServerError: DiskFull), which is not what the test is about.
    assert wait_until(lambda: _reserve_back(server), 30, "the reserve made again")


def _reserve_back(server: SmlocalServer) -> bool:
    # Made again at a write once there is room (looked for every few seconds): a describe is no write,
    # a tag is.
    sm = server.client()
    arn = sm.list_training_jobs(MaxResults=1)["TrainingJobSummaries"][0]["TrainingJobArn"]
    sm.add_tags(ResourceArn=arn, Tags=[{"Key": "probe", "Value": str(time.monotonic())}])
    return (server.data_dir / RESERVE_NAME).is_file()


def test_an_input_larger_than_the_disk_fails_the_job_in_sagemakers_words(
        full_disk_server: SmlocalServer, small_disk: Path, sm: Any, s3: Any) -> None:
    name = _name("download")
    s3.put_object(Bucket=INPUT_BUCKET, Key=f"{name}/big.bin", Body=b"\0" * (80 * 2**20))
    sm.create_training_job(**sh_job(name, "echo never", InputDataConfig=[
        s3_channel("train", f"s3://{INPUT_BUCKET}/{name}/")]))
    job, seen = wait_recording(sm, name, FINAL, timeout=120)
    assert job["TrainingJobStatus"] == "Failed", (seen, job.get("FailureReason"))
    assert job["FailureReason"].startswith(DOWNLOAD_DISK_FULL), job["FailureReason"]
    assert "InProgress/Downloading" in seen and seen[-1] == "Failed/Failed", seen
    s3.delete_object(Bucket=INPUT_BUCKET, Key=f"{name}/big.bin")
    _assert_nothing_left(full_disk_server, small_disk)
    _next_job_completes(full_disk_server, sm, s3)


def test_an_algorithm_that_fills_the_disk_fails_and_its_end_is_written(
        full_disk_server: SmlocalServer, small_disk: Path, sm: Any, s3: Any) -> None:
    """The disk stays full while the job ends: the status writes use the room the store kept for them."""
    name = _name("algorithm")
    # The failure file first: once the disk is full, nothing more can be written, that file included.
    script = ("echo 'the disk is full' > /opt/ml/output/failure; "
              "dd if=/dev/zero of=/opt/ml/model/fill bs=1048576 count=100; sleep 1; exit 3")
    sm.create_training_job(**sh_job(name, script))
    job, seen = wait_recording(sm, name, FINAL, timeout=120)
    assert job["TrainingJobStatus"] == "Failed", (seen, job.get("FailureReason"))
    assert job["FailureReason"].startswith("AlgorithmError: the disk is full, exit code: 3"), job["FailureReason"]
    assert "No space left on device" in job["FailureReason"]  # the log's tail says why
    assert "InProgress/Training" in seen and seen[-1] == "Failed/Failed", seen
    # The server answered throughout, and writes again.
    assert sm.list_training_jobs(NameContains=name)["TrainingJobSummaries"][0]["TrainingJobStatus"] == "Failed"
    _assert_nothing_left(full_disk_server, small_disk)
    _next_job_completes(full_disk_server, sm, s3)


def test_a_model_too_large_to_pack_fails_the_upload_in_sagemakers_words(
        full_disk_server: SmlocalServer, small_disk: Path, sm: Any, s3: Any) -> None:
    name = _name("pack")
    # Random bytes do not compress: the model's tarball needs as much room again as the model.
    size_mib = int(_free_mib(small_disk)) - 6
    sm.create_training_job(**sh_job(name, f"head -c {size_mib * 2**20} /dev/urandom > /opt/ml/model/weights"))
    job, seen = wait_recording(sm, name, FINAL, timeout=120)
    assert job["TrainingJobStatus"] == "Failed", (seen, job.get("FailureReason"))
    assert job["FailureReason"].startswith(UPLOAD_DISK_FULL), job["FailureReason"]
    assert "InProgress/Uploading" in seen and seen[-1] == "Failed/Failed", seen
    # No half tarball in the bucket either.
    listed = s3.list_objects_v2(Bucket=OUTPUT_BUCKET, Prefix=f"models/{name}/").get("Contents") or []
    assert [o["Key"] for o in listed if o["Key"].endswith("model.tar.gz")] == []
    _assert_nothing_left(full_disk_server, small_disk)
    _next_job_completes(full_disk_server, sm, s3)


def _fill(folder: Path) -> Path:
    """A file taking every free block of `folder`'s file system."""
    filler = folder / "filler"
    with open(filler, "ab") as f:
        try:
            while True:
                f.write(b"\0" * 2**20)
                f.flush()
        except OSError:
            pass
    return filler


def test_the_api_answers_service_unavailable_while_nothing_fits_and_serves_again_after(
        full_disk_server: SmlocalServer, small_disk: Path, sm: Any, s3: Any) -> None:
    filler = _fill(small_disk)
    try:
        # The first write finds the disk full: the store gives up its reserve for it, and it is taken.
        first = _name("api")
        sm.create_training_job(**sh_job(first, "echo hi", StoppingCondition={"MaxRuntimeInSeconds": 60}))
        sm.stop_training_job(TrainingJobName=first)
        _fill(small_disk)  # and now what the reserve gave back too
        with pytest.raises(sm.exceptions.ClientError) as refused:
            sm.create_training_job(**sh_job(_name("api"), "echo hi"))
        error = refused.value.response
        assert error["Error"]["Code"] == "ServiceUnavailable", error
        assert error["ResponseMetadata"]["HTTPStatusCode"] == 503
        assert "no room left" in error["Error"]["Message"]
        assert "Traceback" not in str(error)
        # Reads go on.
        assert sm.describe_training_job(TrainingJobName=first)["TrainingJobName"] == first
    finally:
        filler.unlink()
    job, _ = wait_recording(sm, first, FINAL)
    assert job["TrainingJobStatus"] in ("Stopped", "Failed"), job
    _assert_nothing_left(full_disk_server, small_disk)
    _next_job_completes(full_disk_server, sm, s3)
