"""Shared fixtures: a real S3-compatible server and real `smlocal serve` processes."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.census import NETWORKS, SERVERS
from tests.support.distribution import make_scheduler, slowest_first
from tests.support.s3server import S3Server, start_s3_server
from tests.support.smlocal import SmlocalServer, module_server

# The runner tests' fixtures (docker_engine, runner_server, s3) and the swarm tests' (swarm_single,
# swarm_two_nodes) for every test module; only this, the top-level conftest, may load plugins.
pytest_plugins = ["tests.support.runner_jobs", "tests.support.swarm"]
# pytest rewrites a plugin's asserts, not a helper module's: pipe_jobs' status checks (ended) keep the detailed
# failure messages they had in a test module.
pytest.register_assert_rewrite("tests.support.pipe_jobs")

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
    from smlocal.core.settings import Settings

    return make_client(Settings(s3_endpoint=s3_server.endpoint), "us-east-1")


def _servers(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., SmlocalServer]]:
    started: list[SmlocalServer] = []

    def start(*args: str, env: dict[str, str] | None = None, data_dir: Path | None = None) -> SmlocalServer:
        server = SmlocalServer(data_dir or tmp_path_factory.mktemp("smlocal"), s3_server.endpoint,
                               list(args), env)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture()
def smlocal_factory(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory
                    ) -> Iterator[Callable[..., SmlocalServer]]:
    """Start servers with their own flags; they are stopped when the test ends."""
    yield from _servers(s3_server, tmp_path_factory)


@pytest.fixture(scope="module")
def module_smlocal_factory(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory
                           ) -> Iterator[Callable[..., SmlocalServer]]:
    """The same for a module's shared server; stopped when the module ends. No longer: a server with jobs
    holds a network made in advance plus one per running job, and kept for the whole session they add up
    (tests.support.census prints the peaks)."""
    yield from _servers(s3_server, tmp_path_factory)


@pytest.fixture(scope="session")
def api_server(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmlocalServer]:
    """A server that only serves the API: jobs stay InProgress/Starting, so states are predictable.

    The one server kept for the whole session: with --no-run-jobs it makes no network and no container,
    and dozens of API modules share it instead of starting one each."""
    server = SmlocalServer(tmp_path_factory.mktemp("api"), s3_server.endpoint, ["--no-run-jobs"]).start()
    SESSION_SERVERS.add(id(server))
    yield server
    server.stop()


@pytest.fixture()
def sm(request: pytest.FixtureRequest):  # noqa: ANN201 - a boto3 client
    """A SageMaker client of the test module's server: the fixture the module names in a module constant
    SERVER, got with request.getfixturevalue (api_server when the module sets none).

    A module whose jobs must run sets SERVER = "runner_server" (tests/support/runner_jobs.py); the `s3`
    fixture follows the same constant. A module's own `sm` fixture still overrides this one."""
    return module_server(request).client()


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


@pytest.fixture(scope="session")
def service_image(test_images) -> str:  # noqa: ANN001 - a docker client
    """The id of smlocal/service:dev as this working tree builds it (tests/support/service_image.py: built once,
    or taken from the engine when the image under the tag was built from the same files)."""
    from tests.support.service_image import service_image as image_of_this_tree

    return image_of_this_tree(test_images)


# Servers a session fixture keeps on purpose (api_server); any other one still running when its test module
# ends was left behind by a test.
SESSION_SERVERS: set[int] = set()


@pytest.fixture(scope="module", autouse=True)
def servers_end_with_their_module(request: pytest.FixtureRequest) -> Iterator[None]:
    """Stop, and report as an error, a server a test module left running (autouse: torn down after the
    module's own fixtures)."""
    before = {id(s) for s in SERVERS.live()}
    yield
    left = [s for s in SERVERS.live() if id(s) not in before and id(s) not in SESSION_SERVERS]
    for server in left:
        server.stop()
    assert not left, f"{request.node.name} left {len(left)} smlocal server(s) running: " + ", ".join(
        " ".join(s.args) or "(no flags)" for s in left)


def _in_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def pytest_sessionstart(session: pytest.Session) -> None:
    # One sampler for the run: in the controller when pytest-xdist's workers run the tests.
    if not _in_xdist_worker(session.config):
        NETWORKS.start()


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _in_xdist_worker(session.config):
        session.config.workeroutput["smlocal_server_spans"] = SERVERS.spans()  # type: ignore[attr-defined]


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """A pytest-xdist worker finished: its servers join the census (the peak is over every worker's)."""
    SERVERS.absorb(getattr(node, "workeroutput", {}).get("smlocal_server_spans", []))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    slowest_first(items)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadfile` (as `make test` runs): whole modules, and the groups of tests/support/distribution.py."""
    return make_scheduler(config, log) if config.getoption("dist") == "loadfile" else None


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _in_xdist_worker(terminalreporter.config):
        return
    NETWORKS.stop()
    terminalreporter.write_sep("-", "smlocal census")
    terminalreporter.write_line(f"smlocal servers: {SERVERS.started} started, at most {SERVERS.peak} alive at once")
    if NETWORKS.samples:
        terminalreporter.write_line(f"smlocal networks on the engine: at most {NETWORKS.peak} at once; bridge "
                                    f"networks in all: at most {NETWORKS.bridges_peak} ({NETWORKS.samples} samples)")
    else:
        terminalreporter.write_line("smlocal networks on the engine: not counted (no engine answered)")


# A user's suite, run by tests/test_fixture_plugin.py in its own pytest (as a user runs it), not here.
collect_ignore = ["user_suite"]
