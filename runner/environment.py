"""What a training container gets besides its /opt/ml tree: its environment variables, and the machine its
instance type describes (/dev/shm, GPUs, and under --enforce-instance-resources its CPUs and memory)."""

from __future__ import annotations

import os
from pathlib import Path

from runner.host_address import container_s3_endpoint
from runner.layout import HostLayout
from runner.vpc import uses_vpc, vpc_endpoint
from smlocal.core.instance_types import GIB, ContainerResources, container_resources
from smlocal.core.jobspec import JobSpec
from smlocal.core.settings import Settings, machine

# What glibc counts for sysconf(_SC_NPROCESSORS_ONLN): os.cpu_count() and multiprocessing.cpu_count(), which is
# the training toolkit's SM_NUM_CPUS (sagemaker_training/environment.py, num_cpus). A cpuset narrows only the
# affinity (`nproc`, os.sched_getaffinity): in a container this file still lists every CPU of the machine.
CPU_ONLINE = "/sys/devices/system/cpu/online"


def container_environment(job: JobSpec, settings: Settings) -> dict[str, str]:
    """What the platform sets, then the request's Environment, then the job's identity.

    With EnableNetworkIsolation the container gets no store address and no keys: SageMaker makes no AWS
    credentials available to an isolated container (runner.networks cites the guide). The request's
    Environment is passed as given, isolated or not: SageMaker sets it in the container as asked, and
    what a user writes there is theirs to choose (the API's documentation of the field warns against
    secrets in it); with no route out of the job's network it reaches nothing anyway.
    """
    env: dict[str, str] = {"AWS_REGION": job.region, "AWS_DEFAULT_REGION": job.region}
    endpoint = None if job.network_isolation else container_s3_endpoint(settings)
    if endpoint and uses_vpc(job):
        endpoint = vpc_endpoint(endpoint)  # reached through the job's S3 gateway (runner.vpc)
    if endpoint:
        env.update({
            # boto3 >= 1.28 honours AWS_ENDPOINT_URL_S3; the training toolkit reads S3_ENDPOINT_URL.
            "AWS_ENDPOINT_URL_S3": endpoint,
            "S3_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": settings.s3_access_key,
            "AWS_SECRET_ACCESS_KEY": settings.s3_secret_key,
        })
        if settings.s3_store == "files":
            # rclone's S3 answers a ranged GET of an object stored with a checksum with the whole object's
            # CRC32, which boto3 >= 1.36 checks against the range and rejects: a download_file of more than
            # 8 MiB (ranged parts), as the training toolkit does for sourcedir.tar.gz, would fail.
            env["AWS_RESPONSE_CHECKSUM_VALIDATION"] = "when_required"
    # The user may point their code elsewhere, but the job's identity is the platform's to set.
    env.update(job.environment)
    env.update({"TRAINING_JOB_NAME": job.name, "TRAINING_JOB_ARN": job.arn})
    return env


def instance_resources(spec: JobSpec, settings: Settings, host: str, host_index: int, host_gpus: int
                       ) -> ContainerResources:
    """What the container of `host` (the `host_index`th of the job) gets for its instance type on this machine."""
    _, memory_gib = machine()
    return container_resources(spec.group_of(host).instance_type, host_memory_bytes=int(memory_gib * GIB),
                               host_gpus=host_gpus, host_cpus=sorted(os.sched_getaffinity(0)),
                               enforce=settings.enforce_instance_resources, host_index=host_index)


def cpu_count_mounts(layout: HostLayout, resources: ContainerResources) -> dict[str, str]:
    """With a cpuset, a file saying the container's CPUs mounted over CPU_ONLINE, so the CPU count it reads is its
    instance type's (host path -> container path; none without a cpuset). Kept in the host's private folder,
    beside its tree, not in it."""
    if resources.cpuset is None:
        return {}
    online = Path(layout.job_root) / layout.host / "cpus-online"
    online.write_text(resources.cpuset + "\n")
    online.chmod(0o644)  # readable by any container user (the folders above are private)
    return {str(online): CPU_ONLINE}
