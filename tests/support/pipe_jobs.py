"""Pipe-mode jobs for tests: channels, a job whose algorithm is pipe_reader.py, and checks of the statuses a job
went through (shared by the Pipe, FastFile and sharding tests)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.support.docker_env import PYTHON_BASE_IMAGE
from tests.support.jobs import job_request
from tests.support.runner_jobs import INPUT_BUCKET

READER = Path(__file__).parent / "pipe_reader.py"
ENTRYPOINT = ["python3", "/opt/ml/input/data/code/pipe_reader.py"]


def put_objects(s3: Any, prefix: str, objects: dict[str, bytes]) -> None:
    for key, body in objects.items():
        s3.put_object(Bucket=INPUT_BUCKET, Key=f"{prefix}/{key}", Body=body)


def pipe_channel(name: str, uri: str, *, mode: str | None = "Pipe", distribution: str = "FullyReplicated",
                 data_type: str = "S3Prefix", **extra: Any) -> dict[str, Any]:
    channel = {"ChannelName": name, "DataSource": {"S3DataSource": {
        "S3DataType": data_type, "S3Uri": uri, "S3DataDistributionType": distribution,
        **({"AttributeNames": extra.pop("AttributeNames")} if "AttributeNames" in extra else {})}}, **extra}
    if mode:
        channel["InputMode"] = mode
    return channel


def reader_job(s3: Any, name: str, channels: list[dict[str, Any]], plan: dict[str, dict[str, Any]],
               job_mode: str = "File", **overrides: Any) -> dict[str, Any]:
    """A job whose algorithm is pipe_reader.py following `plan` (the reader ships as a File-mode channel)."""
    s3.put_object(Bucket=INPUT_BUCKET, Key=f"{name}/code/pipe_reader.py", Body=READER.read_bytes())
    code = {"ChannelName": "code", "InputMode": "File", "DataSource": {"S3DataSource": {
        "S3DataType": "S3Prefix", "S3Uri": f"s3://{INPUT_BUCKET}/{name}/code/"}}}
    return job_request(
        name, PYTHON_BASE_IMAGE, HyperParameters={"plan": json.dumps(plan)},
        AlgorithmSpecification={"TrainingImage": PYTHON_BASE_IMAGE, "TrainingInputMode": job_mode,
                                "ContainerEntrypoint": ENTRYPOINT},
        InputDataConfig=[*channels, code], **overrides)


# The statuses a job can show, in the order SageMaker moves through them (Stopping may come from any
# InProgress status; a job fails from any of them).
_ORDER = ["InProgress/Starting", "InProgress/Downloading", "InProgress/Training", "InProgress/Uploading",
          "Stopping/Stopping", "Completed/Completed", "Failed/Failed", "Stopped/Stopped"]


def ended(job: dict[str, Any], seen: list[str], status: str) -> None:
    """The job ended in `status`, and every status seen while polling came in an order SageMaker produces
    (a job that waited for a slot went Starting -> Pending -> Starting first)."""
    assert job["TrainingJobStatus"] == status, job.get("FailureReason")
    seen = [s for s in seen if s != "InProgress/Pending"]
    seen = [s for i, s in enumerate(seen) if i == 0 or seen[i - 1] != s]
    assert seen and seen[-1] == f"{status}/{job['SecondaryStatus']}" and seen[-1] in _ORDER, seen
    ranks = [_ORDER.index(s) for s in seen]
    assert ranks == sorted(ranks) and sum(s.split("/")[0] in ("Completed", "Failed", "Stopped") for s in seen) == 1


def completed(job: dict[str, Any], seen: list[str]) -> None:
    ended(job, seen, "Completed")
