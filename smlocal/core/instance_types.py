"""What each `ml.*` training instance type has (vCPUs, memory, GPUs), and what a container on this machine
gets for it: the `/dev/shm` size, the GPUs, and (under `serve --enforce-instance-resources`) its CPUs and
memory limit.

The figures live in one data file, `data/instance_types.json` (its `sources` say where they come from); the
names are exactly those of botocore's `TrainingInstanceType` enum (tests/test_instance_types.py checks it).
The API server reads the table to refuse a job this machine cannot hold (server.services.sagemaker.rules),
the runner to size the containers (runner.execution) and to say what differs (runner.notices).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from types import MappingProxyType

GIB = 2**30
# Linux mounts a tmpfs at half the machine's memory unless told otherwise (the kernel's tmpfs
# documentation: "The default is half of your physical RAM without swap"), and that is the /dev/shm an
# instance has: a SageMaker notebook instance on ml.g4dn.4xlarge (64 GiB) shows 32G
# (aws/sagemaker-python-sdk#937). SageMaker documents nothing for training containers; Docker's own
# default, 64 MiB, is what kills PyTorch's DataLoader workers with "Bus error" (same issue, and #3331 for
# the SDK's local mode), so never less than 1 GiB.
SHM_MIN_BYTES = GIB
NVIDIA = "NVIDIA"


@dataclass(frozen=True)
class InstanceType:
    name: str
    vcpus: int
    memory_gib: float
    accelerators: int = 0  # GPUs or Trainium chips
    accelerator: str | None = None  # their kind: "NVIDIA A10G", "AWS Trainium", ...

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * GIB)

    @property
    def gpus(self) -> int:
        """Its NVIDIA GPUs: what Docker's device requests can give a container (Trainium chips are not)."""
        return self.accelerators if (self.accelerator or "").startswith(NVIDIA) else 0


@cache
def instance_types() -> Mapping[str, InstanceType]:
    """Every training instance type of the table, by name."""
    data = json.loads(files("smlocal.core").joinpath("data", "instance_types.json").read_text())
    return MappingProxyType({name: InstanceType(name, **figures)
                             for name, figures in data["instance_types"].items()})


def instance_type(name: str) -> InstanceType | None:
    """The type's figures; None for a name the table does not have (a type newer than it)."""
    return instance_types().get(name)


def fits(instance: InstanceType, cores: int, memory_gib: float) -> bool:
    """One instance of this type fits a machine with these cores and memory."""
    return instance.vcpus <= cores and instance.memory_gib <= memory_gib


def shm_size(instance: InstanceType | None, host_memory_bytes: int) -> int:
    """The container's /dev/shm in bytes: half the instance's memory, as on an instance, at least 1 GiB, and
    never more than half this machine's memory (an unknown type counts as this machine)."""
    memory = instance.memory_bytes if instance is not None else host_memory_bytes
    return min(max(memory // 2, SHM_MIN_BYTES), host_memory_bytes // 2)


def gpus_given(instance: InstanceType | None, host_gpus: int) -> int:
    """The GPUs a container of this type gets: the type's, as far as this machine has them."""
    return min(instance.gpus, host_gpus) if instance is not None else 0


def cpu_list(cpus: Sequence[int]) -> str:
    """CPU numbers in the kernel's list format (`0-3,8`), as cpusets and /sys/devices/system/cpu/online write them."""
    ranges: list[list[int]] = []
    for cpu in sorted(set(cpus)):
        if ranges and cpu == ranges[-1][1] + 1:
            ranges[-1][1] = cpu
        else:
            ranges.append([cpu, cpu])
    return ",".join(str(first) if first == last else f"{first}-{last}" for first, last in ranges)


def cpuset(vcpus: int, host_cpus: Sequence[int], host_index: int = 0) -> str:
    """The CPUs of a container with `vcpus` of this machine's `host_cpus`: the job's hosts take turns along
    the list (host 1 from its start, host 2 after host 1's...), so a multi-host job spreads over the machine."""
    available = sorted(host_cpus)
    count = min(vcpus, len(available))
    start = host_index * count
    return cpu_list([available[(start + k) % len(available)] for k in range(count)])


@dataclass(frozen=True)
class ContainerResources:
    """What a host's container gets from the engine."""

    shm_size: int  # bytes
    gpus: int = 0  # NVIDIA GPUs, through a device request
    cpuset: str | None = None  # CPUs it may run on (kernel list format); None: all of them
    memory: int | None = None  # its memory limit in bytes; None: none


def container_resources(instance_name: str, *, host_memory_bytes: int, host_gpus: int, host_cpus: Sequence[int],
                        enforce: bool, host_index: int = 0) -> ContainerResources:
    """A container as the instance would be: /dev/shm and GPUs always; with `enforce`, its vCPUs (a cpuset) and
    its memory too. The API refused, under `enforce`, an instance larger than this machine (rules); one unknown
    to the table gets no limits."""
    instance = instance_type(instance_name)
    shm, gpus = shm_size(instance, host_memory_bytes), gpus_given(instance, host_gpus)
    if not enforce or instance is None:
        return ContainerResources(shm, gpus)
    # A job created before the server was started with `enforce` was not checked: never above the machine.
    return ContainerResources(shm, gpus, cpuset(instance.vcpus, host_cpus, host_index),
                              min(instance.memory_bytes, host_memory_bytes))
