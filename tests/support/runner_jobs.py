"""The runner tests' fixtures and helpers: a pytest plugin, loaded by tests/conftest.py (`pytest_plugins`).

Fixtures (requested by name, never imported): `docker_engine` (session: the engine, test images built),
`runner_server` (module: a server that runs jobs, on the test images below) and `s3` (an S3 client, with
the two test buckets, of the server the test module names in SERVER, as conftest's `sm` does: a module
whose jobs run sets SERVER = "runner_server").

Helpers (imported): the buckets and images jobs use, job requests (`sh_job`, `s3_channel`, `code_channel`),
reading what a job left (`model_files`, `tar_members`, `log_events`, `log_messages`), `run_job`,
`wait_until`, and the checks that a server's jobs left nothing behind (`leftovers`, `settle`).
"""

from __future__ import annotations

import io
import json
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from tests.support.docker_env import BUSYBOX_IMAGE, docker_client, ensure_test_images
from tests.support.jobs import job_request, wait_for_status
from tests.support.logs import stream_files
from tests.support.smlocal import SmlocalServer, module_server

OUTPUT_BUCKET = "smlocal-test-output"
INPUT_BUCKET = "smlocal-test-runner-input"
TRAIN_IMAGE = "smlocal-test/runner-train:1"
ENTRYPOINT_IMAGE = "smlocal-test/runner-entrypoint:1"
FINAL = {"Completed", "Failed", "Stopped"}

# Records how it was invoked: one argument per line in /opt/ml/model/argv.
_RECORDER = ('#!/bin/sh\n{ echo "$(basename "$0")"; for a in "$@"; do echo "$a"; done; } '
             "> /opt/ml/model/argv\n")


# ---- shared helpers --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def docker_engine() -> docker.DockerClient:
    client = docker_client()
    ensure_test_images(client)
    return client


def build_test_images(client: docker.DockerClient) -> None:
    """Two tiny images: `train` on the PATH, and the same with an ENTRYPOINT of its own."""
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Path(tmp)
        (ctx / "recorder").write_text(_RECORDER)
        (ctx / "recorder").chmod(0o755)
        (ctx / "Dockerfile").write_text(
            f"FROM {BUSYBOX_IMAGE}\nCOPY recorder /usr/bin/recorder\nCOPY recorder /usr/bin/train\n")
        client.images.build(path=str(ctx), tag=TRAIN_IMAGE, pull=False, rm=True, forcerm=True)
        (ctx / "Dockerfile").write_text(
            f'FROM {TRAIN_IMAGE}\nENTRYPOINT ["/usr/bin/recorder", "image-entrypoint"]\n')
        client.images.build(path=str(ctx), tag=ENTRYPOINT_IMAGE, pull=False, rm=True, forcerm=True)


def s3_client(server: SmlocalServer) -> Any:
    s3 = server.client("s3")
    for bucket in (OUTPUT_BUCKET, INPUT_BUCKET):
        try:
            s3.create_bucket(Bucket=bucket)
        except (s3.exceptions.BucketAlreadyOwnedByYou, s3.exceptions.BucketAlreadyExists):
            pass
    return s3


def s3_channel(name: str, uri: str, **extra: Any) -> dict[str, Any]:
    return {"ChannelName": name, "DataSource": {"S3DataSource": {
        "S3DataType": extra.pop("S3DataType", "S3Prefix"), "S3Uri": uri,
        "S3DataDistributionType": "FullyReplicated"}}, **extra}


def code_channel(s3: Any, name: str, filename: str, source: str) -> dict[str, Any]:
    """Ship a script as the `code` channel (ContainerEntrypoint items are limited to 256 characters)."""
    s3.put_object(Bucket=INPUT_BUCKET, Key=f"{name}/code/{filename}", Body=source.encode())
    return s3_channel("code", f"s3://{INPUT_BUCKET}/{name}/code/")


def sh_job(name: str, script: str, image: str = BUSYBOX_IMAGE, *, s3: Any = None,
           **overrides: Any) -> dict[str, Any]:
    """A job whose algorithm is a busybox shell script; pass `s3` for scripts over 256 characters."""
    if s3 is not None:
        entrypoint = ["sh", "/opt/ml/input/data/code/train.sh"]
        overrides["InputDataConfig"] = [*overrides.get("InputDataConfig", []),
                                        code_channel(s3, name, "train.sh", script)]
    else:
        entrypoint = ["sh", "-c", script]
    algorithm = {"TrainingImage": image, "TrainingInputMode": "File", "ContainerEntrypoint": entrypoint,
                 **overrides.pop("AlgorithmSpecification", {})}
    return job_request(name, image, AlgorithmSpecification=algorithm, **overrides)


def tar_members(s3: Any, key: str, bucket: str = OUTPUT_BUCKET) -> dict[str, bytes]:
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def model_files(s3: Any, name: str) -> dict[str, bytes]:
    return tar_members(s3, f"models/{name}/output/model.tar.gz")


def log_events(server: SmlocalServer, name: str) -> list[dict[str, Any]]:
    """algo-1's stream files, read directly (works while the server is down too)."""
    return [json.loads(line) for stream in stream_files(server.data_dir, name, "algo-1-")
            for line in stream.read_text().splitlines()]


def log_messages(server: SmlocalServer, name: str) -> list[str]:
    return [e["message"] for e in log_events(server, name)]


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def spare_network(server: SmlocalServer) -> str | None:
    """The network the server made in advance for its next job (not a leftover)."""
    with urllib.request.urlopen(server.endpoint + "/health", timeout=10) as response:
        return json.load(response)["runner"].get("spareNetwork")


def leftovers(client: docker.DockerClient, server: SmlocalServer, job: str | None = None) -> list[str]:
    """Containers, networks and job folders of this server (or one of its jobs) still around.

    Jobs take their networks from a pool, so a network is a leftover when no container is on it and it
    is not the pool's spare (with `job`, only that job's containers and folders count)."""
    labels = [f"smlocal.data-dir={server.data_dir.resolve()}"]
    job_labels = labels + ([f"smlocal.job-name={job}"] if job else [])
    # Low-level listings: the runner removes things while we look, and a listing that inspects each item
    # would trip over one removed in between.
    found = [f"container {c['Names'][0].lstrip('/')}"
             for c in client.api.containers(all=True, filters={"label": job_labels})]
    spare = spare_network(server)
    for network in client.api.networks(filters={"label": labels}):
        try:
            attached = client.api.inspect_network(network["Id"]).get("Containers")
        except docker.errors.NotFound:
            continue
        if not attached and network["Name"] != spare:
            found.append(f"network {network['Name']}")
    jobs_dir = server.data_dir / "jobs"
    if jobs_dir.is_dir():
        found += [f"folder {d}" for d in jobs_dir.iterdir() if job is None or d.name.startswith(job + ".")]
    return found


def settle(server: SmlocalServer, client: docker.DockerClient) -> None:
    """End whatever a failed test left running, then require that nothing of the server's jobs remains."""
    sm = server.client()
    for status in ("InProgress", "Stopping"):
        for summary in sm.list_training_jobs(StatusEquals=status, MaxResults=100)["TrainingJobSummaries"]:
            if status == "InProgress":
                sm.stop_training_job(TrainingJobName=summary["TrainingJobName"])
            wait_for_status(sm, summary["TrainingJobName"], FINAL, timeout=60)
    assert wait_until(lambda: not leftovers(client, server), 30, "cleanup") is True


def run_job(sm: Any, request: dict[str, Any], timeout: float = 90.0) -> dict[str, Any]:
    sm.create_training_job(**request)
    return wait_for_status(sm, request["TrainingJobName"], FINAL, timeout=timeout)


# ---- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runner_server(module_smlocal_factory: Callable[..., SmlocalServer], docker_engine: docker.DockerClient
                  ) -> Iterator[SmlocalServer]:
    build_test_images(docker_engine)
    server = module_smlocal_factory("--stop-grace-seconds", "1.5", "--max-concurrent-jobs", "4")
    yield server
    settle(server, docker_engine)


@pytest.fixture()
def s3(request: pytest.FixtureRequest) -> Any:
    """`s3_client` of the test module's server: the fixture its SERVER names (api_server if none)."""
    return s3_client(module_server(request))
