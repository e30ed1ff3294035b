"""`smlocal jobs`, `smlocal logs [--follow] [--host]` and `smlocal stop`, run as a user runs them, against a
running server (they talk to its API, never to its database)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker

from tests.support.jobs import wait_recording
from tests.support.runner_jobs import (
    FINAL,
    sh_job,
    wait_until,
)
from tests.support.smlocal import SmlocalServer, free_port

SERVER = "runner_server"  # `sm` and `s3` are clients of the runner plugin's server (tests/conftest.py)

SMLOCAL = str(Path(sys.executable).parent / "smlocal")
TWO_HOSTS = {"InstanceType": "ml.m5.large", "InstanceCount": 2, "VolumeSizeInGB": 10}


def cli_env(server: SmlocalServer | None = None, endpoint: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMLOCAL_")}
    env.update({"SMLOCAL_ENDPOINT_URL": endpoint or (server.endpoint if server else ""), "COLUMNS": "200",
                "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"})
    return env


def smlocal(server: SmlocalServer, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SMLOCAL, *args], capture_output=True, text=True, env=cli_env(server), timeout=120)


def test_logs_follow_prints_lines_as_they_come_and_ends_with_the_job(
        runner_server: SmlocalServer, sm: Any, s3: Any, unique_name: Callable[[str], str],
        docker_engine: docker.DockerClient) -> None:
    name = unique_name("follow")
    # Each host trains on until the test has seen a line printed (it drops /tmp/go in): lines printed only at the
    # end would never come, however slowly the CLI starts on a busy machine.
    script = ('echo "$(hostname) tick 1"; while [ ! -e /tmp/go ]; do sleep 0.1; done; '
              'for i in 2 3 4; do echo "$(hostname) tick $i"; sleep 0.2; done')
    sm.create_training_job(**sh_job(name, script, ResourceConfig=TWO_HOSTS))
    process = subprocess.Popen([SMLOCAL, "logs", name, "--follow"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=cli_env(runner_server))
    lines: list[tuple[float, str]] = []
    reader = threading.Thread(target=lambda: lines.extend((time.time(), line.rstrip("\n"))
                                                           for line in process.stdout), daemon=True)
    reader.start()
    statuses: list[str] = []

    def ended() -> bool:
        job = sm.describe_training_job(TrainingJobName=name)
        status = f"{job['TrainingJobStatus']}/{job['SecondaryStatus']}"
        if not statuses or statuses[-1] != status:
            statuses.append(status)
        return job["TrainingJobStatus"] in FINAL

    wait_until(lambda: lines or ended(), 90, "a line printed while the job trains")
    assert lines and not ended(), statuses
    def both_hosts() -> list[Any]:
        running = docker_engine.containers.list(filters={"label": f"smlocal.job-name={name}"})
        return running if len(running) == 2 else []

    for container in wait_until(both_hosts, 60, "both hosts running"):
        container.exec_run(["touch", "/tmp/go"])
    wait_until(ended, 90, "the job to end")
    job = sm.describe_training_job(TrainingJobName=name)
    assert job["TrainingJobStatus"] == "Completed", (statuses, job.get("FailureReason"))
    assert process.wait(timeout=30) == 0, process.stderr.read()
    reader.join(10)
    printed = [line for _, line in lines]
    for host in ("algo-1", "algo-2"):
        assert [line for line in printed if line.startswith(f"[{host}] ")] == [
            f"[{host}] {host} tick {i}" for i in range(1, 5)]
    # The first line came out while the job was still training, not at the end.
    first_printed = min(t for t, _ in lines)
    assert first_printed < job["TrainingEndTime"].timestamp(), (first_printed, statuses)
    assert "InProgress/Training" in statuses
    assert "Completed" in process.stderr.read()

    only_two = smlocal(runner_server, "logs", name, "--host", "algo-2")
    assert only_two.returncode == 0, only_two.stderr
    assert only_two.stdout.splitlines() == [f"algo-2 tick {i}" for i in range(1, 5)]


def test_logs_follow_of_a_failing_job_exits_1(runner_server: SmlocalServer, sm: Any, s3: Any,
                                              unique_name: Callable[[str], str]) -> None:
    name = unique_name("followfail")
    sm.create_training_job(**sh_job(name, 'echo "about to fail"; sleep 1; exit 3'))
    result = subprocess.run([SMLOCAL, "logs", name, "-f"], capture_output=True, text=True, timeout=120,
                            env=cli_env(runner_server))
    assert result.returncode == 1
    assert result.stdout.splitlines() == ["about to fail"]
    assert "Failed" in result.stderr and "exit code: 3" in result.stderr


def test_jobs_lists_with_filters_and_stop_stops(runner_server: SmlocalServer, sm: Any, s3: Any,
                                                unique_name: Callable[[str], str]) -> None:
    name = unique_name("listed")
    sm.create_training_job(**sh_job(name, 'trap "exit 0" TERM; echo up; while true; do sleep 0.1; done'))
    wait_until(lambda: sm.describe_training_job(TrainingJobName=name)["SecondaryStatus"] == "Training", 60,
               "training")
    running = smlocal(runner_server, "jobs", "--status", "InProgress", "--name-contains", name)
    assert running.returncode == 0, running.stderr
    [row] = [line for line in running.stdout.splitlines() if name in line]
    assert "InProgress" in row and "Training" in row
    assert "1 job" in running.stdout

    stopped = smlocal(runner_server, "stop", name, "--wait")
    assert stopped.returncode == 0, stopped.stderr
    assert f"training job {name} Stopped (Stopped)" in stopped.stdout
    job, seen = wait_recording(sm, name, FINAL)
    assert job["TrainingJobStatus"] == "Stopped" and seen == ["Stopped/Stopped"], seen  # --wait waited
    none_running = smlocal(runner_server, "jobs", "--status", "InProgress", "--name-contains", name)
    assert name not in none_running.stdout and "0 jobs" in none_running.stdout
    listed = smlocal(runner_server, "jobs", "--name-contains", name)
    assert "Stopped" in next(line for line in listed.stdout.splitlines() if name in line)

    again = smlocal(runner_server, "stop", name)
    assert again.returncode == 1
    assert "(ValidationException)" in again.stderr and "in status Stopped" in again.stderr
    ghost = smlocal(runner_server, "logs", "no-such-job")
    assert ghost.returncode == 1 and "Requested resource not found." in ghost.stderr


def test_views_without_a_server_say_so() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    result = subprocess.run([SMLOCAL, "jobs"], capture_output=True, text=True, timeout=120,
                            env=cli_env(endpoint=endpoint))
    assert result.returncode == 1
    assert f"cannot reach smlocal at {endpoint}" in result.stderr
    assert "Traceback" not in result.stderr
