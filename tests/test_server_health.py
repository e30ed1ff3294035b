"""The service around the jobs: one server per data dir, a private data dir, GET /health, and Docker away.

Docker "goes away" through a socket proxy the test controls (tests/support/docker_proxy.py); the
engine itself keeps running for everyone else.
"""

from __future__ import annotations

import json
import stat
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.support.docker_proxy import DockerSocketProxy
from tests.support.jobs import wait_for_status
from tests.support.runner_jobs import (
    FINAL,
    leftovers,
    log_messages,
    s3_client,
    sh_job,
    wait_until,
)
from tests.support.smlocal import SmlocalServer


def get_json(server: SmlocalServer, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(server.endpoint + path, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_a_second_server_on_the_same_data_dir_refuses_to_start(
        smlocal_factory: Callable[..., SmlocalServer], tmp_path: Path) -> None:
    data_dir = tmp_path / "shared"
    first = smlocal_factory("--no-run-jobs", data_dir=data_dir)
    with pytest.raises(RuntimeError) as err:
        smlocal_factory("--no-run-jobs", data_dir=data_dir)
    assert f"another smlocal server (pid {first.process.pid}) is using the data dir {data_dir.resolve()}" in str(
        err.value)
    assert "exited with 1" in str(err.value)
    # The first one is unaffected, and its data dir is private.
    assert first.client().list_training_jobs()["TrainingJobSummaries"] == []
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    # Once it is gone (however it ended), the data dir is free again.
    first.stop(kill=True)
    first.start()
    assert first.client().list_training_jobs()["TrainingJobSummaries"] == []


def test_health_route_and_aws_errors_everywhere_else(api_server: SmlocalServer) -> None:
    status, body = get_json(api_server, "/health")
    assert status == 200
    assert body == {"service": "smlocal", "status": "ok", "runner": {"enabled": False}}
    # Every other path and method is the AWS endpoint's, with AWS's error shape.
    for method, path in (("POST", "/health"), ("GET", "/nothing-here")):
        request = urllib.request.Request(api_server.endpoint + path, data=b"{}" if method == "POST" else None,
                                         method=method)
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, timeout=10)
        assert err.value.code == 400
        assert json.loads(err.value.read())["__type"] == "UnknownOperationException"


@pytest.fixture()
def proxy() -> Iterator[DockerSocketProxy]:
    # Unix socket paths are limited to ~100 bytes: a short folder of our own.
    folder = Path(tempfile.mkdtemp(prefix="smlocal-dock-"))
    proxy = DockerSocketProxy(folder / "docker.sock")
    yield proxy
    proxy.stop()
    folder.rmdir()


@pytest.fixture()
def server_behind(smlocal_factory: Callable[..., SmlocalServer], proxy: DockerSocketProxy
                  ) -> Iterator[Callable[[], SmlocalServer]]:
    """A server that reaches Docker through `proxy`; stopped while the proxy still runs, so it can clean up."""
    started: list[SmlocalServer] = []

    def start() -> SmlocalServer:
        server = smlocal_factory("--stop-grace-seconds", "1", env={"DOCKER_HOST": proxy.docker_host})
        started.append(server)
        return server

    yield start
    proxy.start()
    for server in started:
        server.stop()


def _statuses_for(sm: Any, name: str, seconds: float) -> set[tuple[str, str]]:
    seen = set()
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        job = sm.describe_training_job(TrainingJobName=name)
        seen.add((job["TrainingJobStatus"], job["SecondaryStatus"]))
        time.sleep(0.2)
    return seen


def test_jobs_wait_while_docker_is_unreachable_and_run_once_it_answers(
        server_behind: Callable[[], SmlocalServer], proxy: DockerSocketProxy,
        test_images: docker.DockerClient, unique_name: Callable[[str], str]) -> None:
    server = server_behind()
    assert "UNREACHABLE" in server.log()  # the banner says so
    status, health = get_json(server, "/health")
    assert status == 200 and health["status"] == "degraded"
    assert health["runner"]["engine"]["reachable"] is False
    assert "the Docker engine does not answer" in health["problem"]
    assert "jobs stay InProgress" in health["problem"]

    sm = server.client()
    s3_client(server)
    name = unique_name("nodocker")
    sm.create_training_job(**sh_job(name, "echo ran > /opt/ml/model/ran"))
    # Still served, still waiting: nothing is failed for want of an engine.
    assert _statuses_for(sm, name, 3) == {("InProgress", "Starting")}
    assert sm.list_training_jobs()["TrainingJobSummaries"][0]["TrainingJobStatus"] == "InProgress"

    proxy.start()
    job = wait_for_status(sm, name, FINAL, timeout=90)  # the retry backoff is at most 30 s
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    assert get_json(server, "/health")[1]["status"] == "ok"
    assert "the container engine answers again" in server.log()
    assert wait_until(lambda: leftovers(test_images, server, name) == [], 30, "cleanup")


def test_a_restart_while_docker_is_away_keeps_the_running_job(
        server_behind: Callable[[], SmlocalServer], proxy: DockerSocketProxy,
        test_images: docker.DockerClient, unique_name: Callable[[str], str]) -> None:
    proxy.start()
    server = server_behind()
    sm = server.client()
    s3_client(server)
    name = unique_name("awayrestart")
    # Runs until the test lets it finish (a file the test drops through `docker exec`).
    script = ("echo up; while [ ! -e /tmp/finish ]; do sleep 0.1; done; echo done; "
              "echo trained > /opt/ml/model/model.txt")
    sm.create_training_job(**sh_job(name, script))
    wait_until(lambda: "up" in log_messages(server, name), 60, "the algorithm to start")

    server.stop(kill=True)
    proxy.stop()
    server.start()
    # The engine does not answer: the job keeps its status, its tree and its (still running) container.
    assert _statuses_for(sm, name, 3) == {("InProgress", "Training")}
    assert list((server.data_dir / "jobs").glob(f"{name}.*"))
    [container] = test_images.containers.list(filters={"label": f"smlocal.job-name={name}"})
    assert container.status == "running"

    proxy.start()
    container.exec_run(["touch", "/tmp/finish"])
    job = wait_for_status(sm, name, FINAL, timeout=90)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    assert [t["Status"] for t in job["SecondaryStatusTransitions"]] == [
        "Starting", "Downloading", "Training", "Uploading", "Completed"]
    assert log_messages(server, name) == ["up", "done"]
    assert wait_until(lambda: leftovers(test_images, server, name) == [], 30, "cleanup")
