"""What the console's pages show, computed from the API's answers (no HTML here; the templates escape)."""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from dataclasses import dataclass
from typing import Any

from smlocal.core.lifecycle import TERMINAL_STATUSES

STATUSES = ("InProgress", "Completed", "Failed", "Stopping", "Stopped")
# Metric periods GetMetricData accepts, shortest first; the chart takes the first that keeps a series short.
PERIODS = (1, 5, 10, 20, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400)
MAX_POINTS_PER_SERIES = 720


def epoch(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.timestamp()
    return float(value)


def when(value: Any) -> str:
    """A time in the server's zone, to the second."""
    seconds = epoch(value)
    if seconds is None:
        return ""
    return dt.datetime.fromtimestamp(seconds).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def iso(value: Any) -> str:
    seconds = epoch(value)
    return "" if seconds is None else dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat()


def ago(value: Any, now: float) -> str:
    """How long before `now` a time was: `4 s ago`, `3 min 05 s ago` (`just now` under a second)."""
    seconds = epoch(value)
    if seconds is None:
        return ""
    whole = int(now - seconds)
    if whole < 1:
        return "just now"
    return f"{whole} s ago" if whole < 60 else f"{duration(whole)} ago"


def local_zone() -> str:
    now = dt.datetime.now().astimezone()
    name, offset = now.strftime("%Z"), now.strftime("UTC%z")
    return name if name == "UTC" else f"{name}, {offset}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 10:
        return f"{max(0.0, seconds):.1f} s"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def end_time(job: dict[str, Any]) -> float | None:
    """When the job ended: its TrainingEndTime, else (ended before training) its last change."""
    if job.get("TrainingJobStatus") not in TERMINAL_STATUSES:
        return None
    return epoch(job.get("TrainingEndTime")) or epoch(job.get("LastModifiedTime"))


def elapsed(job: dict[str, Any], now: float | None = None) -> float:
    """Wall time from creation to the end (to now while it runs)."""
    created = epoch(job["CreationTime"]) or 0.0
    return (end_time(job) or (now if now is not None else time.time())) - created


def instance_count(job: dict[str, Any]) -> int:
    resource = job.get("ResourceConfig") or {}
    groups = resource.get("InstanceGroups")
    if groups:
        return sum(g.get("InstanceCount", 1) for g in groups)
    return int(resource.get("InstanceCount", 1))


def instance_summary(job: dict[str, Any]) -> str:
    resource = job.get("ResourceConfig") or {}
    groups = resource.get("InstanceGroups")
    if groups:
        return ", ".join(f"{g.get('InstanceGroupName')}: {g.get('InstanceCount', 1)} × {g.get('InstanceType')}"
                         for g in groups)
    return f"{resource.get('InstanceCount', 1)} × {resource.get('InstanceType', '?')}"


def hosts(job: dict[str, Any]) -> list[str]:
    # The runner numbers hosts algo-1 .. algo-N across instance groups, as SageMaker does.
    return [f"algo-{i}" for i in range(1, instance_count(job) + 1)]


@dataclass(frozen=True)
class JobRow:
    name: str
    status: str
    secondary: str
    instances: int
    created: str
    ended: str
    duration: str


def job_row(job: dict[str, Any], now: float) -> JobRow:
    return JobRow(
        name=job["TrainingJobName"], status=job["TrainingJobStatus"], secondary=job.get("SecondaryStatus", ""),
        instances=instance_count(job), created=when(job.get("CreationTime")), ended=when(end_time(job)),
        duration=duration(elapsed(job, now)),
    )


@dataclass(frozen=True)
class Step:
    """One SecondaryStatusTransitions entry, with where its bar sits on the job's time line (0..1)."""

    status: str
    message: str
    start: str
    end: str
    duration: str
    offset: float
    width: float
    running: bool


def timeline(job: dict[str, Any], now: float) -> list[Step]:
    transitions = job.get("SecondaryStatusTransitions") or []
    if not transitions:
        return []
    first = epoch(transitions[0]["StartTime"]) or 0.0
    last = max(epoch(t.get("EndTime")) or now for t in transitions)
    span = max(last - first, 1e-6)
    steps = []
    for t in transitions:
        start = epoch(t["StartTime"]) or first
        end = epoch(t.get("EndTime"))
        running = end is None
        stop = end if end is not None else now
        steps.append(Step(status=t["Status"], message=t.get("StatusMessage", ""), start=when(start),
                          end=when(end) if end is not None else "", duration=duration(stop - start),
                          offset=(start - first) / span, width=max((stop - start) / span, 0.004),
                          running=running))
    return steps


def is_spot(job: dict[str, Any]) -> bool:
    return bool(job.get("EnableManagedSpotTraining"))


def can_interrupt(job: dict[str, Any]) -> bool:
    """InterruptTrainingJob's own rule: a managed spot job that is Training."""
    return is_spot(job) and (job.get("TrainingJobStatus"), job.get("SecondaryStatus")) == ("InProgress", "Training")


@dataclass(frozen=True)
class FolderRow:
    """One SyncedFolders entry of DescribeTrainingJobProgress: a host's folder mirrored to S3."""

    host: str
    kind: str
    local_path: str
    s3_uri: str
    files: int
    bytes: int
    pending: int
    last_sync: str  # relative to now ("3 s ago")
    last_sync_iso: str
    mode: str
    error: str


@dataclass(frozen=True)
class Progress:
    """What DescribeTrainingJobProgress adds to DescribeTrainingJob, as the job page shows it."""

    attempt: str  # "2 of 3" with a RetryStrategy, else "" (every job has one attempt)
    interruptions: int | None  # spot jobs only
    interrupt_requested: bool
    folders: list[FolderRow]


def progress(job: dict[str, Any], answer: dict[str, Any] | None, now: float) -> Progress | None:
    if answer is None:
        return None
    retries = int(answer.get("MaximumRetryAttempts") or 0)
    attempt = int(answer.get("Attempt") or 1)
    folders = [FolderRow(
        host=f.get("Host", ""), kind=f.get("Kind", ""), local_path=f.get("LocalPath", ""), s3_uri=f.get("S3Uri", ""),
        files=int(f.get("Files") or 0), bytes=int(f.get("Bytes") or 0), pending=int(f.get("Pending") or 0),
        last_sync=ago(f.get("LastSyncTime"), now), last_sync_iso=iso(f.get("LastSyncTime")), mode=f.get("Mode", ""),
        error=f.get("LastError", ""),
    ) for f in answer.get("SyncedFolders") or []]
    return Progress(
        attempt=f"{attempt} of {retries + 1}" if retries or attempt > 1 else "",
        interruptions=int(answer.get("Interruptions") or 0) if is_spot(job) else None,
        interrupt_requested=bool(answer.get("InterruptRequested")),
        folders=sorted(folders, key=lambda f: (_host_number(f.host), f.kind)),
    )


def _host_number(host: str) -> int:
    tail = host.rpartition("-")[2]
    return int(tail) if tail.isdigit() else 0


def config_rows(job: dict[str, Any]) -> list[tuple[str, str]]:
    """The request's main settings, as label and text."""
    algo = job.get("AlgorithmSpecification") or {}
    stopping = job.get("StoppingCondition") or {}
    output = job.get("OutputDataConfig") or {}
    rows = [
        ("ARN", job.get("TrainingJobArn", "")),
        ("Role", job.get("RoleArn", "")),
        ("Image", algo.get("TrainingImage", "")),
        ("Input mode", algo.get("TrainingInputMode", "")),
        ("Entrypoint", " ".join(algo.get("ContainerEntrypoint") or [])),
        ("Arguments", " ".join(algo.get("ContainerArguments") or [])),
        ("Instances", instance_summary(job)),
        ("Volume", f"{(job.get('ResourceConfig') or {}).get('VolumeSizeInGB', '?')} GB"),
        ("Max runtime", duration(stopping.get("MaxRuntimeInSeconds"))),
        ("Managed spot", "yes" if is_spot(job) else ""),
        ("Max wait", duration(stopping.get("MaxWaitTimeInSeconds"))),
        ("Max pending time", duration(stopping.get("MaxPendingTimeInSeconds"))),
        ("Retry strategy", f"MaximumRetryAttempts {job['RetryStrategy'].get('MaximumRetryAttempts')}"
         if job.get("RetryStrategy") else ""),
        ("Warm pool", warm_pool_text(job)),
        ("Output", output.get("S3OutputPath", "")),
        ("Compression", output.get("CompressionType", "GZIP")),
        ("Model artifacts", (job.get("ModelArtifacts") or {}).get("S3ModelArtifacts", "")),
        ("Checkpoints", " → ".join(filter(None, [(job.get("CheckpointConfig") or {}).get("S3Uri"),
                                                 (job.get("CheckpointConfig") or {}).get("LocalPath")]))),
        ("TensorBoard output", _s3_and_local(job.get("TensorBoardOutputConfig"))),
        ("Debugger output", _s3_and_local(job.get("DebugHookConfig"))),
        ("Training time", f"{job['TrainingTimeInSeconds']} s" if "TrainingTimeInSeconds" in job else ""),
        ("Billable time", f"{job['BillableTimeInSeconds']} s" if "BillableTimeInSeconds" in job else ""),
    ]
    return [(label, str(value)) for label, value in rows if value]


def warm_pool_text(job: dict[str, Any]) -> str:
    """WarmPoolStatus in a line: `Available (keep-alive 10 min 00 s)`, `Reused by <job> after 42 s`..."""
    pool = job.get("WarmPoolStatus") or {}
    if not pool:
        return ""
    text = pool["Status"]
    keep_alive = (job.get("ResourceConfig") or {}).get("KeepAlivePeriodInSeconds")
    if pool["Status"] in ("InUse", "Available") and keep_alive:
        text += f" (keep-alive {duration(keep_alive)})"
    if pool.get("ReusedByJob"):
        text += f" by {pool['ReusedByJob']}"
    if "ResourceRetainedBillableTimeInSeconds" in pool:
        text += f", kept {pool['ResourceRetainedBillableTimeInSeconds']} s"
    return text


def _s3_and_local(config: dict[str, Any] | None) -> str:
    config = config or {}
    return " → ".join(filter(None, [config.get("S3OutputPath"), config.get("LocalPath")]))


def channel_rows(job: dict[str, Any]) -> list[dict[str, str]]:
    rows = []
    for channel in job.get("InputDataConfig") or []:
        source = channel.get("DataSource") or {}
        s3 = source.get("S3DataSource") or {}
        rows.append({
            "name": channel.get("ChannelName", ""),
            "uri": s3.get("S3Uri") or json.dumps(source),
            "type": s3.get("S3DataType", ""),
            "distribution": s3.get("S3DataDistributionType", ""),
            "mode": channel.get("InputMode", ""),
            "content_type": channel.get("ContentType", ""),
            "compression": channel.get("CompressionType", ""),
        })
    return rows


def describe_json(job: dict[str, Any]) -> str:
    return json.dumps(job, indent=2, sort_keys=True, default=str)


def metric_period(start: float, end: float) -> int:
    span = max(end - start, 1.0)
    for period in PERIODS:
        if span / period <= MAX_POINTS_PER_SERIES:
            return period
    return PERIODS[-1]


def host_of_stream(stream: str) -> str:
    """`job/algo-2-1700000000` -> `algo-2`."""
    tail = stream.split("/", 1)[-1]
    host, _, suffix = tail.rpartition("-")
    return host if host and suffix.isdigit() else tail


def finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
