"""`make bench`: smlocal's overheads as ratios against baselines measured in the same run.

1. Job overhead: CreateTrainingJob -> Completed for a no-op container, against a bare
   `docker run --rm <image> true` of the same image, and against the same on a user-defined network
   with a network alias (what every smlocal job gets, so that hosts find each other by name).
2. File-mode staging: 1 000 small objects, and 1 GiB in a few large objects, against a raw parallel
   GET of the same objects from the same S3 server (the runner's parallelism, the minio client, one
   streamed GET per object into a file).
3. Pipe throughput against a raw read of the same objects in the same order, and the time to the first
   byte of a 2 GiB data set in Pipe and FastFile mode against File mode (bench/streaming.py).
4. The FUSE filesystem behind FastFile: rclone mount / mount2 against s3fs (bench/fuse_choice.py).
5. Checkpoint sync delay: a file's close() in a synced folder to its object visible in S3, against a plain
   put_object of the same file (bench/checkpoint_sync.py).
6. A job on a warm pool against the same job cold: its start, and a job that fills or finds its
   persistent cache (bench/warm_pools.py).
7. The simulated backend (no engine): jobs per minute created-to-Completed with zero-length phases against the
   API-only server's CreateTrainingJob rate, and one job's create-to-Completed latency against a create's round
   trip (bench/simulated.py).
8. A tuning job's cost per trial: its trials one at a time against the same training jobs created by hand,
   one after another (bench/tuning.py).
9. A job on Docker Swarm (hosts as services, data moved by smlocal's agent on the node) against the same job on
   the Docker backend (bench/swarm.py).
10. The API under load at 10,000 jobs (CreateTrainingJob, DescribeTrainingJob, ListTrainingJobs(100)) from a light
    SigV4 client in a few processes, against moto's server on the same load (bench/api_load.py).
11. A fuzz of the API from the service models, randomised and longer than the suite's: cases per second and
    what it found, against plain valid requests over the same client (bench/api_fuzz.py).

It prints a Markdown table (paste it into the README) and writes it to bench/results/latest.md.
Timings on a shared 2-core machine are noisy: read the ratios, not the seconds.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from minio import Minio

from bench import api_fuzz, api_load, checkpoint_sync, fuse_choice, simulated, streaming, swarm, tuning, warm_pools
from runner.inputs.file_staging import CHUNK, DOWNLOAD_WORKERS
from tests.support.docker_env import BUSYBOX_IMAGE, docker_client, ensure_test_images, host_address_for_containers
from tests.support.jobs import job_request
from tests.support.s3server import start_s3_server
from tests.support.smlocal import SmlocalServer

BUCKET = "smlocal-bench"
RUNS = int(os.environ.get("BENCH_RUNS", "5"))
SMALL_COUNT = 1000
SMALL_SIZE = 4 * 1024
LARGE_COUNT = 4
LARGE_SIZE = 256 * 1024 * 1024


def wait_done(sm: Any, name: str, poll: float = 0.02) -> dict[str, Any]:
    while True:
        job = sm.describe_training_job(TrainingJobName=name)
        if job["TrainingJobStatus"] in ("Completed", "Failed", "Stopped"):
            if job["TrainingJobStatus"] != "Completed":
                raise RuntimeError(f"{name}: {job['TrainingJobStatus']}: {job.get('FailureReason')}")
            return job
        time.sleep(poll)


def phase_seconds(job: dict[str, Any], status: str) -> float:
    for t in job["SecondaryStatusTransitions"]:
        if t["Status"] == status:
            return (t["EndTime"] - t["StartTime"]).total_seconds()
    raise KeyError(status)


def bare_docker_run(*options: str) -> float:
    start = time.perf_counter()
    subprocess.run(["docker", "run", "--rm", *options, BUSYBOX_IMAGE, "true"], check=True, capture_output=True)
    return time.perf_counter() - start


def noop_job(sm: Any, name: str, channels: list[dict[str, Any]] | None = None,
             poll: float = 0.02) -> tuple[float, dict[str, Any]]:
    request = job_request(name, OutputDataConfig={"S3OutputPath": f"s3://{BUCKET}/out"})
    request["AlgorithmSpecification"]["ContainerEntrypoint"] = ["true"]
    if channels:
        request["InputDataConfig"] = channels
    start = time.perf_counter()
    sm.create_training_job(**request)
    job = wait_done(sm, name, poll)
    return time.perf_counter() - start, job


def wait_idle(server: SmlocalServer, docker: Any, name: str) -> None:
    """After its terminal status a job's container is removed and the next job's network made; let that
    finish before the next measurement, so neither side pays for the other's housekeeping."""
    while docker.api.containers(all=True, filters={"label": f"smlocal.job-name={name}"}):
        time.sleep(0.02)
    for _ in range(250):
        with urllib.request.urlopen(server.endpoint + "/health", timeout=10) as response:
            if json.load(response)["runner"].get("spareNetwork"):
                return
        time.sleep(0.02)


def channel(prefix: str) -> list[dict[str, Any]]:
    return [{"ChannelName": "train", "DataSource": {"S3DataSource": {
        "S3DataType": "S3Prefix", "S3Uri": f"s3://{BUCKET}/{prefix}/"}}}]


def _get_to_file(client: Minio, key: str, dest: str) -> None:
    # One GET per object streamed to a file: what the runner does, without anything around it
    # (minio's fget_object would add a HEAD per object and a rename).
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    response = client.get_object(BUCKET, key)
    try:
        with open(dest, "wb") as f:
            while chunk := response.read1(CHUNK):
                f.write(chunk)
    finally:
        response.close()
        response.release_conn()


def raw_parallel_get(client: Minio, prefix: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        keys = [o.object_name for o in client.list_objects(BUCKET, prefix=f"{prefix}/", recursive=True)]
        with ThreadPoolExecutor(max_workers=DOWNLOAD_WORKERS) as pool:
            list(pool.map(lambda k: _get_to_file(client, k, os.path.join(tmp, k)), keys))
        return time.perf_counter() - start


def upload_dataset(client: Minio, prefix: str, count: int, size: int) -> None:
    import io

    payload = os.urandom(min(size, 1024 * 1024))

    def put(i: int) -> None:
        data = (payload * (size // len(payload) + 1))[:size]
        client.put_object(BUCKET, f"{prefix}/part-{i:05d}", io.BytesIO(data), len(data))

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(put, range(count)))


def main() -> None:
    docker = docker_client()
    ensure_test_images(docker)
    gateway = host_address_for_containers(docker)
    rows: list[tuple[str, str, str, str]] = []
    with start_s3_server(host=gateway) as s3, tempfile.TemporaryDirectory() as data_dir:
        server = SmlocalServer(Path(data_dir), s3.endpoint, ["--log-level", "warning"]).start()
        try:
            sm = server.client()
            endpoint = urlparse(s3.endpoint)
            client = Minio(endpoint.netloc, access_key="test", secret_key="test", secure=False)
            client.make_bucket(BUCKET)

            noop_job(sm, "warm-up")
            network = docker.networks.create("smlocal-bench-net", labels={"smlocal.bench": "true"})
            try:
                bare, bare_on_network, jobs = [], [], []
                # Interleaved, so that load from elsewhere on a shared machine slows every side alike.
                for i in range(RUNS):
                    bare.append(bare_docker_run())
                    # What smlocal asks of Docker: a network of the job's own, the host name as an alias.
                    bare_on_network.append(bare_docker_run("--network", network.name, "--network-alias", "algo-1",
                                                           "--hostname", "algo-1"))
                    jobs.append(noop_job(sm, f"noop-{i}"))
                    wait_idle(server, docker, f"noop-{i}")
            finally:
                network.remove()
            smlocal = [seconds for seconds, _ in jobs]
            s = statistics.median(smlocal)
            for baseline, label in ((bare, "bare docker run"), (bare_on_network, "docker run on a network of its own")):
                b = statistics.median(baseline)
                rows.append(("Job overhead (no-op container)", f"{s:.2f} s create->Completed", f"{b:.2f} s {label}",
                             f"+{s - b:.2f} s ({s / b:.2f}x)"))

            for label, prefix, count, size in (
                (f"Staging {SMALL_COUNT} x {SMALL_SIZE // 1024} KiB", "small", SMALL_COUNT, SMALL_SIZE),
                (f"Staging {LARGE_COUNT} x {LARGE_SIZE // 2**20} MiB", "large", LARGE_COUNT, LARGE_SIZE),
            ):
                upload_dataset(client, prefix, count, size)
                raw_runs, staged = [], []
                # Interleaved, so that page-cache writeback of the earlier runs' gigabytes slows both
                # sides alike instead of whichever runs last.
                for i in range(3):
                    raw_runs.append(raw_parallel_get(client, prefix))
                    # Staging is timed from the job's own transitions, so polling slowly costs no
                    # accuracy and leaves the CPU to the download (2 cores, one GIL per process).
                    _, job = noop_job(sm, f"stage-{prefix}-{i}", channel(prefix), poll=0.5)
                    # The Downloading phase is the staging: the container is created before it and
                    # started after it (in Training).
                    staged.append(phase_seconds(job, "Downloading"))
                raw = statistics.median(raw_runs)
                st = statistics.median(staged)
                rows.append((label, f"{st:.2f} s", f"{raw:.2f} s raw parallel GET",
                             f"{raw / st * 100:.0f} % of raw speed"))

            rows += streaming.pipe_throughput_rows(sm, client, wait_done, [
                (f"{LARGE_COUNT} x {LARGE_SIZE // 2**20} MiB", "large"),
                (f"{SMALL_COUNT} x {SMALL_SIZE // 1024} KiB", "small")])
            upload_dataset(client, "ttfb", streaming.TTFB_COUNT, streaming.TTFB_SIZE)
            rows += streaming.first_byte_rows(sm, client, wait_done, "ttfb")
            rows += checkpoint_sync.rows(client)
            rows += warm_pools.rows(sm, BUCKET, wait_done)
            rows += tuning.rows(sm, BUCKET, wait_done)
        finally:
            server.stop()
        fuse_client = Minio(urlparse(s3.endpoint).netloc, access_key="test", secret_key="test", secure=False)
        fuse_choice.upload(fuse_client)
        fuse_rows = fuse_choice.compare(s3.endpoint)
    # Servers of its own, after the Docker one has stopped; its latency also against row 1's Docker job.
    rows += simulated.rows(docker_job_seconds=s)
    rows += swarm.rows()
    # Servers of its own (API only, and moto's), with nothing else running beside them.
    rows += api_load.rows()
    rows += api_fuzz.rows()

    cpu = platform.processor() or platform.machine()
    memory_gib = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    lines = [
        f"Machine: {os.cpu_count()} cores ({cpu}), {memory_gib:.0f} "
        f"GiB, Linux {platform.release()}, Docker {docker.version()['Version']}, S3: moto server; "
        f"median of {RUNS} (overhead) / 3 (staging, streaming, FUSE) runs, "
        f"{checkpoint_sync.FILES} files (checkpoint sync).",
        "",
        "| measurement | smlocal | baseline (same run) | result |",
        "| --- | --- | --- | --- |",
        *[f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows],
        "",
        *fuse_choice.table(fuse_rows),
    ]
    report = "\n".join(lines)
    print(report)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.md").write_text(report + "\n")


if __name__ == "__main__":
    main()
