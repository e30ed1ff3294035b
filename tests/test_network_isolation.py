"""EnableNetworkIsolation and EnableInterContainerTrafficEncryption, with real containers and a real store.

An isolated job's hosts reach each other by name and nothing else: not the S3 store, not the host (a
TCP listener of this test on 0.0.0.0 records who connects), not `host.docker.internal`; they get no store
address or keys, while smlocal still stages their input and uploads their model. A job without the flag
reaches all of it as before. The encryption flag's notice is read back through CloudWatch Logs.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from runner.environment import container_environment
from runner.notices import ENCRYPTION_NOTICE, platform_notices
from smlocal.core.jobspec import JobSpec
from smlocal.core.settings import Settings
from tests.support.docker_env import host_address_for_containers
from tests.support.jobs import assert_completed_in_order
from tests.support.runner_jobs import (
    FINAL,
    INPUT_BUCKET,
    leftovers,
    model_files,
    s3_channel,
    s3_client,
    settle,
    sh_job,
    wait_until,
)
from tests.support.smlocal import STORE_KEY, SmlocalServer

GROUP = "/aws/sagemaker/TrainingJobs"
TWO_HOSTS = {"InstanceType": "ml.m5.large", "InstanceCount": 2, "VolumeSizeInGB": 10}
STORE_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3", "S3_ENDPOINT_URL")

# Every host records what it can reach (in parallel: an unreachable address takes a few seconds to give
# up), its environment, its /etc/hosts and its copy of the `train` channel; with PEER set, algo-2 sends
# algo-1 a message over TCP by name. "reached" means the other end answered: an HTTP server sends a
# response to the HEAD, the test's listener a line.
PROBE_SCRIPT = r"""
cd /opt/ml
me=$(hostname)
out=model/$me
mkdir -p $out
env | sort > $out/env
cp /etc/hosts $out/hosts
cp input/data/train/rows.csv $out/train.csv
gw=$(ip route | awk '/^default/ {print $3}')
probe() {
  answer=$(printf 'HEAD / HTTP/1.0\r\n\r\n' | timeout 8 nc -w 5 "$2" "$3" 2>/dev/null)
  if [ -n "$answer" ]; then echo "$1 reached" > $out/probe-$1; else echo "$1 unreachable" > $out/probe-$1; fi
}
probe store "$STORE_HOST" "$STORE_PORT" &
probe host-gateway "$HOST_GATEWAY" "$LISTENER_PORT" &
probe job-gateway "${gw:-0.0.0.0}" "$LISTENER_PORT" &
probe host-alias host.docker.internal "$LISTENER_PORT" &
wait
cat $out/probe-* > $out/probes && rm $out/probe-*
if [ -n "${PEER:-}" ]; then
  if [ "$me" = algo-1 ]; then
    # The receiver reads to the sender's end before it closes (a plain `nc -l` half-closes at once).
    printf '#!/bin/sh\ncat > /opt/ml/%s/message\n' "$out" > /tmp/receive && chmod +x /tmp/receive
    nc -l -p 7000 -e /tmp/receive
  else
    for i in $(seq 1 150); do echo "hello from algo-2" | nc algo-1 7000 2>/dev/null && break; sleep 0.1; done
  fi
fi
echo "$me done"
"""


class Listener:
    """A TCP server on every address of this machine that answers a line and records who connected."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("0.0.0.0", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.peers: list[str] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, (address, _) = self.sock.accept()
            except OSError:
                return
            self.peers.append(address)
            with conn:
                conn.sendall(b"listener answered\n")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, docker_engine: docker.DockerClient,
           ) -> Iterator[SmlocalServer]:
    """smlocal with its embedded store (files): the store containers are pointed at is the gateway's port."""
    server = SmlocalServer(tmp_path_factory.mktemp("isolation") / "data", None,
                           ["--stop-grace-seconds", "1.5"]).start()
    try:
        yield server
        settle(server, docker_engine)
    finally:
        server.stop()


@pytest.fixture()
def listener() -> Iterator[Listener]:
    listener = Listener()
    yield listener
    listener.close()


def probe_job(server: SmlocalServer, s3: Any, name: str, listener: Listener, **overrides: Any) -> dict[str, Any]:
    gateway = host_address_for_containers(docker.from_env())
    s3.put_object(Bucket=INPUT_BUCKET, Key=f"{name}/train/rows.csv", Body=f"rows of {name}\n".encode())
    environment = {"STORE_HOST": gateway, "STORE_PORT": str(server.embedded_s3_port), "HOST_GATEWAY": gateway,
                   "LISTENER_PORT": str(listener.port), **overrides.pop("Environment", {})}
    return sh_job(name, PROBE_SCRIPT, s3=s3, Environment=environment,
                  InputDataConfig=[s3_channel("train", f"s3://{INPUT_BUCKET}/{name}/train/")], **overrides)


def note(sm: Any, name: str, seen: list[str]) -> dict[str, Any]:
    """Describe the job and add its status to `seen` when it changed."""
    job = sm.describe_training_job(TrainingJobName=name)
    status = f"{job['TrainingJobStatus']}/{job['SecondaryStatus']}"
    if not seen or seen[-1] != status:
        seen.append(status)
    return job


def until_final(sm: Any, name: str, seen: list[str], timeout: float = 180) -> dict[str, Any]:
    """Poll until the job ends, recording every status seen on the way."""
    def ended() -> dict[str, Any] | None:
        job = note(sm, name, seen)
        return job if job["TrainingJobStatus"] in FINAL else None
    return wait_until(ended, timeout, f"{name} to end (seen {seen})")


def env_of(files: dict[str, bytes], host: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in files[f"{host}/env"].decode().splitlines() if "=" in line)


def probes_of(files: dict[str, bytes], host: str) -> dict[str, str]:
    return dict(line.split() for line in files[f"{host}/probes"].decode().splitlines())


def stream_messages(logs: Any, name: str) -> dict[str, list[str]]:
    """Every event of each of the job's streams, through CloudWatch Logs as the SDKs read them."""
    streams = logs.describe_log_streams(logGroupName=GROUP, logStreamNamePrefix=f"{name}/",
                                        orderBy="LogStreamName")["logStreams"]
    messages: dict[str, list[str]] = {}
    for stream in streams:
        events, token = [], None
        while True:
            page = logs.get_log_events(logGroupName=GROUP, logStreamName=stream["logStreamName"], startFromHead=True,
                                       **({"nextToken": token} if token else {}))
            if not page["events"]:
                break
            events += page["events"]
            token = page["nextForwardToken"]
        host = stream["logStreamName"].split("/", 1)[1].rsplit("-", 1)[0]
        messages[host] = [e["message"] for e in events]
    return messages


def job_network(client: docker.DockerClient, name: str) -> dict[str, Any]:
    [container, *_] = client.containers.list(all=True, filters={"label": f"smlocal.job-name={name}"})
    [network_name] = container.attrs["NetworkSettings"]["Networks"]
    return client.api.inspect_network(network_name)


# ---- an isolated two-host job ---------------------------------------------------------------------


def test_isolated_hosts_reach_each_other_and_nothing_else_and_their_data_still_moves(
        server: SmlocalServer, listener: Listener, unique_name: Callable[[str], str],
        docker_engine: docker.DockerClient) -> None:
    sm, s3, logs = server.client(), s3_client(server), server.client("logs")
    name = unique_name("isolated")
    request = probe_job(server, s3, name, listener, ResourceConfig=TWO_HOSTS, EnableNetworkIsolation=True,
                        EnableInterContainerTrafficEncryption=True, Environment={"PEER": "1", "MINE": "kept"})
    sm.create_training_job(**request)
    seen: list[str] = []

    def running() -> dict[str, Any] | None:
        note(sm, name, seen)
        up = docker_engine.containers.list(filters={"label": f"smlocal.job-name={name}"})
        return job_network(docker_engine, name) if up else None

    network = wait_until(running, 90, "the job's containers")
    job = until_final(sm, name, seen)

    assert job["TrainingJobStatus"] == "Completed", (job.get("FailureReason"), seen)
    assert_completed_in_order(seen)
    assert job["EnableNetworkIsolation"] is True and job["EnableInterContainerTrafficEncryption"] is True
    # The job's own network: internal, and no address of the host's on it.
    assert network["Internal"] is True, network
    assert network["Options"].get("com.docker.network.bridge.inhibit_ipv4") == "true", network

    files = model_files(s3, name)  # uploaded by smlocal, from outside the containers
    for me, peer in (("algo-1", "algo-2"), ("algo-2", "algo-1")):
        assert probes_of(files, me) == {"store": "unreachable", "host-gateway": "unreachable",
                                        "job-gateway": "unreachable", "host-alias": "unreachable"}, me
        assert files[f"{me}/train.csv"] == f"rows of {name}\n".encode()  # staged by smlocal
        env = env_of(files, me)
        assert not set(STORE_VARIABLES) & set(env), env
        assert STORE_KEY not in env.values()
        # The request's Environment and the job's identity are there, as on SageMaker.
        assert (env["MINE"], env["TRAINING_JOB_NAME"], env["AWS_REGION"]) == ("kept", name, "us-east-1")
        hosts = files[f"{me}/hosts"].decode()
        assert "host.docker.internal" not in hosts and peer in hosts, hosts
    assert files["algo-1/message"] == b"hello from algo-2\n"  # algo-2 reached algo-1 by name
    assert listener.peers == []  # nothing of the job ever reached the host

    # The encryption flag: the first event of each host's stream, once, then the algorithm's output.
    assert stream_messages(logs, name) == {"algo-1": [ENCRYPTION_NOTICE, "algo-1 done"],
                                           "algo-2": [ENCRYPTION_NOTICE, "algo-2 done"]}
    assert wait_until(lambda: leftovers(docker_engine, server, name) == [], 30, "cleanup")


def test_a_job_without_isolation_still_reaches_the_store_and_the_host(
        server: SmlocalServer, listener: Listener, unique_name: Callable[[str], str]) -> None:
    sm, s3, logs = server.client(), s3_client(server), server.client("logs")
    name = unique_name("open")
    sm.create_training_job(**probe_job(server, s3, name, listener))
    seen: list[str] = []
    job = until_final(sm, name, seen)

    assert job["TrainingJobStatus"] == "Completed", (job.get("FailureReason"), seen)
    assert_completed_in_order(seen)
    assert job["EnableNetworkIsolation"] is False
    files = model_files(s3, name)
    assert probes_of(files, "algo-1") == {"store": "reached", "host-gateway": "reached", "job-gateway": "reached",
                                          "host-alias": "reached"}
    env = env_of(files, "algo-1")
    assert env["AWS_ENDPOINT_URL_S3"] == env["S3_ENDPOINT_URL"] == (
        f"http://host.docker.internal:{server.embedded_s3_port}")
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (STORE_KEY, STORE_KEY)
    assert len(listener.peers) == 3  # host gateway, the job network's gateway, host.docker.internal
    assert stream_messages(logs, name) == {"algo-1": ["algo-1 done"]}  # no flag, no notice


# ---- restarts ---------------------------------------------------------------------------------------

SLEEPER = "echo before; sleep 5; echo after; echo trained > /opt/ml/model/model.txt"


@pytest.fixture()
def restartable(tmp_path: Path, docker_engine: docker.DockerClient) -> Iterator[SmlocalServer]:
    server = SmlocalServer(tmp_path / "data", None, ["--stop-grace-seconds", "1"]).start()
    try:
        yield server
        if server.process is not None and server.process.poll() is not None:
            server.start()  # a test that failed while the server was down
        settle(server, docker_engine)
    finally:
        server.stop()


def _start_isolated(server: SmlocalServer, name: str, client: docker.DockerClient, hosts: int = 2,
                    ) -> tuple[list[str], str]:
    sm = server.client()
    s3_client(server)
    sm.create_training_job(**sh_job(name, SLEEPER, ResourceConfig={**TWO_HOSTS, "InstanceCount": hosts},
                                    EnableNetworkIsolation=True, EnableInterContainerTrafficEncryption=True))
    seen: list[str] = []

    def both_started() -> bool:
        note(sm, name, seen)
        logs = server.client("logs")
        try:
            messages = stream_messages(logs, name)
        except logs.exceptions.ResourceNotFoundException:  # no stream of any job yet
            return False
        return len(messages) == hosts and all("before" in m for m in messages.values())

    wait_until(both_started, 90, "both hosts to start")
    return seen, job_network(client, name)["Name"]


def test_an_isolated_job_adopted_after_a_restart_finishes_and_leaves_nothing(
        restartable: SmlocalServer, unique_name: Callable[[str], str],
        docker_engine: docker.DockerClient) -> None:
    server = restartable
    name = unique_name("isolated-adopt")
    seen, network = _start_isolated(server, name, docker_engine)
    server.stop(kill=True)
    assert docker_engine.api.inspect_network(network)["Internal"] is True  # still there for the job
    server.start()

    job = until_final(server.client(), name, seen, 90)
    assert job["TrainingJobStatus"] == "Completed", (job.get("FailureReason"), seen)
    assert_completed_in_order(seen)
    assert model_files(s3_client(server), name) == {"model.txt": b"trained\n"}
    # The adopted streams go on where they were: the notice once, each line once.
    assert stream_messages(server.client("logs"), name) == {
        "algo-1": [ENCRYPTION_NOTICE, "before", "after"], "algo-2": [ENCRYPTION_NOTICE, "before", "after"]}
    assert wait_until(lambda: leftovers(docker_engine, server, name) == [], 30, "cleanup")
    with pytest.raises(docker.errors.NotFound):
        docker_engine.api.inspect_network(network)


def test_an_isolated_job_whose_containers_vanished_in_a_restart_fails_and_its_network_goes(
        restartable: SmlocalServer, unique_name: Callable[[str], str],
        docker_engine: docker.DockerClient) -> None:
    server = restartable
    name = unique_name("isolated-vanished")
    seen, network = _start_isolated(server, name, docker_engine, hosts=1)  # one host: a network without a subnet
    inspected = docker_engine.api.inspect_network(network)
    assert inspected["Internal"] is True and inspected["Options"]["com.docker.network.bridge.inhibit_ipv4"] == "true"
    server.stop(kill=True)
    for container in docker_engine.containers.list(all=True, filters={"label": f"smlocal.job-name={name}"}):
        container.remove(force=True)
    server.start()

    job = until_final(server.client(), name, seen, 60)
    assert (job["TrainingJobStatus"], job["FailureReason"]) == (
        "Failed", "InternalServerError: the training job was interrupted when smlocal restarted"), seen
    assert seen[-1] == "Failed/Failed" and all(s.startswith("InProgress/") for s in seen[:-1]), seen
    # Found by the recovery sweep through its labels, like any job network.
    assert wait_until(lambda: leftovers(docker_engine, server, name) == [], 30, "cleanup")
    with pytest.raises(docker.errors.NotFound):
        docker_engine.api.inspect_network(network)


# ---- in-process pieces -----------------------------------------------------------------------------


def _spec(**request: Any) -> JobSpec:
    return JobSpec.from_request(sh_job("units", "true", **request), arn="arn:aws:sagemaker:us-east-1:1:x")


def test_an_isolated_container_gets_no_store_address_or_keys_but_its_own_environment() -> None:
    settings = Settings(s3_endpoint="http://127.0.0.1:9000", s3_access_key="ak", s3_secret_key="sk")
    open_env = container_environment(_spec(Environment={"A": "1"}), settings)
    assert {k: open_env[k] for k in STORE_VARIABLES} == {
        "AWS_ACCESS_KEY_ID": "ak", "AWS_SECRET_ACCESS_KEY": "sk",
        "AWS_ENDPOINT_URL_S3": "http://host.docker.internal:9000", "S3_ENDPOINT_URL": "http://host.docker.internal:9000"}
    isolated = container_environment(_spec(Environment={"A": "1"}, EnableNetworkIsolation=True), settings)
    assert isolated == {"AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1", "A": "1",
                        "TRAINING_JOB_NAME": "units", "TRAINING_JOB_ARN": "arn:aws:sagemaker:us-east-1:1:x"}


def test_only_the_encryption_flag_brings_a_notice() -> None:
    assert platform_notices(_spec()) == ()
    assert platform_notices(_spec(EnableNetworkIsolation=True)) == ()
    assert platform_notices(_spec(EnableInterContainerTrafficEncryption=True)) == (ENCRYPTION_NOTICE,)


def test_the_notice_heads_a_new_stream_and_is_not_the_algorithms_output(tmp_path: Path) -> None:
    from runner.backend import ContainerRef
    from runner.log_follower import LogFollower
    from runner.metrics import MetricCollector
    from smlocal.core.logstore import LogStreamWriter, read_events

    container = ContainerRef("id", "c", {}, "running", started_at=1_700_000_000.25)
    stream = tmp_path / "algo-1-1700000000"
    fresh = LogFollower(None, container, LogStreamWriter(stream), MetricCollector(None),  # type: ignore[arg-type]
                        (ENCRYPTION_NOTICE,))
    fresh.write_notices()
    LogStreamWriter(stream).write(1_700_000_001_000, "loss=0.5")  # what the follower would have written
    assert [(e["timestamp"], e["message"]) for e in read_events(stream)] == [
        (1_700_000_000_250, ENCRYPTION_NOTICE), (1_700_000_001_000, "loss=0.5")]

    # A restarted server continues the stream: the notice is not the log's tail (FailureReason's lines).
    resumed = LogFollower(None, container, LogStreamWriter(stream), MetricCollector(None),  # type: ignore[arg-type]
                          (ENCRYPTION_NOTICE,))
    resumed.resume_from_file()
    assert list(resumed.last_lines) == ["loss=0.5"]
    assert [e["message"] for e in read_events(stream)].count(ENCRYPTION_NOTICE) == 1
