"""What a training container reaches of the S3 store: the S3 API, and none of its control routes.

A real job's container (busybox wget, the address smlocal hands it in AWS_ENDPOINT_URL_S3) fetches an
object with a presigned GET, then tries moto's admin routes (reset, state dump) and rclone's remote
control port. The host's loopback still has moto's admin routes: only the containers' address is S3-only.
That holds for both embedded stores and for a store smlocal does not run (`--s3-endpoint`, here a whole
moto server), which containers reach through smlocal's S3-only front (server/s3/front.py).
"""

from __future__ import annotations

import contextlib
import io
import json
import socket
import tarfile
import threading
import time
import urllib.request
from collections.abc import Iterator

import boto3
import botocore.exceptions
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
env > env
exit 0
"""


@contextlib.contextmanager
def _server(tmp_path, kind: str) -> Iterator[SmlocalServer]:
    """smlocal with an embedded store of `kind`, or `external-*`: a whole moto server of the test's own
    (admin routes included) as `--s3-endpoint`, on loopback or on the bridge gateway."""
    from tests.support.docker_env import docker_client, host_address_for_containers
    from tests.support.s3server import start_s3_server

    args = ["--stop-grace-seconds", "2"]
    if not kind.startswith("external"):
        server = SmlocalServer(tmp_path / "data", None, ["--s3-store", kind, *args]).start()
        try:
            yield server
        finally:
            server.stop()
        return
    host = "127.0.0.1" if kind == "external-loopback" else host_address_for_containers(docker_client())
    with start_s3_server(host=host) as moto:
        server = SmlocalServer(tmp_path / "data", moto.endpoint, args).start()
        try:
            yield server
        finally:
            server.stop()


def _containers_port(server: SmlocalServer) -> int:
    """The port containers reach the store on: the embedded store's, or the front's (which it remembers)."""
    if server.embedded_s3_port:
        return server.embedded_s3_port
    return int((server.data_dir / "s3-front.port").read_text())


@pytest.mark.usefixtures("test_images")
@pytest.mark.parametrize("kind", ["files", "memory", "external-loopback", "external-gateway"])
def test_containers_reach_the_s3_api_and_no_control_route(tmp_path, kind: str) -> None:
    with _server(tmp_path, kind) as server:
        s3 = server.client("s3")
        s3.create_bucket(Bucket="reach")
        s3.put_object(Bucket="reach", Key="data/object.txt", Body=b"from the store\n")
        s3.put_object(Bucket="reach", Key="code/probe.sh", Body=SCRIPT.encode())
        # busybox cannot sign a request: sign it here, for the address the container uses.
        inside = f"http://host.docker.internal:{_containers_port(server)}"
        signer = boto3.client("s3", endpoint_url=inside, region_name="us-east-1", aws_access_key_id=STORE_KEY,
                              aws_secret_access_key=STORE_KEY, config=Config(signature_version="s3v4"))
        url = signer.generate_presigned_url("get_object", Params={"Bucket": "reach", "Key": "data/object.txt"})
        if kind != "files":
            # The admin routes are there, on the store's own address: what the containers get is a front.
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
        env = dict(line.split("=", 1) for line in files["env"].decode().splitlines() if "=" in line)
        assert env["AWS_ENDPOINT_URL_S3"] == env["S3_ENDPOINT_URL"] == inside
        # The reset did not happen: the store still has what it had.
        assert s3.get_object(Bucket="reach", Key="data/object.txt")["Body"].read() == b"from the store\n"


def test_the_memory_stores_container_front_is_s3_only() -> None:
    """The same store in this process, its container front on 127.0.0.2 in place of the bridge gateway."""
    import urllib.error

    from server.s3.memory import MemoryStore
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
        host_sqs = boto3.client("sqs", endpoint_url=store.endpoint, **keys)
        host_sqs.create_queue(QueueName="on-the-host")
        assert len(host_sqs.list_queues()["QueueUrls"]) == 1
        with pytest.raises(botocore.exceptions.ClientError) as refused:
            sqs.list_queues()
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
        assert "only the S3 API is served here" in str(refused.value)
        assert [o["Key"] for o in host_side.list_objects_v2(Bucket="kept")["Contents"]] == ["from-container", "k"]
    finally:
        store.stop()


# ---- a store smlocal does not run (--s3-endpoint): the S3-only front --------------------------------


@pytest.fixture()
def moto_on_loopback():  # noqa: ANN201 - an S3Server
    """A whole moto server of this test's own (its admin routes included), as an operator might run one."""
    from tests.support.s3server import start_s3_server

    with start_s3_server() as moto:
        yield moto


def _raw(address: str, port: int, request: bytes) -> bytes:
    """Send bytes as they are, read the answer until the front closes."""
    with socket.create_connection((address, port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_the_front_forwards_the_s3_api_and_nothing_else(moto_on_loopback) -> None:
    import botocore.exceptions

    from server.s3.front import S3Front

    front = S3Front(moto_on_loopback.endpoint, "127.0.0.2")
    front.start()
    try:
        keys = {"region_name": "us-east-1", "aws_access_key_id": STORE_KEY, "aws_secret_access_key": STORE_KEY}
        url = front.endpoint_for("127.0.0.2")
        s3 = boto3.client("s3", endpoint_url=url, **keys)
        host_side = boto3.client("s3", endpoint_url=moto_on_loopback.endpoint, **keys)
        s3.create_bucket(Bucket="kept")
        s3.put_object(Bucket="kept", Key="a/b.txt", Body=b"through the front")
        assert host_side.get_object(Bucket="kept", Key="a/b.txt")["Body"].read() == b"through the front"
        # A multipart upload (POST ?uploads, PUT parts with 100-continue, POST to complete), a batch delete.
        big = bytes(range(256)) * (6 * 1024 * 1024 // 256)
        s3.upload_fileobj(io.BytesIO(big + b"tail"), "kept", "big.bin",
                          Config=boto3.s3.transfer.TransferConfig(multipart_threshold=5 * 2**20,
                                                                  multipart_chunksize=5 * 2**20))
        assert s3.get_object(Bucket="kept", Key="big.bin")["Body"].read() == big + b"tail"
        s3.put_object(Bucket="kept", Key="gone", Body=b"x")
        s3.delete_objects(Bucket="kept", Delete={"Objects": [{"Key": "gone"}]})
        assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["kept"]
        assert [o["Key"] for o in s3.list_objects_v2(Bucket="kept")["Contents"]] == ["a/b.txt", "big.bin"]
        signer = boto3.client("s3", endpoint_url=url, config=Config(signature_version="s3v4"), **keys)
        presigned = signer.generate_presigned_url("get_object", Params={"Bucket": "kept", "Key": "a/b.txt"})
        with urllib.request.urlopen(presigned, timeout=10) as response:
            assert response.read() == b"through the front"

        # Control routes, other services and tricks, each refused by the front (403/400/405 with its XML).
        port = front.port
        refused = {
            "reset": b"POST /moto-api/reset HTTP/1.1\r\nHost: 127.0.0.2:%d\r\nContent-Length: 0\r\n\r\n",
            "encoded": b"GET /%%6Doto-api/data.json HTTP/1.1\r\nHost: 127.0.0.2:%d\r\n\r\n",
            "dots": b"GET /kept/../moto-api/data.json HTTP/1.1\r\nHost: 127.0.0.2:%d\r\n\r\n",
            "metadata": b"GET /latest/meta-data/ HTTP/1.1\r\nHost: 127.0.0.2:%d\r\n\r\n",
            "minio-admin": b"GET /minio/admin/v3/info HTTP/1.1\r\nHost: 127.0.0.2:%d\r\n\r\n",
            "other-host": b"GET /kept/a/b.txt HTTP/1.1\r\nHost: s3-control.amazonaws.com\r\n\r\n",
            "absolute": b"GET http://127.0.0.2:%d/moto-api/ HTTP/1.1\r\nHost: 127.0.0.2:%d\r\n\r\n",
            "target": (b"POST / HTTP/1.1\r\nHost: 127.0.0.2:%d\r\nX-Amz-Target: DynamoDB_20120810.ListTables\r\n"
                       b"Content-Length: 2\r\n\r\n{}"),
            "form": (b"POST /kept HTTP/1.1\r\nHost: 127.0.0.2:%d\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                     b"Content-Length: 25\r\n\r\nAction=GetCallerIdentity"),
            "smuggled-length": (b"GET /kept HTTP/1.1\r\nHost: 127.0.0.2:%d\r\nContent-Length: 0\r\n"
                                b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        }
        for what, request in refused.items():
            answer = _raw("127.0.0.2", port, request.replace(b"%d", str(port).encode()).replace(b"%%", b"%"))
            status = int(answer.split(b" ", 2)[1])
            assert status in (400, 403, 405) and b"smlocal's S3 front" in answer, (what, answer[:300])
        # Other services moto serves on the same port, signed as such.
        for service, operation in (("sqs", "list_queues"), ("sts", "get_caller_identity"),
                                   ("dynamodb", "list_tables")):
            with pytest.raises(botocore.exceptions.ClientError) as exc:
                getattr(boto3.client(service, endpoint_url=url, **keys), operation)()
            assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] in (403, 405), service  # moto: 200
        # A request hidden behind a presigned one never reaches the store: the body stops at its Content-Length.
        target = presigned.split(str(port), 1)[1].encode()
        hidden = (b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.2:%d\r\nContent-Length: 0\r\n\r\n"
                  b"POST /moto-api/reset HTTP/1.1\r\nHost: 127.0.0.2:%d\r\nContent-Length: 0\r\n\r\n")
        for request in (hidden, hidden.replace(b"Content-Length: 0\r\n", b"", 1)):  # no length: no body
            answer = _raw("127.0.0.2", port, request.replace(b"%d", str(port).encode()))
            assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"through the front"), answer[-300:]
        # A container holding connections open gets the extra ones closed, not a thread each without end.
        front._server.slots = threading.BoundedSemaphore(1)  # noqa: SLF001 - the cap, made small
        with socket.create_connection(("127.0.0.2", port), timeout=10):  # holds the one slot, sends nothing
            time.sleep(0.3)
            try:
                extra = _raw("127.0.0.2", port, hidden.replace(b"%d", str(port).encode()))
            except (ConnectionResetError, BrokenPipeError):
                extra = b""  # closed before or while the request was sent
            assert extra == b""
        front._server.slots = threading.BoundedSemaphore(8)  # noqa: SLF001

        # Nothing was reset: the store has what it had, and its own admin routes are still there on loopback.
        assert host_side.get_object(Bucket="kept", Key="a/b.txt")["Body"].read() == b"through the front"
        with urllib.request.urlopen(f"{moto_on_loopback.endpoint}/moto-api/", timeout=10) as response:
            assert response.status == 200
    finally:
        front.stop()


def test_the_front_keeps_its_port_across_a_restart(tmp_path, moto_on_loopback) -> None:
    """Containers a restarted server adopts keep the endpoint they were started with."""
    from tests.support.docker_env import docker_client, host_address_for_containers

    gateway = host_address_for_containers(docker_client())
    server = SmlocalServer(tmp_path / "data", moto_on_loopback.endpoint, ["--embedded-s3-port", "0"]).start()
    try:
        port = int((server.data_dir / "s3-front.port").read_text())
        server.client("s3").create_bucket(Bucket="before")
        server.restart(kill=True)
        assert int((server.data_dir / "s3-front.port").read_text()) == port
        through_front = boto3.client("s3", endpoint_url=f"http://{gateway}:{port}", region_name="us-east-1",
                                     aws_access_key_id=STORE_KEY, aws_secret_access_key=STORE_KEY)
        assert [b["Name"] for b in through_front.list_buckets()["Buckets"]] == ["before"]
        assert f"S3 for jobs    http://host.docker.internal:{port} (S3 API only" in server.log()
    finally:
        server.stop()
