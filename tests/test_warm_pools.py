"""Managed warm pools: kept after a job, reused by a matching one with its persistent cache, expired,
updated and listed, through boto3 against a server that runs jobs."""

from __future__ import annotations

import itertools
import urllib.request
from collections.abc import Callable
from typing import Any

import docker
import pytest
from botocore.exceptions import ClientError

from tests.support.jobs import wait_for_status
from tests.support.runner_jobs import FINAL, model_files, sh_job, wait_until
from tests.support.smlocal import SmlocalServer

SERVER = "runner_server"
CACHE = "/opt/ml/sagemaker/warmpoolcache"
_roles = itertools.count()


def _pooled(name: str, script: str, role: str, keep_alive: int = 120, **overrides: Any) -> dict[str, Any]:
    request = sh_job(name, script, RoleArn=role, **overrides)
    request["ResourceConfig"]["KeepAlivePeriodInSeconds"] = keep_alive
    return request


@pytest.fixture()
def role() -> str:
    """A role of the test's own: the role is part of what a warm pool matches, so tests never share pools."""
    return f"arn:aws:iam::123456789012:role/warm-pool-test-{next(_roles)}"


def _pool(sm: Any, name: str) -> dict[str, Any]:
    return sm.describe_training_job(TrainingJobName=name).get("WarmPoolStatus", {})


def _listed(sm: Any, status: str) -> set[str]:
    pages = sm.get_paginator("list_training_jobs").paginate(WarmPoolStatusEquals=status)
    return {s["TrainingJobName"] for page in pages for s in page["TrainingJobSummaries"]}


def test_a_warm_pool_is_kept_then_reused_with_its_cache(runner_server: SmlocalServer, s3: Any, role: str,
                                                         unique_name: Callable[[str], str]) -> None:
    sm = runner_server.client()
    first, second, other = unique_name("pool-a"), unique_name("pool-b"), unique_name("pool-other")
    # The first job fills the cache (what pip installs would leave there).
    sm.create_training_job(**_pooled(first, f"echo installed by the first job > {CACHE}/deps.txt", role))
    job = wait_for_status(sm, first, FINAL)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    assert job["WarmPoolStatus"] == {"Status": "Available"}
    assert job["ResourceConfig"]["KeepAlivePeriodInSeconds"] == 120
    assert first in _listed(sm, "Available")

    # A job that does not match (another instance type) does not take it: its cache starts empty.
    read_cache = f"cat {CACHE}/deps.txt > /opt/ml/model/seen.txt 2>/dev/null || echo empty > /opt/ml/model/seen.txt"
    mismatch = _pooled(other, read_cache, role)
    mismatch["ResourceConfig"]["InstanceType"] = "ml.m5.xlarge"
    sm.create_training_job(**mismatch)
    assert wait_for_status(sm, other, FINAL)["TrainingJobStatus"] == "Completed"
    assert model_files(s3, other) == {"seen.txt": b"empty\n"}
    assert _pool(sm, first)["Status"] == "Available"

    # A matching job (other hyperparameters, same resources and role) runs on the pool and finds the cache.
    sm.create_training_job(**_pooled(second, read_cache, role, HyperParameters={"epochs": "2"}))
    wait_until(lambda: _pool(sm, first).get("Status") == "Reused", 60, "the first job's pool Reused")
    reused = _pool(sm, first)
    assert reused["ReusedByJob"] == second and reused["ResourceRetainedBillableTimeInSeconds"] >= 0
    job = wait_for_status(sm, second, FINAL)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    assert model_files(s3, second) == {"seen.txt": b"installed by the first job\n"}
    assert job["WarmPoolStatus"] == {"Status": "Available"}  # InUse while it ran, kept after it
    assert first in _listed(sm, "Reused") and second in _listed(sm, "Available")
    assert first not in _listed(sm, "Available")
    # The console's job page says so too.
    with urllib.request.urlopen(f"{runner_server.endpoint}/console/jobs/{first}", timeout=10) as page:
        html = page.read().decode()
    assert f"Reused by {second}, kept {reused['ResourceRetainedBillableTimeInSeconds']} s" in html
    # Terminate what is left (UpdateTrainingJob with 0), so no later test can match these pools.
    for name in (second, other):
        sm.update_training_job(TrainingJobName=name, ResourceConfig={"KeepAlivePeriodInSeconds": 0})
        assert _pool(sm, name)["Status"] == "Terminated"


def test_a_warm_pool_expires_and_its_cache_goes(runner_server: SmlocalServer, role: str,
                                                unique_name: Callable[[str], str]) -> None:
    sm = runner_server.client()
    name = unique_name("pool-expire")
    sm.create_training_job(**_pooled(name, f"echo x > {CACHE}/x", role, keep_alive=3))
    assert wait_for_status(sm, name, FINAL)["WarmPoolStatus"] == {"Status": "Available"}
    caches = runner_server.data_dir / "warm-pools"
    assert [p.name for p in caches.iterdir() if (p / "algo-1" / "x").exists()]
    wait_until(lambda: _pool(sm, name).get("Status") == "Terminated", 30, "the pool Terminated")
    assert _pool(sm, name) == {"Status": "Terminated", "ResourceRetainedBillableTimeInSeconds": 3}
    assert name in _listed(sm, "Terminated")
    wait_until(lambda: not [p for p in caches.iterdir() if (p / "algo-1" / "x").exists()], 10, "the cache removed")


def test_update_training_job_changes_the_keep_alive(runner_server: SmlocalServer, role: str,
                                                    unique_name: Callable[[str], str]) -> None:
    sm = runner_server.client()
    name, plain = unique_name("pool-update"), unique_name("no-pool")
    sm.create_training_job(**_pooled(name, "true", role, keep_alive=60))
    wait_for_status(sm, name, FINAL)
    sm.update_training_job(TrainingJobName=name, ResourceConfig={"KeepAlivePeriodInSeconds": 900})
    job = sm.describe_training_job(TrainingJobName=name)
    assert job["ResourceConfig"]["KeepAlivePeriodInSeconds"] == 900 and job["WarmPoolStatus"]["Status"] == "Available"
    sm.update_training_job(TrainingJobName=name, ResourceConfig={"KeepAlivePeriodInSeconds": 0})
    assert _pool(sm, name)["Status"] == "Terminated"
    with pytest.raises(ClientError) as err:  # nothing to update any more
        sm.update_training_job(TrainingJobName=name, ResourceConfig={"KeepAlivePeriodInSeconds": 60})
    assert err.value.response["Error"]["Code"] == "ValidationException"
    assert "is not available (WarmPoolStatus: Terminated)" in err.value.response["Error"]["Message"]

    sm.create_training_job(**sh_job(plain, "true", RoleArn=role))
    job = wait_for_status(sm, plain, FINAL)
    assert "WarmPoolStatus" not in job
    with pytest.raises(ClientError) as err:
        sm.update_training_job(TrainingJobName=plain, ResourceConfig={"KeepAlivePeriodInSeconds": 60})
    assert "(WarmPoolStatus: none)" in err.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as err:  # the model's own limit, before anything else
        sm.update_training_job(TrainingJobName=plain, ResourceConfig={"KeepAlivePeriodInSeconds": 99999})
    assert err.value.response["Error"]["Code"] == "ValidationException"
    with pytest.raises(ClientError) as err:
        sm.update_training_job(TrainingJobName=plain, ProfilerConfig={"ProfilingIntervalInMilliseconds": 500})
    assert "does not run SageMaker Debugger's profiler" in err.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as err:
        sm.update_training_job(TrainingJobName=unique_name("nobody"), ResourceConfig={"KeepAlivePeriodInSeconds": 1})
    assert err.value.response["Error"]["Message"] == "Requested resource not found."


def test_a_pool_is_kept_after_an_algorithm_error_but_not_after_a_platform_fault(
        runner_server: SmlocalServer, docker_engine: docker.DockerClient, role: str,
        unique_name: Callable[[str], str]) -> None:
    sm = runner_server.client()
    failed, faulted = unique_name("pool-failed"), unique_name("pool-fault")
    sm.create_training_job(**_pooled(failed, "echo bad >&2; exit 2", role, keep_alive=60))
    job = wait_for_status(sm, failed, FINAL)
    assert job["TrainingJobStatus"] == "Failed" and job["FailureReason"].startswith("AlgorithmError")
    assert job["WarmPoolStatus"] == {"Status": "Available"}
    sm.update_training_job(TrainingJobName=failed, ResourceConfig={"KeepAlivePeriodInSeconds": 0})

    # A fault that might leave the cluster unhealthy (its container removed from outside): no pool is kept.
    sm.create_training_job(**_pooled(faulted, "sleep 120", role, keep_alive=60))
    [container] = wait_until(lambda: docker_engine.containers.list(
        filters={"label": f"smlocal.job-name={faulted}"}), 60, "the container running")
    container.remove(force=True)
    job = wait_for_status(sm, faulted, FINAL)
    assert job["FailureReason"].startswith("InternalServerError")
    assert job["WarmPoolStatus"] == {"Status": "Terminated", "ResourceRetainedBillableTimeInSeconds": 0}
