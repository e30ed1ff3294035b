"""Where job networks get their addresses: smlocal's own range (`serve --job-subnets`), never Docker's pools.

A network made without a subnet takes a whole block of the engine's default address pools: a /16 of
172.17-172.31 or a /20 of 192.168, about 30 networks in all on a new engine. Every running job holds a
network (and the pool one made in advance), and several servers may share an engine, so those pools run
out ("could not find an available, non-overlapping IPv4 address pool"). Instead every job network is made
with an explicit subnet, carved here from one range: a /27 (29 hosts besides the gateway) unless the job
has more hosts. A /16 holds 2048 of them.

The range is checked when the server starts (`resolve_job_subnets`): it must not overlap a route of the
host (the kernel would send the containers' traffic for those addresses into the bridge) nor a network
the engine already has that smlocal did not make. Without `--job-subnets` the first of
`DEFAULT_CANDIDATES` that is clear is taken.

Which subnets are taken is asked of the engine at each allocation (`Backend.networks()` lists every
network with its subnet): other smlocal servers and the networks of jobs adopted after a restart are
seen there, so nothing else needs to be remembered across processes. `SubnetAllocator` only adds what
this process reserved and has not created yet; two servers racing for the same block are told apart by
the engine, which refuses the second (`SubnetTaken`), and the loser tries the next block.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Iterable
from ipaddress import IPv4Network
from pathlib import Path

from runner.backend import LABEL_MANAGED, NetworkRef

log = logging.getLogger("smlocal.runner")

# A job network's size unless it has more hosts: the engine serves up to 29 containers on a /27.
DEFAULT_PREFIX = 27
# /16s of 10/8 far from the ones home and office networks and VPNs use first (10.0-10.20), and outside
# every Docker default pool (172.17-172.31, 192.168).
DEFAULT_CANDIDATES = tuple(IPv4Network(f"10.{second}.0.0/16") for second in range(213, 250))


class SubnetRangeError(ValueError):
    """The job subnet range cannot be used (not a network, overlaps the host's routes or the engine's networks)."""


class NoFreeSubnet(Exception):  # noqa: N818 - an expected condition: the job waits
    """Every block of the range is taken right now; one is freed when a job ends."""


class RangeTooSmall(Exception):  # noqa: N818
    """The job has more hosts than the whole range holds: waiting would never end, the job fails."""


def prefix_for_hosts(hosts: int) -> int:
    """The longest prefix whose subnet holds `hosts` containers plus the gateway (never longer than /27)."""
    needed = hosts + 3  # network address, gateway, broadcast
    prefix = 32 - max(needed - 1, 1).bit_length()
    return min(prefix, DEFAULT_PREFIX)


def host_routes(route_table: Path = Path("/proc/net/route")) -> list[IPv4Network]:
    """The destinations of this machine's IPv4 routes other than the default route (Linux; none elsewhere).

    Routes into Docker's own bridges (docker0, br-<id>) are left out: those are the engine's networks,
    smlocal's job networks among them, and are checked as such (`resolve_job_subnets`)."""
    try:
        lines = route_table.read_text().splitlines()[1:]
    except OSError:
        return []
    routes = []
    for line in lines:
        fields = line.split()
        if len(fields) < 8 or fields[0] == "docker0" or fields[0].startswith("br-"):
            continue
        # Little-endian hex, as the kernel prints them.
        destination = ipaddress.IPv4Address(int(fields[1], 16).to_bytes(4, "little"))
        mask = ipaddress.IPv4Address(int(fields[7], 16).to_bytes(4, "little"))
        if int(mask) == 0:
            continue  # the default route overlaps everything and says nothing
        routes.append(IPv4Network(f"{destination}/{mask}", strict=False))
    return routes


def _subnets_of(networks: Iterable[NetworkRef]) -> list[tuple[IPv4Network, NetworkRef]]:
    found = []
    for n in networks:
        if n.subnet and ":" not in n.subnet:
            found.append((IPv4Network(n.subnet, strict=False), n))
    return found


def resolve_job_subnets(requested: str | None, routes: list[IPv4Network],
                        engine_networks: list[NetworkRef]) -> IPv4Network:
    """The range job networks are carved from: `requested` once checked, else the first clear default.

    `engine_networks` are every network the engine has (empty if it does not answer yet); those smlocal
    made are from such a range themselves and do not count against it."""
    foreign = [(subnet, n) for subnet, n in _subnets_of(engine_networks) if n.labels.get(LABEL_MANAGED) != "true"]

    def conflict(candidate: IPv4Network) -> str | None:
        for route in routes:
            if candidate.overlaps(route):
                return f"a route of this machine ({route})"
        for subnet, network in foreign:
            if candidate.overlaps(subnet):
                return f"the Docker network {network.name!r} ({subnet})"
        return None

    if requested is not None:
        try:
            candidate = IPv4Network(requested, strict=True)
        except ValueError as e:
            raise SubnetRangeError(f"{requested!r} is not an IPv4 network in CIDR notation ({e})") from None
        if candidate.prefixlen > DEFAULT_PREFIX:
            raise SubnetRangeError(f"{requested} is smaller than one job network (/{DEFAULT_PREFIX})")
        reason = conflict(candidate)
        if reason is not None:
            raise SubnetRangeError(f"{requested} overlaps {reason}; choose a range outside it")
        return candidate
    for candidate in DEFAULT_CANDIDATES:
        if conflict(candidate) is None:
            return candidate
    raise SubnetRangeError("every default range (10.213.0.0/16 .. 10.249.0.0/16) overlaps a route or a Docker "
                           "network of this machine; choose one with --job-subnets")


class SubnetAllocator:
    """Hands out blocks of one range, skipping what the engine already has and what this process reserved."""

    def __init__(self, pool: IPv4Network) -> None:
        self.pool = pool
        self._lock = threading.Lock()
        self._reserved: set[IPv4Network] = set()

    def reserve(self, hosts: int, engine_networks: list[NetworkRef],
                refused: Iterable[IPv4Network] = ()) -> IPv4Network:
        """A free block for a network of `hosts` containers, reserved until `release`; NoFreeSubnet if none."""
        taken = [subnet for subnet, _ in _subnets_of(engine_networks)] + list(refused)
        prefix = prefix_for_hosts(hosts)
        if prefix < self.pool.prefixlen:
            raise RangeTooSmall(f"ClientError: {hosts} instances need a network of /{prefix}, larger than the "
                                f"whole range job networks come from ({self.pool}, smlocal serve --job-subnets)")
        with self._lock:
            taken += self._reserved
            for block in self.pool.subnets(new_prefix=prefix):
                if not any(block.overlaps(t) for t in taken):
                    self._reserved.add(block)
                    return block
        raise NoFreeSubnet(f"every /{prefix} of {self.pool} is in use")

    def release(self, subnet: IPv4Network | str | None) -> None:
        if subnet is None:
            return
        with self._lock:
            self._reserved.discard(IPv4Network(subnet, strict=False))

    @property
    def reserved(self) -> int:
        with self._lock:
            return len(self._reserved)
