"""`smlocal serve` with no S3 endpoint: the embedded in-memory store serves the runner and containers."""

from __future__ import annotations

import io
import tarfile

import boto3
import pytest

from tests.support.jobs import job_request, wait_for_status
from tests.support.smlocal import SmlocalServer, free_port

SCRIPT = (
    "set -e; cat /opt/ml/input/data/train/* > /opt/ml/model/seen.txt; "
    # The container reaches the same store through the address smlocal hands it.
    'wget -q -O /opt/ml/model/fetched.txt "$AWS_ENDPOINT_URL_S3/embedded/extra.txt"'
)


@pytest.mark.usefixtures("test_images")
def test_job_runs_against_the_embedded_store(tmp_path):
    s3_port = free_port()
    server = SmlocalServer(tmp_path / "data", None, ["--embedded-s3-port", str(s3_port),
                                                    "--stop-grace-seconds", "2"]).start()
    try:
        assert "IN-MEMORY" in server.log()
        assert f"AWS_ENDPOINT_URL_S3=http://127.0.0.1:{s3_port}" in server.log()
        s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{s3_port}", region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test")
        s3.create_bucket(Bucket="embedded")
        s3.put_object(Bucket="embedded", Key="data/train/a.txt", Body=b"hello from s3\n")
        # busybox wget cannot sign requests: the object is public so an anonymous GET works.
        s3.put_object(Bucket="embedded", Key="extra.txt", Body=b"reached from the container\n", ACL="public-read")
        sm = server.client()
        request = job_request("embedded-store-job", OutputDataConfig={"S3OutputPath": "s3://embedded/out"},
                              InputDataConfig=[{"ChannelName": "train", "DataSource": {"S3DataSource": {
                                  "S3DataType": "S3Prefix", "S3Uri": "s3://embedded/data/train/"}}}])
        request["AlgorithmSpecification"]["ContainerEntrypoint"] = ["sh", "-c", SCRIPT]
        sm.create_training_job(**request)
        job = wait_for_status(sm, "embedded-store-job", {"Completed", "Failed", "Stopped"}, timeout=120)
        assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")

        body = s3.get_object(Bucket="embedded", Key="out/embedded-store-job/output/model.tar.gz")["Body"].read()
        with tarfile.open(fileobj=io.BytesIO(body)) as tar:
            files = {m.name.removeprefix("./"): tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
        assert files == {"seen.txt": b"hello from s3\n", "fetched.txt": b"reached from the container\n"}
    finally:
        server.stop()
