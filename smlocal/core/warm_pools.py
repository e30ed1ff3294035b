"""SageMaker managed warm pools: which jobs match, when a pool is kept, and its persistent cache.

Developer guide, "SageMaker AI Managed Warm Pools":
- a job with `ResourceConfig.KeepAlivePeriodInSeconds` > 0 keeps its instances after it ends: its
  WarmPoolStatus is `Available` for that long, then `Terminated`;
- the next job that matches (identical RoleArn, ResourceConfig InstanceCount / InstanceType /
  VolumeKmsKeyId / VolumeSizeInGB, VpcConfig SecurityGroupIds / Subnets,
  EnableInterContainerTrafficEncryption and EnableNetworkIsolation) and asks for a warm pool itself takes
  it: the first job's status becomes `Reused` (ReusedByJob), the new one's `InUse`, and the pool inherits
  the new job's KeepAlivePeriodInSeconds when that one ends; a pool moves from job to job for 7 days at most;
- a pool is kept after a job that completed, was stopped once its instances were up, or failed for an
  algorithm or client error; any other failure might leave the cluster unhealthy: no pool;
- `UpdateTrainingJob` changes KeepAlivePeriodInSeconds of an Available pool (0 terminates it);
- the persistent cache, `/opt/ml/sagemaker/warmpoolcache`, keeps what a job leaves there for the next job
  on the same pool (pip installs, data): here a folder per pool and host under `<data-dir>/warm-pools`.
"""

from __future__ import annotations

import json
from typing import Any

IN_USE, AVAILABLE, REUSED, TERMINATED = "InUse", "Available", "Reused", "Terminated"
# A pool moves from job to job for 7 days at most.
MAX_POOL_SECONDS = 7 * 24 * 3600
CACHE_PATH = "/opt/ml/sagemaker/warmpoolcache"
CACHE_FOLDER = "warm-pools"  # under the data dir: <pool id>/<host>


def keep_alive(request: dict[str, Any]) -> int:
    return int((request.get("ResourceConfig") or {}).get("KeepAlivePeriodInSeconds") or 0)


def match_key(request: dict[str, Any]) -> str:
    """What two jobs must share for the second to reuse the first one's pool, as one comparable string."""
    resources = request.get("ResourceConfig") or {}
    vpc = request.get("VpcConfig") or {}
    return json.dumps({
        "RoleArn": request.get("RoleArn"),
        "InstanceCount": resources.get("InstanceCount"),
        "InstanceType": resources.get("InstanceType"),
        "InstanceGroups": resources.get("InstanceGroups"),  # a heterogeneous cluster's instances are named here
        "VolumeKmsKeyId": resources.get("VolumeKmsKeyId"),
        "VolumeSizeInGB": resources.get("VolumeSizeInGB"),
        "SecurityGroupIds": sorted(vpc.get("SecurityGroupIds") or []),
        "Subnets": sorted(vpc.get("Subnets") or []),
        "EnableInterContainerTrafficEncryption": bool(request.get("EnableInterContainerTrafficEncryption")),
        "EnableNetworkIsolation": bool(request.get("EnableNetworkIsolation")),
    }, sort_keys=True)


def status_shape(status: str | None, retained_seconds: int | None, reused_by: str | None) -> dict[str, Any] | None:
    """WarmPoolStatus as DescribeTrainingJob and ListTrainingJobs show it (None: the job asked for no pool)."""
    if status is None:
        return None
    shape: dict[str, Any] = {"Status": status}
    if retained_seconds is not None:
        shape["ResourceRetainedBillableTimeInSeconds"] = retained_seconds
    if reused_by:
        shape["ReusedByJob"] = reused_by
    return shape


def kept_after(secondary: str, failure_reason: str | None, instances_up: bool) -> bool:
    """Whether a job that ended in `secondary` leaves its pool Available (else Terminated)."""
    if not instances_up:
        return False  # stopped (or failed) before its instances were up: nothing to keep
    if secondary == "Failed":
        return (failure_reason or "").startswith(("AlgorithmError", "ClientError"))
    return True
