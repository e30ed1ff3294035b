"""The networks jobs run on: one per job, taken from a pool that keeps one made in advance.

Creating a bridge network costs Docker ~0.1 s (interfaces, iptables), most of a short job's overhead.
The pool creates the next job's network in the background when a job ends, so the next job takes a
ready network. A network is never shared: a job's network is removed with the job.

Several hosts get fixed addresses, listed in every host's /etc/hosts (`host_addresses`): Docker's DNS
answers only for running containers, but on SageMaker every host's name resolves for the whole job. The
training toolkit looks up every host before it runs the script (retrying for 15 minutes), so a host
whose algorithm finished first must not vanish from the others' view. Every network is made on a subnet
of smlocal's own range (runner.subnets: a /27, larger for a job with more hosts), so fixed addresses
cost nothing more, and no network takes a block of the engine's default pools. When the range has no
block free, `take` says so (NoFreeSubnet) and the job waits in Starting until a network is released.

A network's labels cannot change after it is made, so a pooled network carries smlocal's labels
(`smlocal.managed`, `smlocal.data-dir`, `smlocal.pool-network`) and the job's containers name it in
their `smlocal.network` label; that is how cleanup and recovery find a job's network.

A job with EnableNetworkIsolation gets an isolated network (`Backend.create_network(internal=True)`),
made on demand with the same labels (so it is removed and swept like any other) while the spare waits
for the next job. What isolation means follows SageMaker's developer guide, "Run Training and Inference
Containers in Internet-Free Mode" (docs.aws.amazon.com/sagemaker/latest/dg/mkt-algo-model-internet-free.html)
and the API's EnableNetworkIsolation: the containers make no outbound call at all, S3 included; the
platform gives them no AWS credentials; the hosts of a multi-instance job still talk to each other;
and the platform itself still downloads the inputs and uploads the artifacts, outside the container.
So here the hosts keep their names and fixed addresses, smlocal stages the inputs and uploads the
artifacts from the host side as for any job, and `runner.environment` hands the containers no store
address or keys.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from runner.backend import LABEL_DATA_DIR, LABEL_MANAGED, Backend, BackendUnavailable, NetworkRef, SubnetTaken
from runner.subnets import NoFreeSubnet, SubnetAllocator, prefix_for_hosts

log = logging.getLogger("smlocal.runner")

LABEL_POOL = "smlocal.pool-network"
# On a job's containers: the name of the network they are on.
LABEL_NETWORK = "smlocal.network"
# Blocks the engine may refuse in a row (taken by another server between listing and creating) before a
# job is told none is free.
CREATE_TRIES = 8


class NetworkPool:
    def __init__(self, backend: Backend, data_dir_label: str, subnets: SubnetAllocator) -> None:
        self._backend = backend
        self.subnets = subnets
        self.labels = {LABEL_MANAGED: "true", LABEL_DATA_DIR: data_dir_label, LABEL_POOL: "true"}
        self._lock = threading.Lock()
        # Held while a network is being made, so a sweep never sees one that nobody owns yet.
        self._creating = threading.Lock()
        self._spare: NetworkRef | None = None
        self._in_use: dict[str, NetworkRef] = {}
        self._waiting: set[threading.Event] = set()
        self._refill_thread: threading.Thread | None = None
        self._closed = False

    @property
    def spare(self) -> str | None:
        with self._lock:
            return self._spare.name if self._spare is not None else None

    def take(self, hosts: int = 1, internal: bool = False) -> NetworkRef:
        """A network for one job of `hosts` hosts: the spare if it holds them, else one made now. An `internal`
        one (EnableNetworkIsolation) is always made for the job; the spare stays unless its block is the
        last one free. NoFreeSubnet when the range has no block left (the job waits: `notify_on_release`).

        The next spare is not made here: the engine would make it while it creates and starts this job's
        containers, and slow them down. The job calls `refill` once it is done."""
        network = None if internal else self._take_spare(hosts)
        if network is not None:
            return network
        with self._creating:
            try:
                network = self._create(hosts, internal)
            except NoFreeSubnet:
                # The spare holds a block: a job it suits takes it, one it does not frees it.
                network = None if internal else self._take_spare(hosts)
                if network is not None:
                    return network
                if not self._drop_spare():
                    raise
                network = self._create(hosts, internal)
            with self._lock:
                self._in_use[network.name] = network
        return network

    def notify_on_release(self, event: threading.Event) -> None:
        """Set `event` when this pool next frees a network (a job waiting for one tries again then)."""
        with self._lock:
            self._waiting.add(event)

    def stop_notifying(self, event: threading.Event) -> None:
        with self._lock:
            self._waiting.discard(event)

    def release(self, name: str) -> None:
        """The job that took `name` is done with it: remove it, and free its block."""
        with self._lock:
            network = self._in_use.get(name)
        self._remove(network or NetworkRef(name, name, {}))
        with self._lock:
            self._in_use.pop(name, None)
            waiting, self._waiting = self._waiting, set()
        if network is not None:
            self.subnets.release(network.subnet)
        for event in waiting:
            event.set()

    def abandon(self, name: str) -> None:
        """The job that took `name` ended while the engine did not answer: the pool no longer holds it, so
        the sweep at the engine's return removes it with the job's containers."""
        with self._lock:
            network = self._in_use.pop(name, None)
        if network is not None:
            self.subnets.release(network.subnet)

    def refill(self) -> None:
        """Make the spare in the background, unless there is one (or one is on its way)."""
        with self._lock:
            busy = self._refill_thread is not None and self._refill_thread.is_alive()
            if self._spare is not None or busy or self._closed:
                return
            self._refill_thread = threading.Thread(target=self._refill, name="smlocal-network-pool", daemon=True)
            self._refill_thread.start()

    @contextmanager
    def owned(self) -> Iterator[set[str]]:
        """The names of the networks the pool holds or handed out, stable while the block runs (for a sweep)."""
        with self._creating, self._lock:
            names = set(self._in_use)
            if self._spare is not None:
                names.add(self._spare.name)
        yield names

    def close(self, timeout: float = 15.0) -> None:
        """Remove the spare (server shutdown); networks in use stay with their jobs."""
        with self._lock:
            self._closed = True
            refilling = self._refill_thread
        if refilling is not None:
            refilling.join(timeout)  # a spare on its way is removed by it, or becomes the spare removed here
        self._drop_spare()

    def _take_spare(self, hosts: int) -> NetworkRef | None:
        with self._lock:
            spare = self._spare
            if spare is None or spare.subnet is None:
                return None
            if ipaddress.ip_network(spare.subnet).prefixlen > prefix_for_hosts(hosts):
                return None  # too small for this job
            self._spare = None
            self._in_use[spare.name] = spare
            return spare

    def _drop_spare(self) -> bool:
        with self._lock:
            spare, self._spare = self._spare, None
        if spare is None:
            return False
        self._remove(spare)
        self.subnets.release(spare.subnet)
        return True

    def _create(self, hosts: int, internal: bool = False) -> NetworkRef:
        name = f"smlocal-net-{uuid.uuid4().hex[:12]}"
        refused: list[ipaddress.IPv4Network] = []
        for _ in range(CREATE_TRIES):
            subnet = self.subnets.reserve(hosts, self._backend.networks(), refused)
            try:
                return self._backend.create_network(name, self.labels, subnet=str(subnet), internal=internal)
            except SubnetTaken as e:
                log.info("subnet %s was taken meanwhile (%s); trying the next one", subnet, e)
                refused.append(subnet)
                self.subnets.release(subnet)
            except BaseException:
                self.subnets.release(subnet)
                raise
        raise NoFreeSubnet(f"the engine refused {CREATE_TRIES} subnets of {self.subnets.pool} in a row")

    def _refill(self) -> None:
        network = None
        try:
            with self._creating:
                network = self._create(1)
                with self._lock:
                    if not self._closed:
                        self._spare, network = network, None
        except (BackendUnavailable, NoFreeSubnet) as e:
            log.debug("no spare network: %s", e)
        except Exception:
            log.exception("could not create a spare network")
        if network is not None:  # closed meanwhile
            self._remove(network)
            self.subnets.release(network.subnet)

    def _remove(self, network: NetworkRef) -> None:
        try:
            self._backend.remove_network(network)
        except Exception as e:
            log.warning("could not remove network %s: %s", network.name, e)


def host_addresses(network: NetworkRef, hosts: list[str]) -> dict[str, str]:
    """A fixed address per host (name -> address) for a job with several hosts, on a network that has a
    subnet of its own; none otherwise (one host needs no peers; without a subnet, Docker's DNS serves)."""
    if len(hosts) < 2 or network.subnet is None:
        return {}
    free = (str(a) for a in ipaddress.ip_network(network.subnet).hosts() if str(a) != network.gateway)
    addresses = dict(zip(hosts, free, strict=False))
    return addresses if len(addresses) == len(hosts) else {}
