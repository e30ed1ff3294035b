"""What every embedded S3 store shares: its interface, its start-up error, the port check.

A module of its own so the stores (server.s3.files, server.s3.memory) and the factory that picks one
(server.s3.embedded) import it and not each other.
"""

from __future__ import annotations

import socket
from typing import Protocol

STORE_KINDS = ("files", "memory")


class StoreStartError(RuntimeError):
    """The embedded store could not start; the message says why and what to do."""


class EmbeddedStore(Protocol):
    kind: str
    host: str
    port: int
    # The bridge gateway address it also listens on (None: no engine, or jobs are not run).
    gateway: str | None

    @property
    def endpoint(self) -> str: ...

    def describe(self) -> str:
        """One line for the banner: what runs and where its objects live."""
        ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


def port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def check_ports_free(addresses: list[str], port: int) -> None:
    for address in addresses:
        if not port_free(address, port):
            raise StoreStartError(
                f"port {address}:{port} is taken, so the embedded S3 store cannot start there; stop what uses "
                "it, choose another with --embedded-s3-port, or set --s3-endpoint to an S3 store you run")
