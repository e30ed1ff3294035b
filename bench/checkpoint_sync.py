"""Checkpoint sync delay for `make bench` (runner/folder_sync.py), measured from outside the sync.

A writer closes a 1 MiB file in a watched folder every 0.3 s (30 files); the delay is from its close() to the
object being visible in S3 (a HEAD every 10 ms). The baseline, in the same run against the same server: the
writer's own `put_object` of the same bytes (the S3 round trip the sync cannot avoid). The sync's extra is its
debounce (0.2 s: a rename right after a close, a burst of files, go into one batch), the inotify path and the
poll's 10 ms.

Alone (no Docker, its own moto server): python -m bench.checkpoint_sync
"""

from __future__ import annotations

import io
import os
import statistics
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

from minio import Minio
from minio.error import S3Error

from runner.folder_sync import FolderSync
from runner.s3 import S3Location

BUCKET = "smlocal-bench"
FILES = 30
SIZE = 2**20
SPACING = 0.3  # seconds between closes
POLL = 0.01


def _visible(client: Minio, key: str, timeout: float = 30.0) -> float:
    """perf_counter() when a HEAD of `key` first succeeds."""
    deadline = time.perf_counter() + timeout
    while True:
        try:
            client.stat_object(BUCKET, key)
            return time.perf_counter()
        except S3Error:
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{key} not in S3 after {timeout:.0f} s") from None
        time.sleep(POLL)


def measure(client: Minio) -> tuple[list[float], list[float]]:
    """(sync delays, put_object times) in seconds, one of each per file."""
    delays, puts = [], []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "checkpoints"
        folder.mkdir()
        sync = FolderSync(folder, S3Location(BUCKET, "bench-sync"), client, Path(tmp) / "state.json",
                          label="bench/algo-1/checkpoints")
        sync.start()
        try:
            start = time.perf_counter()
            for i in range(FILES):
                data = os.urandom(SIZE)
                with open(folder / f"ckpt-{i:03d}.pt", "wb") as f:
                    f.write(data)
                closed = time.perf_counter()
                delays.append(_visible(client, f"bench-sync/ckpt-{i:03d}.pt") - closed)
                # The baseline right after, not during the sync's upload: neither side pays for the other.
                t = time.perf_counter()
                client.put_object(BUCKET, f"bench-put/ckpt-{i:03d}.pt", io.BytesIO(data), SIZE)
                puts.append(time.perf_counter() - t)
                time.sleep(max(0.0, start + (i + 1) * SPACING - time.perf_counter()))
        finally:
            sync.stop()
    return delays, puts


def rows(client: Minio) -> list[tuple[str, str, str, str]]:
    delays, puts = measure(client)
    d, p = statistics.median(delays), statistics.median(puts)
    return [(f"Checkpoint sync delay, {FILES} x {SIZE // 2**20} MiB closed {SPACING} s apart",
             f"{d * 1000:.0f} ms median, {max(delays) * 1000:.0f} ms worst (close -> visible in S3)",
             f"{p * 1000:.0f} ms put_object of the same file",
             f"{d / p:.1f}x (+{(d - p) * 1000:.0f} ms)")]


def main() -> None:
    from tests.support.s3server import start_s3_server

    with start_s3_server() as s3:
        endpoint = urlparse(s3.endpoint)
        client = Minio(endpoint.netloc, access_key="test", secret_key="test", secure=False, region="us-east-1")
        client.make_bucket(BUCKET)
        for row in rows(client):
            print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
