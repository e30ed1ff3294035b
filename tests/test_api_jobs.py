"""Create / Describe / Stop / Delete through boto3, as a SageMaker user would call them."""

from __future__ import annotations

import time

import pytest
from botocore.exceptions import ClientError

from tests.support.jobs import ROLE, job_request


def error(call, **kwargs) -> tuple[str, str]:  # noqa: ANN001
    with pytest.raises(ClientError) as info:
        call(**kwargs)
    return info.value.response["Error"]["Code"], info.value.response["Error"]["Message"]


def test_create_returns_lowercased_arn(sm, unique_name):
    name = unique_name("MixedCase")
    arn = sm.create_training_job(**job_request(name))["TrainingJobArn"]
    assert arn == f"arn:aws:sagemaker:us-east-1:123456789012:training-job/{name.lower()}"


def test_describe_echoes_configuration_and_state(sm, unique_name):
    name = unique_name()
    channels = [{"ChannelName": "train", "ContentType": "text/csv", "InputMode": "File",
                 "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://data/train/",
                                                 "S3DataDistributionType": "FullyReplicated"}}}]
    request = job_request(
        name, HyperParameters={"epochs": "3", "lr": "0.1"}, InputDataConfig=channels,
        Environment={"MODE": "test"}, OutputDataConfig={"S3OutputPath": "s3://out/prefix/"},
        CheckpointConfig={"S3Uri": "s3://out/ckpt"},
    )
    before = time.time()
    sm.create_training_job(**request)
    job = sm.describe_training_job(TrainingJobName=name)

    assert job["TrainingJobName"] == name
    assert job["TrainingJobStatus"] == "InProgress"
    assert job["SecondaryStatus"] == "Starting"
    assert job["ModelArtifacts"]["S3ModelArtifacts"] == f"s3://out/prefix/{name}/output/model.tar.gz"
    assert job["HyperParameters"] == {"epochs": "3", "lr": "0.1"}
    assert job["InputDataConfig"] == channels
    assert job["Environment"] == {"MODE": "test"}
    assert job["RoleArn"] == ROLE
    assert job["ResourceConfig"] == request["ResourceConfig"]
    assert job["StoppingCondition"] == {"MaxRuntimeInSeconds": 600}
    assert job["CheckpointConfig"] == {"S3Uri": "s3://out/ckpt"}
    assert job["AlgorithmSpecification"] == request["AlgorithmSpecification"]
    assert job["EnableManagedSpotTraining"] is False
    assert abs(job["CreationTime"].timestamp() - before) < 5
    assert job["LastModifiedTime"] >= job["CreationTime"]
    assert job["SecondaryStatusTransitions"] == [{
        "Status": "Starting", "StartTime": job["CreationTime"],
        "StatusMessage": "Preparing the instances for training"}]
    assert "TrainingStartTime" not in job and "FailureReason" not in job


def test_uncompressed_output_model_path(sm, unique_name):
    name = unique_name()
    sm.create_training_job(**job_request(name, OutputDataConfig={"S3OutputPath": "s3://out/p",
                                                                 "CompressionType": "NONE"}))
    job = sm.describe_training_job(TrainingJobName=name)
    assert job["ModelArtifacts"]["S3ModelArtifacts"] == f"s3://out/p/{name}/output/model/"


def test_duplicate_name_is_resource_in_use(sm, unique_name):
    name = unique_name()
    sm.create_training_job(**job_request(name))
    code, message = error(sm.create_training_job, **job_request(name))
    assert code == "ResourceInUse"
    assert name.lower() in message
    # Names differ only in case: the ARN (lower-cased) is the same job.
    code, _ = error(sm.create_training_job, **job_request(name.upper()))
    assert code == "ResourceInUse"
    # The first job is untouched by the failed attempts.
    assert sm.describe_training_job(TrainingJobName=name)["TrainingJobStatus"] == "InProgress"


def test_unknown_job(sm):
    for call in (sm.describe_training_job, sm.stop_training_job, sm.delete_training_job):
        assert error(call, TrainingJobName="no-such-job") == (
            "ValidationException", "Requested resource not found.")


def test_stop_queued_job_and_stop_again(sm, unique_name):
    name = unique_name()
    sm.create_training_job(**job_request(name))
    sm.stop_training_job(TrainingJobName=name)
    job = sm.describe_training_job(TrainingJobName=name)
    assert (job["TrainingJobStatus"], job["SecondaryStatus"]) == ("Stopped", "Stopped")
    assert [t["Status"] for t in job["SecondaryStatusTransitions"]] == ["Starting", "Stopping", "Stopped"]
    assert all("StatusMessage" in t and "EndTime" in t for t in job["SecondaryStatusTransitions"])
    assert error(sm.stop_training_job, TrainingJobName=name) == (
        "ValidationException", "The request was rejected because the training job is in status Stopped.")


def test_delete_only_when_finished(sm, unique_name):
    name = unique_name()
    arn = sm.create_training_job(**job_request(name, Tags=[{"Key": "team", "Value": "a"}]))["TrainingJobArn"]
    code, message = error(sm.delete_training_job, TrainingJobName=name)
    assert (code, message) == ("ValidationException",
                               "The request was rejected because the training job is in status InProgress.")
    sm.stop_training_job(TrainingJobName=name)
    sm.delete_training_job(TrainingJobName=name)
    assert error(sm.describe_training_job, TrainingJobName=name)[1] == "Requested resource not found."
    assert error(sm.list_tags, ResourceArn=arn)[0] == "ValidationException"
    # The name is free again.
    assert sm.create_training_job(**job_request(name))["TrainingJobArn"] == arn


def test_jobs_are_scoped_by_signed_region(api_server, unique_name):
    name = unique_name()
    west = api_server.client(region="us-west-2")
    east = api_server.client(region="eu-central-1")
    arn = west.create_training_job(**job_request(name))["TrainingJobArn"]
    assert arn.startswith("arn:aws:sagemaker:us-west-2:123456789012:")
    assert error(east.describe_training_job, TrainingJobName=name)[1] == "Requested resource not found."
    # The same name is free in another region.
    assert ":eu-central-1:" in east.create_training_job(**job_request(name))["TrainingJobArn"]


def test_waiter_finishes_on_stopped(sm, unique_name):
    name = unique_name()
    sm.create_training_job(**job_request(name))
    sm.stop_training_job(TrainingJobName=name)
    sm.get_waiter("training_job_completed_or_stopped").wait(
        TrainingJobName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 5})


def test_waiter_fails_on_unknown_job(sm):
    from botocore.exceptions import WaiterError

    with pytest.raises(WaiterError):
        sm.get_waiter("training_job_completed_or_stopped").wait(
            TrainingJobName="never-created", WaiterConfig={"Delay": 1, "MaxAttempts": 2})


def test_unimplemented_sagemaker_operation(sm):
    code, _ = error(sm.list_endpoints)
    assert code == "UnknownOperationException"
