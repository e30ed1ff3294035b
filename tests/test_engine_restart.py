"""The container engine restarted under a running job, for real: a dockerd of the test's own (a SecondEngine,
in a network namespace, its own data and socket) stopped as a service manager stops it (SIGTERM: it stops
its containers) and started again, while smlocal runs a job on it.

The job ends as a platform fault that says so (not as the algorithm's exit code 137), runs again when its
RetryStrategy allows, the API answers all the while, and nothing of the job is left on the engine once it
is back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.support.jobs import wait_recording
from tests.support.runner_jobs import (
    BUSYBOX_IMAGE,
    FINAL,
    log_messages,
    model_files,
    s3_client,
    sh_job,
    spare_network,
    wait_until,
)
from tests.support.smlocal import SmlocalServer
from tests.support.swarm import SecondEngine


@pytest.fixture(scope="module")
def own_engine(docker_engine: docker.DockerClient) -> Iterator[SecondEngine]:
    with SecondEngine(docker_engine) as engine:
        engine.load_images([BUSYBOX_IMAGE])
        yield engine


@pytest.fixture()
def server_on_own_engine(own_engine: SecondEngine, tmp_path: Path) -> Iterator[SmlocalServer]:
    server = SmlocalServer(tmp_path / "data", None, ["--stop-grace-seconds", "1"],
                           env={"DOCKER_HOST": own_engine.base_url}).start()
    try:
        yield server
    finally:
        server.stop()


def _job_things(engine: SecondEngine, server: SmlocalServer, name: str) -> list[str]:
    """The job's containers, and any network of the server's but the one it keeps for the next job."""
    api = engine.client.api
    containers = [c["Names"][0] for c in api.containers(all=True, filters={"label": f"smlocal.job-name={name}"})]
    spare = spare_network(server)
    networks = [n["Name"] for n in api.networks(filters={"label": "smlocal.managed=true"}) if n["Name"] != spare]
    return containers + networks


def _restart_while_training(engine: SecondEngine, sm: Any, name: str) -> list[str]:
    """Restart the engine once the job trains; the API is asked all the while (every answer kept)."""
    wait_until(lambda: sm.describe_training_job(TrainingJobName=name)["SecondaryStatus"] == "Training", 60,
               "Training")
    restart = threading.Thread(target=engine.restart_daemon, kwargs={"down_seconds": 2})
    restart.start()
    answers = []
    while restart.is_alive():
        job = sm.describe_training_job(TrainingJobName=name)  # raises if the API does not answer
        answers.append(f"{job['TrainingJobStatus']}/{job['SecondaryStatus']}")
        time.sleep(0.5)
    restart.join()
    return answers


def test_an_engine_restart_fails_the_job_as_a_platform_fault_and_leaves_nothing(
        own_engine: SecondEngine, server_on_own_engine: SmlocalServer) -> None:
    server = server_on_own_engine
    sm, s3 = server.client(), s3_client(server)
    name = "engine-restart-fails"
    sm.create_training_job(**sh_job(name, "echo up; sleep 60"))
    answers = _restart_while_training(own_engine, sm, name)
    assert answers, "the API was asked during the restart"
    # This engine's mount namespace was made before the job's volume was mounted, and this machine's mounts do
    # not propagate: smlocal finds that out and says so rather than give the container an empty folder.
    assert log_messages(server, name)[0] == (
        "smlocal: VolumeSizeInGB (10 GB) is not enforced for this host: the container engine runs in another "
        "mount namespace, where a volume smlocal mounts would not show."), log_messages(server, name)
    job, seen = wait_recording(sm, name, FINAL, timeout=120)
    assert job["TrainingJobStatus"] == "Failed", (seen, job.get("FailureReason"))
    reason = job["FailureReason"]
    assert reason.startswith("InternalServerError: ContainerGone:"), reason
    assert "the engine restarted or went away while the job ran" in reason and "exit code" in reason, reason
    # Once the engine is back: no container or network of the job left on it.
    assert wait_until(lambda: own_engine.client.ping() and not _job_things(own_engine, server, name), 90,
                      "the job's containers and network removed"), _job_things(own_engine, server, name)
    after = "engine-restart-after"
    sm.create_training_job(**sh_job(after, "echo fine > /opt/ml/model/ok"))
    job, seen = wait_recording(sm, after, FINAL, timeout=120)
    assert job["TrainingJobStatus"] == "Completed", (seen, job.get("FailureReason"))
    assert model_files(s3, after) == {"ok": b"fine\n"}


def test_an_engine_restart_is_retried_by_the_retry_strategy(
        own_engine: SecondEngine, server_on_own_engine: SmlocalServer) -> None:
    server = server_on_own_engine
    sm, s3 = server.client(), s3_client(server)
    name = "engine-restart-retried"
    # Long enough for the restart to catch the first attempt; the second one finishes.
    script = "echo attempt; sleep 20; echo trained > /opt/ml/model/m"
    sm.create_training_job(**sh_job(name, script, RetryStrategy={"MaximumRetryAttempts": 1}))
    _restart_while_training(own_engine, sm, name)
    job, seen = wait_recording(sm, name, FINAL, timeout=180)
    assert job["TrainingJobStatus"] == "Completed", (seen, job.get("FailureReason"))
    messages = [t.get("StatusMessage", "") for t in job["SecondaryStatusTransitions"]]
    assert any("attempt 2 of 2" in m and "InternalServerError" in m for m in messages), messages
    assert model_files(s3, name)["m"] == b"trained\n"
    assert wait_until(lambda: not _job_things(own_engine, server, name), 60, "cleanup"), _job_things(
        own_engine, server, name)
