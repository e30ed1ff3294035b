"""Docker Swarm test infrastructure: a swarm on the test engine, a second engine in a network namespace of its own
joined as a worker, and the helpers to place services and read where their tasks ran.

Everything here is made by the test and removed by it, on every path; the engine is handed back as it was
found. Other sessions run tests on the same engine at the same time, so:

- `swarm_manager(client)` makes the engine a manager only if it is not in a swarm, and leaves the swarm again
  only if it initialised it. Concurrent users (other processes using this module) share one swarm through a
  lease in STATE_DIR (a lock file and a list of live holders): the last holder out leaves. An engine that
  already is a manager when no lease of ours holds it is used as it is and never left.
- The manager advertises, listens (2377/tcp) and gossips (7946) on the test manager address: a /32 of
  TEST_RANGE put on the host's `lo` (label lo:smlsw) while the swarm exists. It is the same for every user,
  single node or several, so they never wait for each other; `swarm_manager(client, "127.0.0.1")` (or any
  address) is possible too, but a namespace cannot reach loopback, and a swarm at another address than the one
  asked for is waited out.
- `SecondEngine(client)` starts a dockerd of its own (own data root, exec root, containerd, socket, cgroup
  parent, engine ID, hostname) inside a new network namespace joined to the host by a veth pair with a /30 of
  TEST_RANGE: `host_address` on the host side, `address` inside. `join` adds one route in the namespace, to the
  manager's address through the veth pair (only an address of this host: traffic never leaves the machine);
  nothing else is routed there (no default route, no internet, no registry). The worker advertises `address`;
  VXLAN (4789/udp) between the nodes runs over the veth pair. `join` also makes the host's route to the /30
  take the manager address as its source: a VXLAN packet whose outer source is not the address the receiver's
  forwarding entry holds for the sender (the manager's advertised one) is dropped by the kernel.
- Limits: several SecondEngines may join the same swarm, but each reaches the manager only, not the others
  (that would take forwarding between namespaces through the host's FORWARD chain, which Docker's policy
  drops): tasks that talk to each other go on the manager and one worker. Published ports need mode=host
  (no IPVS, so no routing mesh).

Services meant for these tests: `endpoint_spec=EndpointSpec(mode="dnsrr")` (this kernel has no IPVS, so VIP mode
and the ingress routing mesh do not work), `restart_policy=RestartPolicy(condition="none")`, and the image by
its ID (`image_ref`): a tag makes each node try to pull it from a registry first (a DNS look-up on the main
engine); an ID (identical on both engines after `load_images`) is never pulled. Pin a task to a node with
`constraints=[f"node.id=={node_id}"]`; `task_node` tells where it ran.

Layout of a SecondEngine, all under /tmp/smlsw-<token>/: data/ (--data-root), exec/ (--exec-root, its
containerd's socket and state), docker.sock, dockerd.pid, dockerd.log, daemon.json, key.json. Its dockerd runs
in a mount namespace of its own (slave of the host's), with /sys remounted for its network namespace and the
host's cgroup hierarchies moved back under /sys/fs/cgroup, so the overlay, shm and netns mounts it makes never
appear on the host and vanish with its processes.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any, NamedTuple

import docker
import docker.errors
import pytest
from docker.types import IPAMConfig, IPAMPool

# Locks, the swarm lease and a record per SecondEngine, shared by every process on this machine that uses this
# module (another worktree's test run included), so that concurrent runs neither collide nor clean up each other.
STATE_DIR = Path(os.environ.get("SMLOCAL_SWARM_TEST_STATE", "/tmp/smlocal-swarm-tests"))
# Addresses the tests own: a /30 per SecondEngine's veth pair from the bottom, the manager's docker_gwbridge
# (a /24) from the top. Outside smlocal's job subnets (10.213-10.249), Docker's default pools (172.17-31,
# 192.168) and the swarm's default overlay pool's first blocks (10.0.x); checked against the host's routes and
# addresses and the engine's networks before use.
# The job range of the tests' swarm servers (`serve --job-subnets`): not the default one, from which the Docker
# servers of other pytest-xdist workers make bridge networks at the same time. The manager accepts an overlay network
# that overlaps a bridge; its tasks then fail on the node ("Pool overlaps with other one on this address space").
SWARM_JOB_SUBNETS = "10.249.0.0/16"
TEST_RANGE = IPv4Network(os.environ.get("SMLOCAL_SWARM_TEST_RANGE", "10.250.0.0/16"))
VETH_PREFIX = 30
GWBRIDGE_PREFIX = 24
SWARM_PORT = 2377
GWBRIDGE = "docker_gwbridge"
# The label of the test manager address on lo (`ip addr show dev lo` shows it).
MANAGER_ADDRESS_LABEL = "lo:smlsw"
LABEL = "smlocal.test.swarm"  # on what this module creates on the main engine
# Where these tests' SecondEngines live; short, because containerd's socket path must fit in 108 bytes.
ENGINE_BASE = Path(os.environ.get("SMLOCAL_SWARM_TEST_BASE", "/tmp"))
ENGINE_PREFIX = "smlsw-"
_PATH = os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin:/usr/local/bin:/usr/bin:/bin"

TERMINAL_TASK_STATES = frozenset({"complete", "shutdown", "failed", "rejected", "orphaned", "remove"})


# ---- locks, addresses --------------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    with open(STATE_DIR / f"{name}.lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(args), capture_output=True, text=True, env={**os.environ, "PATH": _PATH},
                            check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def all_routes(route_table: Path = Path("/proc/net/route")) -> list[IPv4Network]:
    """Every IPv4 route's destination but the default one, Docker's bridges included (unlike
    runner.subnets.host_routes, which leaves them to the engine's network list)."""
    routes = []
    for line in route_table.read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        destination = ipaddress.IPv4Address(int(fields[1], 16).to_bytes(4, "little"))
        mask = ipaddress.IPv4Address(int(fields[7], 16).to_bytes(4, "little"))
        if int(mask):
            routes.append(IPv4Network(f"{destination}/{mask}", strict=False))
    return routes


def _host_interfaces() -> list[ipaddress.IPv4Interface]:
    out = _run("ip", "-4", "-o", "addr", "show", check=False).stdout
    found = []
    for line in out.splitlines():
        fields = line.split()
        if "inet" in fields:
            found.append(ipaddress.IPv4Interface(fields[fields.index("inet") + 1]))
    return found


def _host_addresses() -> list[IPv4Network]:
    return [interface.network for interface in _host_interfaces()]


def engine_subnets(client: docker.DockerClient) -> list[IPv4Network]:
    subnets = []
    for network in client.api.networks():
        for config in (network.get("IPAM") or {}).get("Config") or []:
            subnet = config.get("Subnet") or ""
            if subnet and ":" not in subnet:
                subnets.append(IPv4Network(subnet, strict=False))
    return subnets


def taken_subnets(client: docker.DockerClient | None) -> list[IPv4Network]:
    """What a test subnet must not overlap: the host's routes and addresses, and the engine's networks."""
    taken = all_routes() + _host_addresses()
    if client is not None:
        taken += engine_subnets(client)
    return taken


def free_subnet(prefix: int, taken: Iterable[IPv4Network], *, from_top: bool = False) -> IPv4Network:
    taken = list(taken)
    candidates = TEST_RANGE.subnets(new_prefix=prefix)
    for candidate in (reversed(list(candidates)) if from_top else candidates):
        if not any(candidate.overlaps(t) for t in taken):
            return candidate
    raise RuntimeError(f"no free /{prefix} left in {TEST_RANGE} (set SMLOCAL_SWARM_TEST_RANGE to another range)")


# ---- the swarm on the test engine ------------------------------------------------------------------------


class SwarmManager(NamedTuple):
    """What a worker needs to join: the manager's `address` ("ip:2377") and the worker join token."""

    address: str
    worker_token: str


def swarm_state(client: docker.DockerClient) -> str:
    return client.info()["Swarm"]["LocalNodeState"]


def manager_node_id(client: docker.DockerClient) -> str:
    return client.info()["Swarm"]["NodeID"]


_LEASE = STATE_DIR / "swarm.json"
# The swarms this process initialised (their lease as made): what a test checks is gone once it is done.
INITIALISED: list[dict[str, Any]] = []


def _read_lease() -> dict[str, Any]:
    try:
        lease = json.loads(_LEASE.read_text())
    except (OSError, ValueError):
        return {}
    lease["holders"] = {h: pid for h, pid in lease.get("holders", {}).items() if _pid_alive(pid)}
    return lease


def _write_lease(lease: dict[str, Any]) -> None:
    if lease:
        _LEASE.write_text(json.dumps(lease))
    else:
        _LEASE.unlink(missing_ok=True)


# The test engine's exec root (dockerd's default; `docker info` does not tell it).
ENGINE_EXEC_ROOT = Path(os.environ.get("SMLOCAL_SWARM_TEST_ENGINE_EXEC_ROOT", "/var/run/docker"))


def swarm_leftovers(client: docker.DockerClient) -> set[str]:
    """What the engine leaves of a swarm's overlay networks after `swarm leave` (moby 20.10): a folder
    network/files/lb_<network id> in its data root per overlay network (the load balancer's hosts and
    resolv.conf), and unmounted files netns/1-<id>, netns/lb_<id>, netns/ingress_sbox in its exec root."""
    data_root = Path(client.info()["DockerRootDir"])
    found = {str(p) for p in (data_root / "network" / "files").glob("lb_*")}
    for pattern in ("1-*", "lb_*", "ingress_sbox"):
        found |= {str(p) for p in (ENGINE_EXEC_ROOT.resolve() / "netns").glob(pattern)}
    return found


def _remove_swarm_leftovers(client: docker.DockerClient, before: Iterable[str], since: float) -> None:
    """Remove the leftovers of the swarm this module made: those that were not there at init and were made
    before it was left (not a swarm someone else made since); never a namespace file still mounted."""
    mounted = set(_mounts_under(str(ENGINE_EXEC_ROOT.resolve())))
    for path in sorted(swarm_leftovers(client) - set(before)):
        with contextlib.suppress(OSError):
            if path in mounted or os.lstat(path).st_ctime > since:
                continue
            if Path(path).is_dir():
                shutil.rmtree(path)
            else:
                os.unlink(path)


def _init_swarm(client: docker.DockerClient, advertise_addr: str | None) -> dict[str, Any]:
    """swarm init, advertising and listening on `advertise_addr` only (None: a test manager address of
    TEST_RANGE, put on the host's loopback device for the swarm's lifetime); docker_gwbridge made beforehand with
    a subnet of TEST_RANGE (unless one exists), so that the swarm takes nothing from Docker's default pools."""
    gwbridge_id = None
    manager_address = None
    leftovers = sorted(swarm_leftovers(client))
    if advertise_addr is None:
        # The first host of a free /30 from the top: a /32 on lo, labelled so that it is recognised as ours.
        manager_address = str(next(free_subnet(VETH_PREFIX, taken_subnets(client), from_top=True).hosts()))
        _run("ip", "addr", "add", f"{manager_address}/32", "dev", "lo", "label", MANAGER_ADDRESS_LABEL)
    if not client.networks.list(names=[GWBRIDGE]):
        subnet = free_subnet(GWBRIDGE_PREFIX, taken_subnets(client), from_top=True)
        gwbridge_id = client.networks.create(
            GWBRIDGE, driver="bridge", labels={LABEL: "gwbridge"},
            ipam=IPAMConfig(pool_configs=[IPAMPool(subnet=str(subnet))]),
            options={"com.docker.network.bridge.name": GWBRIDGE,
                     "com.docker.network.bridge.enable_icc": "false",
                     "com.docker.network.bridge.enable_ip_masquerade": "true"}).id
    address = advertise_addr or manager_address
    try:
        client.swarm.init(advertise_addr=address, listen_addr=f"{address}:{SWARM_PORT}")
    except BaseException:
        if gwbridge_id:
            _remove_network(client, gwbridge_id, timeout=30)
        if manager_address:
            _run("ip", "addr", "del", f"{manager_address}/32", "dev", "lo", check=False)
        raise
    lease = {"node_id": manager_node_id(client), "advertise": address, "auto": advertise_addr is None,
             "lo_address": manager_address, "gwbridge": gwbridge_id, "leftovers": leftovers, "holders": {},
             "ingress": next((n.id for n in client.networks.list(names=["ingress"])), None)}
    INITIALISED.append(dict(lease))
    return lease


def _leave_swarm(client: docker.DockerClient, lease: dict[str, Any]) -> None:
    """Leave the swarm this module initialised and remove what it made on the host: docker_gwbridge, the
    manager address on lo, and the files its overlay networks leave behind."""
    errors = []
    leaving = time.time()
    try:
        client.swarm.leave(force=True)
    except docker.errors.APIError as e:
        if swarm_state(client) != "inactive":
            errors.append(f"swarm leave: {e}")
    deadline = time.monotonic() + 30
    while swarm_state(client) != "inactive" and time.monotonic() < deadline:
        time.sleep(0.2)
    if lease.get("gwbridge"):
        try:
            _remove_network(client, lease["gwbridge"], timeout=60)
        except Exception as e:  # noqa: BLE001 - reported below, after the lease is dropped
            errors.append(f"{GWBRIDGE}: {e}")
    if "leftovers" in lease:
        _remove_swarm_leftovers(client, lease["leftovers"], leaving)
    if lease.get("lo_address"):
        result = _run("ip", "addr", "del", f"{lease['lo_address']}/32", "dev", "lo", check=False)
        if result.returncode != 0 and lease["lo_address"] in {str(i.ip) for i in _host_interfaces()}:
            errors.append(f"ip addr del {lease['lo_address']}/32 dev lo: {result.stderr.strip()}")
    if errors:
        raise RuntimeError("; ".join(errors))


@contextlib.contextmanager
def swarm_manager(client: docker.DockerClient, advertise_addr: str | None = None, *,
                  wait: float = 300.0) -> Iterator[SwarmManager]:
    """The test engine as a swarm manager for the duration of the block; yields (manager address, worker token).

    Inits the swarm when the engine is in none, advertising and listening on `advertise_addr` only; by
    default (None) on the test manager address, a /32 of TEST_RANGE on the host's lo that every SecondEngine
    reaches, so that single-node and multi-node tests of any number of processes share one swarm. (127.0.0.1
    works for a single node, but no namespace reaches it.) Leaves the swarm, and removes docker_gwbridge and
    the address, when the last user of this module's lease is done. If a swarm this module made is in use by
    another process at another address, waits (up to `wait` s) for it to end. An engine that already was a
    manager on its own is yielded as it is, with its own address, and kept."""
    holder = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + wait
    owned = False
    while True:
        with _locked("swarm"):
            lease = _read_lease()
            info = client.info()["Swarm"]
            state = info["LocalNodeState"]
            ours = bool(lease) and state == "active" and lease.get("node_id") == info.get("NodeID")
            fits = ours and (lease.get("auto") if advertise_addr is None else lease["advertise"] == advertise_addr)
            if ours and not fits and not lease["holders"]:
                _leave_swarm(client, lease)  # a leftover of a run that died, at another address
                _write_lease({})
                ours, state = False, swarm_state(client)
            if fits:
                owned = True
            elif ours and os.getpid() in lease["holders"].values():
                raise RuntimeError(f"this process already holds the test swarm at {lease['advertise']}: it cannot "
                                   f"also have it at {advertise_addr or 'the test manager address'}")
            elif ours:
                pass  # another process holds it at another address: wait below
            elif state == "inactive":
                lease = _init_swarm(client, advertise_addr)
                owned = True
            elif state == "active" and info.get("ControlAvailable"):
                break  # a manager already, not ours: used as it is
            else:
                raise RuntimeError(f"the engine's swarm state is {state!r}"
                                   f"{' (a worker)' if state == 'active' else ''}; not touching it")
            if owned:
                lease["holders"][holder] = os.getpid()
                _write_lease(lease)
                break
        if time.monotonic() > deadline:
            raise TimeoutError(f"the test swarm stayed in use at {lease.get('advertise')} by "
                               f"{sorted(lease['holders'].values())} for {wait:.0f}s; wanted "
                               f"{advertise_addr or 'the test manager address'}")
        time.sleep(1)
    try:
        client.swarm.reload()
        token = client.swarm.attrs["JoinTokens"]["Worker"]
        info = client.info()["Swarm"]
        address = next((m["Addr"] for m in info.get("RemoteManagers") or [] if m["NodeID"] == info["NodeID"]),
                       f"{info['NodeAddr']}:{SWARM_PORT}")
        yield SwarmManager(address, token)
    finally:
        if owned:
            with _locked("swarm"):
                lease = _read_lease()
                lease.get("holders", {}).pop(holder, None)
                if lease and not lease["holders"]:
                    try:
                        if lease.get("node_id") == manager_node_id(client):
                            _leave_swarm(client, lease)
                    finally:
                        _write_lease({})
                else:
                    _write_lease(lease)


# ---- a second engine in a network namespace ----------------------------------------------------------------


@dataclass
class _EngineRecord:
    """What a SecondEngine made, written before it is made: enough for any process to tear it down."""

    token: str
    owner_pid: int
    base_dir: str
    netns: str
    veth_host: str
    veth_ns: str
    host_address: str = ""
    address: str = ""
    prefix: int = VETH_PREFIX
    cgroup_parent: str = ""
    dockerd_pid: int = 0
    mnt_ns: int = 0
    node_id: str = ""

    @property
    def path(self) -> Path:
        return STATE_DIR / "engines" / f"{self.token}.json"

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(asdict(self)))


_LAUNCH = """set -e
hostname "$SMLSW_HOSTNAME"
mount --rbind /sys/fs/cgroup "$SMLSW_DIR/cgroup"
umount -l /sys
mount -t sysfs sysfs /sys
mount --move "$SMLSW_DIR/cgroup" /sys/fs/cgroup
exec "$@"
"""


class SecondEngine:
    """A second Docker engine on this machine, in a network namespace of its own (see the module doc).

    `with SecondEngine(client) as worker:` starts it; `worker.client` talks to it; `load_images`, `join`,
    `node_id`; `teardown()` (also on exit) leaves the swarm, removes its node from the manager, stops dockerd
    and its containerd, and removes the namespace, the veth pair, its cgroups, mounts and files. Teardown is
    safe to call more than once and after a start that failed half-way."""

    def __init__(self, manager_client: docker.DockerClient | None = None, *, start_timeout: float = 60.0) -> None:
        self.manager_client = manager_client
        self.start_timeout = start_timeout
        token = secrets.token_hex(3)
        self._record = _EngineRecord(
            token=token, owner_pid=os.getpid(), base_dir=str(ENGINE_BASE / f"{ENGINE_PREFIX}{token}"),
            netns=f"{ENGINE_PREFIX}{token}", veth_host=f"sw{token}h", veth_ns=f"sw{token}n",
            cgroup_parent=f"/{ENGINE_PREFIX}{token}")
        self._client: docker.DockerClient | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._torn_down = False

    # -- what a test uses

    @property
    def name(self) -> str:
        return self._record.netns

    @property
    def hostname(self) -> str:
        """The engine's host name: its swarm node's hostname."""
        return self._record.netns

    @property
    def netns(self) -> str:
        return self._record.netns

    @property
    def host_address(self) -> str:
        """The host's end of the veth pair: where this engine reaches the manager."""
        return self._record.host_address

    @property
    def address(self) -> str:
        """This engine's own address (namespace end of the veth): what it advertises as a swarm node."""
        return self._record.address

    @property
    def base_url(self) -> str:
        return f"unix://{self._record.base_dir}/docker.sock"

    @property
    def log_path(self) -> Path:
        return Path(self._record.base_dir) / "dockerd.log"

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            raise RuntimeError("the second engine is not started")
        return self._client

    @property
    def node_id(self) -> str:
        """Its swarm node ID ("" when in no swarm)."""
        return self.client.info()["Swarm"].get("NodeID") or ""

    def __enter__(self) -> SecondEngine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    def start(self) -> SecondEngine:
        _check_prerequisites()
        try:
            self._start()
        except BaseException as e:
            log = self.log_tail()
            try:
                self.teardown()
            except Exception as te:  # noqa: BLE001 - the start error matters more
                e.add_note(f"teardown after the failed start also failed: {te}")
            if log:
                e.add_note(f"last lines of {self.log_path}:\n{log}")
            raise
        return self

    def load_images(self, tags: Iterable[str], source: docker.DockerClient | None = None) -> list[str]:
        """Copy images from `source` (the manager's engine by default) with docker save | docker load;
        returns their IDs (the same on both engines: use them as the service image, see `image_ref`)."""
        source = source or self.manager_client or docker.from_env()
        ids = []
        for tag in tags:
            image = source.images.get(tag)
            self.client.images.load(image.save(named=tag))
            ids.append(self.client.images.get(tag).id)
        return ids

    def join(self, manager_addr: str, token: str, *, timeout: float = 60.0) -> str:
        """Join the swarm as a worker, advertising `address`. The manager must advertise an address of this
        host other than loopback (swarm_manager's default, or `host_address`): the namespace gets a route to
        it through the veth pair, and to nothing else. Returns the node ID once the manager sees it ready."""
        host = manager_addr.rsplit(":", 1)[0]
        self._route_to_host_address(host)
        self.client.swarm.join(remote_addrs=[manager_addr], join_token=token,
                               listen_addr=f"{self.address}:{SWARM_PORT}", advertise_addr=self.address)
        node_id = self.node_id
        self._record.node_id = node_id
        self._record.save()
        if self.manager_client is not None:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    node = self.manager_client.nodes.get(node_id)
                    if node.attrs["Status"]["State"] == "ready":
                        break
                except docker.errors.NotFound:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"worker {node_id} not ready on the manager after {timeout:.0f}s")
                time.sleep(0.2)
        return node_id

    def _route_to_host_address(self, host: str) -> None:
        ip = ipaddress.ip_address(host)
        if host == self.host_address:
            return
        if ip.is_loopback:
            raise ValueError(f"the manager advertises {host}, which this engine's namespace cannot reach (its "
                             f"loopback is its own): use swarm_manager(client) or swarm_manager(client, "
                             f"{self.host_address!r})")
        if ip not in {interface.ip for interface in _host_interfaces()}:
            # Routing any other address into the host would have it forwarded off this machine.
            raise ValueError(f"the manager advertises {host}, which is not an address of this host")
        _run("ip", "-n", self.netns, "route", "replace", f"{host}/32", "via", self.host_address)
        # And the host answers from that address: the worker's VXLAN device drops a packet whose outer source is
        # not the address its forwarding entry holds for the sender (the manager's advertised one), and the
        # kernel would otherwise pick the veth's own address as the source.
        subnet = ipaddress.ip_interface(f"{self.host_address}/{self._record.prefix}").network
        _run("ip", "route", "replace", str(subnet), "dev", self._record.veth_host, "proto", "kernel",
             "scope", "link", "src", host)

    def leave(self) -> None:
        """Leave the swarm and remove this node from the manager (nothing when in no swarm)."""
        _leave_as_worker(self._client, self.manager_client, self._record)

    def teardown(self) -> None:
        if self._torn_down:
            return
        try:
            _teardown(self._record, self._client, self.manager_client, self._process)
        finally:
            if self._client is not None:
                self._client.close()
            self._client = None
            self._torn_down = True

    # -- start-up

    def _start(self) -> None:
        rec = self._record
        with _locked("addresses"):
            sweep_stale_engines(self.manager_client)
            subnet = free_subnet(VETH_PREFIX, taken_subnets(self.manager_client))
            host_ip, ns_ip = list(subnet.hosts())[:2]
            rec.host_address, rec.address = str(host_ip), str(ns_ip)
            rec.save()
            _run("ip", "netns", "add", rec.netns)
            _run("ip", "link", "add", rec.veth_host, "type", "veth", "peer", "name", rec.veth_ns)
            _run("ip", "link", "set", rec.veth_ns, "netns", rec.netns)
            _run("ip", "addr", "add", f"{host_ip}/{subnet.prefixlen}", "dev", rec.veth_host)
            _run("ip", "link", "set", rec.veth_host, "up")
        _run("ip", "-n", rec.netns, "addr", "add", f"{ns_ip}/{subnet.prefixlen}", "dev", rec.veth_ns)
        _run("ip", "-n", rec.netns, "link", "set", rec.veth_ns, "up")
        _run("ip", "-n", rec.netns, "link", "set", "lo", "up")

        base = Path(rec.base_dir)
        for sub in ("data", "exec", "cgroup"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        # A key of its own: without it both engines read /etc/docker/key.json and report the same engine ID.
        (base / "daemon.json").write_text(json.dumps({"deprecated-key-path": str(base / "key.json")}))
        self._launch_dockerd()

    def restart_daemon(self, down_seconds: float = 0.0) -> None:
        """A real engine restart: dockerd stopped as a service manager stops it (SIGTERM: it stops its
        containers, no live-restore), `down_seconds` without an engine, then started again on the same data."""
        assert self._process is not None
        if self._client is not None:
            self._client.close()
            self._client = None
        os.kill(self._process.pid, signal.SIGTERM)
        self._process.wait(60)
        time.sleep(down_seconds)
        self._launch_dockerd()

    def _launch_dockerd(self) -> None:
        rec = self._record
        base = Path(rec.base_dir)
        dockerd = [
            "dockerd", "--config-file", str(base / "daemon.json"), "--data-root", str(base / "data"),
            "--exec-root", str(base / "exec"), "--pidfile", str(base / "dockerd.pid"), "-H", self.base_url,
            "--cgroup-parent", rec.cgroup_parent, "--bridge", "none", "--iptables=true", "--ip6tables=false",
        ]
        env = {**os.environ, "PATH": _PATH, "SMLSW_HOSTNAME": self.hostname, "SMLSW_DIR": str(base),
               # Never try a registry for a service's image: tasks use what load_images brought.
               "DOCKER_SERVICE_PREFER_OFFLINE_IMAGE": "1"}
        with open(self.log_path, "ab") as log:
            # unshare, nsenter and sh all exec: the pid is dockerd's.
            self._process = subprocess.Popen(
                ["unshare", "--uts", "--mount", "--propagation", "slave",
                 "nsenter", f"--net=/run/netns/{rec.netns}", "sh", "-c", _LAUNCH, "launch", *dockerd],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        rec.dockerd_pid = self._process.pid
        rec.save()
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"the second dockerd exited with {self._process.returncode} during start-up")
            try:
                client = docker.DockerClient(base_url=self.base_url, timeout=60)  # asks the engine's version
                client.ping()
                break
            except Exception:  # noqa: BLE001 - not answering yet
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the second dockerd did not answer within {self.start_timeout:.0f}s") from None
                time.sleep(0.2)
        self._client = client
        rec.mnt_ns = os.stat(f"/proc/{rec.dockerd_pid}/ns/mnt").st_ino
        rec.save()
        # On a machine of its own, the engine's socket is /var/run/docker.sock, and tasks that manage their
        # node mount it (smlocal's volume wipe): in the engine's mount namespace that path is its own socket,
        # never the test engine's. (Its containers' mounts are resolved in that namespace.)
        if Path("/run/docker.sock").exists():
            _run("nsenter", f"--mount=/proc/{rec.dockerd_pid}/ns/mnt", "mount", "--bind",
                 str(base / "docker.sock"), "/run/docker.sock")

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of its dockerd log (the log goes with teardown)."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _check_prerequisites() -> None:
    if os.geteuid() != 0:
        raise RuntimeError("SecondEngine needs root (network namespaces, veth pairs, a dockerd of its own)")
    missing = [tool for tool in ("ip", "dockerd", "unshare", "nsenter", "mount", "umount", "hostname", "sh")
               if shutil.which(tool, path=_PATH) is None]
    if missing:
        raise RuntimeError(f"SecondEngine needs {', '.join(missing)} on this machine")


# ---- teardown ------------------------------------------------------------------------------------------------


def _leave_as_worker(client: docker.DockerClient | None, manager: docker.DockerClient | None,
                     rec: _EngineRecord) -> None:
    if client is not None:
        try:
            if client.info()["Swarm"]["LocalNodeState"] != "inactive":
                client.swarm.leave(force=True)
        except (docker.errors.DockerException, OSError):
            pass  # dockerd gone: nothing to leave
    if manager is not None and rec.node_id:
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            manager.nodes.get(rec.node_id).remove(force=True)
        rec.node_id = ""
        if rec.path.exists():
            rec.save()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _own_processes(rec: _EngineRecord) -> set[int]:
    """Processes this engine started: dockerd, its containerd and shims (their command lines name its
    directory; they share its mount namespace) and the containers' processes (in its cgroup parent)."""
    pids: set[int] = set()
    # Never the host's own mount namespace (should the record hold it) nor this process and its ancestors.
    mnt_ns = rec.mnt_ns if rec.mnt_ns != os.stat("/proc/self/ns/mnt").st_ino else 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid == os.getpid():
            continue
        if rec.base_dir + "/" in _cmdline(pid):
            pids.add(pid)
            continue
        if mnt_ns:
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{pid}/ns/mnt").st_ino == mnt_ns:
                    pids.add(pid)
    for procs in Path("/sys/fs/cgroup").glob(f"*{rec.cgroup_parent}/**/cgroup.procs"):
        with contextlib.suppress(OSError, ValueError):
            pids.update(int(p) for p in procs.read_text().split())
    return pids - _ancestors() - {1}


def _ancestors() -> set[int]:
    found, pid = set(), os.getpid()
    while pid > 1:
        found.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
    return found


def _wait_gone(pids: Iterable[int], timeout: float) -> set[int]:
    left = set(pids)
    deadline = time.monotonic() + timeout
    while left and time.monotonic() < deadline:
        left = {p for p in left if _pid_alive(p) and not _is_zombie(p)}
        if left:
            time.sleep(0.1)
    return left


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _remove_cgroups(parent: str) -> list[str]:
    left = []
    for top in Path("/sys/fs/cgroup").glob(f"*{parent}"):
        if not top.is_dir():
            continue
        for directory in sorted((d for d in top.rglob("*") if d.is_dir()), key=lambda d: -len(d.parts)) + [top]:
            for _ in range(50):
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)
            else:
                left.append(str(directory))
    return left


def _mounts_under(base: str) -> list[str]:
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            target = line.split()[4].replace("\\040", " ")
            if target == base or target.startswith(base + "/"):
                found.append(target)
    return found


def _link_exists(name: str) -> bool:
    return Path(f"/sys/class/net/{name}").exists()


def _teardown(rec: _EngineRecord, client: docker.DockerClient | None, manager: docker.DockerClient | None,
              process: subprocess.Popen[bytes] | None) -> None:
    errors: list[str] = []
    if client is None and Path(rec.base_dir, "docker.sock").exists():
        with contextlib.suppress(Exception):
            client = docker.DockerClient(base_url=f"unix://{rec.base_dir}/docker.sock", timeout=20)
            client.ping()
    # Out of the swarm and its containers gone while dockerd still runs: the clean way.
    _leave_as_worker(client, manager, rec)
    if client is not None:
        with contextlib.suppress(Exception):
            for container in client.containers.list(all=True):
                container.remove(force=True)
    # dockerd (it stops its containerd), then whatever of it is left.
    ours = process is not None and process.pid == rec.dockerd_pid
    if rec.dockerd_pid and _pid_alive(rec.dockerd_pid) and (ours or rec.base_dir + "/" in _cmdline(rec.dockerd_pid)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(rec.dockerd_pid, signal.SIGTERM)
        if process is not None:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        elif _wait_gone([rec.dockerd_pid], 30):
            with contextlib.suppress(ProcessLookupError):
                os.kill(rec.dockerd_pid, signal.SIGKILL)
    elif process is not None and process.poll() is None:
        process.kill()
        process.wait(10)
    leftover = _own_processes(rec)
    for pid in leftover:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if still := _wait_gone(leftover, 10):
        errors.append(f"processes still alive: {sorted(still)}")
    if left := _remove_cgroups(rec.cgroup_parent):
        errors.append(f"cgroups left: {left}")
    for target in reversed(_mounts_under(rec.base_dir)):
        result = _run("umount", "-l", target, check=False)
        if result.returncode != 0:
            errors.append(f"umount {target}: {result.stderr.strip()}")
    if Path(f"/run/netns/{rec.netns}").exists():
        result = _run("ip", "netns", "del", rec.netns, check=False)
        if result.returncode != 0:
            errors.append(f"ip netns del {rec.netns}: {result.stderr.strip()}")
    # The veth pair goes with the namespace, a moment later; delete it ourselves if it is still there.
    deadline = time.monotonic() + 10
    while _link_exists(rec.veth_host) and time.monotonic() < deadline:
        _run("ip", "link", "del", rec.veth_host, check=False)
        time.sleep(0.1)
    if _link_exists(rec.veth_host):
        errors.append(f"link {rec.veth_host} still exists")
    if Path(rec.base_dir).exists():
        try:
            shutil.rmtree(rec.base_dir)
        except OSError as e:
            errors.append(f"rm -r {rec.base_dir}: {e}")
    if client is not None:
        client.close()
    if errors:
        raise RuntimeError(f"teardown of the second engine {rec.netns} was incomplete: " + "; ".join(errors))
    rec.path.unlink(missing_ok=True)


def sweep_stale_engines(manager: docker.DockerClient | None = None) -> list[str]:
    """Tear down SecondEngines whose test process died without doing it (their records say what they made)."""
    swept = []
    for path in sorted((STATE_DIR / "engines").glob("*.json")):
        try:
            rec = _EngineRecord(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            continue
        if _pid_alive(rec.owner_pid):
            continue
        with contextlib.suppress(Exception):
            _teardown(rec, None, manager, None)
            swept.append(rec.netns)
    return swept


def swarm_lease() -> dict[str, Any]:
    """The test swarm's lease as it is (holders dead or alive); {} when no swarm of this module exists."""
    try:
        return json.loads(_LEASE.read_text())
    except (OSError, ValueError):
        return {}


def concurrent_users() -> tuple[bool, set[str]]:
    """What other processes hold right now: whether another process holds the test swarm's lease (alive, or
    dead and its swarm not cleaned up yet: the next user does it), and the tokens of SecondEngines recorded by
    other processes (likewise). A test that checks the engine is left as it found it leaves those out."""
    others_hold_swarm = any(pid != os.getpid() for pid in swarm_lease().get("holders", {}).values())
    tokens = set()
    for path in (STATE_DIR / "engines").glob("*.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            record = json.loads(path.read_text())
            if record["owner_pid"] != os.getpid():
                tokens.add(record["token"])
    return others_hold_swarm, tokens


# ---- services and tasks ------------------------------------------------------------------------------------


class TaskNode(NamedTuple):
    node_id: str
    hostname: str


def _service(client: docker.DockerClient, service: Any) -> Any:
    return client.services.get(service) if isinstance(service, str) else service


def service_tasks(client: docker.DockerClient, service: Any) -> list[dict[str, Any]]:
    """The service's tasks, oldest first."""
    tasks = _service(client, service).tasks()
    return sorted(tasks, key=lambda t: (t.get("CreatedAt", ""), t["Version"]["Index"]))


def current_task(client: docker.DockerClient, service: Any) -> dict[str, Any] | None:
    tasks = service_tasks(client, service)
    return tasks[-1] if tasks else None


def task_node(client: docker.DockerClient, service: Any) -> TaskNode:
    """The node the service's (newest) task was scheduled on: its ID and hostname."""
    task = current_task(client, service)
    if task is None or not task.get("NodeID"):
        raise LookupError(f"the service {_service(client, service).name} has no task on a node yet")
    node = client.nodes.get(task["NodeID"])
    return TaskNode(node.id, node.attrs["Description"]["Hostname"])


def wait_task_state(client: docker.DockerClient, service: Any, states: Iterable[str] | str,
                    timeout: float = 60.0) -> dict[str, Any]:
    """Wait until the service's newest task is in one of `states` (swarm task states: "running", "complete",
    "failed", ...); returns the task. Fails early when it ends in a state not asked for."""
    wanted = {states} if isinstance(states, str) else set(states)
    deadline = time.monotonic() + timeout
    task = None
    while True:
        task = current_task(client, service)
        if task is not None:
            state = task["Status"]["State"]
            if state in wanted:
                return task
            if state in TERMINAL_TASK_STATES and not wanted & TERMINAL_TASK_STATES:
                raise RuntimeError(f"task {task['ID']} ended {state}, not {sorted(wanted)}: "
                                   f"{task['Status'].get('Err') or task['Status'].get('Message')}")
        if time.monotonic() > deadline:
            status = task["Status"] if task else "no task"
            raise TimeoutError(f"service {_service(client, service).name}: task not {sorted(wanted)} "
                               f"after {timeout:.0f}s ({status})")
        time.sleep(0.2)


def service_logs(client: docker.DockerClient, service: Any) -> str:
    """What the service's tasks printed so far (stdout and stderr), read through the manager: works for
    tasks on any node."""
    chunks = _service(client, service).logs(stdout=True, stderr=True, follow=False)
    return b"".join(chunks).decode(errors="replace")


def wait_for_log(client: docker.DockerClient, service: Any, text: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        logs = service_logs(client, service)
        if text in logs:
            return logs
        if time.monotonic() > deadline:
            raise TimeoutError(f"{text!r} not in the logs of {_service(client, service).name} after "
                               f"{timeout:.0f}s:\n{logs}")
        time.sleep(0.5)


def image_ref(client: docker.DockerClient, tag: str) -> str:
    """The image's ID, for a service: swarm never pulls an image named by ID (a tag it tries to pull first)."""
    return client.images.get(tag).id


def _remove_network(client: docker.DockerClient, network_id: str, timeout: float = 60.0) -> None:
    """Remove a network, retrying while the endpoints of tasks being removed still hold it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.api.remove_network(network_id)
            return
        except docker.errors.NotFound:
            return
        except docker.errors.APIError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def remove_services(client: docker.DockerClient, services: Iterable[Any], timeout: float = 60.0) -> None:
    """Remove services and wait until their tasks' containers are gone from the nodes."""
    ids = []
    for service in services:
        with contextlib.suppress(docker.errors.NotFound):
            service = _service(client, service)
            ids.append(service.id)
            service.remove()
    # (A removed service's tasks can no longer be filtered by service: the engine answers 404.)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(t.get("ServiceID") in ids for t in client.api.tasks()):
            return
        time.sleep(0.2)
    raise TimeoutError(f"the tasks of services {ids} still exist after {timeout:.0f}s")


def remove_network(client: docker.DockerClient, network: Any, timeout: float = 60.0) -> None:
    _remove_network(client, network if isinstance(network, str) else network.id, timeout)


# ---- fixtures (tests/conftest.py loads this module as a plugin) -------------------------------------------


@dataclass
class TwoNodes:
    """A swarm of the test engine (manager) and a SecondEngine (worker) with the test images loaded."""

    manager: docker.DockerClient
    worker: SecondEngine
    swarm: SwarmManager
    manager_node: str
    worker_node: str
    images: dict[str, str] = field(default_factory=dict)  # tag -> image ID, the same on both engines


@contextlib.contextmanager
def two_nodes(client: docker.DockerClient, images: Iterable[str] = ()) -> Iterator[TwoNodes]:
    """A SecondEngine joined as a worker to the test engine's swarm; everything undone on exit (the worker
    leaves and is removed from the manager before the manager leaves)."""
    with swarm_manager(client) as swarm, SecondEngine(client) as worker:
        try:
            worker_node = worker.join(swarm.address, swarm.worker_token)
            ids = dict(zip(images, worker.load_images(images), strict=True))
            yield TwoNodes(client, worker, swarm, manager_node_id(client), worker_node, ids)
        finally:
            worker.leave()


@pytest.fixture(scope="module")
def swarm_single(docker_engine: docker.DockerClient) -> Iterator[SwarmManager]:
    """The test engine as a swarm manager, at the test manager address, for the module (a module may use
    both this and swarm_two_nodes: they share the swarm)."""
    with swarm_manager(docker_engine) as swarm:
        yield swarm


@pytest.fixture(scope="module")
def swarm_two_nodes(docker_engine: docker.DockerClient) -> Iterator[TwoNodes]:
    """The test engine as manager plus a SecondEngine worker with the busybox test image, for the module."""
    from tests.support.docker_env import BUSYBOX_IMAGE

    with two_nodes(docker_engine, [BUSYBOX_IMAGE]) as nodes:
        yield nodes
