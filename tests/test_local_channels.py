"""A channel may name a folder on the smlocal machine (`file:///...`): it is copied in like S3 data."""

from __future__ import annotations

import io
import tarfile

import pytest

from tests.support.jobs import job_request, wait_for_status


@pytest.mark.usefixtures("test_images")
def test_file_uri_channel_is_staged(smlocal_factory, tmp_path):
    server = smlocal_factory("--stop-grace-seconds", "2")
    source = tmp_path / "dataset"
    (source / "nested").mkdir(parents=True)
    (source / "a.csv").write_text("1,2\n")
    (source / "nested" / "b.csv").write_text("3,4\n")
    s3 = server.client("s3")
    s3.create_bucket(Bucket="local-channel-out")
    request = job_request(
        "local-channel-job", OutputDataConfig={"S3OutputPath": "s3://local-channel-out/models"},
        InputDataConfig=[{"ChannelName": "train", "DataSource": {"S3DataSource": {
            "S3DataType": "S3Prefix", "S3Uri": f"file://{source}"}}}])
    request["AlgorithmSpecification"]["ContainerEntrypoint"] = [
        "sh", "-c", "cd /opt/ml/input/data/train && find . -type f | sort > /opt/ml/model/files.txt "
                    "&& cat a.csv nested/b.csv > /opt/ml/model/joined.csv"]
    sm = server.client()
    sm.create_training_job(**request)
    job = wait_for_status(sm, "local-channel-job", {"Completed", "Failed", "Stopped"})
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    body = s3.get_object(Bucket="local-channel-out", Key="models/local-channel-job/output/model.tar.gz")["Body"]
    with tarfile.open(fileobj=io.BytesIO(body.read())) as tar:
        files = {m.name.removeprefix("./"): tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    assert files == {"files.txt": b"./a.csv\n./nested/b.csv\n", "joined.csv": b"1,2\n3,4\n"}


@pytest.mark.usefixtures("test_images")
def test_missing_local_folder_fails_the_job(smlocal_factory, tmp_path):
    server = smlocal_factory("--stop-grace-seconds", "2")
    sm = server.client()
    request = job_request("local-missing", InputDataConfig=[{"ChannelName": "train", "DataSource": {
        "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": f"file://{tmp_path}/absent"}}}])
    sm.create_training_job(**request)
    job = wait_for_status(sm, "local-missing", {"Completed", "Failed", "Stopped"})
    assert job["TrainingJobStatus"] == "Failed"
    assert job["FailureReason"] == f'ClientError: Data download failed: local path "{tmp_path}/absent" does not exist.'
