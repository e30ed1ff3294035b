"""Shared fixtures: a real S3-compatible server and real `smlocal serve` processes."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.s3server import S3Server, start_s3_server
from tests.support.smlocal import SmlocalServer

# Nothing in the tests may phone home. (The SageMaker SDKs read no variable for telemetry: the SDK
# tests opt out in their config file, `TelemetryOptOut: true`, and run under tests/support/sdk.py's guard.)
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")


def _s3_bind_address() -> str:
    """Bind where training containers can reach the store; loopback when no engine runs."""
    try:
        from tests.support.docker_env import docker_client, host_address_for_containers

        return host_address_for_containers(docker_client())
    except Exception:  # noqa: BLE001 - API-only tests still run without an engine
        return "127.0.0.1"


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    host = _s3_bind_address()
    with start_s3_server(host=host) as server:
        yield server


@pytest.fixture()
def minio(s3_server: S3Server):  # noqa: ANN201 - a minio client, as the runner makes it
    from runner.s3 import make_client
    from server.config import Settings

    return make_client(Settings(s3_endpoint=s3_server.endpoint), "us-east-1")


@pytest.fixture(scope="session")
def smlocal_factory(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory
                    ) -> Iterator[Callable[..., SmlocalServer]]:
    """Start extra servers with their own flags; all are stopped at the end of the session."""
    started: list[SmlocalServer] = []

    def start(*args: str, env: dict[str, str] | None = None, data_dir: Path | None = None) -> SmlocalServer:
        server = SmlocalServer(data_dir or tmp_path_factory.mktemp("smlocal"), s3_server.endpoint,
                               list(args), env)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def api_server(smlocal_factory: Callable[..., SmlocalServer]) -> SmlocalServer:
    """A server that only serves the API: jobs stay InProgress/Starting, so states are predictable."""
    return smlocal_factory("--no-run-jobs")


@pytest.fixture()
def sm(api_server: SmlocalServer):  # noqa: ANN201 - a boto3 client
    return api_server.client()


@pytest.fixture()
def unique_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    counter = iter(range(10_000))

    def make(prefix: str = "job") -> str:
        base = "".join(c if c.isalnum() else "-" for c in request.node.name)[:40].strip("-")
        return f"{prefix}-{base}-{next(counter)}-{os.getpid() % 1000}"[:63].rstrip("-")

    return make


@pytest.fixture(scope="session")
def test_images():  # noqa: ANN201 - a docker client
    """A running engine with the test and example images built (cached by tag)."""
    from tests.support.docker_env import docker_client, ensure_test_images

    client = docker_client()
    ensure_test_images(client)
    return client


# A user's suite, run by tests/test_fixture_plugin.py in its own pytest (as a user runs it), not here.
collect_ignore = ["user_suite"]
