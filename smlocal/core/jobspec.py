"""What a job asks for, typed: parsed once from the stored CreateTrainingJob request.

The request was validated against the botocore model when it was created, so parsing here only fills
SageMaker's defaults. Every runner module reads the job from a `JobSpec`, never from the raw dict.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from smlocal.core.store import JobRecord

DEFAULT_MAX_RUNTIME = 86400
DEFAULT_CHECKPOINT_PATH = "/opt/ml/checkpoints"
DEFAULT_GROUP = "homogeneousCluster"
FULLY_REPLICATED = "FullyReplicated"
SHARDED = "ShardedByS3Key"


def job_output_uri(s3_output_path: str, job_name: str) -> str:
    """`<S3OutputPath>/<job>/output`: where SageMaker puts model.tar.gz and output.tar.gz."""
    return f"{s3_output_path.rstrip('/')}/{job_name}/output"


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
class ChannelSpec:
    name: str
    input_mode: str  # File | Pipe | FastFile: the channel's InputMode, else the job's
    s3: S3Source | None  # None: a data source smlocal cannot read (named by `source_kind`)
    source_kind: str = "S3DataSource"
    content_type: str | None = None
    compression: str = "None"  # None | Gzip
    record_wrapper: str = "None"  # None | RecordIO
    shuffle_seed: int | None = None


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
    max_runtime_seconds: int = DEFAULT_MAX_RUNTIME
    network_isolation: bool = False  # EnableNetworkIsolation (runner.networks)
    inter_container_encryption: bool = False  # EnableInterContainerTrafficEncryption (runner.notices)

    @property
    def hosts(self) -> list[str]:
        """Every host of the job, algo-1 .. algo-N in number order."""
        hosts = [h for g in self.instance_groups for h in g.hosts]
        return sorted(hosts, key=lambda h: int(h.rsplit("-", 1)[1]))

    def group_of(self, host: str) -> InstanceGroup:
        return next(g for g in self.instance_groups if host in g.hosts)

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
            output=OutputSpec(output.get("S3OutputPath", ""), output.get("CompressionType", "GZIP") != "NONE"),
            checkpoint=CheckpointSpec(checkpoint["S3Uri"], checkpoint.get("LocalPath") or DEFAULT_CHECKPOINT_PATH)
            if checkpoint else None,
            max_runtime_seconds=int(stopping.get("MaxRuntimeInSeconds") or DEFAULT_MAX_RUNTIME),
            network_isolation=bool(request.get("EnableNetworkIsolation")),
            inter_container_encryption=bool(request.get("EnableInterContainerTrafficEncryption")),
        )


def _channel(channel: dict[str, Any], job_mode: str) -> ChannelSpec:
    source = channel.get("DataSource") or {}
    s3 = source.get("S3DataSource")
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
