"""What the platform itself writes into a job's log streams: what smlocal accepts but cannot do locally.

Each host's stream starts with these lines, stamped with the container's start (no line of the
algorithm is older), so `GetLogEvents` shows them first. They are written once, when the container is
started; a server that adopts the job after a restart continues the stream and writes nothing again.
"""

from __future__ import annotations

from smlocal.core.instance_types import InstanceType, gpus_given, instance_type
from smlocal.core.jobspec import JobSpec

ENCRYPTION_NOTICE = (
    "smlocal: EnableInterContainerTrafficEncryption is accepted but has no effect locally: the hosts of "
    "this job run on one machine and talk over a Docker network of their own, unencrypted.")
VPC_NOTICE = (
    "smlocal: VpcConfig is served as a private subnet without NAT, with an S3 gateway endpoint: this job's hosts "
    "reach each other and the S3 store (at the address AWS_ENDPOINT_URL_S3 names), and nothing else, neither the "
    "internet nor this machine. Its Subnets and SecurityGroupIds are not looked at.")


def platform_notices(spec: JobSpec, host: str | None = None, host_gpus: int = 0) -> tuple[str, ...]:
    """The lines a host's log stream starts with (none for most jobs); `host_gpus`: the NVIDIA GPUs this
    machine's engine can give a container."""
    notices = [ENCRYPTION_NOTICE] if spec.inter_container_encryption else []
    instance = instance_type(spec.group_of(host).instance_type) if host is not None else None
    accelerators = accelerator_notice(instance, host_gpus) if instance is not None else None
    if accelerators is not None:
        notices.append(accelerators)
    if spec.vpc and not spec.network_isolation:  # runner.vpc.uses_vpc; isolation is stricter and says nothing
        notices.append(VPC_NOTICE)
    if spec.remote_debug and host is not None:
        notices.append(remote_debug_notice(spec, host))
    return tuple(notices)


def remote_debug_notice(spec: JobSpec, host: str) -> str:
    """How to get into this host (`smlocal shell`), where SageMaker's guide names the SSM target
    `sagemaker-training-job:<job>_<host>` (developer guide, train-remote-debugging.html)."""
    command = f"smlocal shell {spec.name} --host {host} --region {spec.region}"
    return (f"smlocal: remote debugging is enabled (RemoteDebugConfig): open a shell in this host with "
            f"`{command}`, or run one command with `{command} -- COMMAND` (on SageMaker: aws ssm start-session "
            f"--target sagemaker-training-job:{spec.name}_{host}).")


def no_s3_endpoint_notice(reason: str) -> str:
    """Said when a VPC job's S3 gateway could not be made: the job runs on its private subnet without it."""
    return (f"smlocal: this job's private subnet has no S3 endpoint ({reason}): the S3 store is unreachable from "
            "its containers, as in a VPC without one; smlocal still stages its inputs and uploads its artifacts.")


def accelerator_notice(instance: InstanceType, host_gpus: int) -> str | None:
    """What a container of this type gets of its instance's GPUs or Trainium chips, when it is not all of them."""
    wanted = instance.accelerators
    if not wanted:
        return None
    kind = f"{wanted} {instance.accelerator} {_plural('GPU' if instance.gpus else 'accelerator', wanted)}"
    if not instance.gpus:  # Trainium: Neuron devices are not passed to containers
        return (f"smlocal: {instance.name} has {kind} on SageMaker; smlocal gives containers no Neuron devices, "
                "so the job runs on CPU")
    given = gpus_given(instance, host_gpus)
    if given == 0:
        return f"smlocal: {instance.name} has {kind} on SageMaker; this host has none, so the job runs on CPU"
    if given < wanted:
        return (f"smlocal: {instance.name} has {kind} on SageMaker; this host has {host_gpus}, so the job gets "
                f"{given}")
    return None


def _plural(word: str, count: int) -> str:
    return word if count == 1 else word + "s"
