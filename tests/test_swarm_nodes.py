"""The swarm test infrastructure (tests/support/swarm.py) works on this machine, and leaves nothing behind.

Single node: the test engine as a swarm manager, an attachable overlay, two dnsrr services that reach each
other by their aliases algo-1 and algo-2. Two nodes: a second engine in a network namespace of its own joined
as a worker, one service pinned to each node, reaching each other by alias across the nodes (VXLAN over the
veth pair). After each, nothing the test made is left: the swarm it initialised, docker_gwbridge, the manager
address on lo, ingress and the overlays and the files the engine keeps of them, the second engine's namespace,
links, folders, cgroups and processes. That is checked by identity, not by comparing listings of the whole
engine: other sessions use the same engine (and may hold the same swarm) at the same time.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from docker.types import EndpointSpec, NetworkAttachmentConfig, RestartPolicy

from tests.support.docker_env import BUSYBOX_IMAGE
from tests.support.swarm import (
    ENGINE_BASE,
    ENGINE_PREFIX,
    GWBRIDGE,
    INITIALISED,
    LABEL,
    STATE_DIR,
    TEST_RANGE,
    SecondEngine,
    TwoNodes,
    concurrent_users,
    image_ref,
    manager_node_id,
    remove_network,
    remove_services,
    swarm_lease,
    swarm_leftovers,
    swarm_manager,
    task_node,
    two_nodes,
    wait_for_log,
    wait_task_state,
)

# Prints its addresses, pings its peer by name until it answers (90 s at most), prints what the name
# resolved to, then stays up so that the peer can reach it too; the test removes it (as PID 1 the shell
# must trap SIGTERM itself, or the engine waits out the stop grace period before it kills it).
PEER_SCRIPT = r"""
peer="$1"
echo "ADDRS $(ip -4 -o addr show | awk '{print $4}' | tr '\n' ' ')"
i=0
until ping -c1 -W1 "$peer" > /tmp/ping 2>&1; do
  i=$((i+1))
  if [ "$i" -ge 90 ]; then echo "UNREACHED $peer"; cat /tmp/ping; exit 1; fi
  sleep 1
done
echo "REACHED $peer $(sed -n 's/^PING [^ ]* (\([0-9.]*\)).*/\1/p' /tmp/ping)"
trap 'exit 0' TERM
sleep 600 &
wait
"""


# The overlay networks the tests made (their IDs), to check that nothing of them is left.
OVERLAYS: list[str] = []


def host_snapshot() -> dict[str, object]:
    """What a SecondEngine makes on the host, less what other processes' SecondEngines hold right now (their
    records name them: see concurrent_users)."""
    _, tokens = concurrent_users()

    def mine(name: str) -> bool:
        return not any(token in name for token in tokens)

    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    # Links but the veths of other tests' containers, the bridges of their job networks and the swarm's
    # docker_gwbridge (checked with the swarm).
    links = {p.name for p in Path("/sys/class/net").iterdir()
             if not p.name.startswith(("veth", "br-")) and p.name != GWBRIDGE}
    return {
        "netns": sorted(n for n in (line.split()[0] for line in netns.splitlines()) if mine(n)),
        "links": sorted(n for n in links if mine(n)),
        "engine dirs": sorted(p.name for p in ENGINE_BASE.glob(f"{ENGINE_PREFIX}*") if mine(p.name)),
        "engine records": sorted(p.name for p in (STATE_DIR / "engines").glob("*.json") if mine(p.name)),
        "cgroups": sorted(str(p) for p in Path("/sys/fs/cgroup").glob(f"*/{ENGINE_PREFIX}*") if mine(p.name)),
    }


def swarm_remains(client: docker.DockerClient, swarms: list[dict[str, object]], overlays: list[str]) -> list[str]:
    """What is left of the swarms this test initialised, and of the overlays it made, once the lease no longer
    holds them (the engine may be in another swarm by now: other sessions use it too)."""
    lease = swarm_lease()
    left = []
    info = client.info()["Swarm"]
    networks = {n["Id"]: n["Name"] for n in client.api.networks()}
    lo = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", "lo"], capture_output=True, text=True,
                        check=True).stdout
    leftovers = swarm_leftovers(client)
    for swarm in swarms:
        if lease.get("node_id") == swarm["node_id"]:
            continue  # still held, by another process: it leaves it
        if info["NodeID"] == swarm["node_id"] and info["LocalNodeState"] != "inactive":
            left.append(f"the swarm {swarm['node_id']} ({info['LocalNodeState']})")
        if swarm["gwbridge"] in networks:
            left.append(f"{GWBRIDGE} {swarm['gwbridge']}")
        if swarm["lo_address"] and f" {swarm['lo_address']}/32 " in lo:
            left.append(f"the address {swarm['lo_address']} on lo")
        if swarm["ingress"]:
            left += [path for path in leftovers if swarm["ingress"][:9] in path.rsplit("/", 1)[-1]]
    for network in overlays:
        if network in networks:
            left.append(f"the network {networks[network]}")
        if not lease:  # (while a swarm of this module lives, its last holder removes them when it leaves)
            left += [path for path in leftovers if network[:9] in path.rsplit("/", 1)[-1]]
    return left


@pytest.fixture()
def engine_restored(docker_engine: docker.DockerClient) -> Iterator[None]:
    """The engine and the host are as before the test, checked after its teardown: no namespace, link,
    folder, cgroup or record of a SecondEngine, nothing of the swarms it initialised (the swarm, docker_gwbridge,
    the manager address, ingress and its overlays, the files the engine keeps of them)."""
    before = host_snapshot()
    first_swarm = len(INITIALISED)
    OVERLAYS.clear()
    yield
    assert host_snapshot() == before
    assert swarm_remains(docker_engine, INITIALISED[first_swarm:], OVERLAYS) == []


def peer_service(client: docker.DockerClient, name: str, network: str, alias: str, peer: str, image: str,
                 node: str | None = None):  # noqa: ANN201 - a docker Service
    return client.services.create(
        image, command=["sh", "-c", PEER_SCRIPT, "sh", peer], name=name,
        networks=[NetworkAttachmentConfig(network, aliases=[alias])],
        endpoint_spec=EndpointSpec(mode="dnsrr"), restart_policy=RestartPolicy(condition="none"),
        constraints=[f"node.id=={node}"] if node else None, labels={LABEL: "test"})


def reach_each_other(client: docker.DockerClient, image: str, nodes: tuple[str | None, str | None]
                     ) -> dict[str, dict[str, object]]:
    """Two services algo-1 and algo-2 on a new attachable overlay ping each other by alias; returns, per
    alias, the node its task ran on, its own addresses and what the peer's alias resolved to. Removes the
    services and the network on every path."""
    suffix = f"{int(time.time() * 1000) % 10**8}"
    network = client.networks.create(f"smlsw-test-{suffix}", driver="overlay", attachable=True,
                                     labels={LABEL: "test"})
    OVERLAYS.append(network.id)
    services = []
    try:
        for index, (alias, peer) in enumerate((("algo-1", "algo-2"), ("algo-2", "algo-1"))):
            services.append(peer_service(client, f"smlsw-{alias}-{suffix}", network.id, alias, peer, image,
                                         nodes[index]))
        found: dict[str, dict[str, object]] = {}
        for service, alias, peer in zip(services, ("algo-1", "algo-2"), ("algo-2", "algo-1"), strict=True):
            wait_task_state(client, service, "running", timeout=60)
            logs = wait_for_log(client, service, f"REACHED {peer}", timeout=120)
            resolved = re.search(rf"REACHED {peer} (\S+)", logs)
            addresses = re.search(r"ADDRS (.*)", logs)
            assert resolved and addresses, logs
            found[alias] = {"node": task_node(client, service),
                            "addresses": {a.split("/")[0] for a in addresses.group(1).split()},
                            "peer resolved to": resolved.group(1)}
        return found
    finally:
        remove_services(client, services)
        remove_network(client, network)


def manager_address_on_lo(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    lo = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", "lo"], capture_output=True, text=True,
                        check=True).stdout
    return port == "2377" and ipaddress.ip_address(host) in TEST_RANGE and f" {host}/32 " in lo


def test_single_node_services_find_each_other_by_alias(docker_engine: docker.DockerClient,
                                                     engine_restored: None) -> None:
    with swarm_manager(docker_engine) as (address, token):
        assert manager_address_on_lo(address) and token.startswith("SWMTKN-")
        manager = manager_node_id(docker_engine)
        found = reach_each_other(docker_engine, image_ref(docker_engine, BUSYBOX_IMAGE), (None, None))
    for alias, peer in (("algo-1", "algo-2"), ("algo-2", "algo-1")):
        assert found[alias]["node"].node_id == manager
        # dnsrr: the alias is the peer task's own address, no virtual IP in front of it.
        assert found[alias]["peer resolved to"] in found[peer]["addresses"]


def test_two_nodes_services_reach_each_other_across_nodes(docker_engine: docker.DockerClient,
                                                         engine_restored: None) -> None:
    with two_nodes(docker_engine, [BUSYBOX_IMAGE]) as nodes:
        assert isinstance(nodes, TwoNodes)
        assert nodes.worker_node != nodes.manager_node
        assert nodes.worker.client.info()["Swarm"]["NodeAddr"] == nodes.worker.address
        assert manager_address_on_lo(nodes.swarm.address)
        assert [m["Addr"] for m in nodes.worker.client.info()["Swarm"]["RemoteManagers"]] == [nodes.swarm.address]
        image = nodes.images[BUSYBOX_IMAGE]
        assert image == image_ref(docker_engine, BUSYBOX_IMAGE)
        found = reach_each_other(docker_engine, image, (nodes.manager_node, nodes.worker_node))
        worker_hostname = nodes.worker.hostname
    assert found["algo-1"]["node"].node_id == nodes.manager_node
    assert found["algo-2"]["node"] == (nodes.worker_node, worker_hostname)
    for alias, peer in (("algo-1", "algo-2"), ("algo-2", "algo-1")):
        assert found[alias]["peer resolved to"] in found[peer]["addresses"]


def test_second_engine_teardown_is_complete_and_repeatable(docker_engine: docker.DockerClient,
                                                           engine_restored: None) -> None:
    engine = SecondEngine(docker_engine).start()
    try:
        assert engine.client.info()["Name"] == engine.hostname
        assert engine.client.info()["ID"] != docker_engine.info()["ID"]
        assert engine.client.networks.list(names=["bridge"]) == []  # --bridge none
        netns = engine.netns
        assert Path(f"/run/netns/{netns}").exists()
        # Nothing but the manager's address on this host is ever routed into the namespace.
        for unreachable in ("127.0.0.1:2377", "203.0.113.7:2377"):
            with pytest.raises(ValueError, match="cannot reach|not an address of this host"):
                engine.join(unreachable, "SWMTKN-1-x")
    finally:
        engine.teardown()
    engine.teardown()  # a second time: nothing to do, no error
    assert not Path(f"/run/netns/{netns}").exists()
