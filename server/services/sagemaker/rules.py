"""CreateTrainingJob's cross-field rules: what the botocore model cannot say about one request, in
SageMaker's words (ValidationException, ResourceLimitExceeded), checked before the job is stored."""

from __future__ import annotations

import posixpath
from collections import Counter
from pathlib import PurePosixPath
from typing import Any

from server.aws.validation import raise_if_errors
from smlocal.core.errors import ApiError
from smlocal.core.file_systems import FileSystemRefused, FileSystems
from smlocal.core.instance_types import fits, instance_type
from smlocal.core.jobspec import (
    DEFAULT_CHECKPOINT_PATH,
    DEFAULT_DEBUG_HOOK_PATH,
    DEFAULT_MAX_RUNTIME,
    DEFAULT_TENSORBOARD_PATH,
    JobSpec,
)
from smlocal.core.local_channels import LocalChannelRoots, is_local_uri, local_path

MAX_RUNTIME_LIMIT = 28 * 24 * 3600


def check_create_rules(params: dict[str, Any]) -> None:
    """The cross-field rules of CreateTrainingJob that the model cannot express."""
    algo = params["AlgorithmSpecification"]
    if ("TrainingImage" in algo) == ("AlgorithmName" in algo):
        raise ApiError("ValidationException",
                       "Exactly one of TrainingImage or AlgorithmName must be specified in AlgorithmSpecification.")
    if "AlgorithmName" in algo:
        # Marketplace and built-in algorithms need AWS's registry; there is no image to run locally.
        raise ApiError("ValidationException",
                       f"Algorithm {algo['AlgorithmName']} does not exist or is not available in smlocal: "
                       "specify a TrainingImage instead.")
    stopping = params["StoppingCondition"]
    max_runtime = stopping.get("MaxRuntimeInSeconds", DEFAULT_MAX_RUNTIME)
    if max_runtime > MAX_RUNTIME_LIMIT:
        raise ApiError("ValidationException",
                       f"MaxRuntimeInSeconds must be less than or equal to {MAX_RUNTIME_LIMIT}.")
    max_wait = stopping.get("MaxWaitTimeInSeconds")
    if params.get("EnableManagedSpotTraining"):
        if max_wait is None or max_wait < max_runtime:
            raise ApiError("ValidationException", "Invalid MaxWaitTimeInSeconds. It must be present and be "
                           "greater than or equal to MaxRuntimeInSeconds")
    elif max_wait is not None:
        raise ApiError("ValidationException",
                       "MaxWaitTimeInSeconds can only be specified when EnableManagedSpotTraining is true.")
    channels = [c["ChannelName"] for c in params.get("InputDataConfig", [])]
    duplicates = sorted({c for c in channels if channels.count(c) > 1})
    if duplicates:
        raise ApiError("ValidationException", f"Channel names must be unique. Duplicate: {', '.join(duplicates)}")
    for name in channels:
        if name in (".", ".."):
            # The model's pattern allows them, but the channel folder /opt/ml/input/data/<name> would not be one.
            raise ApiError("ValidationException", f"Channel name '{name}' is not valid: a channel name cannot be "
                           "'.' or '..'.")
    for channel in params.get("InputDataConfig", []):
        _check_channel_source(channel)
        _check_channel_mode(channel, algo.get("TrainingInputMode", "File"))
    _check_instances(params["ResourceConfig"])
    _check_channel_groups(params)
    _check_checkpoint_path(params.get("CheckpointConfig"))
    _check_synced_paths(params)


# What the platform mounts into a training container; a checkpoint folder cannot take their place.
PLATFORM_PATHS = ("/", "/opt/ml", "/opt/ml/input", "/opt/ml/model", "/opt/ml/output")


def _check_checkpoint_path(checkpoint: dict[str, Any] | None) -> None:
    local = (checkpoint or {}).get("LocalPath")
    if local is None:
        return
    normal = posixpath.normpath(local) if local else ""
    if not local.startswith("/") or normal in PLATFORM_PATHS or normal.startswith("//"):
        raise ApiError("ValidationException",
                       f"Invalid CheckpointConfig.LocalPath '{local}': it must be an absolute path in the container "
                       f"other than {', '.join(PLATFORM_PATHS[1:])} (the default is /opt/ml/checkpoints).")


# The configs whose LocalPath the platform syncs to S3 while the job runs, with the default LocalPath of each.
OUTPUT_CONFIGS = (("TensorBoardOutputConfig", DEFAULT_TENSORBOARD_PATH), ("DebugHookConfig", DEFAULT_DEBUG_HOOK_PATH))
INPUT_PATH = "/opt/ml/input"


def _within(path: str, base: str) -> bool:
    """`path` is `base` or inside it (both normalized)."""
    return path == base or PurePosixPath(base) in PurePosixPath(path).parents


def _check_synced_paths(params: dict[str, Any]) -> None:
    """TensorBoard's and the debug hook's LocalPath: a folder of the container the platform syncs to S3, like the
    checkpoints'. It cannot be, hold or sit in /opt/ml/input (the platform's, read at start), cannot be or hold
    /opt/ml/model or /opt/ml/output (a folder inside them is fine: it is synced from there), and no two synced
    folders may be one inside the other (the same file would go to two prefixes)."""
    checkpoint = params.get("CheckpointConfig")
    taken: list[tuple[str, str, str]] = []  # (member, LocalPath as given, normalized)
    if checkpoint is not None:
        local = checkpoint.get("LocalPath") or DEFAULT_CHECKPOINT_PATH
        taken.append(("CheckpointConfig.LocalPath", local, posixpath.normpath(local)))
    for name, default in OUTPUT_CONFIGS:
        config = params.get(name)
        if config is None:
            continue
        member, local = f"{name}.LocalPath", config.get("LocalPath", default)
        normal = posixpath.normpath(local) if local else ""
        if (not local.startswith("/") or normal.startswith("//") or _within(normal, INPUT_PATH)
                or any(_within(platform, normal) for platform in PLATFORM_PATHS[2:])):
            raise ApiError("ValidationException",
                           f"Invalid {member} '{local}': it must be an absolute path in the container, outside "
                           f"{INPUT_PATH} and neither /opt/ml/model, /opt/ml/output nor a folder above them (the "
                           f"default is {default}).")
        for other, other_local, other_normal in taken:
            if _within(normal, other_normal) or _within(other_normal, normal):
                raise ApiError("ValidationException",
                               f"Invalid {member} '{local}': it overlaps {other} '{other_local}'; each folder "
                               "synced to S3 needs a path of its own.")
        taken.append((member, local, normal))


def _check_channel_source(channel: dict[str, Any]) -> None:
    """A channel smlocal cannot read is refused when the job is created, never accepted and failed later."""
    if "DatasetSource" in channel["DataSource"]:
        raise ApiError("ValidationException", f"Invalid data source for channel {channel['ChannelName']}: smlocal "
                       "cannot read a DatasetSource (a SageMaker hub dataset); use an S3DataSource or a "
                       "FileSystemDataSource")


def _check_channel_mode(channel: dict[str, Any], job_mode: str) -> None:
    """What each input mode accepts of a channel; the channel's InputMode overrides the job's.

    The one message seen from SageMaker is the compression one (aws/sagemaker-python-sdk#716: "Invalid
    compression type for channel training: File mode only supports NONE, got Gzip instead"); the others
    follow its pattern, with the rules of the API reference: CompressionType and RecordWrapperType are for
    Pipe input mode only ("In File mode, leave this field unset or set it to None"); "AugmentedManifestFile
    can only be used if the Channel's input mode is Pipe" (S3DataSource.S3DataType), and its AttributeNames
    are what gets streamed; FastFile reads an S3Prefix ("Augmented manifest files aren't supported",
    TrainingInputMode; the developer guide's FastFile section names S3 prefixes only).
    """
    name = channel["ChannelName"]
    mode = channel.get("InputMode") or job_mode
    source = channel["DataSource"].get("S3DataSource") or {}
    data_type = source.get("S3DataType", "S3Prefix")
    if data_type == "AugmentedManifestFile":
        if mode != "Pipe":
            raise ApiError("ValidationException", f"Invalid S3 data type for channel {name}: AugmentedManifestFile "
                           f"can only be used in Pipe input mode, got {mode} instead")
        if not source.get("AttributeNames"):
            raise ApiError("ValidationException", f"Invalid S3 data source for channel {name}: AttributeNames must "
                           "name the attributes to stream from an AugmentedManifestFile")
    if mode == "Pipe":
        return
    compression = channel.get("CompressionType", "None")
    if compression != "None":
        raise ApiError("ValidationException", f"Invalid compression type for channel {name}: {mode} mode only "
                       f"supports NONE, got {compression} instead")
    wrapper = channel.get("RecordWrapperType", "None")
    if wrapper != "None":
        raise ApiError("ValidationException", f"Invalid record wrapper type for channel {name}: {mode} mode only "
                       f"supports NONE, got {wrapper} instead")
    if mode == "FastFile" and source and data_type != "S3Prefix":
        raise ApiError("ValidationException", f"Invalid S3 data type for channel {name}: FastFile mode only "
                       f"supports S3Prefix, got {data_type} instead")


def _check_instances(resource: dict[str, Any]) -> None:
    groups = resource.get("InstanceGroups")
    if groups and ("InstanceType" in resource or "InstanceCount" in resource):
        # SageMaker's own words (aws/sagemaker-python-sdk#5564).
        raise ApiError("ValidationException", "InstanceType or InstanceCount cannot be specified with InstanceGroups")
    # The model's minimum is 0 (for capacity kinds smlocal does not have); a job runs on one host at least,
    # which is what SageMaker's model said before.
    counts = ([(f"resourceConfig.instanceGroups.{i}.member.instanceCount", g.get("InstanceCount"))
               for i, g in enumerate(groups, 1)] if groups else
              [("resourceConfig.instanceCount", resource.get("InstanceCount"))])
    raise_if_errors([f"Value '{count}' at '{path}' failed to satisfy constraint: Member must have value greater "
                     "than or equal to 1" for path, count in counts if count is not None and count < 1])


def _check_channel_groups(params: dict[str, Any]) -> None:
    """A channel's S3DataSource.InstanceGroupNames name groups of ResourceConfig.InstanceGroups ("A list of names
    of instance groups that get data from the S3 data source"); SageMaker's wording for an unknown one is not
    published: this follows the style of the channel messages above."""
    groups = [g["InstanceGroupName"] for g in params["ResourceConfig"].get("InstanceGroups") or []]
    for channel in params.get("InputDataConfig", []):
        named = (channel["DataSource"].get("S3DataSource") or {}).get("InstanceGroupNames") or []
        unknown = [n for n in named if n not in groups]
        if unknown:
            defined = ", ".join(groups) if groups else "none: the job has no InstanceGroups"
            raise ApiError("ValidationException", f"Invalid instance group names for channel {channel['ChannelName']}: "
                           f"{', '.join(unknown)} not defined in ResourceConfig.InstanceGroups ({defined})")


def _host_count(resource: dict[str, Any]) -> int:
    groups = resource.get("InstanceGroups")
    if groups:
        return sum(g.get("InstanceCount", 1) for g in groups)
    return resource.get("InstanceCount", 1)


def check_host_limit(params: dict[str, Any], limit: int) -> None:
    hosts = _host_count(params["ResourceConfig"])
    if hosts > limit:
        # AWS's wording for a service quota (e.g. "The account-level service limit 'ml.p3.2xlarge for training
        # job usage' is 0 Instances, ...", gabehollombe-aws/jupyter-notebooks#1), naming the flag that sets ours.
        raise ApiError("ResourceLimitExceeded",
                       f"The account-level service limit 'Number of instances per training job' is {limit} "
                       f"Instances, with current utilization of 0 Instances and a request delta of {hosts} "
                       "Instances. Please start smlocal with a higher --max-hosts-per-job to request an increase "
                       "for this limit.")


def check_waiting_limit(queued: int, active: int, max_concurrent: int, max_waiting: int) -> None:
    """`--max-waiting-jobs`: a new job that would wait (no slot of --max-concurrent-jobs free for it) while
    max_waiting jobs already wait is refused. A queued job a free slot is about to take does not wait."""
    waiting = max(0, queued - max(0, max_concurrent - active))
    if waiting >= max_waiting:
        # AWS's quota wording (see check_host_limit), naming the flag that sets ours.
        raise ApiError("ResourceLimitExceeded",
                       f"The account-level service limit 'Number of training jobs waiting for an instance' is "
                       f"{max_waiting} Jobs, with current utilization of {waiting} Jobs and a request delta of 1 "
                       "Jobs. Please start smlocal with a higher --max-waiting-jobs to request an increase for "
                       "this limit.")


def check_instance_fit(params: dict[str, Any], cores: int, memory_gib: float) -> None:
    """Under `--enforce-instance-resources`: each instance of the job must fit this machine on its own (its hosts
    share the machine, but one of them larger than the machine could never get what it asks for; how many run
    at once is --max-hosts-per-job's and --max-concurrent-jobs' business). A type the table does not know
    passes: nothing to measure it by."""
    counts: Counter[str] = Counter()
    for group in JobSpec.from_request(params).instance_groups:
        counts[group.instance_type] += len(group.hosts)
    for name, count in counts.items():
        instance = instance_type(name)
        if instance is not None and not fits(instance, cores, memory_gib):
            # AWS's wording for an instance type the account has no quota for (see check_host_limit).
            raise ApiError("ResourceLimitExceeded",
                           f"The account-level service limit '{name} for training job usage' is 0 Instances, with "
                           f"current utilization of 0 Instances and a request delta of {count} Instances. "
                           f"{name} has {instance.vcpus} vCPUs and {instance.memory_gib:g} GiB of memory; this "
                           f"machine has {cores} and {memory_gib:.1f} GiB, and smlocal runs with "
                           "--enforce-instance-resources. Please choose an instance type this machine can hold, or "
                           "start smlocal without --enforce-instance-resources.")


def check_local_channels(params: dict[str, Any], roots: LocalChannelRoots) -> None:
    """`file://` channels only under the operator's roots (the runner checks again when it stages)."""
    for channel in params.get("InputDataConfig", []):
        uri = (channel["DataSource"].get("S3DataSource") or {}).get("S3Uri", "")
        if not is_local_uri(uri):
            continue
        refusal = roots.refusal(local_path(uri))
        if refusal is not None:
            raise ApiError("ValidationException",
                           f"Invalid S3Uri {uri} in channel '{channel['ChannelName']}': {refusal}.")


def check_file_systems(params: dict[str, Any], file_systems: FileSystems) -> None:
    """FileSystemDataSource channels only of file systems the operator mapped (`--file-system`), with a DirectoryPath
    that stays inside the mapped folder (the runner checks again before it mounts it)."""
    for channel in params.get("InputDataConfig", []):
        source = channel["DataSource"].get("FileSystemDataSource")
        if source is None:
            continue
        try:
            file_systems.resolve(source["FileSystemId"], source["FileSystemType"], source["DirectoryPath"])
        except FileSystemRefused as e:
            raise ApiError("ValidationException", f"Invalid FileSystemDataSource in channel "
                           f"'{channel['ChannelName']}': {e.reason}.") from None
