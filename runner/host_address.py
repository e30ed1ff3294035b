"""Where training containers reach this host: the Docker bridge's gateway address.

A server that containers must reach (an S3 store on this machine) has to listen on this address or on
0.0.0.0; one bound to 127.0.0.1 is invisible to them.
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct

import docker

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
