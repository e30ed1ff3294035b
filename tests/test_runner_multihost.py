"""Jobs with several hosts: one container per host on the job's network, sharded data, merged artifacts.

End to end against a real `smlocal serve`, real containers and a real S3 server (as test_runner_jobs),
plus the merge and sharding pieces in-process.
"""

from __future__ import annotations

import io
import json
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from minio import Minio

from runner import artifacts
from runner.inputs.file_staging import stage_channels
from runner.layout import HostLayout, prepare
from runner.metrics import MetricCollector, final_of_all
from smlocal.core.jobspec import JobSpec, MetricDefinition
from smlocal.core.local_channels import LocalChannelRoots
from tests.support.jobs import wait_for_status
from tests.support.logs import stream_files
from tests.support.runner_jobs import (
    FINAL,
    INPUT_BUCKET,
    leftovers,
    model_files,
    run_job,
    s3_channel,
    s3_client,
    settle,
    sh_job,
    tar_members,
    wait_until,
)
from tests.support.s3server import S3Server
from tests.support.smlocal import SmlocalServer

SERVER = "runner_server"  # `sm` and `s3` are clients of the runner plugin's server (tests/conftest.py)

TWO_HOSTS = {"InstanceType": "ml.m5.large", "InstanceCount": 2, "VolumeSizeInGB": 10}


def host_logs(server: SmlocalServer, name: str) -> dict[str, list[str]]:
    """Messages per stream file (`algo-<n>-<epoch>`) of a job."""
    return {stream.name: [json.loads(line)["message"] for line in stream.read_text().splitlines()]
            for stream in stream_files(server.data_dir, name)}


def messages_of(server: SmlocalServer, name: str, host: str) -> list[str]:
    return [m for stream, lines in host_logs(server, name).items() if stream.startswith(host + "-") for m in lines]


def containers_of(client: docker.DockerClient, name: str) -> dict[str, Any]:
    found = client.containers.list(all=True, filters={"label": f"smlocal.job-name={name}"})
    return {c.labels["smlocal.host"]: c for c in found}


# ---- two hosts side by side ------------------------------------------------------------------

# Each host finds the other by name and reports what it sees; algo-2 then sends algo-1 a message over
# TCP (so neither exits before the other has seen it). Each writes model files of its own plus one both
# write (`shared.txt`: algo-1's copy wins the merge).
PEERS_SCRIPT = r"""
set -e
cd /opt/ml
me=$(hostname)
if [ "$me" = algo-1 ]; then peer=algo-2; else peer=algo-1; fi
ok=""
for i in $(seq 1 100); do
  if ping -c1 -W1 "$peer" > /tmp/ping 2>&1; then ok=1; break; fi
  sleep 0.1
done
[ -n "$ok" ] || { cat /tmp/ping; exit 7; }
peer_ip=$(sed -n 's/^PING [^ ]* (\([0-9.]*\)).*/\1/p' /tmp/ping | head -1)
mkdir -p model/$me
cp input/config/resourceconfig.json model/$me/resourceconfig.json
echo "$me $(hostname -i)" > model/$me/self
echo "$peer $peer_ip" > model/$me/peer
echo "written by $me" > model/shared.txt
echo "$me output" > output/data/$me.txt
echo "$me sees $peer"
if [ "$me" = algo-1 ]; then
  # nc's stdin held open: at EOF busybox nc half-closes at once, and a peer that sees that FIN before it
  # has read its own input exits without sending it.
  mkfifo /tmp/hold
  nc -l -p 7000 < /tmp/hold > model/algo-1/message &
  exec 3> /tmp/hold
  wait $!
else
  for i in $(seq 1 100); do echo "hello from algo-2" | nc algo-1 7000 2>/dev/null && exit 0; sleep 0.1; done
  exit 8
fi
"""


def test_two_hosts_resolve_each_other_and_their_models_merge(
        runner_server: SmlocalServer, sm: Any, s3: Any, unique_name: Callable[[str], str],
        docker_engine: docker.DockerClient) -> None:
    name = unique_name("peers")
    job = run_job(sm, sh_job(name, PEERS_SCRIPT, s3=s3, ResourceConfig=TWO_HOSTS))
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    assert [t["Status"] for t in job["SecondaryStatusTransitions"]] == [
        "Starting", "Downloading", "Training", "Uploading", "Completed"]

    files = model_files(s3, name)
    assert sorted(files) == ["algo-1/message", "algo-1/peer", "algo-1/resourceconfig.json", "algo-1/self",
                             "algo-2/peer", "algo-2/resourceconfig.json", "algo-2/self", "shared.txt"]
    assert files["shared.txt"] == b"written by algo-1\n"  # the same path on both hosts: algo-1 wins
    assert files["algo-1/message"] == b"hello from algo-2\n"
    for me, peer in (("algo-1", "algo-2"), ("algo-2", "algo-1")):
        assert json.loads(files[f"{me}/resourceconfig.json"]) == {
            "current_host": me, "current_instance_type": "ml.m5.large",
            "current_group_name": "homogeneousCluster", "hosts": ["algo-1", "algo-2"],
            "instance_groups": [{"instance_group_name": "homogeneousCluster", "instance_type": "ml.m5.large",
                                 "hosts": ["algo-1", "algo-2"]}],
            "network_interface_name": "eth0",
        }
        # What one host resolves the other's name to is the address the other has.
        peer_name, peer_ip = files[f"{me}/peer"].decode().split()
        assert (peer_name, peer_ip) == tuple(files[f"{peer}/self"].decode().split())
    assert tar_members(s3, f"models/{name}/output/output.tar.gz") == {
        "algo-1.txt": b"algo-1 output\n", "algo-2.txt": b"algo-2 output\n"}

    streams = host_logs(runner_server, name)
    assert sorted(s.rsplit("-", 1)[0] for s in streams) == ["algo-1", "algo-2"]
    assert all(s.rsplit("-", 1)[1].isdigit() for s in streams)
    assert messages_of(runner_server, name, "algo-1") == ["algo-1 sees algo-2"]
    assert messages_of(runner_server, name, "algo-2") == ["algo-2 sees algo-1"]
    # The terminal status is written first, then the job is cleaned up.
    assert wait_until(lambda: leftovers(docker_engine, runner_server, name) == [], 30, "cleanup")


def test_heterogeneous_groups_and_sharded_channel(
        sm: Any, s3: Any, unique_name: Callable[[str], str]) -> None:
    name = unique_name("sharded")
    keys = [f"part-{i}.csv" for i in range(6)]
    for key in keys:
        s3.put_object(Bucket=INPUT_BUCKET, Key=f"{name}/train/{key}", Body=key.encode())
    s3.put_object(Bucket=INPUT_BUCKET, Key=f"{name}/vocab/vocab.txt", Body=b"vocab")
    sharded = {"ChannelName": "train", "DataSource": {"S3DataSource": {
        "S3DataType": "S3Prefix", "S3Uri": f"s3://{INPUT_BUCKET}/{name}/train/",
        "S3DataDistributionType": "ShardedByS3Key"}}}
    script = ("cd /opt/ml/input && me=$(hostname) && mkdir -p /opt/ml/model/$me && "
              "find data -type f | sort > /opt/ml/model/$me/files && "
              "cp config/resourceconfig.json config/inputdataconfig.json /opt/ml/model/$me/")
    request = sh_job(name, script, InputDataConfig=[sharded, s3_channel("vocab", f"s3://{INPUT_BUCKET}/{name}/vocab/")],
                     ResourceConfig={"VolumeSizeInGB": 10, "InstanceGroups": [
                         {"InstanceGroupName": "leader", "InstanceType": "ml.c5.xlarge", "InstanceCount": 1},
                         {"InstanceGroupName": "workers", "InstanceType": "ml.m5.large", "InstanceCount": 1}]})
    job = run_job(sm, request)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    files = model_files(s3, name)

    listed = {host: files[f"{host}/files"].decode().split() for host in ("algo-1", "algo-2")}
    # Round robin over the sorted keys: disjoint halves that together are every object.
    assert listed["algo-1"] == [f"data/train/part-{i}.csv" for i in (0, 2, 4)] + ["data/vocab/vocab.txt"]
    assert listed["algo-2"] == [f"data/train/part-{i}.csv" for i in (1, 3, 5)] + ["data/vocab/vocab.txt"]
    for host, group, instance_type in (("algo-1", "leader", "ml.c5.xlarge"), ("algo-2", "workers", "ml.m5.large")):
        config = json.loads(files[f"{host}/resourceconfig.json"])
        assert (config["current_host"], config["current_group_name"], config["current_instance_type"]) == (
            host, group, instance_type)
        assert config["hosts"] == ["algo-1", "algo-2"]
        assert config["instance_groups"] == [
            {"instance_group_name": "leader", "instance_type": "ml.c5.xlarge", "hosts": ["algo-1"]},
            {"instance_group_name": "workers", "instance_type": "ml.m5.large", "hosts": ["algo-2"]}]
        assert json.loads(files[f"{host}/inputdataconfig.json"])["train"]["S3DistributionType"] == "ShardedByS3Key"


# ---- failure and stop ------------------------------------------------------------------------

# algo-1 trains until stopped (and saves on SIGTERM); algo-2 fails once algo-1 is up.
FAILING_SCRIPT = r"""
if [ "$(hostname)" = algo-1 ]; then
  trap 'echo algo-1 caught SIGTERM; echo saved > /opt/ml/model/from-algo-1; exit 0' TERM
  echo algo-1 up
  while true; do sleep 0.1; done
fi
sleep 0.5
echo algo-2 about to fail
{failure}
exit 3
"""


@pytest.mark.parametrize("with_file", [True, False], ids=["failure-file", "exit-code"])
def test_one_failing_host_fails_the_job_and_stops_the_others(
        runner_server: SmlocalServer, sm: Any, s3: Any, unique_name: Callable[[str], str],
        docker_engine: docker.DockerClient, with_file: bool) -> None:
    name = unique_name("hostfail-file" if with_file else "hostfail-code")
    failure = "printf 'ValueError: shard is empty' > /opt/ml/output/failure" if with_file else ""
    started = time.monotonic()
    job = run_job(sm, sh_job(name, FAILING_SCRIPT.format(failure=failure), s3=s3, ResourceConfig=TWO_HOSTS))
    assert job["TrainingJobStatus"] == job["SecondaryStatus"] == "Failed"
    if with_file:
        assert job["FailureReason"] == ("AlgorithmError: algo-2: ValueError: shard is empty, exit code: 3\n"
                                        "Last log lines:\nalgo-2 about to fail")
    else:
        assert job["FailureReason"] == (
            "AlgorithmError: the training container on algo-2 exited with a non-zero status, exit code: 3\n"
            "Last log lines:\nalgo-2 about to fail")
    assert time.monotonic() - started < 30
    # algo-1 was told to stop and saved its model in the grace period; it is uploaded as a failed job's is.
    assert messages_of(runner_server, name, "algo-1") == ["algo-1 up", "algo-1 caught SIGTERM"]
    assert model_files(s3, name) == {"from-algo-1": b"saved\n"}
    # The terminal status is written first, then the job is cleaned up.
    assert wait_until(lambda: leftovers(docker_engine, runner_server, name) == [], 30, "cleanup")


def test_stop_training_job_stops_every_host(
        runner_server: SmlocalServer, sm: Any, s3: Any, unique_name: Callable[[str], str],
        docker_engine: docker.DockerClient) -> None:
    name = unique_name("stop2")
    # algo-1 saves on SIGTERM and exits; algo-2 ignores it and is killed after the grace period.
    script = ("me=$(hostname); if [ $me = algo-1 ]; then "
              "trap 'echo saved > /opt/ml/model/a1; exit 0' TERM; else "
              "trap 'echo ignoring SIGTERM; echo partial > /opt/ml/model/a2' TERM; fi; "
              "echo $me up; while true; do sleep 0.1; done")
    sm.create_training_job(**sh_job(name, script, ResourceConfig=TWO_HOSTS))
    wait_until(lambda: messages_of(runner_server, name, "algo-1") and messages_of(runner_server, name, "algo-2"), 60,
               "both hosts to start")

    # While running: one labelled container per host, on one network, each named and aliased as its host.
    containers = containers_of(docker_engine, name)
    assert sorted(containers) == ["algo-1", "algo-2"]
    networks = set()
    for host, container in containers.items():
        assert container.status == "running"
        assert container.labels["smlocal.job-name"] == name
        assert container.labels["smlocal.managed"] == "true"
        assert container.attrs["Config"]["Hostname"] == host
        assert container.name.endswith(f"-{host}")
        [(network, settings)] = container.attrs["NetworkSettings"]["Networks"].items()
        assert host in settings["Aliases"]
        networks.add(network)
        assert sorted(m["Destination"] for m in container.attrs["Mounts"]) == [
            "/opt/ml/input", "/opt/ml/model", "/opt/ml/output"]
    [network] = networks
    assert all(c.labels["smlocal.network"] == network for c in containers.values())
    assert sorted(c.name for c in docker_engine.networks.get(network).containers) == sorted(
        c.name for c in containers.values())  # the job's own
    sources = {m["Source"] for c in containers.values() for m in c.attrs["Mounts"]}
    assert len(sources) == 6  # each host has its own input, model and output

    sm.stop_training_job(TrainingJobName=name)
    job = wait_for_status(sm, name, FINAL, timeout=30)
    assert (job["TrainingJobStatus"], job["SecondaryStatus"]) == ("Stopped", "Stopped")
    assert messages_of(runner_server, name, "algo-2") == ["algo-2 up", "ignoring SIGTERM"]
    assert model_files(s3, name) == {"a1": b"saved\n", "a2": b"partial\n"}
    # The terminal status is written first, then the job is cleaned up.
    assert wait_until(lambda: leftovers(docker_engine, runner_server, name) == [], 30, "cleanup")


def test_max_runtime_stops_every_host(
        runner_server: SmlocalServer, sm: Any, s3: Any, unique_name: Callable[[str], str]) -> None:
    name = unique_name("maxrt2")
    script = ("me=$(hostname); trap 'echo $me > /opt/ml/model/$me; exit 0' TERM; "
              "echo $me up; while true; do sleep 0.1; done")
    job = run_job(sm, sh_job(name, script, ResourceConfig=TWO_HOSTS, StoppingCondition={"MaxRuntimeInSeconds": 2}))
    assert (job["TrainingJobStatus"], job["SecondaryStatus"]) == ("Stopped", "MaxRuntimeExceeded")
    assert model_files(s3, name) == {"algo-1": b"algo-1\n", "algo-2": b"algo-2\n"}


# ---- restart ---------------------------------------------------------------------------------

RESTART_SCRIPT = ("me=$(hostname); echo $me before; sleep 4; echo $me after; "
                  "echo trained > /opt/ml/model/$me.txt")


@pytest.fixture()
def restartable(smlocal_factory: Callable[..., SmlocalServer], docker_engine: docker.DockerClient
                ) -> Iterator[SmlocalServer]:
    server = smlocal_factory("--stop-grace-seconds", "1")
    yield server
    if server.process is not None and server.process.poll() is not None:
        server.start()
    settle(server, docker_engine)


def _start_two_hosts(server: SmlocalServer, name: str) -> None:
    sm = server.client()
    s3_client(server)
    sm.create_training_job(**sh_job(name, RESTART_SCRIPT, ResourceConfig=TWO_HOSTS))
    wait_until(lambda: (["algo-1 before"] == messages_of(server, name, "algo-1")
                        and ["algo-2 before"] == messages_of(server, name, "algo-2")), 60, "both hosts to start")


def test_restart_adopts_every_host(
        restartable: SmlocalServer, unique_name: Callable[[str], str],
        docker_engine: docker.DockerClient) -> None:
    name = unique_name("adopt2")
    _start_two_hosts(restartable, name)
    restartable.stop(kill=True)
    restartable.start()

    job = wait_for_status(restartable.client(), name, FINAL, timeout=60)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    assert model_files(s3_client(restartable), name) == {"algo-1.txt": b"trained\n", "algo-2.txt": b"trained\n"}
    # Each host's stream continued where the old process stopped reading: two streams, each line once.
    assert len(host_logs(restartable, name)) == 2
    for host in ("algo-1", "algo-2"):
        assert messages_of(restartable, name, host) == [f"{host} before", f"{host} after"]
    # The terminal status is written first, then the job is cleaned up.
    assert wait_until(lambda: leftovers(docker_engine, restartable, name) == [], 30, "cleanup")


def test_restart_with_a_host_gone_fails_the_job(
        restartable: SmlocalServer, unique_name: Callable[[str], str],
        docker_engine: docker.DockerClient) -> None:
    name = unique_name("gone2")
    _start_two_hosts(restartable, name)
    restartable.stop(kill=True)
    containers_of(docker_engine, name)["algo-2"].remove(force=True)
    restartable.start()

    job = wait_for_status(restartable.client(), name, FINAL, timeout=30)
    assert job["TrainingJobStatus"] == "Failed"
    assert job["FailureReason"] == "InternalServerError: the training job was interrupted when smlocal restarted"
    # algo-1's container, the network and both trees are removed.
    assert wait_until(lambda: leftovers(docker_engine, restartable, name) == [], 10, "cleanup")


# ---- in-process: staging and merging ---------------------------------------------------------

BUCKET = "smlocal-test-multihost"


@pytest.fixture(scope="module")
def raw_s3(s3_server: S3Server) -> Any:
    return s3_server.client_with_bucket(BUCKET)


def _hosts(tmp_path: Path, request: dict[str, Any], count: int) -> list[HostLayout]:
    layouts = [HostLayout(tmp_path / "job", f"algo-{i}") for i in range(1, count + 1)]
    for layout in layouts:
        prepare(layout, JobSpec.from_request(request))
    return layouts


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _channel(uri: str, distribution: str) -> dict[str, Any]:
    return {"ChannelName": "train", "DataSource": {"S3DataSource": {
        "S3DataType": "S3Prefix", "S3Uri": uri, "S3DataDistributionType": distribution}}}


@pytest.mark.parametrize("count", [1, 2, 3, 8])
def test_sharding_splits_whole_objects_round_robin(tmp_path: Path, raw_s3: Any, minio: Minio, count: int) -> None:
    keys = [f"k{i:02d}/obj" for i in range(7)]
    for key in reversed(keys):
        raw_s3.put_object(Bucket=BUCKET, Key=f"shard/{key}", Body=key.encode())
    request = {"InputDataConfig": [_channel(f"s3://{BUCKET}/shard/", "ShardedByS3Key")],
               "ResourceConfig": {"InstanceCount": count}}
    layouts = _hosts(tmp_path, request, count)
    stage_channels(JobSpec.from_request(request), layouts, lambda: minio, lambda: False)
    got = [_files(layout.channel_dir("train")) for layout in layouts]
    for index, files in enumerate(got):
        assert files == {key: key.encode() for key in keys[index::count]}
    assert sum(len(files) for files in got) == len(keys)


def test_fully_replicated_gives_every_host_everything(tmp_path: Path, raw_s3: Any, minio: Minio) -> None:
    for key in ("full/a.csv", "full/sub/b.csv"):
        raw_s3.put_object(Bucket=BUCKET, Key=key, Body=key.encode())
    request = {"InputDataConfig": [_channel(f"s3://{BUCKET}/full/", "FullyReplicated")],
               "ResourceConfig": {"InstanceCount": 3}}
    layouts = _hosts(tmp_path, request, 3)
    stage_channels(JobSpec.from_request(request), layouts, lambda: minio, lambda: False)
    for layout in layouts:
        assert _files(layout.channel_dir("train")) == {"a.csv": b"full/a.csv", "sub/b.csv": b"full/sub/b.csv"}
        assert (layout.channel_dir("train") / "sub" / "b.csv").stat().st_mode & 0o777 == 0o644
    # Copies, not links: one host changing its data leaves the others' alone.
    (layouts[0].channel_dir("train") / "a.csv").write_text("changed")
    assert (layouts[1].channel_dir("train") / "a.csv").read_bytes() == b"full/a.csv"


def test_local_folder_channel_is_sharded_by_file(tmp_path: Path, minio: Minio) -> None:
    source = tmp_path / "local"
    for rel in ("a", "b", "sub/c", "sub/d"):
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        (source / rel).write_text(rel)
    request = {"InputDataConfig": [_channel(f"file://{source}", "ShardedByS3Key")],
               "ResourceConfig": {"InstanceCount": 2}}
    layouts = _hosts(tmp_path, request, 2)
    stage_channels(JobSpec.from_request(request), layouts, lambda: minio, lambda: False,
                   LocalChannelRoots.of([source]))
    assert [_files(layout.channel_dir("train")) for layout in layouts] == [
        {"a": b"a", "sub/c": b"sub/c"}, {"b": b"b", "sub/d": b"sub/d"}]


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


@pytest.mark.parametrize("compression", ["GZIP", "NONE"])
def test_hosts_models_merge_and_algo_1_wins(tmp_path: Path, raw_s3: Any, minio: Minio, compression: str) -> None:
    job = f"merge-{compression.lower()}"
    request = {"OutputDataConfig": {"S3OutputPath": f"s3://{BUCKET}/out", "CompressionType": compression},
               "ResourceConfig": {"InstanceCount": 3}}
    layouts = _hosts(tmp_path, request, 3)
    _write(layouts[0].model_dir, {"model.bin": "1", "shared/one.txt": "1", "clash": "file from 1"})
    _write(layouts[1].model_dir, {"model.bin": "2", "shared/two.txt": "2", "clash/inside": "dir from 2"})
    _write(layouts[2].model_dir, {"only-3.txt": "3", "shared/one.txt": "3"})
    _write(layouts[1].output_data_dir, {"metrics.json": "2"})
    spec = JobSpec.from_request(request, name=job)
    artifacts.upload_outputs(minio, spec, layouts, always_model=True)

    expected_model = {"model.bin": b"1", "shared/one.txt": b"1", "shared/two.txt": b"2", "clash": b"file from 1",
                      "only-3.txt": b"3"}
    if compression == "GZIP":
        body = raw_s3.get_object(Bucket=BUCKET, Key=f"out/{job}/output/model.tar.gz")["Body"].read()
        with tarfile.open(fileobj=io.BytesIO(body)) as tar:
            names = tar.getnames()
            assert len(names) == len(set(names))  # each path once
            assert {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()} == expected_model
        assert tar_members(raw_s3, f"out/{job}/output/output.tar.gz", bucket=BUCKET) == {"metrics.json": b"2"}
    else:
        prefix = f"out/{job}/output/model/"
        listed = raw_s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]
        assert {o["Key"][len(prefix):]: raw_s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read()
                for o in listed} == {**expected_model, "clash/inside": b"dir from 2"}


def test_final_metrics_take_the_latest_value_over_all_hosts() -> None:
    definitions = [MetricDefinition("loss", r"loss=([0-9.]+)"), MetricDefinition("acc", r"acc=([0-9.]+)")]
    hosts = [MetricCollector(definitions), MetricCollector(definitions)]
    hosts[0].feed(1000, "loss=0.5 acc=0.1")
    hosts[1].feed(2000, "loss=0.25")
    hosts[0].feed(3000, "acc=0.9")
    hosts[1].feed(3000, "acc=0.8")  # a tie: the first host's value
    assert [(m["MetricName"], m["Value"], m["Timestamp"]) for m in final_of_all(hosts)] == [
        ("loss", 0.25, 2.0), ("acc", 0.9, 3.0)]
