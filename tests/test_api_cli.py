"""The aws CLI against a running server: the README quick-start's commands."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# The CLI installed beside the interpreter running the tests (the project's venv), else any on PATH.
_VENV_AWS = Path(sys.executable).parent / "aws"
AWS = str(_VENV_AWS) if _VENV_AWS.exists() else (shutil.which("aws") or f"{sys.executable} -m awscli")


def aws(server, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:  # noqa: ANN001
    cmd = [*AWS.split(), "--endpoint-url", server.endpoint, "--output", "json", *args]
    result = subprocess.run(cmd, capture_output=True, text=True, env=server.cli_env(), timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"{cmd} failed: {result.stderr}")
    return result


CREATE = [
    "sagemaker", "create-training-job",
    "--role-arn", "arn:aws:iam::123456789012:role/SageMakerRole",
    "--algorithm-specification", "TrainingImage=smlocal-test/busybox:1,TrainingInputMode=File",
    "--output-data-config", "S3OutputPath=s3://models/out",
    "--resource-config", "InstanceType=ml.m5.large,InstanceCount=1,VolumeSizeInGB=5",
    "--stopping-condition", "MaxRuntimeInSeconds=300",
]


def test_quickstart_commands(api_server, unique_name):
    name = unique_name()
    created = json.loads(aws(api_server, *CREATE, "--training-job-name", name,
                             "--hyper-parameters", '{"epochs": "2"}').stdout)
    assert created["TrainingJobArn"].endswith(f":training-job/{name.lower()}")

    described = json.loads(aws(api_server, "sagemaker", "describe-training-job",
                               "--training-job-name", name).stdout)
    assert described["TrainingJobStatus"] == "InProgress"
    assert described["HyperParameters"] == {"epochs": "2"}

    listed = json.loads(aws(api_server, "sagemaker", "list-training-jobs", "--name-contains", name).stdout)
    assert [s["TrainingJobName"] for s in listed["TrainingJobSummaries"]] == [name]

    aws(api_server, "sagemaker", "stop-training-job", "--training-job-name", name)
    waited = aws(api_server, "sagemaker", "wait", "training-job-completed-or-stopped",
                 "--training-job-name", name)
    assert waited.returncode == 0


def test_cli_shows_aws_errors(api_server):
    result = aws(api_server, *CREATE, "--training-job-name", "under_score", check=False)
    assert result.returncode != 0
    assert "(ValidationException)" in result.stderr
    assert "Value 'under_score' at 'trainingJobName' failed to satisfy constraint" in result.stderr


def test_cli_list_paginates_itself(api_server, unique_name):
    prefix = unique_name("page")
    for i in range(12):
        aws(api_server, *CREATE, "--training-job-name", f"{prefix}-{i}")
    listed = json.loads(aws(api_server, "sagemaker", "list-training-jobs", "--name-contains", prefix,
                            "--page-size", "5").stdout)
    assert sorted(s["TrainingJobName"] for s in listed["TrainingJobSummaries"]) == sorted(
        f"{prefix}-{i}" for i in range(12))


@pytest.mark.parametrize("target", ["describe-training-job", "stop-training-job"])
def test_cli_unknown_job(api_server, target):
    result = aws(api_server, "sagemaker", target, "--training-job-name", "ghost", check=False)
    assert result.returncode != 0
    assert "Requested resource not found." in result.stderr
