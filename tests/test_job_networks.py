"""Job networks come from smlocal's own range (`serve --job-subnets`), never from the engine's default pools.

A fresh engine has about 30 bridge networks in its default pools; these tests run more jobs than that at
once, make a range too small for the jobs asked for (they wait in Starting, never fail), and check the
range against the machine's routes when the server starts.
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import docker
import pytest

from runner.backend import LABEL_MANAGED, NetworkRef
from runner.subnets import (
    DEFAULT_CANDIDATES,
    NoFreeSubnet,
    RangeTooSmall,
    SubnetAllocator,
    SubnetRangeError,
    host_routes,
    prefix_for_hosts,
    resolve_job_subnets,
)
from smlocal.core.lifecycle import DEFAULT_MESSAGES, WAITING_FOR_NETWORK_MESSAGE
from tests.support.jobs import wait_for_status, wait_recording
from tests.support.runner_jobs import (
    FINAL,
    leftovers,
    s3_client,
    settle,
    sh_job,
    wait_until,
)
from tests.support.smlocal import SmlocalServer
from tests.support.swarm import TEST_RANGE as SWARM_TEST_RANGE

# A range of its own for the tests that fill it, away from the default ones other servers use.
SMALL_RANGE = "10.250.7.0/26"  # two /27s: the spare and one more


def _net(subnet: str, name: str = "n", managed: bool = False) -> NetworkRef:
    return NetworkRef(name, name, {LABEL_MANAGED: "true"} if managed else {}, subnet)


# ---- the allocator and the range check -------------------------------------------------------------------


def test_a_network_is_a_27_unless_the_job_has_more_hosts() -> None:
    assert [prefix_for_hosts(n) for n in (1, 2, 29, 30, 61, 62, 200)] == [27, 27, 27, 26, 26, 25, 24]


def test_blocks_skip_what_the_engine_has_and_what_was_reserved() -> None:
    allocator = SubnetAllocator(IPv4Network("10.1.0.0/24"))
    engine = [_net("10.1.0.0/27"), _net("172.17.0.0/16"), NetworkRef("host", "host", {})]
    first = allocator.reserve(1, engine)
    second = allocator.reserve(1, engine)
    assert (str(first), str(second)) == ("10.1.0.32/27", "10.1.0.64/27")
    # A block the engine refused (another server took it meanwhile) is skipped too.
    assert str(allocator.reserve(1, engine, refused=[IPv4Network("10.1.0.96/27")])) == "10.1.0.128/27"
    # A job with 40 hosts needs a /26, aligned, clear of everything above.
    assert str(allocator.reserve(40, engine)) == "10.1.0.192/26"
    # A refused block is skipped for that one call only.
    assert [str(allocator.reserve(1, engine)) for _ in range(2)] == ["10.1.0.96/27", "10.1.0.160/27"]
    with pytest.raises(NoFreeSubnet):
        allocator.reserve(1, engine)
    allocator.release(second)
    assert allocator.reserve(1, engine) == second


def test_a_job_larger_than_the_range_is_told_so() -> None:
    with pytest.raises(RangeTooSmall, match="larger than the whole range"):
        SubnetAllocator(IPv4Network("10.1.0.0/27")).reserve(30, [])


def test_routes_are_read_from_the_kernel_table(tmp_path: Path) -> None:
    table = tmp_path / "route"
    # /proc/net/route's format: destination and mask in little-endian hex. The default route and the routes
    # into Docker's bridges (the engine's networks, checked as such) are skipped.
    table.write_text("Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
                     "eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
                     "docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n"
                     "br-0123456789ab\t0000D50A\t00000000\t0001\t0\t0\t0\tE0FFFFFF\t0\t0\t0\n"
                     "wg0\t0000640A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n"
                     "eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n")
    assert host_routes(table) == [IPv4Network("10.100.0.0/16"), IPv4Network("192.0.2.0/24")]
    assert host_routes(tmp_path / "missing") == []


def test_the_default_range_is_the_first_clear_one() -> None:
    first, second = DEFAULT_CANDIDATES[:2]
    assert resolve_job_subnets(None, [], []) == first
    # A route or a network smlocal did not make moves it on; one smlocal made (another server's) does not.
    assert resolve_job_subnets(None, [IPv4Network(f"{first.network_address}/24")], []) == second
    assert resolve_job_subnets(None, [], [_net(str(first), "vpn")]) == second
    assert resolve_job_subnets(None, [], [_net(f"{first.network_address}/27", "job", managed=True)]) == first


@pytest.mark.parametrize(("requested", "says"), [
    ("10.0.0.0/33", "not an IPv4 network"),
    ("10.0.0.1/16", "not an IPv4 network"),  # host bits set
    ("10.0.0.0/28", "smaller than one job network"),
    ("192.0.2.0/25", "overlaps a route of this machine (192.0.2.0/24)"),
])
def test_a_range_that_cannot_serve_is_refused(requested: str, says: str) -> None:
    with pytest.raises(SubnetRangeError, match=says.replace("(", r"\(").replace(")", r"\)")):
        resolve_job_subnets(requested, [IPv4Network("192.0.2.0/24")], [])


def test_serve_refuses_a_range_over_a_route_of_this_machine(tmp_path: Path) -> None:
    """The real check, in the real `smlocal serve`: a route of this very machine."""
    # Not a route of a test engine's veth pair (tests/support/swarm.py): another worker's test may take it away
    # before the server reads the table.
    routes = [r for r in host_routes() if not r.subnet_of(SWARM_TEST_RANGE)]
    if not routes:
        pytest.skip("this machine has no route besides the default one and the test engines'")
    route = routes[0]
    done = subprocess.run([sys.executable, "-m", "server.cli", "serve", "--data-dir", str(tmp_path / "data"),
                           "--port", "0", "--job-subnets", str(route)],
                          capture_output=True, text=True, timeout=60, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"overlaps a route of this machine ({route})" in done.stderr
    assert "--job-subnets" in done.stderr
    assert "Traceback" not in done.stderr


# ---- jobs on a real engine ------------------------------------------------------------------------------


def _range_networks(client: docker.DockerClient, job_range: str, server: SmlocalServer) -> list[str]:
    """`server`'s networks inside `job_range`. Other servers running meanwhile (pytest-xdist workers) carve
    theirs from the same default range, so only this server's label counts."""
    pool = IPv4Network(job_range)
    found = []
    for n in client.api.networks(filters={"label": f"smlocal.data-dir={server.data_dir.resolve()}"}):
        for config in (n.get("IPAM") or {}).get("Config") or []:
            subnet = config.get("Subnet", "")
            if ":" not in subnet and subnet and IPv4Network(subnet).subnet_of(pool):
                found.append(n["Name"])
    return found


def _health(server: SmlocalServer) -> dict[str, Any]:
    import json
    import urllib.request

    with urllib.request.urlopen(server.endpoint + "/health", timeout=10) as response:
        return json.load(response)["runner"]


@pytest.fixture(scope="module")
def crowded(module_smlocal_factory: Callable[..., SmlocalServer], docker_engine: docker.DockerClient
            ) -> Iterator[SmlocalServer]:
    server = module_smlocal_factory("--stop-grace-seconds", "1", "--max-concurrent-jobs", "40")
    s3_client(server)
    yield server
    settle(server, docker_engine)


def test_more_jobs_at_once_than_the_default_pools_have_networks(
        crowded: SmlocalServer, docker_engine: docker.DockerClient, unique_name: Callable[[str], str]) -> None:
    """36 jobs at once: more networks than a fresh engine's default pools hold (about 30), all in Training."""
    sm = crowded.client()
    job_range = _health(crowded)["jobSubnets"]
    names = [unique_name("crowd") for _ in range(36)]
    for name in names:
        sm.create_training_job(**sh_job(name, "echo up; sleep 600"))
    try:
        training = wait_until(lambda: all(
            sm.describe_training_job(TrainingJobName=n)["SecondaryStatus"] == "Training" for n in names),
            240, "36 jobs in Training at once")
        assert training
        # Every job is on a network of its own, each a /27 of the server's range.
        subnets = set()
        for name in names:
            containers = docker_engine.api.containers(all=True, filters={"label": f"smlocal.job-name={name}"})
            assert len(containers) == 1, name
            (network,) = docker_engine.api.inspect_container(containers[0]["Id"])["NetworkSettings"][
                "Networks"].values()
            # Training shows just before the containers start: the address is the one asked for at creation.
            address = ipaddress.ip_address(network["IPAddress"] or network["IPAMConfig"]["IPv4Address"])
            assert address in IPv4Network(job_range), (name, address, job_range)
            subnets.add(ipaddress.ip_network(f"{address}/27", strict=False))
        assert len(subnets) == 36
        for name in names:
            assert sm.describe_training_job(TrainingJobName=name)["TrainingJobStatus"] == "InProgress"
    finally:
        for name in names:
            sm.stop_training_job(TrainingJobName=name)
    for name in names:
        assert wait_for_status(sm, name, FINAL, timeout=120)["TrainingJobStatus"] == "Stopped"
    assert wait_until(lambda: not leftovers(docker_engine, crowded), 60, "cleanup") is True
    # Only the spare (made for the next job) is left of the range.
    assert wait_until(lambda: len(_range_networks(docker_engine, job_range, crowded)) <= 1, 30, "networks removed")


@pytest.fixture(scope="module")
def small_range(module_smlocal_factory: Callable[..., SmlocalServer], docker_engine: docker.DockerClient
                ) -> Iterator[SmlocalServer]:
    assert not any(IPv4Network(SMALL_RANGE).overlaps(r) for r in host_routes()), "pick another SMALL_RANGE"
    server = module_smlocal_factory("--stop-grace-seconds", "1", "--max-concurrent-jobs", "4",
                                    "--max-hosts-per-job", "62", "--job-subnets", SMALL_RANGE)
    s3_client(server)  # the output bucket
    yield server
    settle(server, docker_engine)


def test_a_job_waits_in_starting_for_a_free_network_and_then_runs(
        small_range: SmlocalServer, docker_engine: docker.DockerClient,
        unique_name: Callable[[str], str]) -> None:
    """Two /27s for three jobs: the third waits in Starting, says why, and trains once a job ends."""
    sm = small_range.client()
    first, second, third = (unique_name("narrow") for _ in range(3))
    for name in (first, second):
        sm.create_training_job(**sh_job(name, "sleep 600"))
        wait_for_status(sm, name, {"InProgress"})
        wait_until(lambda n=name: sm.describe_training_job(TrainingJobName=n)["SecondaryStatus"] == "Training",
                   60, f"{name} in Training")
    sm.create_training_job(**sh_job(third, "echo trained; sleep 1"))

    def message(name: str) -> str:
        return sm.describe_training_job(TrainingJobName=name)["SecondaryStatusTransitions"][-1]["StatusMessage"]

    wait_until(lambda: message(third) == WAITING_FOR_NETWORK_MESSAGE, 30, "the waiting message")
    # It keeps waiting (not Failed) while both networks are in use.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        job = sm.describe_training_job(TrainingJobName=third)
        assert (job["TrainingJobStatus"], job["SecondaryStatus"]) == ("InProgress", "Starting"), job
        time.sleep(0.3)
    assert len(_range_networks(docker_engine, SMALL_RANGE, small_range)) == 2
    sm.stop_training_job(TrainingJobName=first)
    job, seen = wait_recording(sm, third, FINAL, timeout=120)
    assert job["TrainingJobStatus"] == "Completed", (seen, job.get("FailureReason"))
    assert seen[0] == "InProgress/Starting" and seen[-1] == "Completed/Completed", seen
    starting = job["SecondaryStatusTransitions"][0]
    assert starting["Status"] == "Starting"
    assert starting["StatusMessage"] == DEFAULT_MESSAGES["Starting"]  # changed back in place once it had one
    assert wait_for_status(sm, first, FINAL)["TrainingJobStatus"] == "Stopped"
    sm.stop_training_job(TrainingJobName=second)
    assert wait_for_status(sm, second, FINAL)["TrainingJobStatus"] == "Stopped"


def test_a_job_waiting_for_a_network_can_be_stopped(
        small_range: SmlocalServer, unique_name: Callable[[str], str]) -> None:
    sm = small_range.client()
    holders = [unique_name("holder") for _ in range(2)]
    for name in holders:
        sm.create_training_job(**sh_job(name, "sleep 600"))
    # Both blocks held before the waiter comes: jobs started together race for the networks in any order.
    for name in holders:
        wait_until(lambda n=name: sm.describe_training_job(TrainingJobName=n)["SecondaryStatus"] == "Training",
                   60, f"{name} in Training")
    waiting = unique_name("waiter")
    sm.create_training_job(**sh_job(waiting, "sleep 600"))
    wait_until(lambda: sm.describe_training_job(TrainingJobName=waiting)["SecondaryStatusTransitions"][-1]
               ["StatusMessage"] == WAITING_FOR_NETWORK_MESSAGE, 60, "the waiting message")
    sm.stop_training_job(TrainingJobName=waiting)
    job, seen = wait_recording(sm, waiting, FINAL, timeout=60)
    assert job["TrainingJobStatus"] == "Stopped", seen
    assert "InProgress/Training" not in seen and "InProgress/Downloading" not in seen, seen
    for name in holders:
        sm.stop_training_job(TrainingJobName=name)
        assert wait_for_status(sm, name, FINAL)["TrainingJobStatus"] == "Stopped"


def test_a_job_too_large_for_the_whole_range_fails_instead_of_waiting(
        small_range: SmlocalServer, unique_name: Callable[[str], str]) -> None:
    """62 hosts need a /25; the range is a /26, so no release would ever make room."""
    sm = small_range.client()
    name = unique_name("toolarge")
    sm.create_training_job(**sh_job(name, "true", ResourceConfig={
        "InstanceType": "ml.m5.large", "InstanceCount": 62, "VolumeSizeInGB": 1}))
    job, seen = wait_recording(sm, name, FINAL, timeout=60)
    assert job["TrainingJobStatus"] == "Failed", seen
    assert job["FailureReason"] == (f"ClientError: 62 instances need a network of /25, larger than the whole range "
                                    f"job networks come from ({SMALL_RANGE}, smlocal serve --job-subnets)")
    assert seen[-1] == "Failed/Failed" and set(seen) <= {"InProgress/Starting", "Failed/Failed"}, seen
