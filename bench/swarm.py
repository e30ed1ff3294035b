"""Row 9 of `make bench`: a job's overhead on Docker Swarm (`serve --backend swarm`) against the Docker backend.

The same no-op job (a busybox `true`) with one small File channel, CreateTrainingJob to Completed seen
(DescribeTrainingJob every 20 ms), on two servers of this run: one on the engine itself, one on a single-node
swarm of the same engine (made for the bench and left as it was found, tests/support/swarm.py). Interleaved,
RUNS times each; medians. On Swarm each host is a service, and its data moves by smlocal's agent in tasks of their
own (stage, upload) on the node: what the row measures is that price. Alone: `python -m bench.swarm`.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.support.docker_env import docker_client, ensure_test_images
from tests.support.jobs import job_request
from tests.support.service_image import build_service_image
from tests.support.smlocal import SmlocalServer
from tests.support.swarm import swarm_manager

RUNS = 5
BUCKET = "smlocal-bench-swarm"
Row = tuple[str, str, str, str]


def _job_seconds(sm: Any, name: str) -> float:
    request = job_request(name, OutputDataConfig={"S3OutputPath": f"s3://{BUCKET}/out"},
                          InputDataConfig=[{"ChannelName": "train", "DataSource": {"S3DataSource": {
                              "S3DataType": "S3Prefix", "S3Uri": f"s3://{BUCKET}/data/"}}}])
    request["AlgorithmSpecification"]["ContainerEntrypoint"] = ["true"]
    start = time.perf_counter()
    sm.create_training_job(**request)
    while (job := sm.describe_training_job(TrainingJobName=name))["TrainingJobStatus"] == "InProgress":
        time.sleep(0.02)
    if job["TrainingJobStatus"] != "Completed":
        raise RuntimeError(f"{name}: {job['TrainingJobStatus']}: {job.get('FailureReason')}")
    return time.perf_counter() - start


def _server(folder: Path, *args: str) -> tuple[SmlocalServer, Any]:
    server = SmlocalServer(folder, None, ["--log-level", "warning", *args]).start()
    s3 = server.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="data/rows.csv", Body=b"1,2\n")
    return server, server.client()


def rows() -> list[Row]:
    client = docker_client()
    ensure_test_images(client)
    build_service_image(client)  # the agent runs this tree's code
    with swarm_manager(client), tempfile.TemporaryDirectory() as tmp:
        docker_server, docker_sm = _server(Path(tmp) / "docker")
        swarm_server, swarm_sm = _server(Path(tmp) / "swarm", "--backend", "swarm")
        try:
            _job_seconds(docker_sm, "warm-up")
            _job_seconds(swarm_sm, "warm-up")
            on_docker, on_swarm = [], []
            for i in range(RUNS):
                on_docker.append(_job_seconds(docker_sm, f"docker-{i}"))
                on_swarm.append(_job_seconds(swarm_sm, f"swarm-{i}"))
        finally:
            swarm_server.stop()
            docker_server.stop()
    s, d = statistics.median(on_swarm), statistics.median(on_docker)
    return [("Job overhead on Docker Swarm (no-op, one File channel)", f"{s:.2f} s create->Completed",
             f"{d:.2f} s on the Docker backend", f"+{s - d:.2f} s ({s / d:.2f}x)")]


if __name__ == "__main__":
    for row in rows():
        print("| " + " | ".join(row) + " |")
