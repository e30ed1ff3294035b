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
