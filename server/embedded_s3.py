"""An in-memory S3-compatible store (moto's server) for a first job that needs nothing else."""

from __future__ import annotations

import logging
import socket

log = logging.getLogger("smlocal.s3")


def docker_bridge_gateway() -> str | None:
    """The host's address on Docker's default bridge: where training containers reach the host."""
    try:
        import docker

        from runner.host_address import host_address_for_containers

        return host_address_for_containers(docker.from_env(timeout=3))
    except Exception as exc:  # noqa: BLE001 - no engine just means no container will need it
        log.debug("no docker bridge gateway: %s", exc)
        return None


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class EmbeddedS3:
    """moto's S3 in this process, on loopback and on the Docker bridge gateway.

    moto keeps its state per process, so both listeners serve the same buckets: the runner uses the
    loopback one, training containers the gateway one (127.0.0.1 inside a container is the container).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 9000) -> None:
        self.host = host
        self.port = port
        self.gateway: str | None = None
        self._servers: list = []

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        if not _port_free(self.host, self.port):
            raise RuntimeError(f"port {self.host}:{self.port} is taken; stop what uses it or set "
                               "SMLOCAL_S3_ENDPOINT to an S3 store you run")
        addresses = [self.host]
        gateway = docker_bridge_gateway()
        if gateway and gateway != self.host and _port_free(gateway, self.port):
            addresses.append(gateway)
            self.gateway = gateway
        for address in addresses:
            server = ThreadedMotoServer(ip_address=address, port=self.port, verbose=False)
            server.start()
            self._servers.append(server)

    def stop(self) -> None:
        for server in self._servers:
            server.stop()
        self._servers.clear()
