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

from pathlib import Path

from server.s3.base import STORE_KINDS, EmbeddedStore
from server.s3.files import FileStore
from server.s3.memory import MemoryStore


def embedded_store(kind: str, *, data_dir: Path, port: int, access_key: str, secret_key: str,
                   gateway: str | None, host: str = "127.0.0.1") -> EmbeddedStore:
    """The store of `kind` (not started yet)."""
    if kind == "files":
        return FileStore(Path(data_dir) / "s3", host=host, port=port, access_key=access_key,
                         secret_key=secret_key, gateway=gateway, log_path=Path(data_dir) / "s3-store.log")
    if kind == "memory":
        return MemoryStore(host=host, port=port, gateway=gateway)
    raise ValueError(f"unknown S3 store {kind!r}; choose one of {', '.join(STORE_KINDS)}")
