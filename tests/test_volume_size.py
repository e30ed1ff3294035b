"""ResourceConfig.VolumeSizeInGB enforced: each host's /opt/ml is a file system of that size (runner.volumes).

The container sees the volume's size (`df`), a job that writes more than it holds fails with the file
system's own "No space left on device" (as on SageMaker's EBS volume), and nothing stays mounted after
the job. Where smlocal does not enforce it, the host's log says so first.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.support.jobs import wait_recording
from tests.support.runner_jobs import FINAL, log_messages, model_files, s3_client, sh_job, wait_until
from tests.support.smlocal import SmlocalServer

GIB_K = 1024 * 1024  # df -k counts KiB
DF = "df -k /opt/ml/model | tail -1 | awk '{print $2}' > /opt/ml/model/size_k"


def _one_gb(**resources: Any) -> dict[str, Any]:
    return {"ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 1,
                               **resources}}


def _mounted_under(folder: Path) -> list[str]:
    root = str(folder.resolve())
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(root)]


@pytest.fixture()
def volume_server(smlocal_factory: Callable[..., SmlocalServer], docker_engine: docker.DockerClient
                  ) -> SmlocalServer:
    return smlocal_factory("--stop-grace-seconds", "1")


def test_the_container_sees_a_volume_of_the_size_asked_for_and_cannot_outgrow_it(
        volume_server: SmlocalServer, unique_name: Callable[[str], str]) -> None:
    sm, s3 = volume_server.client(), s3_client(volume_server)
    sized = unique_name("volume-df")
    sm.create_training_job(**sh_job(sized, DF, **_one_gb()))
    job, seen = wait_recording(sm, sized, FINAL)
    assert job["TrainingJobStatus"] == "Completed", (seen, job.get("FailureReason"))
    size_k = int(model_files(s3, sized)["size_k"])
    assert 0.9 * GIB_K < size_k <= GIB_K, size_k

    full = unique_name("volume-full")
    sm.create_training_job(**sh_job(full, "dd if=/dev/zero of=/opt/ml/model/big bs=1048576 count=1200", **_one_gb()))
    job, seen = wait_recording(sm, full, FINAL, timeout=180)
    assert job["TrainingJobStatus"] == "Failed", (seen, job.get("FailureReason"))
    assert job["FailureReason"].startswith("AlgorithmError:"), job["FailureReason"]
    assert "No space left on device" in job["FailureReason"], job["FailureReason"]
    # The volumes went with the jobs.
    assert wait_until(lambda: not _mounted_under(volume_server.data_dir), 30, "volumes unmounted"), \
        _mounted_under(volume_server.data_dir)


def test_without_enforcement_the_hosts_log_says_so_first(
        smlocal_factory: Callable[..., SmlocalServer], docker_engine: docker.DockerClient,
        unique_name: Callable[[str], str]) -> None:
    server = smlocal_factory("--stop-grace-seconds", "1", "--no-enforce-volume-size")
    sm, s3 = server.client(), s3_client(server)
    name = unique_name("volume-off")
    sm.create_training_job(**sh_job(name, DF + "; echo trained", **_one_gb()))
    job, seen = wait_recording(sm, name, FINAL)
    assert job["TrainingJobStatus"] == "Completed", (seen, job.get("FailureReason"))
    assert log_messages(server, name) == [
        "smlocal: VolumeSizeInGB (1 GB) is not enforced for this host: smlocal serve runs with "
        "--no-enforce-volume-size.", "trained"]
    assert int(model_files(s3, name)["size_k"]) != GIB_K  # the data dir's file system, whatever its size
