"""The SageMaker operations smlocal serves: each takes validated input and returns the output dict."""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.aws.validation import raise_if_errors
from server.services.sagemaker.listing import list_training_jobs
from server.services.sagemaker.tagging import Tags, check_arn_scope, check_tag_keys
from smlocal.core.errors import ApiError
from smlocal.core.lifecycle import Lifecycle, training_job_arn, training_seconds
from smlocal.core.local_channels import LocalChannelRoots, is_local_uri, local_path
from smlocal.core.logstore import JobLogKey, remove_job_logs
from smlocal.core.settings import default_max_hosts_per_job
from smlocal.core.store import JobRecord, Store

# The seed's required set for container jobs: recent models relaxed these for serverless jobs.
CREATE_REQUIRED = ("AlgorithmSpecification", "ResourceConfig", "StoppingCondition")
MAX_RUNTIME_LIMIT = 28 * 24 * 3600


@dataclass(frozen=True)
class RequestContext:
    region: str
    account_id: str


@dataclass(frozen=True)
class JobLimits:
    """What this server lets one job ask for (`--max-hosts-per-job`, `--local-channel-root`)."""

    max_hosts_per_job: int = field(default_factory=default_max_hosts_per_job)
    local_roots: LocalChannelRoots = field(default_factory=LocalChannelRoots)


class Operations:
    """The SageMaker provider: one method per served operation."""

    extra_required = {"CreateTrainingJob": CREATE_REQUIRED}

    def __init__(self, store: Store, lifecycle: Lifecycle, on_change: Callable[[], None] = lambda: None,
                 data_dir: Path | None = None, limits: JobLimits | None = None) -> None:
        self.store = store
        self.lifecycle = lifecycle
        # Where the jobs' log streams live (DeleteTrainingJob removes them).
        self.data_dir = data_dir
        self.tags = Tags(store)
        self.limits = limits or JobLimits()
        # Lets the runner react at once to a new job or a stop instead of at its next poll.
        self.on_change = on_change

    def handlers(self) -> dict[str, Callable[[RequestContext, dict[str, Any]], dict[str, Any]]]:
        return {
            "CreateTrainingJob": self.create_training_job,
            "DescribeTrainingJob": self.describe_training_job,
            "ListTrainingJobs": self.list_training_jobs,
            "StopTrainingJob": self.stop_training_job,
            "DeleteTrainingJob": self.delete_training_job,
            "AddTags": self.add_tags,
            "ListTags": self.list_tags,
            "DeleteTags": self.delete_tags,
        }

    # ---- training jobs --------------------------------------------------------------------

    def create_training_job(self, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
        check_create_rules(params)
        check_tag_keys(params.get("Tags", []))
        check_local_channels(params, self.limits.local_roots)
        check_host_limit(params, self.limits.max_hosts_per_job)
        request = {k: v for k, v in params.items() if k != "Tags"}
        job = self.lifecycle.create(
            account_id=ctx.account_id, region=ctx.region, name=params["TrainingJobName"],
            request=request, tags=params.get("Tags", []),
        )
        self.on_change()
        return {"TrainingJobArn": job.arn}

    def describe_training_job(self, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
        return describe(self.lifecycle.get(self._arn(ctx, params)))

    def list_training_jobs(self, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
        return list_training_jobs(self.store, ctx.account_id, ctx.region, params)

    def stop_training_job(self, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
        self.lifecycle.request_stop(self._arn(ctx, params))
        self.on_change()
        return {}

    def delete_training_job(self, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
        arn = self._arn(ctx, params)
        job = self.lifecycle.get(arn)
        # The job's metric points go with its row (the foreign key cascades).
        self.lifecycle.delete(arn)
        if self.data_dir is not None:
            remove_job_logs(self.data_dir, JobLogKey.of(job.account_id, job.region, job.name, job.creation_time))
        return {}

    @staticmethod
    def _arn(ctx: RequestContext, params: dict[str, Any]) -> str:
        return training_job_arn(ctx.region, ctx.account_id, params["TrainingJobName"])

    # ---- tags -----------------------------------------------------------------------------

    def add_tags(self, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
        check_arn_scope(params["ResourceArn"], ctx.region, ctx.account_id, "AddTags")
        return {"Tags": self.tags.add(params["ResourceArn"], params["Tags"])}

    def list_tags(self, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
        check_arn_scope(params["ResourceArn"], ctx.region, ctx.account_id, "ListTags")
        return self.tags.list(params["ResourceArn"], params.get("MaxResults"), params.get("NextToken"))

    def delete_tags(self, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
        check_arn_scope(params["ResourceArn"], ctx.region, ctx.account_id, "DeleteTags")
        self.tags.delete(params["ResourceArn"], params["TagKeys"])
        return {}


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
    max_runtime = stopping.get("MaxRuntimeInSeconds", 86400)
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
        _check_channel_mode(channel, algo.get("TrainingInputMode", "File"))
    _check_instances(params["ResourceConfig"])
    _check_checkpoint_path(params.get("CheckpointConfig"))


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


def model_artifacts_uri(request: dict[str, Any], job_name: str) -> str:
    output = request["OutputDataConfig"]
    base = output["S3OutputPath"].rstrip("/")
    if output.get("CompressionType") == "NONE":
        return f"{base}/{job_name}/output/model/"
    return f"{base}/{job_name}/output/model.tar.gz"


def _echoed_request(request: dict[str, Any]) -> dict[str, Any]:
    """The request as SageMaker echoes it, with the defaults it fills in.

    SDK v2's Estimator.attach reads OutputDataConfig.KmsKeyId and StoppingCondition.MaxRuntimeInSeconds
    without a default, as SageMaker always returns them.
    """
    echoed = dict(request)
    if "OutputDataConfig" in echoed:
        echoed["OutputDataConfig"] = {"KmsKeyId": "", **echoed["OutputDataConfig"]}
    if "StoppingCondition" in echoed:
        echoed["StoppingCondition"] = {"MaxRuntimeInSeconds": 86400, **echoed["StoppingCondition"]}
    return echoed


def describe(job: JobRecord) -> dict[str, Any]:
    """DescribeTrainingJob's answer: the echoed request plus everything the job has become."""
    out: dict[str, Any] = {
        "EnableNetworkIsolation": False,
        "EnableInterContainerTrafficEncryption": False,
        "EnableManagedSpotTraining": False,
        **_echoed_request(job.request),
        "TrainingJobName": job.name,
        "TrainingJobArn": job.arn,
        "ModelArtifacts": {"S3ModelArtifacts": model_artifacts_uri(job.request, job.name)},
        "TrainingJobStatus": job.status,
        "SecondaryStatus": job.secondary_status,
        "CreationTime": job.creation_time,
        "LastModifiedTime": job.last_modified_time,
        "SecondaryStatusTransitions": [
            {"Status": t.status, "StartTime": t.start_time, "StatusMessage": t.message}
            | ({"EndTime": t.end_time} if t.end_time is not None else {})
            for t in job.transitions
        ],
    }
    if job.failure_reason:
        out["FailureReason"] = job.failure_reason
    if job.training_start_time is not None:
        out["TrainingStartTime"] = job.training_start_time
    if job.training_end_time is not None:
        out["TrainingEndTime"] = job.training_end_time
    seconds = training_seconds(job)
    if seconds is not None:
        out["TrainingTimeInSeconds"] = seconds
        out["BillableTimeInSeconds"] = seconds
    if job.final_metrics:
        out["FinalMetricDataList"] = job.final_metrics
    return out
