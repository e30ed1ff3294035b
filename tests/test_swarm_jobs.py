"""`serve --backend swarm` on a single-node swarm: the Docker backend's job tests that make sense on a cluster.

Each host is a Swarm service on the job's overlay network; its data is staged and uploaded on its node by
smlocal's agent (runner.agent) in node-local volumes, never through the server's disk. The engine is made a swarm
manager for this module (tests/support/swarm.py) and left as it was found.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from docker.types import IPAMConfig, IPAMPool

from runner.backend import ContainerSpec
from runner.swarm_backend import SwarmBackend
from tests.support.docker_env import BUSYBOX_IMAGE
from tests.support.jobs import COMPLETED_PATH, assert_completed_in_order, wait_for_status, wait_recording
from tests.support.runner_jobs import (
    FINAL,
    INPUT_BUCKET,
    OUTPUT_BUCKET,
    model_files,
    s3_channel,
    s3_client,
    sh_job,
    spare_network,
    wait_until,
)
from tests.support.smlocal import SmlocalServer
from tests.support.swarm import SWARM_JOB_SUBNETS, free_subnet, swarm_manager, swarm_state, taken_subnets

SERVER = "swarm_server"
LABEL_DATA_DIR = "smlocal.data-dir"


@pytest.fixture(scope="module")
def swarm(docker_engine: docker.DockerClient) -> Iterator[None]:
    with swarm_manager(docker_engine):
        yield


@pytest.fixture(scope="module")
def swarm_server(swarm: None, service_image: str, module_smlocal_factory: Callable[..., SmlocalServer],
                 docker_engine: docker.DockerClient) -> Iterator[SmlocalServer]:
    server = module_smlocal_factory("--backend", "swarm", "--stop-grace-seconds", "3", "--max-concurrent-jobs", "3",
                                    "--job-subnets", SWARM_JOB_SUBNETS)
    s3_client(server)
    yield server
    deadline = time.monotonic() + 60
    while (left := swarm_leftovers(docker_engine, server)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, left


def swarm_leftovers(client: docker.DockerClient, server: SmlocalServer) -> list[str]:
    """Services, networks and volumes of this server's jobs still on the engine."""
    label = f"{LABEL_DATA_DIR}={server.data_dir.resolve()}"
    found = [f"service {s['Spec']['Name']}" for s in client.api.services(filters={"label": [label]})]
    found += [f"volume {v['Name']}" for v in (client.api.volumes(filters={"label": [label]}) or {}).get(
        "Volumes") or []]
    spare = spare_network(server)  # made in advance for the next job, as with Docker
    found += [f"network {n['Name']}" for n in client.api.networks(filters={"label": [label]})
              if n["Name"] != spare and not client.api.inspect_network(n["Id"]).get("Containers")]
    return found


@pytest.fixture()
def sm(swarm_server: SmlocalServer) -> Any:
    return swarm_server.client()


@pytest.fixture()
def s3(swarm_server: SmlocalServer) -> Any:
    return s3_client(swarm_server)


def _wait_training(sm: Any, server: SmlocalServer, name: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while (job := sm.describe_training_job(TrainingJobName=name))["SecondaryStatus"] != "Training":
        assert job["TrainingJobStatus"] == "InProgress", job.get("FailureReason")
        assert time.monotonic() < deadline, f"{name} still {job['SecondaryStatus']}:\n{server.log()[-3000:]}"
        time.sleep(0.2)


def _services_of(client: docker.DockerClient, job: str) -> list[dict[str, Any]]:
    return client.api.services(filters={"label": [f"smlocal.job-name={job}"]})


def test_a_job_runs_as_swarm_services_with_its_inputs_staged_and_its_model_uploaded_on_the_node(
        sm: Any, s3: Any, swarm_server: SmlocalServer, docker_engine: docker.DockerClient,
        unique_name: Callable[[str], str]) -> None:
    name = unique_name("swarm-file")
    for i in range(3):
        s3.put_object(Bucket=INPUT_BUCKET, Key=f"{name}/train/part-{i}.csv", Body=f"row {i}\n".encode())
    script = ('ls /opt/ml/input/data/train > /opt/ml/model/listing; cat /opt/ml/input/data/train/* '
              '> /opt/ml/model/rows; cat /opt/ml/input/config/resourceconfig.json; sleep 2; echo "epoch 1 loss=0.5"')
    request = sh_job(name, script, InputDataConfig=[s3_channel("train", f"s3://{INPUT_BUCKET}/{name}/train/")],
                     AlgorithmSpecification={"MetricDefinitions": [{"Name": "loss", "Regex": "loss=([0-9.]+)"}]})
    sm.create_training_job(**request)
    # While it trains, the host is a service of the swarm, pinned to a node, and the server's disk has no tree.
    _wait_training(sm, swarm_server, name)
    services = [s for s in _services_of(docker_engine, name) if "smlocal.host" in s["Spec"]["Labels"]]
    assert [s["Spec"]["Labels"]["smlocal.host"] for s in services] == ["algo-1"]
    spec = services[0]["Spec"]
    assert spec["EndpointSpec"]["Mode"] == "dnsrr"
    assert spec["TaskTemplate"]["RestartPolicy"]["Condition"] == "none"
    assert any(c.startswith("node.id==") for c in spec["TaskTemplate"]["Placement"]["Constraints"])
    assert all(m["Type"] == "volume" for m in spec["TaskTemplate"]["ContainerSpec"]["Mounts"])
    assert not (swarm_server.data_dir / "jobs").exists() or not any((swarm_server.data_dir / "jobs").iterdir())
    job, seen = wait_recording(sm, name, FINAL, timeout=180)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    assert_completed_in_order(seen)
    files = model_files(s3, name)
    assert files["listing"].decode().split() == ["part-0.csv", "part-1.csv", "part-2.csv"]
    assert files["rows"] == b"row 0\nrow 1\nrow 2\n"
    assert job["FinalMetricDataList"][0]["Value"] == 0.5
    # Its log, through the Logs API, from the service's logs.
    events = swarm_server.client("logs").filter_log_events(
        logGroupName="/aws/sagemaker/TrainingJobs", logStreamNamePrefix=f"{name}/")["events"]
    assert any('"current_host": "algo-1"' in e["message"] for e in events)
    assert any("epoch 1 loss=0.5" in e["message"] for e in events)
    # Nothing of it left: services (the agents' too), volumes.
    assert wait_until(lambda: not _services_of(docker_engine, name), 30, "its services removed")
    assert wait_until(lambda: not docker_engine.api.volumes(filters={"label": [f"smlocal.job-name={name}"]})[
        "Volumes"], 30, "its volumes removed")


def _run_two_hosts(sm: Any, name: str, script: str) -> None:
    """`script` on two hosts, run to Completed."""
    sm.create_training_job(**sh_job(name, script, ResourceConfig={
        "InstanceType": "ml.m5.large", "InstanceCount": 2, "VolumeSizeInGB": 10}))
    job = wait_for_status(sm, name, FINAL, timeout=180)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")


def test_two_hosts_find_each_other_by_name_on_the_overlay(sm: Any, s3: Any, unique_name: Callable[[str], str]
                                                          ) -> None:
    name = unique_name("swarm-two")
    script = ('h=$(hostname); other=algo-1; [ "$h" = algo-1 ] && other=algo-2; '
              'for i in $(seq 1 30); do ping -c1 -W1 $other >/dev/null 2>&1 && break; sleep 1; done; '
              'ping -c1 -W2 $other && echo "$h reached $other" > /opt/ml/model/reached-$h; st=$?; '
              # Still there while the other looks for it.
              'sleep 5; exit $st')
    _run_two_hosts(sm, name, script)
    files = model_files(s3, name)
    assert files["reached-algo-1"] == b"algo-1 reached algo-2\n"
    assert files["reached-algo-2"] == b"algo-2 reached algo-1\n"


def test_two_hosts_merge_into_one_model(sm: Any, s3: Any, unique_name: Callable[[str], str]) -> None:
    name = unique_name("swarm-merge")
    script = 'echo "from $(hostname)" > /opt/ml/model/from-$(hostname); echo shared-$(hostname) > /opt/ml/model/shared'
    _run_two_hosts(sm, name, script)
    files = model_files(s3, name)
    assert files["from-algo-1"] == b"from algo-1\n" and files["from-algo-2"] == b"from algo-2\n"
    assert files["shared"] == b"shared-algo-1\n"  # algo-1 wins, as on one engine
    # The hosts' parts were only a way between the nodes.
    leftovers = s3.list_objects_v2(Bucket=OUTPUT_BUCKET, Prefix=f"models/{name}/.smlocal-parts").get("KeyCount")
    assert not leftovers


def test_a_failing_algorithm_fails_with_its_failure_file(sm: Any, unique_name: Callable[[str], str]) -> None:
    name = unique_name("swarm-fail")
    sm.create_training_job(**sh_job(name, 'echo "bad data in row 7" > /opt/ml/output/failure; exit 3'))
    job = wait_for_status(sm, name, FINAL, timeout=180)
    assert job["TrainingJobStatus"] == "Failed"
    assert job["FailureReason"].startswith("AlgorithmError: bad data in row 7, exit code: 3")


def test_a_missing_input_prefix_fails_as_on_sagemaker(sm: Any, unique_name: Callable[[str], str]) -> None:
    name = unique_name("swarm-missing")
    request = sh_job(name, "true", InputDataConfig=[s3_channel("train", f"s3://{INPUT_BUCKET}/{name}/nothing/")])
    sm.create_training_job(**request)
    job = wait_for_status(sm, name, FINAL, timeout=180)
    assert job["TrainingJobStatus"] == "Failed"
    assert job["FailureReason"].startswith("ClientError: "), job["FailureReason"]


def test_a_task_that_never_ran_is_the_platforms_fault_not_an_exit_0(
        swarm: None, docker_engine: docker.DockerClient, unique_name: Callable[[str], str]) -> None:
    """The manager accepts an overlay network that overlaps a bridge of the node; the task then fails on the node
    before its container is made ("fatal task error: Pool overlaps ..."), and Swarm reports it with exit code 0.
    (Seen when another server made bridge networks from the same job range at the same time.)"""
    name = unique_name("never-ran")[:48]  # and "-overlay": a network's name has 63 characters at most
    labels = {"smlocal.test": name}
    subnet = str(free_subnet(24, taken_subnets(docker_engine), from_top=True))
    bridge = docker_engine.networks.create(f"{name}-bridge", driver="bridge", labels=labels, ipam=IPAMConfig(
        pool_configs=[IPAMPool(subnet=subnet)]))
    backend = SwarmBackend()
    network = container = None
    try:
        network = backend.create_network(f"{name}-overlay", labels, subnet=subnet)
        container = backend.create(ContainerSpec(image=BUSYBOX_IMAGE, name=name, network=network.name, host="algo-1",
                                                 labels=labels, environment={}, entrypoint=["true"], command=None))
        backend.start(container)
        with pytest.raises(RuntimeError, match="overlaps"):
            backend.wait(container)
    finally:
        if container is not None:
            backend.remove(container)
        if network is not None:
            backend.remove_network(network)
        bridge.remove()


def test_stop_sends_sigterm_and_the_grace_saves_the_model(sm: Any, s3: Any, swarm_server: SmlocalServer,
                                                          unique_name: Callable[[str], str]) -> None:
    name = unique_name("swarm-stop")
    script = ("trap 'echo saved-on-sigterm > /opt/ml/model/state; exit 0' TERM; "
              "echo started; while true; do sleep 0.2; done")
    sm.create_training_job(**sh_job(name, script))
    wait_until(lambda: sm.describe_training_job(TrainingJobName=name)["SecondaryStatus"] == "Training", 120,
               "Training")
    time.sleep(2)  # the trap is set
    sm.stop_training_job(TrainingJobName=name)
    job, seen = wait_recording(sm, name, FINAL, timeout=120)
    assert job["TrainingJobStatus"] == "Stopped"
    assert "Stopping/Stopping" in seen
    files = s3.list_objects_v2(Bucket=OUTPUT_BUCKET, Prefix=f"models/{name}/").get("Contents", [])
    assert files, swarm_server.log()[-3000:]
    assert model_files(s3, name)["state"] == b"saved-on-sigterm\n"


def test_a_restarted_server_adopts_the_running_services(
        swarm_server: SmlocalServer, s3: Any, unique_name: Callable[[str], str]) -> None:
    name = unique_name("swarm-adopt")
    sm = swarm_server.client()
    sm.create_training_job(**sh_job(name, "sleep 8; echo done > /opt/ml/model/done"))
    wait_until(lambda: sm.describe_training_job(TrainingJobName=name)["SecondaryStatus"] == "Training", 120,
               "Training")
    swarm_server.stop(kill=True)
    swarm_server.start()
    sm = swarm_server.client()
    job = wait_for_status(sm, name, FINAL, timeout=120)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    assert model_files(s3, name)["done"] == b"done\n"
    assert [t["Status"] for t in job["SecondaryStatusTransitions"]] == [s.split("/")[1] for s in COMPLETED_PATH]


def test_serve_refuses_an_engine_that_is_not_a_swarm_manager(tmp_path: Path, docker_engine: docker.DockerClient,
                                                             swarm: None) -> None:
    """With the module's swarm active this engine is a manager: the refusal is shown against an engine that is
    not one, a DOCKER_HOST with nothing swarm-like behind it (a plain engine's API would say the same)."""
    assert swarm_state(docker_engine) == "active"
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", "--backend", "swarm", "--data-dir", str(tmp_path / "d"),
         "--port", "9"], capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[1],
        env={"DOCKER_HOST": "tcp://127.0.0.1:9", "COLUMNS": "250", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2, done.stdout + done.stderr
    assert "--backend swarm" in done.stdout


def test_max_runtime_stops_the_job_as_with_docker(sm: Any, unique_name: Callable[[str], str]) -> None:
    name = unique_name("swarm-deadline")
    sm.create_training_job(**sh_job(name, "sleep 120", StoppingCondition={"MaxRuntimeInSeconds": 4}))
    job = wait_for_status(sm, name, FINAL, timeout=120)
    assert (job["TrainingJobStatus"], job["SecondaryStatus"]) == ("Stopped", "MaxRuntimeExceeded")


def test_an_isolated_job_reaches_its_hosts_and_nothing_else(sm: Any, s3: Any, swarm_server: SmlocalServer,
                                                            unique_name: Callable[[str], str]) -> None:
    """EnableNetworkIsolation: an internal overlay. The S3 store (which the agents reach for the job) is out of
    the algorithm's reach; its model is still uploaded, by the agent."""
    name = unique_name("swarm-isolated")
    store = swarm_server.client("s3").meta.endpoint_url.split("//")[1]
    script = (f"if wget -q -T 3 -O /dev/null http://{store}/ 2>/dev/null || nc -z -w 3 "
              f"{store.replace(':', ' ')} 2>/dev/null; then echo reached > /opt/ml/model/store; "
              "else echo unreachable > /opt/ml/model/store; fi")
    sm.create_training_job(**sh_job(name, script, EnableNetworkIsolation=True))
    job = wait_for_status(sm, name, FINAL, timeout=180)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    assert model_files(s3, name)["store"] == b"unreachable\n"


def test_a_fastfile_channel_is_served_as_file_on_a_node_and_says_so(
        sm: Any, s3: Any, swarm_server: SmlocalServer, unique_name: Callable[[str], str]) -> None:
    name = unique_name("swarm-fastfile")
    s3.put_object(Bucket=INPUT_BUCKET, Key=f"{name}/data/a.txt", Body=b"fast\n")
    channel = s3_channel("train", f"s3://{INPUT_BUCKET}/{name}/data/", InputMode="FastFile")
    sm.create_training_job(**sh_job(name, "cat /opt/ml/input/data/train/a.txt > /opt/ml/model/copy",
                                    InputDataConfig=[channel]))
    job = wait_for_status(sm, name, FINAL, timeout=180)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    assert model_files(s3, name)["copy"] == b"fast\n"
    downloading = next(t for t in job["SecondaryStatusTransitions"] if t["Status"] == "Downloading")
    assert "FastFile" in downloading["StatusMessage"] and "File" in downloading["StatusMessage"], downloading
