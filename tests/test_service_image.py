"""The service image, run the way docker-compose.yml runs it, trains one real job end to end.

No registry is reachable, so MinIO cannot be pulled: the session's moto server (`s3_server`, bound on
the docker bridge gateway) stands in for it. Everything else is compose's `smlocal` service: the image
built from the project's Dockerfile on a base made from Debian packages, the Docker socket mounted, the
data dir mounted at the same path inside and outside. The last point is what makes the job work at all:
the runner asks the *host* engine to bind-mount `<data-dir>/jobs/<job>/algo-1/opt/ml`, a path it computes
inside its own container.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import docker
import docker.errors
import pytest
from botocore.config import Config
from docker.models.containers import Container

from tests.support.docker_env import BUSYBOX_IMAGE, REPO_ROOT, host_address_for_containers
from tests.support.jobs import job_request, wait_for_status
from tests.support.logs import stream_files
from tests.support.s3server import S3Server
from tests.support.service_image import SERVICE_IMAGE

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
TRAIN_IMAGE = "smlocal-test/service-train:1"
SERVICE_PORT = 8080
DOCKER_SOCKET = "/var/run/docker.sock"
TEST_LABELS = {"smlocal.test": "true"}

# `train` for the tiny training image. It exercises the two paths that break when the service runs in
# a container: the bind-mounted /opt/ml tree (channel in, config in, model out) and the S3 store as
# seen from a training container (AWS_ENDPOINT_URL_S3, i.e. SMLOCAL_CONTAINER_S3_ENDPOINT).
TRAIN_SCRIPT = """#!/bin/sh
set -eu
cat /opt/ml/input/data/train/* > /opt/ml/model/combined.txt
cp /opt/ml/input/config/hyperparameters.json /opt/ml/model/hyperparameters.json
wget -q -O /opt/ml/model/fetched.txt "${AWS_ENDPOINT_URL_S3}${PROBE_PATH}"
echo "trained on $(wc -l < /opt/ml/model/combined.txt) lines"
"""


def service_environment(data_dir: str, s3_endpoint: str, container_s3_endpoint: str) -> dict[str, str]:
    """compose's `smlocal.environment`; test_compose_file_* checks it still matches the file."""
    return {
        "SMLOCAL_HOST": "0.0.0.0",
        "SMLOCAL_ALLOW_UNAUTHENTICATED": "true",
        "SMLOCAL_PORT": str(SERVICE_PORT),
        "SMLOCAL_DATA_DIR": data_dir,
        "SMLOCAL_S3_ENDPOINT": s3_endpoint,
        "SMLOCAL_S3_ACCESS_KEY": "minioadmin",
        "SMLOCAL_S3_SECRET_KEY": "minioadmin",
        "SMLOCAL_CONTAINER_S3_ENDPOINT": container_s3_endpoint,
    }


def service_volumes(data_dir: str) -> list[str]:
    """compose's `smlocal.volumes`, in compose's short syntax."""
    return [f"{DOCKER_SOCKET}:{DOCKER_SOCKET}", f"{data_dir}:{data_dir}"]


# ---- docker-compose.yml ----------------------------------------------------------------------------

_DEFAULTED_VAR = re.compile(r"\$\{(\w+):-([^}]*)\}")


def compose_defaults(value: Any) -> Any:
    """`${VAR:-default}` -> default, i.e. the file as compose reads it with none of the variables set."""
    if isinstance(value, str):
        return _DEFAULTED_VAR.sub(lambda m: m.group(2), value)
    if isinstance(value, list):
        return [compose_defaults(v) for v in value]
    if isinstance(value, dict):
        return {k: compose_defaults(v) for k, v in value.items()}
    return value


def test_compose_file_runs_the_service_as_this_test_does() -> None:
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    assert {"minio", "smlocal"} <= set(compose["services"])
    service = compose_defaults(compose["services"]["smlocal"])

    # Built from the project's Dockerfile, base image passed as a build argument.
    assert service["build"]["context"] == "."
    assert "BASE_IMAGE" in service["build"]["args"]
    assert service["image"] == SERVICE_IMAGE

    environment = {str(k): str(v) for k, v in service["environment"].items()}
    data_dir = environment["SMLOCAL_DATA_DIR"]
    assert Path(data_dir).is_absolute()
    assert environment["SMLOCAL_S3_ENDPOINT"] == "http://minio:9000"
    # The test runs exactly this, with moto's addresses in place of MinIO's.
    assert environment == service_environment(data_dir, "http://minio:9000", "http://host.docker.internal:9000")

    # The socket for the host engine; the data dir at the same path on both sides.
    assert service["volumes"] == service_volumes(data_dir)
    # Anyone who can reach the API can start containers on this host: loopback only, like `smlocal serve`.
    assert service["ports"] == [f"127.0.0.1:{SERVICE_PORT}:{SERVICE_PORT}"]


# ---- images ----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def train_image(test_images: docker.DockerClient) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Path(tmp)
        (ctx / "train").write_text(TRAIN_SCRIPT)
        (ctx / "train").chmod(0o755)
        (ctx / "Dockerfile").write_text(f"FROM {BUSYBOX_IMAGE}\nCOPY train /usr/bin/train\n")
        test_images.images.build(path=str(ctx), tag=TRAIN_IMAGE, pull=False, rm=True, forcerm=True,
                                 network_mode="none")
    return TRAIN_IMAGE


# ---- the service container -------------------------------------------------------------------------


def remove_tree(client: docker.DockerClient, path: Path) -> None:
    """rmtree, falling back to a container: files the containers wrote are root's, the test may not be."""
    shutil.rmtree(path, ignore_errors=True)
    if not path.exists():
        return
    client.containers.run(BUSYBOX_IMAGE, ["sh", "-c", "rm -rf /d/* /d/.[!.]* /d/..?*"], remove=True,
                          network_mode="none", labels=TEST_LABELS,
                          volumes={str(path): {"bind": "/d", "mode": "rw"}})
    shutil.rmtree(path)


def wait_until_answering(container: Container, endpoint: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        container.reload()
        if container.status not in ("created", "running"):
            raise AssertionError(f"service container {container.status}:\n{service_logs(container)}")
        try:
            urllib.request.urlopen(urllib.request.Request(endpoint + "/", data=b"{}"), timeout=2)
            return
        except urllib.error.HTTPError:
            return  # an AWS error body: the app is up
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"service did not answer on {endpoint} within {timeout}s:\n"
                         f"{service_logs(container)}")


def service_logs(container: Container) -> str:
    try:
        return container.logs().decode(errors="replace")[-6000:]
    except docker.errors.DockerException as exc:
        return f"(no logs: {exc})"


def leftovers(client: docker.DockerClient, labels: dict[str, str]) -> list[str]:
    filters = {"label": [f"{k}={v}" for k, v in labels.items()]}
    return ([f"container {c.name}" for c in client.containers.list(all=True, filters=filters)]
            + [f"network {n.name}" for n in client.networks.list(filters=filters)])


class ServiceContainer:
    def __init__(self, container: Container, data_dir: Path, endpoint: str) -> None:
        self.container = container
        self.data_dir = data_dir
        self.endpoint = endpoint

    def sagemaker(self) -> Any:
        return boto3.client("sagemaker", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="test", aws_secret_access_key="test",
                            config=Config(retries={"max_attempts": 1}))

    def logs(self, job: str) -> str:
        """The service's log and the job's training log (which the runner keeps in the data dir)."""
        training = "".join(f.read_text(errors="replace") for f in stream_files(self.data_dir, job))
        return f"--- service ---\n{service_logs(self.container)}\n--- training ---\n{training[-4000:]}"


@pytest.fixture()
def service(test_images: docker.DockerClient, service_image: str, s3_server: S3Server
            ) -> Iterator[ServiceContainer]:
    client = test_images
    gateway = host_address_for_containers(client)
    assert s3_server.host in (gateway, "0.0.0.0"), f"{s3_server} is not reachable from containers"
    # Resolved: the runner resolves the data dir inside its container and hands that path to the host
    # engine, so the path must mean the same folder on both sides, symlinks included.
    data_dir = Path(tempfile.mkdtemp(prefix="smlocal-service-test-")).resolve()
    container: Container | None = None
    try:
        container = client.containers.run(
            service_image,
            name=f"smlocal-service-test-{uuid.uuid4().hex[:8]}",
            detach=True,
            labels=TEST_LABELS,
            # The service reaches the store as compose's does MinIO; training containers, on networks
            # of their own, through host.docker.internal (the bridge gateway, where moto listens).
            environment=service_environment(
                str(data_dir), s3_server.endpoint_for(gateway),
                f"http://host.docker.internal:{s3_server.port}"),
            volumes=service_volumes(str(data_dir)),
            # Compose maps the same port; here any free one, and on loopback only.
            ports={f"{SERVICE_PORT}/tcp": ("127.0.0.1", None)},
        )
        container.reload()
        host_port = container.ports[f"{SERVICE_PORT}/tcp"][0]["HostPort"]
        endpoint = f"http://127.0.0.1:{host_port}"
        wait_until_answering(container, endpoint)
        yield ServiceContainer(container, data_dir, endpoint)
    finally:
        if container is not None:
            try:
                container.remove(force=True)
            except docker.errors.NotFound:
                pass
        # Whatever the runner left if the job never finished: only this data dir's resources.
        for c in client.containers.list(all=True, filters={"label": f"smlocal.data-dir={data_dir}"}):
            c.remove(force=True)
        for n in client.networks.list(filters={"label": f"smlocal.data-dir={data_dir}"}):
            n.remove()
        remove_tree(client, data_dir)


# ---- the job ---------------------------------------------------------------------------------------


def test_containerised_service_trains_a_job(service: ServiceContainer, train_image: str,
                                             s3_server: S3Server, test_images: docker.DockerClient) -> None:
    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint, region_name="us-east-1",
                      aws_access_key_id="test", aws_secret_access_key="test")
    bucket = f"smlocal-service-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="data/train/a.csv", Body=b"1,2\n3,4\n")
    s3.put_object(Bucket=bucket, Key="data/train/b.csv", Body=b"5,6\n")
    s3.put_object(Bucket=bucket, Key="probe.txt", Body=b"reached from the training container\n")
    # Signed for the address training containers use; the script prefixes its AWS_ENDPOINT_URL_S3.
    in_container = boto3.client("s3", endpoint_url=f"http://host.docker.internal:{s3_server.port}",
                                region_name="us-east-1", aws_access_key_id="test",
                                aws_secret_access_key="test")
    probe_url = in_container.generate_presigned_url("get_object",
                                                    Params={"Bucket": bucket, "Key": "probe.txt"})
    probe_path = probe_url.split(f":{s3_server.port}", 1)[1]

    name = f"service-image-{uuid.uuid4().hex[:8]}"
    sm = service.sagemaker()
    sm.create_training_job(**job_request(
        name, image=train_image,
        InputDataConfig=[{"ChannelName": "train", "DataSource": {"S3DataSource": {
            "S3DataType": "S3Prefix", "S3Uri": f"s3://{bucket}/data/train/"}}}],
        OutputDataConfig={"S3OutputPath": f"s3://{bucket}/output"},
        HyperParameters={"epochs": "3"},
        Environment={"PROBE_PATH": probe_path},
    ))
    job = wait_for_status(sm, name, {"Completed", "Failed", "Stopped"}, timeout=180)
    assert job["TrainingJobStatus"] == "Completed", f"{job.get('FailureReason')}\n{service.logs(name)}"

    model_uri = f"s3://{bucket}/output/{name}/output/model.tar.gz"
    assert job["ModelArtifacts"]["S3ModelArtifacts"] == model_uri
    body = s3.get_object(Bucket=bucket, Key=f"output/{name}/output/model.tar.gz")["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
        files = {m.name.removeprefix("./"): tar.extractfile(m).read()  # type: ignore[union-attr]
                 for m in tar.getmembers() if m.isfile()}
    assert set(files) == {"combined.txt", "hyperparameters.json", "fetched.txt"}
    assert sorted(files["combined.txt"].splitlines()) == [b"1,2", b"3,4", b"5,6"]
    assert json.loads(files["hyperparameters.json"]) == {"epochs": "3"}
    assert files["fetched.txt"] == b"reached from the training container\n"

    # The database went to the mounted data dir, at the path the host sees.
    assert (service.data_dir / "smlocal.db").is_file()
    # The terminal status is on record first; then the runner removes the job's container, network and tree.
    deadline = time.monotonic() + 30
    while leftovers(test_images, {"smlocal.managed": "true", "smlocal.job-name": name}) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert leftovers(test_images, {"smlocal.managed": "true", "smlocal.job-name": name}) == []
    assert not (service.data_dir / "jobs" / name).exists()
