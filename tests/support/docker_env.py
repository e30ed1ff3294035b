"""Docker helpers for tests: engine client, local test images, host address.

Nothing here skips tests: when the engine is missing the error says how to get
one (scripts/ensure-docker.sh), because silently skipping the container tests
would hide that they never ran.

Networking: containers on the default bridge reach this host through the
bridge gateway address (usually 172.17.0.1), never through 127.0.0.1. Any
server a container must reach (e.g. the moto S3 server) has to bind on that
address or on 0.0.0.0; see `host_address_for_containers`.
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct
import subprocess
from pathlib import Path

import docker
import docker.errors

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_IMAGES_SCRIPT = REPO_ROOT / "scripts" / "build-images.sh"

BUSYBOX_IMAGE = "smlocal-test/busybox:1"
PYTHON_BASE_IMAGE = "smlocal/python-base:1"
SKLEARN_EXAMPLE_IMAGE = "smlocal-example/sklearn:1"
TEST_IMAGES: tuple[str, ...] = (BUSYBOX_IMAGE, PYTHON_BASE_IMAGE, SKLEARN_EXAMPLE_IMAGE)

_SIOCGIFADDR = 0x8915  # Linux ioctl: IPv4 address of a network interface


def docker_client() -> docker.DockerClient:
    """Client for the local engine; raises RuntimeError if it does not answer."""
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        raise RuntimeError(
            "Docker engine is not reachable "
            f"({exc}). Run scripts/ensure-docker.sh (as root) to install and start it."
        ) from exc
    return client


def missing_test_images(client: docker.DockerClient) -> list[str]:
    missing = []
    for tag in TEST_IMAGES:
        try:
            client.images.get(tag)
        except docker.errors.ImageNotFound:
            missing.append(tag)
    return missing


def ensure_test_images(client: docker.DockerClient | None = None) -> None:
    """Build the test images with scripts/build-images.sh if any tag is missing.

    The first build takes minutes (debootstrap); later calls are a few
    `images.get` lookups. The script itself takes a lock, so concurrent
    callers (e.g. pytest-xdist workers) do not build twice.
    """
    client = client or docker_client()
    missing = missing_test_images(client)
    if not missing:
        return
    result = subprocess.run(["bash", str(BUILD_IMAGES_SCRIPT)], check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"{BUILD_IMAGES_SCRIPT} failed with exit code {result.returncode} (missing: {missing})"
        )
    still_missing = missing_test_images(client)
    if still_missing:
        raise RuntimeError(f"{BUILD_IMAGES_SCRIPT} succeeded but images are still missing: {still_missing}")


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
