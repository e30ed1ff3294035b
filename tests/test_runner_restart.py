"""A restarted server adopts the training containers it left running, and fails what it cannot adopt."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import docker
import pytest

from tests.support.jobs import wait_for_status
from tests.support.logs import stream_files
from tests.support.runner_jobs import (
    FINAL,
    leftovers,
    log_messages,
    model_files,
    s3_client,
    settle,
    sh_job,
    wait_until,
)
from tests.support.smlocal import SmlocalServer

# Long enough to restart the server in the middle, short enough for a quick suite.
SCRIPT = ("echo before; sleep 4; echo after; echo trained > /opt/ml/model/model.txt; "
          "echo report > /opt/ml/output/data/r.txt")


@pytest.fixture()
def server(smlocal_factory: Callable[..., SmlocalServer], docker_engine: docker.DockerClient
           ) -> Iterator[SmlocalServer]:
    server = smlocal_factory("--stop-grace-seconds", "1")
    yield server
    if server.process is not None and server.process.poll() is not None:
        server.start()  # a test that failed while the server was down
    settle(server, docker_engine)


def _start_training(server: SmlocalServer, name: str) -> Any:
    sm = server.client()
    s3_client(server)
    sm.create_training_job(**sh_job(name, SCRIPT))
    wait_until(lambda: "before" in log_messages(server, name), 60, "the algorithm to start")
    return sm


def _containers(client: docker.DockerClient, name: str) -> list[Any]:
    return client.containers.list(all=True, filters={"label": f"smlocal.job-name={name}"})


@pytest.mark.parametrize("kill", [False, True], ids=["graceful", "sigkill"])
def test_restart_mid_job_adopts_the_running_container(
        server: SmlocalServer, unique_name: Callable[[str], str], docker_engine: docker.DockerClient,
        kill: bool) -> None:
    name = unique_name("adopt-kill" if kill else "adopt-term")
    _start_training(server, name)
    [container] = _containers(docker_engine, name)

    server.stop(kill=kill)
    container.reload()
    assert container.status == "running"  # shutting down never stops training
    server.start()

    sm = server.client()
    job = wait_for_status(sm, name, FINAL, timeout=60)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    assert [t["Status"] for t in job["SecondaryStatusTransitions"]] == [
        "Starting", "Downloading", "Training", "Uploading", "Completed"]
    assert model_files(s3_client(server), name) == {"model.txt": b"trained\n"}
    # One stream, each line once: the new process continued where the old one stopped reading.
    assert log_messages(server, name) == ["before", "after"]
    assert len(stream_files(server.data_dir, name)) == 1
    # The terminal status is written first, then the job is cleaned up.
    assert wait_until(lambda: leftovers(docker_engine, server, name) == [], 30, "cleanup")


def test_container_that_finished_while_the_server_was_down_completes_the_job(
        server: SmlocalServer, unique_name: Callable[[str], str], docker_engine: docker.DockerClient,
        ) -> None:
    name = unique_name("exited")
    _start_training(server, name)
    [container] = _containers(docker_engine, name)
    server.stop(kill=True)
    assert container.wait(timeout=30)["StatusCode"] == 0
    server.start()

    job = wait_for_status(server.client(), name, FINAL, timeout=60)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    assert model_files(s3_client(server), name) == {"model.txt": b"trained\n"}
    assert log_messages(server, name) == ["before", "after"]
    # The terminal status is written first, then the job is cleaned up.
    assert wait_until(lambda: leftovers(docker_engine, server, name) == [], 30, "cleanup")


def test_job_whose_container_vanished_fails_and_is_cleaned_up(
        server: SmlocalServer, unique_name: Callable[[str], str], docker_engine: docker.DockerClient,
        ) -> None:
    name = unique_name("vanished")
    _start_training(server, name)
    server.stop(kill=True)
    for container in _containers(docker_engine, name):
        container.remove(force=True)
    assert list((server.data_dir / "jobs").glob(f"{name}.*"))  # the killed process left its tree behind
    server.start()

    job = wait_for_status(server.client(), name, FINAL, timeout=30)
    assert job["TrainingJobStatus"] == "Failed"
    assert job["FailureReason"] == (
        "InternalServerError: the training job was interrupted when smlocal restarted")
    # Its network and /opt/ml tree went with it.
    assert wait_until(lambda: leftovers(docker_engine, server, name) == [], 10, "cleanup")
