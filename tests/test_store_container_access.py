"""What a training container reaches of the embedded store: the S3 API, and none of its control routes.

A real job's container (busybox wget, the address smlocal hands it in AWS_ENDPOINT_URL_S3) fetches an
object with a presigned GET, then tries moto's admin routes (reset, state dump) and rclone's remote
control port. The host's loopback still has moto's admin routes: only the containers' address is S3-only.
"""

from __future__ import annotations

import io
import json
import tarfile
import urllib.request

import boto3
import pytest
from botocore.config import Config

from tests.support.jobs import job_request, wait_for_status
from tests.support.smlocal import STORE_KEY, SmlocalServer

# `wget` exits non-zero on a refused connection and on any HTTP error status. (busybox-static's own
# `wget -T` crashes, hence `timeout`.)
SCRIPT = """
cd /opt/ml/model
try() { name=$1; shift; timeout 10 wget -q "$@" > /dev/null 2>&1; echo "$name=$?" >> results; }
timeout 10 wget -q -O fetched.txt "$GET_URL"; echo "get=$?" >> results
try reset -O reset.txt --post-data= "$AWS_ENDPOINT_URL_S3/moto-api/reset"
try state -O state.txt "$AWS_ENDPOINT_URL_S3/moto-api/data.json"
try dashboard -O dashboard.txt "$AWS_ENDPOINT_URL_S3/moto-api/"
try metadata -O metadata.txt "$AWS_ENDPOINT_URL_S3/latest/meta-data/"
try rclone_rc -O rc.txt --post-data= "http://host.docker.internal:5572/rc/noop"
exit 0
"""


@pytest.mark.usefixtures("test_images")
@pytest.mark.parametrize("kind", ["files", "memory"])
def test_containers_reach_the_s3_api_and_no_control_route(tmp_path, kind: str) -> None:
    server = SmlocalServer(tmp_path / "data", None, ["--s3-store", kind, "--stop-grace-seconds", "2"]).start()
    try:
        s3 = server.client("s3")
        s3.create_bucket(Bucket="reach")
        s3.put_object(Bucket="reach", Key="data/object.txt", Body=b"from the store\n")
        s3.put_object(Bucket="reach", Key="code/probe.sh", Body=SCRIPT.encode())
        # busybox cannot sign a request: sign it here, for the address the container uses.
        inside = f"http://host.docker.internal:{server.embedded_s3_port}"
        signer = boto3.client("s3", endpoint_url=inside, region_name="us-east-1", aws_access_key_id=STORE_KEY,
                              aws_secret_access_key=STORE_KEY, config=Config(signature_version="s3v4"))
        url = signer.generate_presigned_url("get_object", Params={"Bucket": "reach", "Key": "data/object.txt"})
        if kind == "memory":
            # The admin routes are there, on loopback: what the containers get is a different front.
            with urllib.request.urlopen(f"{server.s3_endpoint}/moto-api/data.json", timeout=10) as response:
                assert "s3" in json.loads(response.read())

        sm = server.client()
        name = f"reach-{kind}"
        request = job_request(name, OutputDataConfig={"S3OutputPath": "s3://reach/out"},
                              Environment={"GET_URL": url},
                              InputDataConfig=[{"ChannelName": "code", "DataSource": {"S3DataSource": {
                                  "S3DataType": "S3Prefix", "S3Uri": "s3://reach/code/"}}}])
        request["AlgorithmSpecification"]["ContainerEntrypoint"] = ["sh", "/opt/ml/input/data/code/probe.sh"]
        sm.create_training_job(**request)
        job = wait_for_status(sm, name, {"Completed", "Failed", "Stopped"}, timeout=180)
        assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")

        body = s3.get_object(Bucket="reach", Key=f"out/{name}/output/model.tar.gz")["Body"].read()
        with tarfile.open(fileobj=io.BytesIO(body)) as tar:
            files = {m.name.removeprefix("./"): tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
        results = dict(line.split("=") for line in files["results"].decode().split())
        assert results["get"] == "0" and files["fetched.txt"] == b"from the store\n", results
        refused = {k: v for k, v in results.items() if k != "get"}
        assert refused and all(code != "0" for code in refused.values()), results
        # The reset did not happen: the store still has what it had.
        assert s3.get_object(Bucket="reach", Key="data/object.txt")["Body"].read() == b"from the store\n"
    finally:
        server.stop()


def test_the_memory_stores_container_front_is_s3_only() -> None:
    """The same store in this process, its container front on 127.0.0.2 in place of the bridge gateway."""
    import urllib.error

    from server.s3_memory import MemoryStore
    from tests.support.smlocal import free_port

    store = MemoryStore(port=free_port(), gateway="127.0.0.2")
    store.start()
    try:
        keys = {"region_name": "us-east-1", "aws_access_key_id": STORE_KEY, "aws_secret_access_key": STORE_KEY}
        host_side = boto3.client("s3", endpoint_url=store.endpoint, **keys)
        front = f"http://127.0.0.2:{store.port}"
        container_side = boto3.client("s3", endpoint_url=front, **keys)
        host_side.create_bucket(Bucket="kept")
        host_side.put_object(Bucket="kept", Key="k", Body=b"v")
        assert container_side.get_object(Bucket="kept", Key="k")["Body"].read() == b"v"
        container_side.put_object(Bucket="kept", Key="from-container", Body=b"c")
        assert host_side.get_object(Bucket="kept", Key="from-container")["Body"].read() == b"c"

        for path, data in (("/moto-api/reset", b""), ("/moto-api/data.json", None), ("/moto-api/", None),
                           ("/latest/meta-data/", None)):
            with pytest.raises(urllib.error.HTTPError) as exc:
                urllib.request.urlopen(urllib.request.Request(front + path, data=data), timeout=10)
            assert exc.value.code >= 400, path
        with urllib.request.urlopen(f"{store.endpoint}/moto-api/data.json", timeout=10) as response:
            assert response.status == 200  # the host's side still has them
        # Another service's request, signed as such, is not served as that service.
        sqs = boto3.client("sqs", endpoint_url=front, **keys)
        assert "QueueUrls" not in sqs.list_queues()
        host_sqs = boto3.client("sqs", endpoint_url=store.endpoint, **keys)
        host_sqs.create_queue(QueueName="on-the-host")
        assert len(host_sqs.list_queues()["QueueUrls"]) == 1
        assert "QueueUrls" not in sqs.list_queues()
        assert [o["Key"] for o in host_side.list_objects_v2(Bucket="kept")["Contents"]] == ["from-container", "k"]
    finally:
        store.stop()
