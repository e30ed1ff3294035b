"""Two nodes for real: a second Docker engine that the test starts in a network namespace of its own, joined to
the swarm as a worker (tests/support/swarm.py). A two-host job's hosts land on different nodes, and each node
stages its host's inputs and holds its folders in volumes of its own, which the job's end removes there too.
Traffic stays on this machine: the namespace's addresses are the test's own."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import docker
import pytest

from tests.support.jobs import wait_for_status
from tests.support.runner_jobs import (
    BUSYBOX_IMAGE,
    FINAL,
    INPUT_BUCKET,
    model_files,
    s3_channel,
    s3_client,
    sh_job,
)
from tests.support.service_image import SERVICE_IMAGE
from tests.support.smlocal import SmlocalServer
from tests.support.swarm import SWARM_JOB_SUBNETS, TwoNodes, task_node, two_nodes

SERVER = "two_node_server"


@pytest.fixture(scope="module")
def nodes(docker_engine: docker.DockerClient, service_image: str) -> Iterator[TwoNodes]:
    # The agent's image too: each node stages and uploads with it.
    assert service_image  # built from this tree (the fixture), under its tag
    with two_nodes(docker_engine, [BUSYBOX_IMAGE, SERVICE_IMAGE]) as both:
        yield both


@pytest.fixture(scope="module")
def two_node_server(nodes: TwoNodes, module_smlocal_factory: Callable[..., SmlocalServer]) -> SmlocalServer:
    # The worker reaches this machine at the manager's address: the S3 store's front listens there.
    address = nodes.swarm.address.split(":")[0]
    server = module_smlocal_factory("--backend", "swarm", "--s3-advertise-address", address,
                                    "--job-subnets", SWARM_JOB_SUBNETS, "--stop-grace-seconds", "3")
    s3_client(server)
    return server


def _job_volumes(engine: docker.DockerClient, name: str) -> list[str]:
    return [v["Name"] for v in (engine.api.volumes(filters={"label": [f"smlocal.job-name={name}"]}) or {}).get(
        "Volumes") or []]


def test_a_two_host_job_runs_on_both_nodes_with_its_data_moved_on_each(
        nodes: TwoNodes, two_node_server: SmlocalServer, unique_name: Callable[[str], str]) -> None:
    sm, s3 = two_node_server.client(), s3_client(two_node_server)
    name = unique_name("two-nodes")
    for i in range(4):
        s3.put_object(Bucket=INPUT_BUCKET, Key=f"{name}/train/part-{i}", Body=f"row {i}\n".encode())
    script = ('h=$(hostname); other=algo-1; [ "$h" = algo-1 ] && other=algo-2; '
              'cat /opt/ml/input/data/train/* > /opt/ml/model/rows-$h; '
              'for i in $(seq 1 30); do ping -c1 -W1 $other >/dev/null 2>&1 && break; sleep 1; done; '
              'ping -c1 -W2 $other >/dev/null && echo "$h reached $other" > /opt/ml/model/reached-$h; st=$?; '
              'sleep 6; exit $st')
    request = sh_job(name, script, s3=s3,
                     InputDataConfig=[s3_channel("train", f"s3://{INPUT_BUCKET}/{name}/train/")],
                     ResourceConfig={"InstanceType": "ml.m5.large", "InstanceCount": 2, "VolumeSizeInGB": 10})
    sm.create_training_job(**request)
    deadline = time.monotonic() + 180
    while sm.describe_training_job(TrainingJobName=name)["SecondaryStatus"] != "Training":
        assert time.monotonic() < deadline, two_node_server.log()[-3000:]
        time.sleep(0.2)
    # Placed on different nodes: the hosts' services, and where their tasks run.
    services = {s["Spec"]["Labels"]["smlocal.host"]: s for s in nodes.manager.api.services(
        filters={"label": [f"smlocal.job-name={name}"]}) if "smlocal.host" in s["Spec"]["Labels"]}
    assert set(services) == {"algo-1", "algo-2"}
    ran_on = {}
    while len(ran_on) < 2:
        for host, service in services.items():
            try:
                ran_on[host] = task_node(nodes.manager, service["ID"]).node_id
            except LookupError:
                pass  # no task yet
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert set(ran_on.values()) == {nodes.manager_node, nodes.worker_node}, ran_on
    # Each node holds its own host's folders; the worker's data never was on this machine's disk.
    assert _job_volumes(nodes.worker.client, name) and _job_volumes(nodes.manager, name)
    assert not (two_node_server.data_dir / "jobs").exists() or not any((two_node_server.data_dir / "jobs").iterdir())

    job = wait_for_status(sm, name, FINAL, timeout=180)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    files = model_files(s3, name)
    rows = b"".join(f"row {i}\n".encode() for i in range(4))
    assert files["rows-algo-1"] == rows and files["rows-algo-2"] == rows  # staged on each node
    assert files["reached-algo-1"] == b"algo-1 reached algo-2\n"  # across the nodes, by name
    assert files["reached-algo-2"] == b"algo-2 reached algo-1\n"
    # Nothing left on either node: services, and the volumes (the worker's removed by a task there).
    deadline = time.monotonic() + 60
    while (_job_volumes(nodes.worker.client, name) or _job_volumes(nodes.manager, name)
           or nodes.manager.api.services(filters={"label": [f"smlocal.job-name={name}"]})):
        assert time.monotonic() < deadline, (_job_volumes(nodes.worker.client, name), two_node_server.log()[-2000:])
        time.sleep(0.5)


