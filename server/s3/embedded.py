"""The S3 store smlocal starts itself when no `--s3-endpoint` is given.

Two kinds, chosen with `--s3-store`:
- `files` (default): `rclone serve s3` over `<data-dir>/s3`, one folder per bucket and one plain file
  per object, so data survives restarts and can be copied in with `cp` (server/s3/files.py);
- `memory`: moto's S3 in this process, gone on exit; for tests (server/s3/memory.py).

Both listen on loopback (the runner, the user's tools) and, when Docker runs jobs, on the Docker
bridge gateway: the only address of this host that training containers reach (127.0.0.1 inside a
container is the container). That second address serves the S3 API and nothing else.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Protocol

log = logging.getLogger("smlocal.s3")

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


def docker_bridge_gateway() -> str | None:
    """The host's address on Docker's default bridge: where training containers reach the host."""
    try:
        import docker

        from runner.host_address import host_address_for_containers

        return host_address_for_containers(docker.from_env(timeout=3))
    except Exception as exc:  # noqa: BLE001 - no engine just means no container will need it
        log.debug("no docker bridge gateway: %s", exc)
        return None


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


def embedded_store(kind: str, *, data_dir: Path, port: int, access_key: str, secret_key: str,
                   gateway: str | None, host: str = "127.0.0.1") -> EmbeddedStore:
    """The store of `kind` (not started yet)."""
    if kind == "files":
        from server.s3.files import FileStore

        return FileStore(Path(data_dir) / "s3", host=host, port=port, access_key=access_key,
                         secret_key=secret_key, gateway=gateway, log_path=Path(data_dir) / "s3-store.log")
    if kind == "memory":
        from server.s3.memory import MemoryStore

        return MemoryStore(host=host, port=port, gateway=gateway)
    raise ValueError(f"unknown S3 store {kind!r}; choose one of {', '.join(STORE_KINDS)}")
