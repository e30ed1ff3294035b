"""Valid CreateTrainingJob requests to start from, and small polling helpers."""

from __future__ import annotations

import copy
import time
from typing import Any

ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"


def job_request(name: str, image: str = "smlocal-test/busybox:1", **overrides: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "TrainingJobName": name,
        "RoleArn": ROLE,
        "AlgorithmSpecification": {"TrainingImage": image, "TrainingInputMode": "File"},
        "OutputDataConfig": {"S3OutputPath": "s3://smlocal-test-output/models"},
        "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 10},
        "StoppingCondition": {"MaxRuntimeInSeconds": 600},
    }
    request.update(copy.deepcopy(overrides))
    return request


def wait_for_status(sm: Any, name: str, statuses: set[str], timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = sm.describe_training_job(TrainingJobName=name)
        if job["TrainingJobStatus"] in statuses:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} still {job['TrainingJobStatus']}/{job['SecondaryStatus']} "
                                 f"after {timeout}s: {job.get('FailureReason')}")
        time.sleep(0.2)


# The order a job that completes moves through, as "TrainingJobStatus/SecondaryStatus".
COMPLETED_PATH = ("InProgress/Starting", "InProgress/Downloading", "InProgress/Training", "InProgress/Uploading",
                  "Completed/Completed")


def wait_recording(sm: Any, name: str, statuses: set[str], timeout: float = 120.0,
                   poll: float = 0.1) -> tuple[dict[str, Any], list[str]]:
    """Like wait_for_status, and also every distinct status seen on the way, in order."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        job = sm.describe_training_job(TrainingJobName=name)
        status = f"{job['TrainingJobStatus']}/{job['SecondaryStatus']}"
        if not seen or seen[-1] != status:
            seen.append(status)
        if job["TrainingJobStatus"] in statuses:
            return job, seen
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} still {status} after {timeout}s; seen {seen}")
        time.sleep(poll)


def assert_completed_in_order(seen: list[str]) -> None:
    """The statuses seen are a forward walk along COMPLETED_PATH that ends Completed."""
    assert seen and seen[-1] == COMPLETED_PATH[-1], seen
    positions = [COMPLETED_PATH.index(s) for s in seen]
    assert positions == sorted(positions), seen
