"""VpcConfig: a private subnet without NAT, with an S3 gateway endpoint, with real containers and a real store.

A VPC job's hosts reach each other by name and the S3 store through the endpoint they are given (a GET of an
object, presigned for that endpoint, with busybox `wget`), and nothing else: not the store's port on the bridge
gateway directly, not the host (a TCP listener of this test on 0.0.0.0 records who connects; the host stands in
for the internet, and nothing leaves this machine). The job's gateway container is removed with the job. The
same holds for a store smlocal does not run (`--s3-endpoint`: the S3-only front on the bridge gateway).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import boto3
import docker
import pytest
from botocore.config import Config

from runner.environment import container_environment
from runner.notices import ENCRYPTION_NOTICE, VPC_NOTICE, platform_notices
from runner.vpc import LABEL_ROLE, S3_GATEWAY_ROLE, GatewayUnavailable, start_gateway, uses_vpc, vpc_endpoint
from smlocal.core.jobspec import JobSpec
from smlocal.core.settings import Settings
from tests.support.docker_env import host_address_for_containers
from tests.support.jobs import assert_completed_in_order
from tests.support.runner_jobs import (
    INPUT_BUCKET,
    build_test_images,
    leftovers,
    model_files,
    s3_client,
    settle,
    sh_job,
    wait_until,
)
from tests.support.smlocal import STORE_KEY, SmlocalServer
from tests.test_network_isolation import Listener, job_network, note, stream_messages, until_final

VPC = {"SecurityGroupIds": ["sg-0123456789abcdef0"], "Subnets": ["subnet-0123456789abcdef0"]}
TWO_HOSTS = {"InstanceType": "ml.m5.large", "InstanceCount": 2, "VolumeSizeInGB": 10}

# Every host records what it reaches (in parallel), its environment and /etc/hosts, and GETs one object through
# its S3 endpoint; with PEER set, algo-2 sends algo-1 a message over TCP by name. "reached": the other end
# answered (an HTTP server answers the HEAD, the test's listener a line).
PROBE_SCRIPT = r"""
cd /opt/ml
me=$(hostname)
out=model/$me
mkdir -p $out
env | sort > $out/env
cp /etc/hosts $out/hosts
gw=$(ip route | awk '/^default/ {print $3}')
probe() {
  answer=$(printf 'HEAD / HTTP/1.0\r\n\r\n' | timeout 8 nc -w 5 "$2" "$3" 2>/dev/null)
  if [ -n "$answer" ]; then echo "$1 reached" > $out/probe-$1; else echo "$1 unreachable" > $out/probe-$1; fi
}
endpoint=${AWS_ENDPOINT_URL_S3#http://}
probe endpoint "${endpoint%:*}" "${endpoint##*:}" &
probe store-direct "$STORE_HOST" "$STORE_PORT" &
probe host-gateway "$HOST_GATEWAY" "$LISTENER_PORT" &
probe job-gateway "${gw:-0.0.0.0}" "$LISTENER_PORT" &
probe host-alias host.docker.internal "$LISTENER_PORT" &
wait
cat $out/probe-* > $out/probes && rm $out/probe-*
wget -q -O $out/object '__OBJECT_URL__' 2> $out/wget-error || echo "wget failed" >> $out/wget-error
if [ -n "${PEER:-}" ]; then
  if [ "$me" = algo-1 ]; then
    printf '#!/bin/sh\ncat > /opt/ml/%s/message\n' "$out" > /tmp/receive && chmod +x /tmp/receive
    nc -l -p 7000 -e /tmp/receive
  else
    for i in $(seq 1 150); do echo "hello from algo-2" | nc algo-1 7000 2>/dev/null && break; sleep 0.1; done
  fi
fi
echo "$me done"
sleep 2  # still up when the test looks at the job's network and gateway
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, docker_engine: docker.DockerClient) -> Iterator[SmlocalServer]:
    """smlocal with its embedded store: containers are given http://host.docker.internal:<its port>."""
    server = SmlocalServer(tmp_path_factory.mktemp("vpc") / "data", None, ["--stop-grace-seconds", "1.5"]).start()
    try:
        yield server
        settle(server, docker_engine)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def front_server(module_smlocal_factory: Callable[..., SmlocalServer], docker_engine: docker.DockerClient,
                 ) -> Iterator[SmlocalServer]:
    """smlocal over a store it does not run (--s3-endpoint): containers reach it through the S3-only front."""
    build_test_images(docker_engine)
    server = module_smlocal_factory("--stop-grace-seconds", "1.5")
    yield server
    settle(server, docker_engine)


@pytest.fixture()
def listener() -> Iterator[Listener]:
    listener = Listener()
    yield listener
    listener.close()


def container_endpoint(server: SmlocalServer) -> str:
    """The S3 endpoint containers get: the embedded store's port, or the front's (remembered in the data dir)."""
    port = server.embedded_s3_port or int((server.data_dir / "s3-front.port").read_text())
    return f"http://host.docker.internal:{port}"


def vpc_job(server: SmlocalServer, s3: Any, name: str, listener: Listener, store_port: int,
            **overrides: Any) -> dict[str, Any]:
    gateway = host_address_for_containers(docker.from_env())
    s3.put_object(Bucket=INPUT_BUCKET, Key=f"{name}/object.txt", Body=f"object of {name}\n".encode())
    # Presigned for the endpoint the containers are given: busybox wget cannot sign.
    endpoint = container_endpoint(server)
    url = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=STORE_KEY,
                       aws_secret_access_key=STORE_KEY, config=Config(signature_version="s3v4",
                                                                      s3={"addressing_style": "path"}),
                       ).generate_presigned_url("get_object", Params={"Bucket": INPUT_BUCKET,
                                                                     "Key": f"{name}/object.txt"}, ExpiresIn=900)
    environment = {"STORE_HOST": gateway, "STORE_PORT": str(store_port), "HOST_GATEWAY": gateway,
                   "LISTENER_PORT": str(listener.port), **overrides.pop("Environment", {})}
    return sh_job(name, PROBE_SCRIPT.replace("__OBJECT_URL__", url), s3=s3, Environment=environment,
                  VpcConfig=VPC, **overrides)


def files_of(s3: Any, name: str) -> dict[str, bytes]:
    return model_files(s3, name)


def probes_of(files: dict[str, bytes], host: str) -> dict[str, str]:
    return dict(line.split() for line in files[f"{host}/probes"].decode().splitlines())


def env_of(files: dict[str, bytes], host: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in files[f"{host}/env"].decode().splitlines() if "=" in line)


def gateways(client: docker.DockerClient, name: str) -> list[Any]:
    return client.containers.list(all=True, filters={"label": [f"smlocal.job-name={name}",
                                                               f"{LABEL_ROLE}={S3_GATEWAY_ROLE}"]})


REACHES_ONLY_THE_ENDPOINT = {"endpoint": "reached", "store-direct": "unreachable", "host-gateway": "unreachable",
                             "job-gateway": "unreachable", "host-alias": "unreachable"}


def test_vpc_hosts_reach_each_other_and_the_store_through_the_endpoint_and_nothing_else(
        server: SmlocalServer, listener: Listener, unique_name: Callable[[str], str],
        docker_engine: docker.DockerClient) -> None:
    sm, s3, logs = server.client(), s3_client(server), server.client("logs")
    name = unique_name("vpc")
    assert server.embedded_s3_port is not None
    sm.create_training_job(**vpc_job(server, s3, name, listener, server.embedded_s3_port, ResourceConfig=TWO_HOSTS,
                                     EnableInterContainerTrafficEncryption=True, Environment={"PEER": "1"}))
    seen: list[str] = []

    def running() -> tuple[dict[str, Any], list[Any]] | None:
        note(sm, name, seen)
        hosts = docker_engine.containers.list(filters={"label": [f"smlocal.job-name={name}", "smlocal.host"]})
        return (job_network(docker_engine, name), gateways(docker_engine, name)) if len(hosts) == 2 else None

    network, gateway = _wait(running, "the job's containers")
    job = until_final(sm, name, seen)

    assert job["TrainingJobStatus"] == "Completed", (job.get("FailureReason"), seen)
    assert_completed_in_order(seen)
    assert job["VpcConfig"] == VPC  # echoed as asked
    # The job's own network: internal, with no address of this machine on it; the gateway on it and the bridge.
    assert network["Internal"] is True, network
    assert network["Options"].get("com.docker.network.bridge.inhibit_ipv4") == "true", network
    [gateway_container] = gateway
    attached = gateway_container.attrs["NetworkSettings"]["Networks"]
    assert sorted(attached) == sorted([network["Name"], "bridge"]), attached
    assert gateway_container.attrs["HostConfig"]["Sysctls"] == {"net.ipv4.ip_forward": "0"}

    files = files_of(s3, name)
    for me, peer in (("algo-1", "algo-2"), ("algo-2", "algo-1")):
        assert probes_of(files, me) == REACHES_ONLY_THE_ENDPOINT, me
        assert files[f"{me}/object"] == f"object of {name}\n".encode(), files.get(f"{me}/wget-error")
        env = env_of(files, me)
        assert env["AWS_ENDPOINT_URL_S3"] == env["S3_ENDPOINT_URL"] == (
            f"http://host.docker.internal:{server.embedded_s3_port}")
        assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (STORE_KEY, STORE_KEY)
        hosts = files[f"{me}/hosts"].decode()
        alias = [line.split()[0] for line in hosts.splitlines() if line.endswith("host.docker.internal")]
        assert alias == [attached[network["Name"]]["IPAddress"]], hosts  # the name leads to the gateway
        assert peer in hosts
    assert files["algo-1/message"] == b"hello from algo-2\n"  # algo-2 reached algo-1 by name
    assert listener.peers == []  # nothing of the job ever reached the host

    # The platform says what the VPC is, first in each stream (after the encryption flag's line).
    assert stream_messages(logs, name) == {"algo-1": [ENCRYPTION_NOTICE, VPC_NOTICE, "algo-1 done"],
                                           "algo-2": [ENCRYPTION_NOTICE, VPC_NOTICE, "algo-2 done"]}
    # The gateway goes with the job, and its network with it.
    assert _wait(lambda: leftovers(docker_engine, server, name) == [], "cleanup", 30)
    assert gateways(docker_engine, name) == []


def test_a_vpc_job_reaches_a_store_smlocal_does_not_run_through_the_s3_front(
        front_server: SmlocalServer, listener: Listener, unique_name: Callable[[str], str],
        docker_engine: docker.DockerClient) -> None:
    sm, s3 = front_server.client(), s3_client(front_server)
    name = unique_name("vpc-front")
    endpoint = container_endpoint(front_server)
    front_port = int(endpoint.rsplit(":", 1)[1])
    sm.create_training_job(**vpc_job(front_server, s3, name, listener, front_port))
    seen: list[str] = []
    job = until_final(sm, name, seen)

    assert job["TrainingJobStatus"] == "Completed", (job.get("FailureReason"), seen)
    files = files_of(s3, name)
    assert probes_of(files, "algo-1") == REACHES_ONLY_THE_ENDPOINT
    assert files["algo-1/object"] == f"object of {name}\n".encode(), files.get("algo-1/wget-error")
    assert env_of(files, "algo-1")["AWS_ENDPOINT_URL_S3"] == endpoint
    assert listener.peers == []
    assert _wait(lambda: leftovers(docker_engine, front_server, name) == [], "cleanup", 30)


def _wait(predicate: Callable[[], Any], what: str, timeout: float = 90) -> Any:
    return wait_until(predicate, timeout, what)


# ---- in-process pieces -----------------------------------------------------------------------------


def _spec(**request: Any) -> JobSpec:
    return JobSpec.from_request(sh_job("units", "true", **request), arn="arn:aws:sagemaker:us-east-1:1:x")


def test_isolation_is_stricter_than_a_vpc_and_wins() -> None:
    assert uses_vpc(_spec(VpcConfig=VPC)) and not uses_vpc(_spec())
    assert not uses_vpc(_spec(VpcConfig=VPC, EnableNetworkIsolation=True))
    assert platform_notices(_spec(VpcConfig=VPC)) == (VPC_NOTICE,)
    assert platform_notices(_spec(VpcConfig=VPC, EnableNetworkIsolation=True)) == ()
    settings = Settings(s3_endpoint="http://127.0.0.1:9000")
    isolated = container_environment(_spec(VpcConfig=VPC, EnableNetworkIsolation=True), settings)
    assert "AWS_ENDPOINT_URL_S3" not in isolated


def test_a_vpc_job_is_given_an_endpoint_by_a_name_the_gateway_answers_to() -> None:
    # An address has no route from the private subnet: the alias the gateway answers to takes its place.
    settings = Settings(s3_endpoint="http://127.0.0.1:9000", container_s3_endpoint="http://172.17.0.1:9000")
    assert container_environment(_spec(VpcConfig=VPC), settings)["AWS_ENDPOINT_URL_S3"] == (
        "http://host.docker.internal:9000")
    assert container_environment(_spec(), settings)["AWS_ENDPOINT_URL_S3"] == "http://172.17.0.1:9000"
    assert vpc_endpoint("https://minio.internal:9443/") == "https://minio.internal:9443/"  # a name is kept


def test_without_an_endpoint_there_is_no_gateway() -> None:
    from runner.backend import NetworkRef
    with pytest.raises(GatewayUnavailable, match="no S3 endpoint"):
        start_gateway(None, NetworkRef("id", "net", {}, "10.213.0.0/27"), {}, None, "x")  # type: ignore[arg-type]
