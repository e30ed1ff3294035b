"""How training containers reach this host: the name they use for it, its address on Docker's bridge, and
the S3 address they are given.

A server that containers must reach (an S3 store on this machine) has to listen on the bridge gateway's
address or on 0.0.0.0; one bound to 127.0.0.1 is invisible to them. Containers name the host
`host.docker.internal` (docker's host-gateway, added by runner.docker_backend), so a loopback S3 endpoint
is handed to them under that name.
"""

from __future__ import annotations

import fcntl
import ipaddress
import logging
import socket
import struct
from urllib.parse import urlsplit, urlunsplit

import docker

from smlocal.core.settings import Settings

log = logging.getLogger("smlocal.runner")

# Resolves to the host from inside any container (docker's host-gateway); see docker_backend.
HOST_ALIAS = "host.docker.internal"


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def container_s3_endpoint(settings: Settings) -> str | None:
    """The S3 endpoint as reachable from inside a container (127.0.0.1 there is the container itself)."""
    if settings.container_s3_endpoint:
        return settings.container_s3_endpoint
    if not settings.s3_endpoint:
        return None
    endpoint = settings.s3_endpoint if "://" in settings.s3_endpoint else f"http://{settings.s3_endpoint}"
    parts = urlsplit(endpoint)
    if not parts.hostname or not _is_loopback(parts.hostname):
        return endpoint
    netloc = HOST_ALIAS if parts.port is None else f"{HOST_ALIAS}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


_SIOCGIFADDR = 0x8915  # Linux ioctl: IPv4 address of a network interface


def _interface_ipv4(name: str) -> str | None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            packed = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
    except OSError:
        return None
    return socket.inet_ntoa(packed[20:24])


def host_address_for_containers(client: docker.DockerClient) -> str:
    """IPv4 address of this host as seen from containers on the default bridge.

    A server that containers must reach has to listen on this address or on
    0.0.0.0; one bound to 127.0.0.1 is invisible to them.
    """
    network = client.networks.get("bridge")
    configs = (network.attrs.get("IPAM") or {}).get("Config") or []
    for config in configs:
        gateway = config.get("Gateway")
        if gateway and ipaddress.ip_address(gateway).version == 4:
            return str(gateway)
    # Older engines (e.g. Debian's 20.10) list only the Subnet for the default
    # bridge; the gateway is then the bridge interface's own address.
    options = network.attrs.get("Options") or {}
    address = _interface_ipv4(options.get("com.docker.network.bridge.name", "docker0"))
    if address:
        return address
    # Remote engine or no access to the interface: the engine assigns the
    # first host address of the subnet to the bridge.
    for config in configs:
        subnet = config.get("Subnet")
        if subnet and ipaddress.ip_network(subnet).version == 4:
            return str(next(ipaddress.ip_network(subnet).hosts()))
    raise RuntimeError(f"cannot determine the bridge gateway address from {network.attrs.get('IPAM')}")


def docker_bridge_gateway() -> str | None:
    """The host's address on Docker's default bridge, or None when no engine answers (no container will
    need it then)."""
    try:
        return host_address_for_containers(docker.from_env(timeout=3))
    except Exception as exc:  # noqa: BLE001 - no engine, or one that does not answer
        log.debug("no docker bridge gateway: %s", exc)
        return None
