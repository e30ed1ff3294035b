"""Row 7 of `make bench`: the simulated backend's speed (`serve --backend simulated`), against the API alone.

- Throughput: JOBS jobs with zero-length phases (`smlocal:training-seconds=0`) created by CLIENTS threads at once
  on a simulated server with a high --max-concurrent-jobs, from the first CreateTrainingJob sent to the last job
  seen Completed (a ListTrainingJobs of what is still InProgress, every 50 ms), as jobs per minute. Baseline:
  the same creates against an API-only server (--no-run-jobs), which only stores them: the rate the API and
  SQLite allow, the limit the simulated backend can approach (target: 1,000 jobs a minute on 2 cores).
- Latency: one job on the idle simulated server, CreateTrainingJob sent to Completed seen (DescribeTrainingJob
  every 10 ms), median of RUNS; baseline: a CreateTrainingJob round trip on the API-only server, and in
  `make bench` also row 1's no-op job on the Docker backend (measured the same way, polled every 20 ms).

No container engine is asked for anything (DOCKER_HOST points nowhere). Alone: `python -m bench.simulated`.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.table import print_rows
from tests.support.jobs import job_request
from tests.support.smlocal import SmlocalServer

JOBS = int(os.environ.get("BENCH_SIM_JOBS", "300"))
CLIENTS = 8
RUNS = 10
BUCKET = "smlocal-bench-sim"
SERVE = ["--log-level", "warning", "--s3-store", "memory"]
NO_ENGINE = {"DOCKER_HOST": "tcp://127.0.0.1:9"}
Row = tuple[str, str, str, str]


def _request(name: str) -> dict[str, Any]:
    return job_request(name, "bench/simulated:1", OutputDataConfig={"S3OutputPath": f"s3://{BUCKET}/out"},
                       Tags=[{"Key": "smlocal:training-seconds", "Value": "0"}])


def _create_all(server: SmlocalServer, prefix: str) -> None:
    """JOBS creates from CLIENTS threads, each with a client of its own."""
    clients = [server.client() for _ in range(CLIENTS)]
    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        list(pool.map(lambda i: clients[i % CLIENTS].create_training_job(**_request(f"{prefix}-{i}")), range(JOBS)))


def _all_done(sm: Any, prefix: str) -> bool:
    return not sm.list_training_jobs(NameContains=prefix, StatusEquals="InProgress", MaxResults=1)[
        "TrainingJobSummaries"]


def _statuses(sm: Any, prefix: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for page in sm.get_paginator("list_training_jobs").paginate(NameContains=prefix, MaxResults=100):
        for job in page["TrainingJobSummaries"]:
            counts[job["TrainingJobStatus"]] = counts.get(job["TrainingJobStatus"], 0) + 1
    return counts


def throughput(simulated: SmlocalServer, api_only: SmlocalServer) -> tuple[float, float]:
    """(jobs created-to-Completed per minute on the simulated server, creates per minute on the API-only one)."""
    sm = simulated.client()
    start = time.perf_counter()
    _create_all(simulated, "burst")
    while not _all_done(sm, "burst"):
        time.sleep(0.05)
    jobs_seconds = time.perf_counter() - start
    statuses = _statuses(sm, "burst")
    if statuses != {"Completed": JOBS}:
        raise RuntimeError(f"simulated jobs did not all complete: {statuses}")
    start = time.perf_counter()
    _create_all(api_only, "burst")
    api_seconds = time.perf_counter() - start
    return JOBS / jobs_seconds * 60, JOBS / api_seconds * 60


def latency(simulated: SmlocalServer, api_only: SmlocalServer) -> tuple[float, float]:
    """(median seconds from CreateTrainingJob to Completed seen, median CreateTrainingJob round trip API-only)."""
    sm, api = simulated.client(), api_only.client()
    jobs, creates = [], []
    for i in range(RUNS):  # interleaved: a shared machine's load slows both alike
        start = time.perf_counter()
        sm.create_training_job(**_request(f"one-{i}"))
        while (job := sm.describe_training_job(TrainingJobName=f"one-{i}"))["TrainingJobStatus"] == "InProgress":
            time.sleep(0.01)
        jobs.append(time.perf_counter() - start)
        if job["TrainingJobStatus"] != "Completed":
            raise RuntimeError(f"one-{i}: {job['TrainingJobStatus']}: {job.get('FailureReason')}")
        start = time.perf_counter()
        api.create_training_job(**_request(f"one-{i}"))
        creates.append(time.perf_counter() - start)
    return statistics.median(jobs), statistics.median(creates)


def rows(docker_job_seconds: float | None = None) -> list[Row]:
    """The rows; with `docker_job_seconds` (a no-op job create->Completed on the Docker backend, same run) one more."""
    with tempfile.TemporaryDirectory() as data_dir:
        root = Path(data_dir)
        simulated = SmlocalServer(root / "simulated", None, ["--backend", "simulated", "--max-concurrent-jobs",
                                                             str(JOBS), *SERVE], NO_ENGINE).start()
        api_only = SmlocalServer(root / "api", None, ["--no-run-jobs", *SERVE], NO_ENGINE).start()
        try:
            simulated.client("s3").create_bucket(Bucket=BUCKET)
            # Warm-up: the first jobs pay for imports and the first connections.
            simulated.client().create_training_job(**_request("warm-up"))
            latency_s, create_s = latency(simulated, api_only)
            jobs_per_minute, creates_per_minute = throughput(simulated, api_only)
        finally:
            simulated.stop()
            api_only.stop()
    found = [
        (f"Simulated backend: {JOBS} jobs with zero-length phases, {CLIENTS} clients",
         f"{jobs_per_minute:.0f} jobs/min created->Completed",
         f"{creates_per_minute:.0f} CreateTrainingJob/min, API only (--no-run-jobs)",
         f"{jobs_per_minute / creates_per_minute * 100:.0f} % of the API's rate"),
        ("Simulated backend: one job's latency", f"{latency_s * 1000:.0f} ms create->Completed",
         f"{create_s * 1000:.0f} ms a CreateTrainingJob round trip, API only",
         f"{latency_s / create_s:.1f}x"),
    ]
    if docker_job_seconds is not None:
        found.append(("Simulated backend: one job's latency", f"{latency_s * 1000:.0f} ms create->Completed",
                      f"{docker_job_seconds:.2f} s a no-op job on the Docker backend (row 1)",
                      f"{docker_job_seconds / latency_s:.0f}x sooner"))
    return found


def main() -> None:
    print_rows(rows())


if __name__ == "__main__":
    main()
