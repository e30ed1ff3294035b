"""Everything the runner asks of Docker: images, per-job networks, labelled training containers."""

from __future__ import annotations

import ipaddress
import logging
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import docker
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.models.containers import Container
from docker.models.networks import Network
from docker.types import IPAMConfig, IPAMPool
from docker.utils import parse_repository_tag

log = logging.getLogger("smlocal.runner")

LABEL_JOB_NAME = "smlocal.job-name"
LABEL_JOB_ARN = "smlocal.job-arn"
LABEL_MANAGED = "smlocal.managed"
LABEL_HOST = "smlocal.host"
# Tells apart the jobs of several smlocal instances (each with its own data dir) on one Docker engine.
LABEL_DATA_DIR = "smlocal.data-dir"


class ImageUnavailable(Exception):
    """The training image is neither local nor pullable; `reason` is the job's FailureReason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def container_command(algorithm: dict[str, Any]) -> tuple[list[str] | None, list[str] | None]:
    """(entrypoint, command) exactly as SageMaker invokes the image.

    `train` by default; ContainerEntrypoint replaces the image's entrypoint and drops `train`;
    ContainerArguments replace `train`. With an entrypoint given, Docker does not fall back to the
    image's CMD, so no command means none.
    """
    entrypoint = algorithm.get("ContainerEntrypoint") or None
    arguments = algorithm.get("ContainerArguments") or None
    if entrypoint:
        return list(entrypoint), list(arguments) if arguments else None
    return None, list(arguments) if arguments else ["train"]


@dataclass
class ContainerSpec:
    image: str
    name: str
    network: str
    host: str
    labels: dict[str, str]
    environment: dict[str, str]
    entrypoint: list[str] | None
    command: list[str] | None
    # host path -> container path
    mounts: dict[str, str] = field(default_factory=dict)
    # Its fixed address on the job's network, and the other hosts' (name -> address) for /etc/hosts.
    address: str | None = None
    peers: dict[str, str] = field(default_factory=dict)


def job_labels(job_name: str, job_arn: str, host: str | None, data_dir: str) -> dict[str, str]:
    """A container's labels (with its host), or the job network's (host None)."""
    labels = {LABEL_JOB_NAME: job_name, LABEL_JOB_ARN: job_arn, LABEL_MANAGED: "true", LABEL_DATA_DIR: data_dir}
    if host is not None:
        labels[LABEL_HOST] = host
    return labels


def resource_name(job_name: str) -> str:
    """`smlocal-<job>-<shortid>`: unique on the engine even when a job name is reused."""
    return f"smlocal-{job_name}-{uuid.uuid4().hex[:8]}"


def _label_filter(labels: dict[str, str]) -> list[str]:
    return [f"{k}={v}" for k, v in labels.items()]


def started_at(container: Container) -> float | None:
    """The container's start time in epoch seconds (None if it never started)."""
    raw = (container.attrs.get("State") or {}).get("StartedAt") or ""
    if not raw or raw.startswith("0001-"):
        return None
    base, _, rest = raw.partition(".")
    fraction = "".join(c for c in rest if c.isdigit())
    zone = rest[len(fraction):] if rest else raw[len(base):]
    zone = "+00:00" if zone in ("Z", "") else zone
    return datetime.fromisoformat(f"{base}.{fraction[:6].ljust(6, '0')}{zone}").timestamp()


class DockerBackend:
    def __init__(self, client: docker.DockerClient | None = None, max_pool_size: int = 32) -> None:
        self._client = client
        self._max_pool_size = max_pool_size
        self._lock = threading.Lock()

    @property
    def client(self) -> docker.DockerClient:
        # Created on first use so the API server starts even while Docker is down.
        with self._lock:
            if self._client is None:
                # Each running host of a job holds two long-lived connections (its log stream and its wait).
                self._client = docker.from_env(max_pool_size=self._max_pool_size)
            return self._client

    def ensure_image(self, image: str) -> None:
        try:
            self.client.images.get(image)
            return
        except ImageNotFound:
            pass
        repository, tag = parse_repository_tag(image)
        try:
            # The SDK sends credentials from ~/.docker/config.json (and its helpers) for the registry.
            self.client.images.pull(repository, tag=tag or "latest")
        except (APIError, DockerException) as e:
            detail = getattr(e, "explanation", None) or str(e)
            raise ImageUnavailable(
                f"ClientError: Image {image} could not be found locally or pulled: {detail}"
            ) from None

    def create_network(self, name: str, labels: dict[str, str], hosts: Sequence[str] = ()
                       ) -> tuple[Network, dict[str, str]]:
        """The job's network, and a fixed address per host (name -> address) when there are several.

        Docker's DNS answers only for running containers, but on SageMaker every host's name resolves for
        the whole job: the training toolkit looks up every host before it runs the script (retrying for
        15 minutes), so a host whose algorithm finished first must not vanish from the others' view. With
        fixed addresses every container lists all hosts in its /etc/hosts. Fixed addresses need a network
        with a subnet of its own: Docker picks a free one, and the network is made again with it.
        """
        network = self.client.networks.create(name, driver="bridge", labels=labels)
        if len(hosts) < 2:
            return network, {}
        for _ in range(5):
            network.reload()
            pools = [c for c in (network.attrs.get("IPAM") or {}).get("Config") or []
                     if ":" not in c.get("Subnet", ":")]
            if not pools:
                break
            subnet, gateway = pools[0]["Subnet"], pools[0].get("Gateway")
            free = [str(a) for a in ipaddress.ip_network(subnet).hosts() if str(a) != gateway]
            if gateway is None:
                free = free[1:]  # Docker gives the first address to the bridge
            if len(free) < len(hosts):
                break
            network.remove()
            try:
                network = self.client.networks.create(
                    name, driver="bridge", labels=labels,
                    ipam=IPAMConfig(pool_configs=[IPAMPool(subnet=subnet, gateway=gateway)]))
            except APIError as e:
                log.info("subnet %s for network %s was taken meanwhile (%s); trying another", subnet, name, e)
                network = self.client.networks.create(name, driver="bridge", labels=labels)
                continue
            return network, dict(zip(hosts, free, strict=False))
        log.warning("network %s: no fixed host addresses; hosts resolve each other only while running", name)
        return network, {}

    def create_container(self, spec: ContainerSpec) -> Container:
        endpoint = self.client.api.create_endpoint_config(aliases=[spec.host], ipv4_address=spec.address)
        return self.client.containers.create(
            spec.image,
            command=spec.command,
            entrypoint=spec.entrypoint,
            name=spec.name,
            hostname=spec.host,
            environment=spec.environment,
            labels=spec.labels,
            volumes={host: {"bind": path, "mode": "rw"} for host, path in spec.mounts.items()},
            network=spec.network,
            networking_config={spec.network: endpoint},
            # Lets the algorithm reach smlocal's S3 store on the host, whatever the network.
            extra_hosts={"host.docker.internal": "host-gateway", **spec.peers},
            detach=True,
        )

    def containers(self, labels: dict[str, str]) -> list[Container]:
        return self.client.containers.list(all=True, filters={"label": _label_filter(labels)})

    def networks(self, labels: dict[str, str]) -> list[Network]:
        return self.client.networks.list(filters={"label": _label_filter(labels)})

    def signal(self, container: Container, sig: str) -> None:
        try:
            container.kill(signal=sig)
        except NotFound:
            pass
        except APIError as e:
            # 409: it already exited, which is what we wanted.
            if e.status_code != 409:
                raise

    def remove_container(self, container: Container) -> None:
        try:
            container.remove(force=True, v=True)
        except NotFound:
            pass
        except APIError as e:
            if e.status_code != 409:  # removal already in progress
                log.warning("could not remove container %s: %s", container.name, e)

    def remove_network(self, network: Network) -> None:
        try:
            network.remove()
        except NotFound:
            pass
        except APIError as e:
            log.warning("could not remove network %s: %s", network.name, e)

    def remove_job_resources(self, labels: dict[str, str]) -> None:
        """Remove every container, then every network, carrying these labels."""
        for c in self.containers(labels):
            self.remove_container(c)
        for n in self.networks(labels):
            self.remove_network(n)
