"""Long jobs that survive: checkpoints synced while training, spot interruptions on demand, MaxWaitTime,
RetryStrategy and MaxPendingTime, through real clients, real containers and the server's real S3."""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import docker
import pytest
from botocore.exceptions import ClientError

from tests.support.jobs import wait_for_status, wait_recording
from tests.support.long_jobs import CKPT, resumable
from tests.support.runner_jobs import (
    FINAL,
    OUTPUT_BUCKET,
    build_test_images,
    leftovers,
    model_files,
    s3_client,
    settle,
    sh_job,
    wait_until,
)
from tests.support.smlocal import SmlocalServer

SERVER = "runner_server"


def _checkpointed(name: str, script: str, s3: Any, **overrides: Any) -> dict[str, Any]:
    return sh_job(name, script, s3=s3, CheckpointConfig={"S3Uri": f"s3://{OUTPUT_BUCKET}/ckpt/{name}"},
                  **overrides)


def _spot(max_runtime: int = 600, max_wait: int = 900) -> dict[str, Any]:
    return {"EnableManagedSpotTraining": True,
            "StoppingCondition": {"MaxRuntimeInSeconds": max_runtime, "MaxWaitTimeInSeconds": max_wait}}


def _objects(s3: Any, prefix: str) -> dict[str, bytes]:
    """What S3 has under `prefix` now (a key deleted between the listing and its read is left out)."""
    found = {}
    for o in s3.list_objects_v2(Bucket=OUTPUT_BUCKET, Prefix=prefix).get("Contents", []):
        try:
            found[o["Key"][len(prefix):]] = s3.get_object(Bucket=OUTPUT_BUCKET, Key=o["Key"])["Body"].read()
        except s3.exceptions.NoSuchKey:
            pass
    return found


def _status(sm: Any, name: str) -> str:
    job = sm.describe_training_job(TrainingJobName=name)
    return f"{job['TrainingJobStatus']}/{job['SecondaryStatus']}"


def _transitions(job: dict[str, Any]) -> list[str]:
    return [t["Status"] for t in job["SecondaryStatusTransitions"]]


def _training(sm: Any, name: str, timeout: float = 60) -> None:
    wait_until(lambda: _status(sm, name) == "InProgress/Training", timeout, f"{name} Training")


@pytest.fixture()
def polled(runner_server: SmlocalServer) -> Iterator[Callable[[str], list[str]]]:
    """Start recording every status of a job while the test acts on it; the list of what was seen."""
    threads: list[threading.Thread] = []
    stop = threading.Event()

    def record(name: str) -> list[str]:
        seen: list[str] = []
        sm = runner_server.client()

        def poll() -> None:
            while not stop.is_set():
                status = _status(sm, name)
                if not seen or seen[-1] != status:
                    seen.append(status)
                if status.split("/")[0] in FINAL:
                    return
                time.sleep(0.1)
        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
        threads.append(thread)
        return seen

    yield record
    stop.set()
    for thread in threads:
        thread.join(10)


# ---- checkpoints ------------------------------------------------------------------------------

_WRITE_THEN_WAIT = f"""
trap 'echo written in the grace > {CKPT}/grace.txt; exit 0' TERM
echo step 1 > {CKPT}/step-1.txt
mkdir -p {CKPT}/sub && echo deep > {CKPT}/sub/deep.txt
i=0; while [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done
"""


def test_a_checkpoint_reaches_s3_while_training_and_a_stop_syncs_the_grace_write(
        runner_server: SmlocalServer, s3: Any, unique_name: Callable[[str], str],
        polled: Callable[[str], list[str]]) -> None:
    sm = runner_server.client()
    name = unique_name("ckpt-live")
    sm.create_training_job(**_checkpointed(name, _WRITE_THEN_WAIT, s3))
    seen = polled(name)
    prefix = f"ckpt/{name}/"
    # In S3 while the job still trains: the algorithm has not ended, nothing waited for the end.
    wait_until(lambda: _objects(s3, prefix) == {"step-1.txt": b"step 1\n", "sub/deep.txt": b"deep\n"}, 30,
               "the checkpoint in S3")
    assert _status(sm, name) == "InProgress/Training"
    sm.stop_training_job(TrainingJobName=name)
    job = wait_for_status(sm, name, FINAL, timeout=60)
    assert job["TrainingJobStatus"] == "Stopped", job.get("FailureReason")
    # The file written after SIGTERM, during the grace, is synced before the job ends.
    assert _objects(s3, prefix)["grace.txt"] == b"written in the grace\n"
    wait_until(lambda: seen and seen[-1] == "Stopped/Stopped", 10, "the poller's last status")
    assert seen[-3:] == ["InProgress/Training", "Stopping/Stopping", "Stopped/Stopped"], seen


_DELETE_AND_REWRITE = f"""
echo one > {CKPT}/old.txt
i=0; while [ ! -f {CKPT}/../model/.never ] && [ $i -lt 40 ]; do sleep 0.1; i=$((i+1)); done
rm {CKPT}/old.txt
echo two > {CKPT}/new.txt
"""


def test_local_deletions_propagate_and_s3_content_comes_back_in(runner_server: SmlocalServer, s3: Any,
                                                               unique_name: Callable[[str], str]) -> None:
    sm = runner_server.client()
    name = unique_name("ckpt-del")
    prefix = f"ckpt/{name}/"
    # What S3 has at the start is copied in (and its deletion propagates like any synced file).
    s3.put_object(Bucket=OUTPUT_BUCKET, Key=f"{prefix}from-before.txt", Body=b"earlier run\n")
    script = f"cat {CKPT}/from-before.txt > /opt/ml/model/seen.txt\nrm {CKPT}/from-before.txt\n" + _DELETE_AND_REWRITE
    sm.create_training_job(**_checkpointed(name, script, s3))
    wait_until(lambda: "old.txt" in _objects(s3, prefix), 30, "old.txt in S3 while training")
    job = wait_for_status(sm, name, FINAL, timeout=60)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    assert _objects(s3, prefix) == {"new.txt": b"two\n"}
    assert model_files(s3, name) == {"seen.txt": b"earlier run\n"}


def test_hosts_share_one_checkpoint_uri_and_each_syncs_its_own_folder(
        runner_server: SmlocalServer, s3: Any, docker_engine: docker.DockerClient,
        unique_name: Callable[[str], str]) -> None:
    sm = runner_server.client()
    name = unique_name("ckpt-hosts")
    prefix = f"ckpt/{name}/"
    s3.put_object(Bucket=OUTPUT_BUCKET, Key=f"{prefix}from-before.txt", Body=b"earlier\n")
    # SageMaker: one S3 location for every instance, so scripts name their files per host. Every host got
    # the earlier checkpoint; algo-2 deletes it (a deletion in a container deletes it in S3), and tries to
    # delete algo-1's file, which it never had: what only another host wrote stays.
    script = (f"me=$(hostname); echo $me > {CKPT}/$me.txt\n"
              f"while [ ! -f /opt/ml/model/end ]; do sleep 0.1; done\n"
              f"if [ $me = algo-2 ]; then rm -f {CKPT}/from-before.txt {CKPT}/algo-1.txt; fi\n")
    request = _checkpointed(name, script, s3)
    request["ResourceConfig"]["InstanceCount"] = 2
    sm.create_training_job(**request)
    wait_until(lambda: _objects(s3, prefix) == {"from-before.txt": b"earlier\n", "algo-1.txt": b"algo-1\n",
                                                "algo-2.txt": b"algo-2\n"}, 30, "both hosts' checkpoints in S3")
    assert _status(sm, name) == "InProgress/Training"
    containers = docker_engine.containers.list(filters={"label": f"smlocal.job-name={name}"})
    assert len(containers) == 2
    for container in containers:
        container.exec_run(["touch", "/opt/ml/model/end"])
    job = wait_for_status(sm, name, FINAL)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    # algo-1 still has from-before.txt, unchanged: it does not send it again after algo-2 deleted it.
    assert _objects(s3, prefix) == {"algo-1.txt": b"algo-1\n", "algo-2.txt": b"algo-2\n"}


def test_a_big_checkpoint_written_slowly_never_lands_torn(runner_server: SmlocalServer, s3: Any,
                                                         unique_name: Callable[[str], str]) -> None:
    sm = runner_server.client()
    name = unique_name("ckpt-slow")
    key = f"ckpt/{name}/big.bin"
    # 16 MiB in 16 pieces, a pause after each: a sync that uploaded what it saw would catch it half done.
    script = (f"i=0; while [ $i -lt 16 ]; do dd if=/dev/zero bs=1048576 count=1 2>/dev/null; sleep 0.4; "
              f"i=$((i+1)); done > {CKPT}/big.bin\nsleep 2\n")
    sm.create_training_job(**_checkpointed(name, script, s3))
    sizes: set[int] = set()
    while _status(sm, name).split("/")[0] not in FINAL:
        try:
            sizes.add(s3.head_object(Bucket=OUTPUT_BUCKET, Key=key)["ContentLength"])
        except ClientError:
            pass
        time.sleep(0.05)
    job = sm.describe_training_job(TrainingJobName=name)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    assert s3.head_object(Bucket=OUTPUT_BUCKET, Key=key)["ContentLength"] == 16 * 2**20
    assert sizes <= {16 * 2**20}, f"torn versions seen in S3: {sorted(sizes)}"


def test_a_killed_and_restarted_server_keeps_syncing(smlocal_factory: Callable[..., SmlocalServer],
                                                      docker_engine: docker.DockerClient,
                                                      unique_name: Callable[[str], str]) -> None:
    build_test_images(docker_engine)
    server = smlocal_factory("--stop-grace-seconds", "1.5")
    s3 = s3_client(server)
    sm = server.client()
    name = unique_name("ckpt-restart")
    prefix = f"ckpt/{name}/"
    script = (f"echo a > {CKPT}/a.txt\n"
              f"while [ ! -f /opt/ml/model/go ]; do sleep 0.1; done\n"
              f"echo b > {CKPT}/b.txt\nrm {CKPT}/a.txt\n"
              f"while [ ! -f /opt/ml/model/end ]; do sleep 0.1; done\necho c > {CKPT}/c.txt\n")
    sm.create_training_job(**_checkpointed(name, script, s3))
    wait_until(lambda: "a.txt" in _objects(s3, prefix), 30, "a.txt in S3")
    server.stop(kill=True)
    [container] = docker_engine.containers.list(filters={"label": f"smlocal.job-name={name}"})
    # While no server watches, the algorithm writes one file and deletes another.
    container.exec_run(["touch", "/opt/ml/model/go"])
    wait_until(lambda: container.exec_run(["test", "-f", f"{CKPT}/b.txt"]).exit_code == 0, 10, "b.txt written")
    server.start()
    wait_until(lambda: _objects(s3, prefix) == {"b.txt": b"b\n"}, 30, "the adopted job's checkpoints in S3")
    assert _status(sm, name) == "InProgress/Training"
    container.exec_run(["touch", "/opt/ml/model/end"])
    job = wait_for_status(sm, name, FINAL, timeout=60)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    assert _objects(s3, prefix) == {"b.txt": b"b\n", "c.txt": b"c\n"}
    settle(server, docker_engine)


# ---- TensorBoard and the Debugger hook -------------------------------------------------------


def test_tensorboard_output_reaches_s3_while_training_and_the_debug_hook_config_is_written(
        runner_server: SmlocalServer, s3: Any, docker_engine: docker.DockerClient,
        unique_name: Callable[[str], str]) -> None:
    sm = runner_server.client()
    name = unique_name("tboard")
    script = ("cp /opt/ml/input/config/debughookconfig.json /opt/ml/input/config/tensorboardoutputconfig.json "
              "/opt/ml/model/\n"
              "echo event-1 > /opt/ml/output/tensorboard/events.out.tfevents.1\n"
              "echo tensor > /opt/ml/output/tensors/step-0.json\n"
              "while [ ! -f /opt/ml/model/end ]; do sleep 0.1; done\n")
    sm.create_training_job(**sh_job(
        name, script, s3=s3,
        TensorBoardOutputConfig={"S3OutputPath": f"s3://{OUTPUT_BUCKET}/tb"},
        DebugHookConfig={"S3OutputPath": f"s3://{OUTPUT_BUCKET}/debug",
                         "CollectionConfigurations": [{"CollectionName": "losses",
                                                       "CollectionParameters": {"save_interval": "5"}}]}))
    # SageMaker's layout: <S3OutputPath>/<job>/tensorboard-output and .../debug-output, while it trains.
    wait_until(lambda: _objects(s3, f"tb/{name}/tensorboard-output/") == {"events.out.tfevents.1": b"event-1\n"},
               30, "the TensorBoard events in S3")
    wait_until(lambda: _objects(s3, f"debug/{name}/debug-output/") == {"step-0.json": b"tensor\n"}, 30,
               "the Debugger's tensors in S3")
    assert _status(sm, name) == "InProgress/Training"
    [container] = docker_engine.containers.list(filters={"label": f"smlocal.job-name={name}"})
    container.exec_run(["touch", "/opt/ml/model/end"])
    job = wait_for_status(sm, name, FINAL)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    files = model_files(s3, name)
    hook = json.loads(files["debughookconfig.json"])
    assert hook["S3OutputPath"] == f"s3://{OUTPUT_BUCKET}/debug/{name}/debug-output"
    assert hook["LocalPath"] == "/opt/ml/output/tensors"
    assert hook["CollectionConfigurations"] == [{"CollectionName": "losses",
                                                 "CollectionParameters": {"save_interval": "5"}}]
    assert json.loads(files["tensorboardoutputconfig.json"])["S3OutputPath"] == (
        f"s3://{OUTPUT_BUCKET}/tb/{name}/tensorboard-output")


# ---- managed spot -----------------------------------------------------------------------------

_RESUMABLE = resumable()


def test_an_interrupted_spot_job_resumes_from_its_checkpoint_and_completes(
        runner_server: SmlocalServer, s3: Any, unique_name: Callable[[str], str]) -> None:
    sm = runner_server.client()
    name = unique_name("spot")
    sm.create_training_job(**_checkpointed(name, _RESUMABLE, s3, **_spot()))
    wait_until(lambda: "run-1" in _objects(s3, f"ckpt/{name}/"), 30, "run 1's checkpoint in S3")
    _training(sm, name)
    # The console script, as a workshop runs it.
    result = subprocess.run([sys.executable, "-m", "server.cli", "interrupt", name,
                             "--endpoint-url", runner_server.endpoint], capture_output=True, text=True,
                            timeout=60, env=runner_server.cli_env())
    assert result.returncode == 0, result.stderr
    assert "interrupted" in result.stdout
    job, seen = wait_recording(sm, name, FINAL, timeout=90)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    # Both runs' work: the second run started from the first one's checkpoint.
    assert model_files(s3, name) == {"work.txt": b"work of run 1\nwork of run 2\n"}
    assert _transitions(job) == ["Starting", "Downloading", "Training", "Interrupted", "Starting", "Downloading",
                                 "Training", "Uploading", "Completed"]
    restart = job["SecondaryStatusTransitions"][4]
    assert "spot interruption 1" in restart["StatusMessage"]
    # Every status seen while polling comes in that order (Interrupted may pass between two polls).
    order = ["InProgress/" + s for s in _transitions(job)[:-1]] + ["Completed/Completed"]
    assert all(s in order for s in seen) and seen[-1] == "Completed/Completed", seen
    # Billable time leaves out the time from the interruption to the restart's Downloading.
    interrupted = job["SecondaryStatusTransitions"][3]
    gap = job["SecondaryStatusTransitions"][5]["StartTime"].timestamp() - interrupted["StartTime"].timestamp()
    assert job["BillableTimeInSeconds"] == max(1, math.ceil(job["TrainingTimeInSeconds"] - gap))
    assert job["BillableTimeInSeconds"] <= job["TrainingTimeInSeconds"]
    progress = runner_server.client("smlocal").describe_training_job_progress(TrainingJobName=name)
    assert (progress["Interruptions"], progress["Attempt"], progress["InterruptRequested"]) == (1, 1, False)


def test_a_spot_drill_interrupts_spot_jobs_at_random_and_they_still_complete(
        smlocal_factory: Callable[..., SmlocalServer], docker_engine: docker.DockerClient,
        unique_name: Callable[[str], str]) -> None:
    build_test_images(docker_engine)
    # About once a second for each spot job in Training: a drill that cannot miss the first run.
    server = smlocal_factory("--stop-grace-seconds", "1.5", "--spot-interruptions", "3600")
    s3, sm = s3_client(server), server.client()
    spot, on_demand = unique_name("drill-spot"), unique_name("drill-ondemand")
    sm.create_training_job(**_checkpointed(spot, _RESUMABLE, s3, **_spot()))
    sm.create_training_job(**sh_job(on_demand, "sleep 6"))
    job = wait_for_status(sm, spot, FINAL, timeout=120)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    progress = server.client("smlocal").describe_training_job_progress(TrainingJobName=spot)
    assert progress["Interruptions"] >= 1 and _transitions(job).count("Interrupted") == progress["Interruptions"]
    assert model_files(s3, spot)["work.txt"].startswith(b"work of run 1\nwork of run 2\n")
    # An on-demand job is never reclaimed.
    other = wait_for_status(sm, on_demand, FINAL, timeout=60)
    assert other["TrainingJobStatus"] == "Completed" and "Interrupted" not in _transitions(other)
    settle(server, docker_engine)


def test_interrupting_what_is_not_a_running_spot_job_is_refused(
        runner_server: SmlocalServer, s3: Any, unique_name: Callable[[str], str]) -> None:
    sm = runner_server.client()
    control = runner_server.client("smlocal")
    on_demand = unique_name("ondemand")
    sm.create_training_job(**sh_job(on_demand, "sleep 60"))
    _training(sm, on_demand)
    with pytest.raises(ClientError) as err:
        control.interrupt_training_job(TrainingJobName=on_demand)
    assert err.value.response["Error"]["Code"] == "ValidationException"
    assert "is not a managed spot training job" in err.value.response["Error"]["Message"]
    result = subprocess.run([sys.executable, "-m", "server.cli", "interrupt", on_demand, "--endpoint-url",
                             runner_server.endpoint], capture_output=True, text=True, timeout=60,
                            env=runner_server.cli_env())
    assert result.returncode == 1 and "is not a managed spot training job" in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr
    sm.stop_training_job(TrainingJobName=on_demand)

    finished = unique_name("spot-done")
    sm.create_training_job(**sh_job(finished, "true", **_spot()))
    assert wait_for_status(sm, finished, FINAL)["TrainingJobStatus"] == "Completed"
    with pytest.raises(ClientError) as err:
        control.interrupt_training_job(TrainingJobName=finished)
    assert err.value.response["Error"]["Message"] == (
        f"Training job {finished} can be interrupted only while it is Training; it is Completed (Completed).")
    with pytest.raises(ClientError) as err:
        control.interrupt_training_job(TrainingJobName=unique_name("nobody"))
    assert err.value.response["Error"]["Message"] == "Requested resource not found."
    wait_for_status(sm, on_demand, FINAL)


def test_max_wait_time_counts_from_creation_across_interruptions(
        runner_server: SmlocalServer, s3: Any, unique_name: Callable[[str], str]) -> None:
    sm = runner_server.client()
    name = unique_name("maxwait")
    # MaxWait equal to MaxRuntime: MaxRuntime counts from TrainingStartTime, later than CreationTime, so
    # MaxWait runs out first; the interruption in between does not reset it.
    sm.create_training_job(**_checkpointed(name, _RESUMABLE.replace("-eq 1", "-ge 1"), s3,
                                           **_spot(max_runtime=12, max_wait=12)))
    _training(sm, name)
    runner_server.client("smlocal").interrupt_training_job(TrainingJobName=name)
    job, seen = wait_recording(sm, name, FINAL, timeout=60)
    assert (job["TrainingJobStatus"], job["SecondaryStatus"]) == ("Stopped", "MaxWaitTimeExceeded")
    assert "Interrupted" in _transitions(job) and _transitions(job)[-2:] == ["Stopping", "MaxWaitTimeExceeded"]
    ended_after = job["TrainingEndTime"].timestamp() - job["CreationTime"].timestamp()
    assert 12 <= ended_after < 12 + 1.5 + 10  # the limit, the grace, and a slow machine's slack
    assert seen[-1] == "Stopped/MaxWaitTimeExceeded"


# ---- RetryStrategy ----------------------------------------------------------------------------


def _remove_container(client: docker.DockerClient, name: str) -> None:
    """Remove the job's running container behind smlocal's back (`docker rm -f`)."""
    [container] = wait_until(lambda: client.containers.list(filters={"label": f"smlocal.job-name={name}"}), 30,
                             "the job's container running")
    container.remove(force=True)


def test_a_container_removed_from_outside_is_retried(runner_server: SmlocalServer, s3: Any,
                                                      docker_engine: docker.DockerClient,
                                                      unique_name: Callable[[str], str]) -> None:
    sm = runner_server.client()
    name = unique_name("retry")
    sm.create_training_job(**_checkpointed(name, _RESUMABLE, s3, RetryStrategy={"MaximumRetryAttempts": 2}))
    wait_until(lambda: "run-1" in _objects(s3, f"ckpt/{name}/"), 30, "run 1's checkpoint in S3")
    _remove_container(docker_engine, name)
    job, seen = wait_recording(sm, name, FINAL, timeout=90)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    assert _transitions(job) == ["Starting", "Downloading", "Training", "Starting", "Downloading", "Training",
                                 "Uploading", "Completed"]
    retry = job["SecondaryStatusTransitions"][3]["StatusMessage"]
    assert "attempt 2 of 3" in retry and "ContainerGone" in retry
    assert model_files(s3, name) == {"work.txt": b"work of run 1\nwork of run 2\n"}
    assert runner_server.client("smlocal").describe_training_job_progress(TrainingJobName=name)["Attempt"] == 2
    assert seen[-1] == "Completed/Completed"


@pytest.mark.parametrize("retries", [None, 2], ids=["no-retry-strategy", "retry-strategy"])
def test_an_algorithm_error_is_never_retried(runner_server: SmlocalServer, unique_name: Callable[[str], str],
                                             retries: int | None) -> None:
    sm = runner_server.client()
    name = unique_name(f"noretry-{retries}")
    extra = {"RetryStrategy": {"MaximumRetryAttempts": retries}} if retries else {}
    sm.create_training_job(**sh_job(name, "echo broken >&2; exit 3", **extra))
    job = wait_for_status(sm, name, FINAL)
    assert job["TrainingJobStatus"] == "Failed"
    assert job["FailureReason"].startswith("AlgorithmError")
    assert _transitions(job) == ["Starting", "Downloading", "Training", "Failed"]
    assert runner_server.client("smlocal").describe_training_job_progress(TrainingJobName=name)["Attempt"] == 1


def test_without_retries_a_removed_container_fails_the_job_as_a_platform_fault(
        runner_server: SmlocalServer, docker_engine: docker.DockerClient,
        unique_name: Callable[[str], str]) -> None:
    sm = runner_server.client()
    name = unique_name("gone")
    sm.create_training_job(**sh_job(name, "sleep 120"))
    _training(sm, name)
    _remove_container(docker_engine, name)
    job = wait_for_status(sm, name, FINAL)
    assert job["TrainingJobStatus"] == "Failed"
    assert job["FailureReason"].startswith("InternalServerError: ContainerGone")
    assert wait_until(lambda: leftovers(docker_engine, runner_server, name) == [], 30, "cleanup")


def test_max_runtime_covers_every_attempt(runner_server: SmlocalServer, docker_engine: docker.DockerClient,
                                          unique_name: Callable[[str], str]) -> None:
    sm = runner_server.client()
    name = unique_name("retry-runtime")
    sm.create_training_job(**sh_job(name, "sleep 120", RetryStrategy={"MaximumRetryAttempts": 5},
                                    StoppingCondition={"MaxRuntimeInSeconds": 8}))
    _training(sm, name)
    _remove_container(docker_engine, name)
    job, _ = wait_recording(sm, name, FINAL, timeout=60)
    assert (job["TrainingJobStatus"], job["SecondaryStatus"]) == ("Stopped", "MaxRuntimeExceeded")
    assert _transitions(job).count("Training") == 2
    # One clock for both attempts, from the first TrainingStartTime.
    assert job["TrainingTimeInSeconds"] < 8 + 1.5 + 10


# ---- MaxPendingTimeInSeconds -----------------------------------------------------------------


def test_a_job_pending_longer_than_max_pending_time_is_stopped(
        smlocal_factory: Callable[..., SmlocalServer], docker_engine: docker.DockerClient,
        unique_name: Callable[[str], str]) -> None:
    build_test_images(docker_engine)
    server = smlocal_factory("--stop-grace-seconds", "1.5", "--max-concurrent-jobs", "1")
    sm = server.client()
    holder, gpu, cpu = unique_name("slot"), unique_name("pending-gpu"), unique_name("pending-cpu")
    sm.create_training_job(**sh_job(holder, "sleep 300"))
    _training(sm, holder)
    pending = {"MaxRuntimeInSeconds": 3600, "MaxPendingTimeInSeconds": 7200}
    for name, instance_type in ((gpu, "ml.g5.xlarge"), (cpu, "ml.m5.large")):
        request = sh_job(name, "true", StoppingCondition=pending)
        request["ResourceConfig"]["InstanceType"] = instance_type
        sm.create_training_job(**request)
    for name in (gpu, cpu):
        wait_until(lambda n=name: _status(sm, n) == "InProgress/Pending", 30, f"{name} Pending")
        message = sm.describe_training_job(TrainingJobName=name)["SecondaryStatusTransitions"][-1]["StatusMessage"]
        assert message == "Waiting for an instance to become available"
    # Two hours cannot pass in a test: with the server down, the jobs' Pending entries are moved two
    # hours back in its database, as if it had been down that long; the restarted server's clock sees it.
    server.stop()
    db = sqlite3.connect(server.data_dir / "smlocal.db")
    db.execute("UPDATE status_transitions SET start_time = start_time - 7201 WHERE status = 'Pending'")
    db.commit()
    db.close()
    server.start()
    job = wait_for_status(sm, gpu, FINAL, timeout=30)
    assert (job["TrainingJobStatus"], job["SecondaryStatus"]) == ("Stopped", "Stopped")
    assert job["SecondaryStatusTransitions"][-1]["StatusMessage"] == (
        "Training job stopped: it was pending longer than MaxPendingTimeInSeconds")
    assert _transitions(job) == ["Starting", "Pending", "Stopping", "Stopped"]
    # A CPU-only job: MaxPendingTimeInSeconds "has no effect" (API reference); it still waits for its slot.
    assert _status(sm, cpu) == "InProgress/Pending"
    sm.stop_training_job(TrainingJobName=holder)
    job = wait_for_status(sm, cpu, FINAL, timeout=60)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    assert _transitions(job) == ["Starting", "Pending", "Starting", "Downloading", "Training", "Uploading",
                                 "Completed"]
    settle(server, docker_engine)
