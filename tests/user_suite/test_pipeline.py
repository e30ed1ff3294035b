"""A user's tests of their own pipeline (pipeline.py), against the smlocal fixtures only."""

from __future__ import annotations

import io
import os
import tarfile
import time
from pathlib import Path

import boto3
import pipeline

# A container that copies its training channel into the model.
COPY_IMAGE = os.environ.get("USER_SUITE_IMAGE", "smlocal-test/busybox:1")
COPY = ["sh", "-c", "cp /opt/ml/input/data/train/* /opt/ml/model/"]


def test_the_code_under_test_is_pointed_at_smlocal(smlocal):
    assert os.environ["AWS_ENDPOINT_URL_SAGEMAKER"] == smlocal.endpoint
    assert os.environ["AWS_ENDPOINT_URL_S3"] == smlocal.s3_endpoint
    for service in ("logs", "cloudwatch"):
        assert boto3.client(service).meta.endpoint_url == smlocal.endpoint
    assert boto3.client("s3").meta.endpoint_url == smlocal.s3_endpoint
    assert boto3.client("sagemaker").list_training_jobs()["TrainingJobSummaries"] == []


def test_the_clients_are_bound_to_smlocal(smlocal, smlocal_sagemaker, smlocal_s3, smlocal_logs):
    assert smlocal_sagemaker.meta.endpoint_url == smlocal.endpoint
    assert smlocal_logs.meta.endpoint_url == smlocal.endpoint
    assert smlocal_s3.meta.endpoint_url == smlocal.s3_endpoint


def test_a_dataset_uploaded_by_the_pipeline(smlocal_s3):
    uri = pipeline.upload_dataset("user-suite-data", [(0.5, 1), (0.1, 0)])
    assert uri == "s3://user-suite-data/data/train/"
    body = smlocal_s3.get_object(Bucket="user-suite-data", Key="data/train/rows.csv")["Body"].read()
    assert body == b"0.5,1\n0.1,0\n"


def test_a_job_started_by_the_pipeline_is_listed(smlocal_sagemaker):
    data = pipeline.upload_dataset("user-suite-data", [(1.0, 1)])
    arn = pipeline.start_training("listed-job", COPY_IMAGE, data, "s3://user-suite-data/models", COPY)
    assert arn.endswith(":training-job/listed-job")
    names = [j["TrainingJobName"] for j in smlocal_sagemaker.list_training_jobs()["TrainingJobSummaries"]]
    assert "listed-job" in names


def test_the_pipeline_trains_a_model(smlocal, smlocal_s3):
    smlocal.require_docker()
    data = pipeline.upload_dataset("user-suite-models", [(0.25, 0), (0.75, 1)])
    pipeline.start_training("copy-job", COPY_IMAGE, data, "s3://user-suite-models/out", COPY)
    job = smlocal.wait_for_job("copy-job")
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    body = smlocal_s3.get_object(Bucket="user-suite-models", Key="out/copy-job/output/model.tar.gz")["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        files = {m.name.removeprefix("./"): tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    assert files == {"rows.csv": b"0.25,0\n0.75,1\n"}


def test_a_job_left_running_at_the_end(smlocal):
    """Not stopped here: the fixture must remove its container when the session ends."""
    smlocal.require_docker()
    data = pipeline.upload_dataset("user-suite-data", [(1.0, 1)])
    pipeline.start_training("left-running", COPY_IMAGE, data, "s3://user-suite-data/models", ["sleep", "600"])
    deadline = time.monotonic() + 120
    while pipeline.status("left-running") != ("InProgress", "Training"):
        assert time.monotonic() < deadline, pipeline.status("left-running")
        time.sleep(0.2)
    notes = os.environ.get("USER_SUITE_NOTES")
    if notes:
        Path(notes).write_text(str(smlocal.data_dir))
