"""What a job asks for, typed: parsed once from the stored CreateTrainingJob request.

The request was validated against the botocore model when it was created, so parsing here only fills
SageMaker's defaults. Every runner module reads the job from a `JobSpec`, never from the raw dict.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Any

from smlocal.core.store import JobRecord

DEFAULT_MAX_RUNTIME = 86400
DEFAULT_CHECKPOINT_PATH = "/opt/ml/checkpoints"
DEFAULT_GROUP = "homogeneousCluster"
FULLY_REPLICATED = "FullyReplicated"
SHARDED = "ShardedByS3Key"
# LocalPath defaults. TensorBoard: the API reference ("Defaults to /opt/ml/output/tensorboard"). Debug hook:
# the API reference says "/opt/ml/output/tensors/", but the file SageMaker writes for a request without one
# reads "/opt/ml/output/tensors" (shiftan/simple_sagemaker, examples/single_task/expected_output, captured
# from real jobs in 2020), which is smdebug's DEFAULT_SAGEMAKER_OUTDIR (smdebug/core/config_constants.py).
DEFAULT_TENSORBOARD_PATH = "/opt/ml/output/tensorboard"
DEFAULT_DEBUG_HOOK_PATH = "/opt/ml/output/tensors"
# SageMaker appends `<job>/<leaf>` to these configs' S3OutputPath, so each job has a prefix of its own
# (SDK v2 doc/amazon_sagemaker_debugger.rst: "s3://{destination-bucket-prefix}/{training-job-name}/debug-output/",
# ".../tensorboard-output/"; Estimator.latest_job_{debugger,tensorboard}_artifacts_path join the same).
TENSORBOARD_OUTPUT_LEAF = "tensorboard-output"
DEBUG_OUTPUT_LEAF = "debug-output"
# The kinds of SyncedFolder: short, used in host folder names and labels.
KIND_CHECKPOINTS = "checkpoints"
KIND_TENSORBOARD = "tensorboard"
KIND_DEBUG_OUTPUT = "debug-output"


def job_output_uri(s3_output_path: str, job_name: str) -> str:
    """`<S3OutputPath>/<job>/output`: where SageMaker puts model.tar.gz and output.tar.gz."""
    return f"{s3_output_path.rstrip('/')}/{job_name}/output"


def job_prefix_uri(s3_output_path: str, job_name: str, leaf: str) -> str:
    """`<S3OutputPath>/<job>/<leaf>`: where SageMaker puts a job's TensorBoard or debug output."""
    return f"{s3_output_path.rstrip('/')}/{job_name}/{leaf}"


def model_artifacts_uri(output_data_config: dict[str, Any], job_name: str) -> str:
    """ModelArtifacts.S3ModelArtifacts: the model.tar.gz, or the model/ prefix with CompressionType NONE."""
    output = job_output_uri(output_data_config["S3OutputPath"], job_name)
    if output_data_config.get("CompressionType") == "NONE":
        return f"{output}/model/"
    return f"{output}/model.tar.gz"


@dataclass(frozen=True)
class MetricDefinition:
    name: str
    regex: str


@dataclass(frozen=True)
class AlgorithmSpec:
    image: str | None
    algorithm_name: str | None
    input_mode: str  # the job's TrainingInputMode; a channel's InputMode overrides it
    entrypoint: tuple[str, ...] | None
    arguments: tuple[str, ...] | None
    metric_definitions: tuple[MetricDefinition, ...] = ()


@dataclass(frozen=True)
class S3Source:
    uri: str  # s3://, https:// or (smlocal's extension) file://
    data_type: str  # S3Prefix | ManifestFile | AugmentedManifestFile | Converse
    distribution: str  # FullyReplicated | ShardedByS3Key
    attribute_names: tuple[str, ...] = ()

    @property
    def sharded(self) -> bool:
        return self.distribution == SHARDED

    @property
    def is_local(self) -> bool:
        return self.uri.startswith("file://")


@dataclass(frozen=True)
class FileSystemSource:
    """FileSystemDataSource: a folder of an EFS or FSx for Lustre file system, mounted at the channel's path."""

    file_system_id: str
    file_system_type: str  # EFS | FSxLustre
    directory_path: str  # as requested (smlocal.core.file_systems resolves it)
    access_mode: str  # ro | rw


@dataclass(frozen=True)
class ChannelSpec:
    name: str
    input_mode: str  # File | Pipe | FastFile: the channel's InputMode, else the job's
    s3: S3Source | None  # None: a data source smlocal cannot read (named by `source_kind`)
    source_kind: str = "S3DataSource"
    content_type: str | None = None
    compression: str = "None"  # None | Gzip
    record_wrapper: str = "None"  # None | RecordIO
    shuffle_seed: int | None = None
    # S3DataSource.InstanceGroupNames: only these groups' hosts get the channel (none: every host).
    instance_groups: tuple[str, ...] = ()
    file_system: FileSystemSource | None = None  # FileSystemDataSource


@dataclass(frozen=True)
class InstanceGroup:
    name: str
    instance_type: str
    hosts: tuple[str, ...]


@dataclass(frozen=True)
class OutputSpec:
    s3_output_path: str
    compressed: bool  # CompressionType GZIP (the default) vs NONE


@dataclass(frozen=True)
class CheckpointSpec:
    s3_uri: str
    local_path: str


@dataclass(frozen=True)
class TensorBoardSpec:
    """TensorBoardOutputConfig: the algorithm writes to `local_path`, synced to
    `<s3_output_path>/<job>/tensorboard-output`."""

    local_path: str  # as requested (DEFAULT_TENSORBOARD_PATH when absent)
    s3_output_path: str  # as requested (DescribeTrainingJob echoes it so)

    def output_uri(self, job_name: str) -> str:
        return job_prefix_uri(self.s3_output_path, job_name, TENSORBOARD_OUTPUT_LEAF)


@dataclass(frozen=True)
class DebugHookSpec:
    """DebugHookConfig: smdebug's hook reads it and writes to `local_path`, synced to
    `<s3_output_path>/<job>/debug-output`."""

    local_path: str  # as requested (DEFAULT_DEBUG_HOOK_PATH when absent)
    s3_output_path: str
    hook_parameters: dict[str, str] = field(default_factory=dict)
    collections: tuple[tuple[str, dict[str, str]], ...] = ()  # (CollectionName, CollectionParameters)

    def output_uri(self, job_name: str) -> str:
        return job_prefix_uri(self.s3_output_path, job_name, DEBUG_OUTPUT_LEAF)


@dataclass(frozen=True)
class SyncedFolder:
    """A container folder the platform syncs to S3 while the job runs (runner.folder_sync, runner.layout)."""

    kind: str  # KIND_CHECKPOINTS | KIND_TENSORBOARD | KIND_DEBUG_OUTPUT
    local_path: str  # in the container, normalized (posixpath.normpath)
    s3_uri: str  # the prefix its files go to, with the `<job>/...` part SageMaker adds
    restore: bool  # copied in from S3 before the algorithm starts (checkpoints only)
    delete: bool  # local deletions propagate to S3


@dataclass(frozen=True)
class JobSpec:
    name: str
    arn: str
    region: str
    account_id: str
    role_arn: str
    algorithm: AlgorithmSpec
    hyperparameters: dict[str, str] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)
    channels: tuple[ChannelSpec, ...] = ()
    instance_groups: tuple[InstanceGroup, ...] = ()
    output: OutputSpec = OutputSpec("", True)
    checkpoint: CheckpointSpec | None = None
    tensorboard: TensorBoardSpec | None = None  # TensorBoardOutputConfig
    debug_hook: DebugHookSpec | None = None  # DebugHookConfig
    max_runtime_seconds: int = DEFAULT_MAX_RUNTIME
    spot: bool = False  # EnableManagedSpotTraining: `smlocal interrupt` may reclaim it (runner.execution)
    max_wait_seconds: int | None = None  # MaxWaitTimeInSeconds (spot only), counted from CreationTime
    max_pending_seconds: int | None = None  # MaxPendingTimeInSeconds, for a job waiting for a slot
    max_retry_attempts: int = 0  # RetryStrategy.MaximumRetryAttempts: retries after a platform fault
    network_isolation: bool = False  # EnableNetworkIsolation (runner.networks)
    vpc: bool = False  # VpcConfig: a private subnet with an S3 endpoint (runner.vpc)
    inter_container_encryption: bool = False  # EnableInterContainerTrafficEncryption (runner.notices)
    remote_debug: bool = False  # RemoteDebugConfig.EnableRemoteDebug: `smlocal shell` may enter its hosts
    volume_size_gb: int | None = None  # ResourceConfig.VolumeSizeInGB: each host's /opt/ml (runner.volumes)

    @property
    def hosts(self) -> list[str]:
        """Every host of the job, algo-1 .. algo-N in number order."""
        hosts = [h for g in self.instance_groups for h in g.hosts]
        return sorted(hosts, key=lambda h: int(h.rsplit("-", 1)[1]))

    def group_of(self, host: str) -> InstanceGroup:
        return next(g for g in self.instance_groups if host in g.hosts)

    def channel_hosts(self, channel: ChannelSpec) -> list[str]:
        """The hosts that get a channel, in host order: with InstanceGroupNames only those groups' hosts ("S3 data
        will be sent to all instance groups in the specified list", SDK v2 `TrainingInput(instance_groups=)`), and
        a ShardedByS3Key channel is split among these hosts only; without, every host."""
        if not channel.instance_groups:
            return self.hosts
        return [h for h in self.hosts if self.group_of(h).name in channel.instance_groups]

    def synced_folders(self) -> tuple[SyncedFolder, ...]:
        """Every folder synced to S3 while the job runs: the checkpoints, TensorBoard's, the debug hook's.

        Checkpoints are copied in at start and mirrored, deletions included ("If a checkpoint is deleted in the
        SageMaker AI container, it will also be deleted in the S3 folder": developer guide, model-checkpoints).
        For the other two SageMaker documents an upload "in near real time" (SDK v2
        doc/amazon_sagemaker_debugger.rst) and nothing about deletions: they are uploaded only.
        """
        folders: list[SyncedFolder] = []
        if self.checkpoint is not None:
            folders.append(SyncedFolder(KIND_CHECKPOINTS, posixpath.normpath(self.checkpoint.local_path),
                                        self.checkpoint.s3_uri, restore=True, delete=True))
        for kind, config in ((KIND_TENSORBOARD, self.tensorboard), (KIND_DEBUG_OUTPUT, self.debug_hook)):
            if config is not None:
                folders.append(SyncedFolder(kind, posixpath.normpath(config.local_path),
                                            config.output_uri(self.name), restore=False, delete=False))
        return tuple(folders)

    @classmethod
    def from_job(cls, job: JobRecord) -> JobSpec:
        return cls.from_request(job.request, name=job.name, arn=job.arn, region=job.region,
                                account_id=job.account_id)

    @classmethod
    def from_request(cls, request: dict[str, Any], *, name: str | None = None, arn: str = "",
                     region: str = "us-east-1", account_id: str = "") -> JobSpec:
        algorithm = request.get("AlgorithmSpecification") or {}
        job_mode = algorithm.get("TrainingInputMode", "File")
        output = request.get("OutputDataConfig") or {}
        checkpoint = request.get("CheckpointConfig")
        stopping = request.get("StoppingCondition") or {}
        return cls(
            name=name or request.get("TrainingJobName", ""),
            arn=arn,
            region=region,
            account_id=account_id,
            role_arn=request.get("RoleArn", ""),
            algorithm=AlgorithmSpec(
                image=algorithm.get("TrainingImage"),
                algorithm_name=algorithm.get("AlgorithmName"),
                input_mode=job_mode,
                entrypoint=tuple(algorithm["ContainerEntrypoint"]) if algorithm.get("ContainerEntrypoint") else None,
                arguments=tuple(algorithm["ContainerArguments"]) if algorithm.get("ContainerArguments") else None,
                metric_definitions=tuple(MetricDefinition(d.get("Name", ""), d.get("Regex", ""))
                                         for d in algorithm.get("MetricDefinitions") or []),
            ),
            hyperparameters={str(k): str(v) for k, v in (request.get("HyperParameters") or {}).items()},
            environment={str(k): str(v) for k, v in (request.get("Environment") or {}).items()},
            channels=tuple(_channel(c, job_mode) for c in request.get("InputDataConfig") or []),
            instance_groups=_instance_groups(request.get("ResourceConfig") or {}),
            volume_size_gb=(request.get("ResourceConfig") or {}).get("VolumeSizeInGB"),
            output=OutputSpec(output.get("S3OutputPath", ""), output.get("CompressionType", "GZIP") != "NONE"),
            checkpoint=CheckpointSpec(checkpoint["S3Uri"], checkpoint.get("LocalPath") or DEFAULT_CHECKPOINT_PATH)
            if checkpoint else None,
            tensorboard=_tensorboard(request.get("TensorBoardOutputConfig")),
            debug_hook=_debug_hook(request.get("DebugHookConfig")),
            max_runtime_seconds=int(stopping.get("MaxRuntimeInSeconds") or DEFAULT_MAX_RUNTIME),
            spot=bool(request.get("EnableManagedSpotTraining")),
            max_wait_seconds=_int_or_none(stopping.get("MaxWaitTimeInSeconds")),
            max_pending_seconds=_int_or_none(stopping.get("MaxPendingTimeInSeconds")),
            max_retry_attempts=int((request.get("RetryStrategy") or {}).get("MaximumRetryAttempts") or 0),
            network_isolation=bool(request.get("EnableNetworkIsolation")),
            vpc=bool(request.get("VpcConfig")),
            inter_container_encryption=bool(request.get("EnableInterContainerTrafficEncryption")),
            remote_debug=bool((request.get("RemoteDebugConfig") or {}).get("EnableRemoteDebug")),
        )


def _int_or_none(value: Any) -> int | None:
    return int(value) if value is not None else None


def _tensorboard(config: dict[str, Any] | None) -> TensorBoardSpec | None:
    if not config:
        return None
    return TensorBoardSpec(config.get("LocalPath") or DEFAULT_TENSORBOARD_PATH, config["S3OutputPath"])


def _debug_hook(config: dict[str, Any] | None) -> DebugHookSpec | None:
    if not config:
        return None
    return DebugHookSpec(
        local_path=config.get("LocalPath") or DEFAULT_DEBUG_HOOK_PATH,
        s3_output_path=config["S3OutputPath"],
        hook_parameters=_strings(config.get("HookParameters")),
        collections=tuple((c["CollectionName"], _strings(c.get("CollectionParameters")))
                          for c in config.get("CollectionConfigurations") or []),
    )


def _strings(mapping: dict[str, Any] | None) -> dict[str, str]:
    return {str(k): str(v) for k, v in (mapping or {}).items()}


def _channel(channel: dict[str, Any], job_mode: str) -> ChannelSpec:
    source = channel.get("DataSource") or {}
    s3 = source.get("S3DataSource")
    file_system = source.get("FileSystemDataSource")
    shuffle = channel.get("ShuffleConfig") or {}
    return ChannelSpec(
        name=channel["ChannelName"],
        input_mode=channel.get("InputMode") or job_mode,
        s3=S3Source(s3["S3Uri"], s3.get("S3DataType", "S3Prefix"),
                    s3.get("S3DataDistributionType", FULLY_REPLICATED),
                    tuple(s3.get("AttributeNames") or ())) if s3 is not None else None,
        source_kind="S3DataSource" if s3 is not None else next(iter(source), "unknown"),
        content_type=channel.get("ContentType") or None,
        compression=channel.get("CompressionType", "None"),
        record_wrapper=channel.get("RecordWrapperType", "None"),
        shuffle_seed=shuffle.get("Seed"),
        instance_groups=tuple((s3 or {}).get("InstanceGroupNames") or ()),
        file_system=FileSystemSource(file_system["FileSystemId"], file_system["FileSystemType"],
                                     file_system["DirectoryPath"], file_system["FileSystemAccessMode"])
        if file_system is not None else None,
    )


def _instance_groups(rc: dict[str, Any]) -> tuple[InstanceGroup, ...]:
    groups = rc.get("InstanceGroups")
    if groups:
        # Heterogeneous clusters number hosts across groups in request order.
        result, next_host = [], 1
        for g in groups:
            count = int(g.get("InstanceCount", 1))
            result.append(InstanceGroup(g["InstanceGroupName"], g["InstanceType"],
                                        tuple(f"algo-{i}" for i in range(next_host, next_host + count))))
            next_host += count
        return tuple(result)
    count = int(rc.get("InstanceCount", 1))
    return (InstanceGroup(DEFAULT_GROUP, rc.get("InstanceType", "ml.m5.large"),
                          tuple(f"algo-{i}" for i in range(1, count + 1))),)
