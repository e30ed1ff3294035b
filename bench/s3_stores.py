"""The embedded S3 stores side by side: `python -m bench.s3_stores`.

Each store runs in its own process, as under `smlocal serve`, on loopback; the client is the runner's
(minio, `runner.inputs.file_staging.DOWNLOAD_WORKERS` threads). Measured per store, in the same run:
  - PUT and GET of SMALL_COUNT x 4 KiB objects (objects/s);
  - PUT and GET of LARGE_COUNT x 64 MiB objects (MB/s).
Stores: moto (the in-memory `--s3-store memory`) through its loopback front and through the S3-only
app that the container-facing address serves (the filtering's cost), and rclone (`--s3-store files`).
A shared 2-core machine is noisy: compare the stores within one run, not across runs.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from minio import Minio

from runner.inputs.file_staging import DOWNLOAD_WORKERS
from tests.support.smlocal import free_port

SMALL_COUNT = int(os.environ.get("BENCH_SMALL_COUNT", "1000"))
SMALL_SIZE = 4 * 1024
LARGE_COUNT = 4
LARGE_SIZE = 64 * 1024 * 1024
BUCKET = "bench"
KEYS = "minioadmin"

# Runs one store until stdin closes; prints "ready" when it serves.
_STORE_MAIN = """
import sys
from pathlib import Path
from server.s3.embedded import embedded_store
from server.s3.memory import _WsgiListener, s3_only_app
kind, root, port = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
if kind == "memory-s3-only":
    listener = _WsgiListener("127.0.0.1", port, s3_only_app())
    stop = listener.stop
else:
    store = embedded_store(kind, data_dir=root, port=port, access_key="minioadmin", secret_key="minioadmin",
                           gateway=None)
    store.start()
    stop = store.stop
print("ready", flush=True)
sys.stdin.read()
stop()
"""


def _start(kind: str, root: Path) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", _STORE_MAIN, kind, str(root), str(port)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "ready", kind
    return process, port


def _timed(fn, items) -> float:  # noqa: ANN001
    start = time.perf_counter()
    with ThreadPoolExecutor(DOWNLOAD_WORKERS) as pool:
        list(pool.map(fn, items))
    return time.perf_counter() - start


def measure(port: int) -> dict[str, float]:
    client = Minio(f"127.0.0.1:{port}", access_key=KEYS, secret_key=KEYS, secure=False, region="us-east-1")
    client.make_bucket(BUCKET)
    small = os.urandom(SMALL_SIZE)
    large = os.urandom(LARGE_SIZE)
    small_keys = [f"small/{i:05d}" for i in range(SMALL_COUNT)]
    large_keys = [f"large/{i}" for i in range(LARGE_COUNT)]

    def put_small(key: str) -> None:
        client.put_object(BUCKET, key, io.BytesIO(small), SMALL_SIZE)

    def get_small(key: str) -> None:
        response = client.get_object(BUCKET, key)
        try:
            assert len(response.read()) == SMALL_SIZE
        finally:
            response.close()
            response.release_conn()

    def put_large(key: str) -> None:
        client.put_object(BUCKET, key, io.BytesIO(large), LARGE_SIZE, part_size=16 * 1024 * 1024)

    def get_large(key: str) -> None:
        response = client.get_object(BUCKET, key)
        size = 0
        try:
            for chunk in response.stream(1024 * 1024):
                size += len(chunk)
        finally:
            response.close()
            response.release_conn()
        assert size == LARGE_SIZE

    megabytes = LARGE_COUNT * LARGE_SIZE / 1e6
    return {
        "small PUT obj/s": SMALL_COUNT / _timed(put_small, small_keys),
        "small GET obj/s": SMALL_COUNT / _timed(get_small, small_keys),
        "large PUT MB/s": megabytes / _timed(put_large, large_keys),
        "large GET MB/s": megabytes / _timed(get_large, large_keys),
    }


def main() -> None:
    stores = {
        "moto (memory, loopback front)": "memory",
        "moto (memory, S3-only container front)": "memory-s3-only",
        "rclone (files)": "files",
    }
    rows = {}
    for label, kind in stores.items():
        with tempfile.TemporaryDirectory(prefix="smlocal-bench-s3-") as tmp:
            process, port = _start(kind, Path(tmp))
            try:
                rows[label] = measure(port)
            finally:
                assert process.stdin is not None
                process.stdin.close()
                process.wait(30)
        print(label, {k: round(v) for k, v in rows[label].items()}, flush=True)
    columns = list(next(iter(rows.values())))
    print("\n| store | " + " | ".join(columns) + " |")
    print("| --- |" + " --- |" * len(columns))
    for label, row in rows.items():
        print(f"| {label} | " + " | ".join(f"{row[c]:,.0f}" for c in columns) + " |")
    print(f"\n{SMALL_COUNT} x 4 KiB, {LARGE_COUNT} x 64 MiB; minio client, {DOWNLOAD_WORKERS} threads; "
          f"{os.cpu_count()} cores")


if __name__ == "__main__":
    main()
