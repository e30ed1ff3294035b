"""Instance types decide what a container gets: the table of `ml.*` types, /dev/shm sized as on an instance,
GPUs (or a notice that the job runs on CPU), and under `serve --enforce-instance-resources` the type's vCPUs
and memory, with a job larger than this machine refused at CreateTrainingJob."""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import botocore.session
import docker
import pytest
from botocore.exceptions import ClientError

from runner.docker_backend import _usable_gpus
from runner.notices import ENCRYPTION_NOTICE, platform_notices
from smlocal.core.instance_types import (
    GIB,
    InstanceType,
    container_resources,
    cpu_list,
    cpuset,
    instance_type,
    instance_types,
    shm_size,
)
from smlocal.core.jobspec import JobSpec
from smlocal.core.settings import machine
from tests.support.docker_env import PYTHON_BASE_IMAGE, TORCH_IMAGE
from tests.support.jobs import job_request
from tests.support.runner_jobs import FINAL, code_channel, s3_client, settle, wait_for_status, wait_until
from tests.support.smlocal import SmlocalServer

GROUP = "/aws/sagemaker/TrainingJobs"
# PyTorch's DataLoader with worker processes: each batch (4 items of 25 MiB) is built by a worker in shared
# memory, /dev/shm, and handed to the main process; 100 MiB does not fit Docker's default 64 MiB.
DATALOADER = """\
import torch
from torch.utils.data import DataLoader, Dataset


class Big(Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return torch.full((25 * 2**20 // 4,), float(i))


items = sum(batch.shape[0] for batch in DataLoader(Big(), batch_size=4, num_workers=2))
print(f"dataloader ok: {items} items")
"""
# What a container sees of its machine, as one JSON line.
PROBE = """\
import json, os
cgroup = next(p for p in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")
              if os.path.exists(p))
shm = os.statvfs("/dev/shm")
print("probe " + json.dumps({
    "cpu_count": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
    "online": open("/sys/devices/system/cpu/online").read().strip(),
    "memory_limit": open(cgroup).read().strip(), "shm_bytes": shm.f_blocks * shm.f_frsize,
    "nvidia_devices": sorted(d for d in os.listdir("/dev") if d.startswith("nvidia")),
}))
"""


# ---- the table ---------------------------------------------------------------------------------------


def test_the_table_has_exactly_the_training_instance_types_of_the_model() -> None:
    model = botocore.session.get_session().get_service_model("sagemaker")
    enum = set(model.shape_for("TrainingInstanceType").enum)
    table = set(instance_types())
    assert sorted(enum - table) == [], "instance types of the model missing from the table"
    assert sorted(table - enum) == [], "instance types in the table the model does not know"


def test_every_entry_is_a_whole_machine() -> None:
    for name, instance in instance_types().items():
        assert instance.name == name
        assert instance.vcpus >= 2 and instance.memory_gib >= 4, name
        # A kind exactly when there are accelerators; GPUs are NVIDIA's, the rest AWS's Trainium chips.
        assert (instance.accelerators > 0) == (instance.accelerator is not None), name
        assert instance.gpus in (0, instance.accelerators), name
        assert instance.gpus == 0 or instance.accelerator.startswith("NVIDIA"), name


@pytest.mark.parametrize(("name", "figures"), [
    # AWS's figures (EC2's instance type specifications for the same family and size).
    ("ml.m5.large", (2, 8, 0, None)),
    ("ml.c5n.xlarge", (4, 10.5, 0, None)),
    ("ml.m4.10xlarge", (40, 160, 0, None)),
    ("ml.t3.medium", (2, 4, 0, None)),
    ("ml.r7i.48xlarge", (192, 1536, 0, None)),
    ("ml.g5.xlarge", (4, 16, 1, "NVIDIA A10G")),
    ("ml.g4dn.12xlarge", (48, 192, 4, "NVIDIA T4")),
    ("ml.p3.2xlarge", (8, 61, 1, "NVIDIA V100")),
    ("ml.p4d.24xlarge", (96, 1152, 8, "NVIDIA A100")),
    ("ml.p5.48xlarge", (192, 2048, 8, "NVIDIA H100")),
    ("ml.trn1.32xlarge", (128, 512, 16, "AWS Trainium")),
])
def test_figures_match_aws(name: str, figures: tuple[int, float, int, str | None]) -> None:
    instance = instance_type(name)
    assert instance is not None
    assert (instance.vcpus, instance.memory_gib, instance.accelerators, instance.accelerator) == figures


def test_trainium_chips_are_not_gpus() -> None:
    trn = instance_type("ml.trn1.2xlarge")
    assert trn is not None and (trn.accelerators, trn.gpus) == (1, 0)
    assert instance_type("ml.nonexistent.xlarge") is None


# ---- /dev/shm, CPUs and memory -----------------------------------------------------------------------


def _instance(memory_gib: float) -> InstanceType:
    return InstanceType("ml.test.xlarge", 2, memory_gib)


def test_shm_is_half_the_instance_memory() -> None:
    assert shm_size(_instance(8), 64 * GIB) == 4 * GIB
    assert shm_size(instance_type("ml.g5.xlarge"), 64 * GIB) == 8 * GIB


def test_shm_is_at_least_one_gib() -> None:
    assert shm_size(_instance(1), 64 * GIB) == GIB


def test_shm_is_never_more_than_half_the_machine() -> None:
    assert shm_size(instance_type("ml.p5.48xlarge"), 16 * GIB) == 8 * GIB
    # The machine's half wins over the 1 GiB floor, too.
    assert shm_size(_instance(8), GIB) == GIB // 2


def test_shm_of_a_type_the_table_does_not_know_is_half_the_machine() -> None:
    assert shm_size(None, 16 * GIB) == 8 * GIB


def test_cpu_lists_are_in_the_kernels_format() -> None:
    assert cpu_list([3, 0, 1, 2, 8, 10, 11]) == "0-3,8,10-11"
    assert cpu_list([5]) == "5"


def test_a_jobs_hosts_take_turns_along_the_machines_cpus() -> None:
    cpus = list(range(8))
    assert [cpuset(2, cpus, i) for i in range(5)] == ["0-1", "2-3", "4-5", "6-7", "0-1"]
    # Never more than the machine has; no CPU twice.
    assert cpuset(16, [0, 1], 0) == "0-1"
    assert cpuset(2, [0, 2, 4], 1) == "0,4"


def test_limits_only_when_enforced() -> None:
    common = {"host_memory_bytes": 32 * GIB, "host_gpus": 0, "host_cpus": list(range(4))}
    free = container_resources("ml.m5.large", enforce=False, **common)
    assert (free.shm_size, free.gpus, free.cpuset, free.memory) == (4 * GIB, 0, None, None)
    limited = container_resources("ml.m5.large", enforce=True, host_index=1, **common)
    assert (limited.shm_size, limited.cpuset, limited.memory) == (4 * GIB, "2-3", 8 * GIB)
    # A type the table does not know: nothing to limit it by.
    unknown = container_resources("ml.new.xlarge", enforce=True, **common)
    assert (unknown.shm_size, unknown.cpuset, unknown.memory) == (16 * GIB, None, None)


def test_gpus_as_far_as_the_machine_has_them() -> None:
    common = {"host_memory_bytes": 32 * GIB, "host_cpus": [0, 1], "enforce": False}
    assert container_resources("ml.g5.xlarge", host_gpus=0, **common).gpus == 0
    assert container_resources("ml.g5.xlarge", host_gpus=4, **common).gpus == 1
    assert container_resources("ml.p4d.24xlarge", host_gpus=2, **common).gpus == 2
    assert container_resources("ml.m5.large", host_gpus=4, **common).gpus == 0
    assert container_resources("ml.trn1.2xlarge", host_gpus=4, **common).gpus == 0


def test_gpus_count_only_when_the_engine_can_hand_them_out(tmp_path: Path) -> None:
    for device in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm"):
        (tmp_path / device).touch()
    assert _usable_gpus({"Runtimes": {"runc": {}, "nvidia": {}}}, tmp_path) == 2
    assert _usable_gpus({"Runtimes": {"runc": {}}}, tmp_path) == 0
    assert _usable_gpus({"Runtimes": {"nvidia": {}}}, tmp_path / "missing") == 0


# ---- notices -----------------------------------------------------------------------------------------


def _spec(instance: str, **request: Any) -> JobSpec:
    resource = {"InstanceType": instance, "InstanceCount": 1, "VolumeSizeInGB": 10}
    return JobSpec.from_request(job_request("units", ResourceConfig=resource, **request))


def test_a_gpu_type_on_a_machine_without_gpus_says_it_runs_on_cpu() -> None:
    assert platform_notices(_spec("ml.g5.xlarge"), "algo-1", 0) == (
        "smlocal: ml.g5.xlarge has 1 NVIDIA A10G GPU on SageMaker; this host has none, so the job runs on CPU",)
    assert platform_notices(_spec("ml.g5.xlarge"), "algo-1", 1) == ()
    assert platform_notices(_spec("ml.p4d.24xlarge"), "algo-1", 2) == (
        "smlocal: ml.p4d.24xlarge has 8 NVIDIA A100 GPUs on SageMaker; this host has 2, so the job gets 2",)
    assert platform_notices(_spec("ml.trn1.32xlarge"), "algo-1", 8) == (
        "smlocal: ml.trn1.32xlarge has 16 AWS Trainium accelerators on SageMaker; smlocal gives containers no "
        "Neuron devices, so the job runs on CPU",)
    assert platform_notices(_spec("ml.m5.large"), "algo-1", 0) == ()
    # After the encryption notice; and a host's own group decides.
    groups = [{"InstanceGroupName": "cpu", "InstanceType": "ml.m5.large", "InstanceCount": 1},
              {"InstanceGroupName": "gpu", "InstanceType": "ml.g6.xlarge", "InstanceCount": 1}]
    spec = JobSpec.from_request(job_request("units", ResourceConfig={"VolumeSizeInGB": 10, "InstanceGroups": groups},
                                            EnableInterContainerTrafficEncryption=True))
    assert platform_notices(spec, "algo-1", 0) == (ENCRYPTION_NOTICE,)
    assert platform_notices(spec, "algo-2", 0)[1].startswith("smlocal: ml.g6.xlarge has 1 NVIDIA L4 GPU")


# ---- CreateTrainingJob under --enforce-instance-resources ---------------------------------------------

# Larger than any machine these tests run on (192 vCPUs, 4 TiB).
HUGE = "ml.p6-b300.48xlarge"


def _rejected(sm: Any, request: dict[str, Any]) -> tuple[str, str]:
    with pytest.raises(ClientError) as info:
        sm.create_training_job(**request)
    error = info.value.response["Error"]
    return error["Code"], error["Message"]


def test_an_instance_larger_than_the_machine_is_refused_only_when_enforced(
        smlocal_factory: Callable[..., SmlocalServer], unique_name: Callable[[str], str]) -> None:
    cores, memory_gib = machine()
    enforcing = smlocal_factory("--no-run-jobs", "--enforce-instance-resources").client()
    huge = {"InstanceType": HUGE, "InstanceCount": 2, "VolumeSizeInGB": 10}
    name = unique_name("huge")
    code, message = _rejected(enforcing, job_request(name, ResourceConfig=huge))
    assert code == "ResourceLimitExceeded"
    assert message == (
        f"The account-level service limit '{HUGE} for training job usage' is 0 Instances, with current utilization "
        f"of 0 Instances and a request delta of 2 Instances. {HUGE} has 192 vCPUs and 4096 GiB of memory; this "
        f"machine has {cores} and {memory_gib:.1f} GiB, and smlocal runs with --enforce-instance-resources. Please "
        "choose an instance type this machine can hold, or start smlocal without --enforce-instance-resources.")
    with pytest.raises(ClientError):
        enforcing.describe_training_job(TrainingJobName=name)
    # In an instance group too, beside one that fits.
    groups = [{"InstanceGroupName": "small", "InstanceType": "ml.t3.medium", "InstanceCount": 1},
              {"InstanceGroupName": "big", "InstanceType": HUGE, "InstanceCount": 1}]
    code, message = _rejected(enforcing, job_request(unique_name("groups"), ResourceConfig={
        "VolumeSizeInGB": 10, "InstanceGroups": groups}))
    assert code == "ResourceLimitExceeded" and f"'{HUGE} for training job usage'" in message
    # Without the flag the same job is accepted (and runs with what the machine has).
    plain = smlocal_factory("--no-run-jobs").client()
    assert plain.create_training_job(**job_request(unique_name("huge"), ResourceConfig=huge))["TrainingJobArn"]


# ---- real containers ---------------------------------------------------------------------------------


def _log_messages(server: SmlocalServer, name: str) -> list[str]:
    """algo-1's log stream, through the CloudWatch Logs API."""
    logs = server.client("logs")
    streams = wait_until(lambda: logs.describe_log_streams(logGroupName=GROUP, logStreamNamePrefix=f"{name}/algo-1-")
                         ["logStreams"], 30, "the log stream")
    events = logs.get_log_events(logGroupName=GROUP, logStreamName=streams[0]["logStreamName"],
                                 startFromHead=True)["events"]
    return [e["message"] for e in events]


def _python_job(server: SmlocalServer, name: str, image: str, source: str, instance: str = "ml.m5.large"
                ) -> dict[str, Any]:
    """Run `source` as the algorithm (shipped as the `code` channel) and wait for the end."""
    s3 = s3_client(server)
    request = job_request(
        name, image,
        AlgorithmSpecification={"TrainingImage": image, "TrainingInputMode": "File",
                                "ContainerEntrypoint": ["python3", "/opt/ml/input/data/code/train.py"]},
        InputDataConfig=[code_channel(s3, name, "train.py", source)],
        ResourceConfig={"InstanceType": instance, "InstanceCount": 1, "VolumeSizeInGB": 10})
    sm = server.client()
    sm.create_training_job(**request)
    return wait_for_status(sm, name, FINAL, timeout=300)


def _probe(server: SmlocalServer, name: str) -> dict[str, Any]:
    line = next(m for m in _log_messages(server, name) if m.startswith("probe "))
    return json.loads(line.removeprefix("probe "))


@pytest.fixture(scope="module")
def plain_server(module_smlocal_factory: Callable[..., SmlocalServer], docker_engine: docker.DockerClient
                 ) -> Iterator[SmlocalServer]:
    server = module_smlocal_factory("--stop-grace-seconds", "1.5")
    yield server
    settle(server, docker_engine)


@pytest.fixture(scope="module")
def enforcing_server(module_smlocal_factory: Callable[..., SmlocalServer], docker_engine: docker.DockerClient
                     ) -> Iterator[SmlocalServer]:
    server = module_smlocal_factory("--stop-grace-seconds", "1.5", "--enforce-instance-resources")
    yield server
    settle(server, docker_engine)


def _run_directly(client: docker.DockerClient, image: str, command: list[str], **host: Any) -> tuple[int, str]:
    """A container of the engine's own, no smlocal: its exit code and output."""
    container = client.containers.run(image, command, detach=True, network_mode="none", **host)
    try:
        code = container.wait(timeout=300)["StatusCode"]
        return code, container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)


def test_a_dataloader_that_docker_default_shm_kills_runs_as_a_job(
        docker_engine: docker.DockerClient, plain_server: SmlocalServer, unique_name: Callable[[str], str]) -> None:
    # The baseline: Docker's default /dev/shm (64 MiB) and the workers die.
    code, output = _run_directly(docker_engine, TORCH_IMAGE, ["python3", "-c", DATALOADER])
    assert code != 0 and "bus error" in output.lower(), output[-2000:]
    name = unique_name("dataloader")
    job = _python_job(plain_server, name, TORCH_IMAGE, DATALOADER)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    assert "dataloader ok: 8 items" in _log_messages(plain_server, name)


def test_without_enforcement_shm_follows_the_type_and_a_gpu_type_runs_on_cpu_and_says_so(
        plain_server: SmlocalServer, unique_name: Callable[[str], str]) -> None:
    assert not glob.glob("/dev/nvidia[0-9]*"), "this test expects a machine without NVIDIA GPUs"
    name = unique_name("gpu")
    job = _python_job(plain_server, name, PYTHON_BASE_IMAGE, PROBE, instance="ml.g5.xlarge")
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    messages = _log_messages(plain_server, name)
    assert messages[0] == ("smlocal: ml.g5.xlarge has 1 NVIDIA A10G GPU on SageMaker; this host has none, so the "
                           "job runs on CPU")
    probe = _probe(plain_server, name)
    _, memory_gib = machine()
    # Half of the type's 16 GiB (never more than half the machine); the machine's CPUs and memory, unlimited.
    assert probe["shm_bytes"] == min(8 * GIB, int(memory_gib * GIB) // 2)
    assert probe["cpu_count"] == os.cpu_count() and probe["nvidia_devices"] == []
    assert probe["memory_limit"] == "max" or int(probe["memory_limit"]) > int(memory_gib * GIB)


def test_enforced_a_job_gets_its_instance_types_cpus_and_memory(
        enforcing_server: SmlocalServer, unique_name: Callable[[str], str]) -> None:
    name = unique_name("m5")
    job = _python_job(enforcing_server, name, PYTHON_BASE_IMAGE, PROBE)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    probe = _probe(enforcing_server, name)
    # ml.m5.large: 2 vCPUs (the machine's first two, for a job's first host) and 8 GiB.
    first, second = sorted(os.sched_getaffinity(0))[:2]
    assert (probe["cpu_count"], probe["affinity"]) == (2, 2)
    assert probe["online"] == (f"{first}-{second}" if second == first + 1 else f"{first},{second}")
    assert int(probe["memory_limit"]) == 8 * GIB
    assert probe["shm_bytes"] == 4 * GIB
    # And one larger than this machine is refused before anything runs.
    code, _ = _rejected(enforcing_server.client(), job_request(unique_name("huge"), ResourceConfig={
        "InstanceType": HUGE, "InstanceCount": 1, "VolumeSizeInGB": 10}))
    assert code == "ResourceLimitExceeded"


def test_a_cpuset_alone_leaves_the_cpu_count_at_the_machines(docker_engine: docker.DockerClient,
                                                             tmp_path: Path) -> None:
    """Why smlocal mounts a CPU list over /sys/devices/system/cpu/online: the toolkit's SM_NUM_CPUS is
    os.cpu_count(), which a cpuset does not change; the mounted list does (here one CPU of the machine)."""
    count = ["python3", "-c", "import os; print(os.cpu_count(), len(os.sched_getaffinity(0)))"]
    code, output = _run_directly(docker_engine, PYTHON_BASE_IMAGE, count, cpuset_cpus="0")
    assert (code, output.split()) == (0, [str(os.cpu_count()), "1"])
    online = tmp_path / "online"
    online.write_text("0\n")
    code, output = _run_directly(docker_engine, PYTHON_BASE_IMAGE, count, cpuset_cpus="0",
                                 volumes={str(online): {"bind": "/sys/devices/system/cpu/online", "mode": "ro"}})
    assert (code, output.split()) == (0, ["1", "1"])
