"""The aws CLI against a running server: the README quick-start's commands."""

from __future__ import annotations

import json

import pytest

from tests.support.awscli import aws

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


# ---- `smlocal serve`: binding and the banner ----------------------------------------------------------

WIDE = {"COLUMNS": "250"}  # keep each banner line on one line


def test_non_loopback_host_without_keys_refuses_to_start(smlocal_factory):
    with pytest.raises(RuntimeError) as info:
        smlocal_factory("--no-run-jobs", "--host", "0.0.0.0", env=WIDE)
    log = str(info.value)
    assert "smlocal exited with 2" in log
    assert ("Refusing to serve 0.0.0.0 without authentication: anyone who reaches it could run containers on this "
            "machine. Set --access-key and --secret-key (SigV4 required), or pass --allow-unauthenticated to accept "
            "any caller.") in log


def test_allow_unauthenticated_serves_and_the_banner_says_so(smlocal_factory):
    server = smlocal_factory("--no-run-jobs", "--host", "0.0.0.0", "--allow-unauthenticated", env=WIDE)
    assert "TrainingJobSummaries" in server.client().list_training_jobs()
    assert "auth           UNAUTHENTICATED (any signature accepted from anyone who reaches 0.0.0.0)" in server.log()


def test_non_loopback_host_with_keys_requires_sigv4(smlocal_factory):
    server = smlocal_factory("--no-run-jobs", "--host", "0.0.0.0", "--access-key", "AKIDBIND", "--secret-key", "s",
                             env=WIDE)
    assert "auth           SigV4 required" in server.log()
    assert "TrainingJobSummaries" in server.client(access_key="AKIDBIND", secret_key="s").list_training_jobs()


def test_loopback_banner_says_unauthenticated_and_names_local_roots(smlocal_factory, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    server = smlocal_factory("--no-run-jobs", "--host", "localhost", "--max-hosts-per-job", "6",
                             env={**WIDE, "SMLOCAL_LOCAL_CHANNEL_ROOT": f"{tmp_path}/a:{tmp_path}/b"})
    log = server.log()
    assert "auth           UNAUTHENTICATED (any signature accepted; loopback only)" in log
    assert f"file:// from   {tmp_path}/a, {tmp_path}/b" in log
    assert "jobs           not run (--no-run-jobs); up to 6 hosts each" in log
    default = smlocal_factory("--no-run-jobs", env=WIDE)
    assert "file:// from   off (no --local-channel-root)" in default.log()


@pytest.mark.parametrize(("flag", "value", "says"), [
    ("--region", "mars-north-1", "Invalid value for --region: 'mars-north-1' is not an AWS region name"),
    ("--account-id", "12345", "Invalid value for --account-id: '12345' is not a 12-digit account id"),
    ("--local-channel-root", "/nonexistent/smlocal-root", "Invalid value for --local-channel-root: "
                                                          "/nonexistent/smlocal-root is not a folder"),
])
def test_bad_settings_refuse_to_start(smlocal_factory, flag, value, says):
    with pytest.raises(RuntimeError) as info:
        smlocal_factory("--no-run-jobs", flag, value, env=WIDE)
    assert says in " ".join(str(info.value).replace("│", " ").split())
