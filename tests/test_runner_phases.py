"""Stop and restart in every phase, and a chaos test: every job ends as SageMaker would end it.

Phases are made as long as the test needs, deterministically: Downloading and Uploading move their
bytes through a proxy in front of the S3 server that slows a job's transfers until the test lets them
go (tests/support/slow_s3.py); Training and Stopping last until the test drops a file into the
container (`docker exec`). A recorder polls DescribeTrainingJob the whole time, and every sequence it
saw must be one SageMaker can show.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from botocore.exceptions import ClientError

from runner.mounts import mounts_under
from tests.support.jobs import wait_for_status
from tests.support.runner_jobs import (
    FINAL,
    INPUT_BUCKET,
    leftovers,
    log_messages,
    model_files,
    s3_channel,
    s3_client,
    sh_job,
    wait_until,
)
from tests.support.s3server import S3Server
from tests.support.slow_s3 import SlowS3Proxy
from tests.support.smlocal import SmlocalServer

# ---- what SageMaker can show -------------------------------------------------------------------

State = tuple[str, str]
# Pending: waiting for a slot (--max-concurrent-jobs), SageMaker's "waiting for compute capacity"; Starting
# again once a slot takes the job.
SAGEMAKER_NEXT: dict[State, list[State]] = {
    ("InProgress", "Starting"): [("InProgress", "Pending"), ("InProgress", "Downloading"), ("Stopping", "Stopping"),
                                 ("Failed", "Failed")],
    ("InProgress", "Pending"): [("InProgress", "Starting"), ("Stopping", "Stopping"), ("Failed", "Failed")],
    ("InProgress", "Downloading"): [("InProgress", "Training"), ("Stopping", "Stopping"), ("Failed", "Failed")],
    ("InProgress", "Training"): [("InProgress", "Uploading"), ("Stopping", "Stopping"), ("Failed", "Failed")],
    ("InProgress", "Uploading"): [("Completed", "Completed"), ("Stopping", "Stopping"), ("Failed", "Failed")],
    ("Stopping", "Stopping"): [("Stopped", "Stopped"), ("Stopped", "MaxRuntimeExceeded")],
}


def _reachable(state: State) -> set[State]:
    seen: set[State] = set()
    todo = list(SAGEMAKER_NEXT.get(state, []))
    while todo:
        s = todo.pop()
        if s not in seen:
            seen.add(s)
            todo += SAGEMAKER_NEXT.get(s, [])
    return seen


def assert_sagemaker_could_show(seen: list[State], job: dict[str, Any]) -> None:
    """What a poller saw (it may miss short states) follows SageMaker's edges; the transitions are edges too,
    one entry per status it entered (Starting twice only around Pending)."""
    start = ("InProgress", "Starting")
    assert seen and (seen[0] == start or seen[0] in _reachable(start)), seen  # a poller may miss Starting
    for before, after in zip(seen, seen[1:], strict=False):
        assert after in _reachable(before), f"{before} -> {after} in {seen}"
    statuses = [t["Status"] for t in job["SecondaryStatusTransitions"]]
    once = [s for s in statuses if s not in ("Starting", "Pending")]
    assert len(once) == len(set(once)) and statuses.count("Starting") <= statuses.count("Pending") + 1, statuses
    secondary_next = {a[1]: {b[1] for b in bs} for a, bs in SAGEMAKER_NEXT.items()}
    for before, after in zip(statuses, statuses[1:], strict=False):
        assert after in secondary_next.get(before, set()), statuses
    assert (job["TrainingJobStatus"], job["SecondaryStatus"]) == seen[-1]


class Recorder:
    """Polls every job of a server (ListTrainingJobs) and keeps each job's distinct consecutive states."""

    def __init__(self, server: SmlocalServer) -> None:
        self.server = server
        self.seen: dict[str, list[State]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Recorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        sm = self.server.client(connect_timeout=1, read_timeout=5)
        while not self._stop.is_set():
            try:
                summaries = sm.list_training_jobs(MaxResults=100)["TrainingJobSummaries"]
            except Exception:  # the server is restarting
                time.sleep(0.05)
                continue
            for s in summaries:
                states = self.seen.setdefault(s["TrainingJobName"], [])
                state = (s["TrainingJobStatus"], s["SecondaryStatus"])
                if not states or states[-1] != state:
                    states.append(state)
            time.sleep(0.05)

    def check(self, sm: Any, name: str) -> dict[str, Any]:
        job = sm.describe_training_job(TrainingJobName=name)
        seen = list(self.seen.get(name, []))
        if not seen or seen[-1] != (job["TrainingJobStatus"], job["SecondaryStatus"]):
            seen.append((job["TrainingJobStatus"], job["SecondaryStatus"]))
        assert_sagemaker_could_show(seen, job)
        return job


# ---- fixtures and the algorithm the tests steer --------------------------------------------------

# Trains until the test drops /tmp/finish into the container. With `save_on_term`, SIGTERM makes it wait
# for the same file, then save and exit (so Stopping lasts as long as the test wants).
def algorithm(*, big_model: bool = False, save_on_term: bool = False) -> str:
    wait = "while [ ! -e /tmp/finish ]; do sleep 0.1; done"
    trap = (f"trap 'echo got SIGTERM; {wait}; echo saved > /opt/ml/model/saved.txt; exit 0' TERM; "
            if save_on_term else "")
    model = ("head -c 12582912 /dev/urandom > /opt/ml/model/weights.bin; " if big_model
             else "echo trained > /opt/ml/model/model.txt; ")
    return f"{trap}echo up; {wait}; {model}echo done"


@pytest.fixture(scope="module")
def slow_s3(s3_server: S3Server) -> Iterator[SlowS3Proxy]:
    proxy = SlowS3Proxy(s3_server.endpoint, s3_server.host, rate=128 * 1024).start()
    yield proxy
    proxy.stop()


@pytest.fixture()
def make_server(tmp_path_factory: pytest.TempPathFactory, slow_s3: SlowS3Proxy, docker_engine: docker.DockerClient
                ) -> Iterator[Callable[..., SmlocalServer]]:
    started: list[SmlocalServer] = []

    def make(*args: str) -> SmlocalServer:
        server = SmlocalServer(tmp_path_factory.mktemp("phases"), slow_s3.endpoint, list(args)).start()
        started.append(server)
        s3_client(server)
        return server

    yield make
    for server in started:
        if server.process is not None and server.process.poll() is not None:
            server.start()
        try:
            finish_all(docker_engine, server)
            sm = server.client()
            for s in sm.list_training_jobs(MaxResults=100)["TrainingJobSummaries"]:
                if s["TrainingJobStatus"] == "InProgress":
                    sm.stop_training_job(TrainingJobName=s["TrainingJobName"])
        finally:
            server.stop()


def containers_of(client: docker.DockerClient, server: SmlocalServer, name: str | None = None) -> list[Any]:
    labels = [f"smlocal.data-dir={server.data_dir.resolve()}"] + ([f"smlocal.job-name={name}"] if name else [])
    return client.containers.list(filters={"label": labels})


def finish(client: docker.DockerClient, server: SmlocalServer, name: str) -> None:
    """Let a job's algorithm (or its SIGTERM handler) finish."""
    for container in containers_of(client, server, name):
        container.exec_run(["touch", "/tmp/finish"])


def finish_all(client: docker.DockerClient, server: SmlocalServer) -> None:
    for container in containers_of(client, server):
        try:
            container.exec_run(["touch", "/tmp/finish"])
        except docker.errors.APIError:
            pass  # it exited meanwhile


def training(server: SmlocalServer, sm: Any, name: str) -> None:
    wait_until(lambda: "up" in log_messages(server, name), 60, f"{name} to run")


def in_phase(sm: Any, name: str, secondary: str, timeout: float = 60) -> None:
    wait_until(lambda: sm.describe_training_job(TrainingJobName=name)["SecondaryStatus"] == secondary, timeout,
               f"{name} to reach {secondary}")


def stop_while_uploading(server: SmlocalServer, sm: Any, client: docker.DockerClient, name: str) -> None:
    """Run a job with a 12 MiB model whose upload is held (slow_s3), and stop it while it uploads."""
    sm.create_training_job(**sh_job(name, algorithm(big_model=True)))
    training(server, sm, name)
    finish(client, server, name)
    in_phase(sm, name, "Uploading")
    sm.stop_training_job(TrainingJobName=name)


def slow_channel(s3: Any, name: str) -> list[dict[str, Any]]:
    """Three 4 MiB objects: over a minute and a half through the slowed proxy, under a second once released.

    (Put before the job's transfers are slowed: the test's own uploads go through the proxy too.)"""
    for i in range(3):
        s3.put_object(Bucket=INPUT_BUCKET, Key=f"{name}/data/part-{i}", Body=bytes([i]) * 4 * 2**20)
    return [s3_channel("train", f"s3://{INPUT_BUCKET}/{name}/data/")]


def no_leftovers(client: docker.DockerClient, server: SmlocalServer) -> None:
    assert wait_until(lambda: leftovers(client, server) == [], 30, "cleanup")
    assert mounts_under(server.data_dir) == []


# ---- stop in each phase --------------------------------------------------------------------------

def test_stop_while_pending(make_server: Callable[..., SmlocalServer], docker_engine: docker.DockerClient,
                            unique_name: Callable[[str], str]) -> None:
    server = make_server("--max-concurrent-jobs", "1", "--stop-grace-seconds", "5")
    sm = server.client()
    blocker, name = unique_name("blocker"), unique_name("waiting")
    with Recorder(server) as recorder:
        sm.create_training_job(**sh_job(blocker, algorithm()))
        training(server, sm, blocker)
        sm.create_training_job(**sh_job(name, algorithm()))
        # No slot for it: Pending, as SageMaker shows a job waiting for capacity.
        wait_until(lambda: sm.describe_training_job(TrainingJobName=name)["SecondaryStatus"] == "Pending", 10,
                   "Pending")
        assert sm.describe_training_job(TrainingJobName=name)["SecondaryStatusTransitions"][-1]["StatusMessage"] == (
            "Waiting for an instance to become available")
        sm.stop_training_job(TrainingJobName=name)
        # Nothing ran: it is Stopped at once.
        job = sm.describe_training_job(TrainingJobName=name)
        finish(docker_engine, server, blocker)
        wait_for_status(sm, blocker, FINAL)
    assert (job["TrainingJobStatus"], job["SecondaryStatus"]) == ("Stopped", "Stopped")
    assert [t["Status"] for t in job["SecondaryStatusTransitions"]] == ["Starting", "Pending", "Stopping", "Stopped"]
    assert "TrainingStartTime" not in job
    recorder.check(sm, name)
    assert recorder.check(sm, blocker)["TrainingJobStatus"] == "Completed"
    no_leftovers(docker_engine, server)


def test_stop_while_downloading_cancels_the_download(
        make_server: Callable[..., SmlocalServer], slow_s3: SlowS3Proxy, docker_engine: docker.DockerClient,
        unique_name: Callable[[str], str]) -> None:
    server = make_server("--stop-grace-seconds", "5")
    sm, s3 = server.client(), server.client("s3")
    name = unique_name("stop-dl")
    channels = slow_channel(s3, name)
    slow_s3.slow_down(name)
    with Recorder(server) as recorder:
        sm.create_training_job(**sh_job(name, algorithm(), InputDataConfig=channels))
        in_phase(sm, name, "Downloading")
        time.sleep(1)  # well into the download
        stopped_at = time.monotonic()
        sm.stop_training_job(TrainingJobName=name)
        job = wait_for_status(sm, name, FINAL, timeout=30)
        took = time.monotonic() - stopped_at
    slow_s3.release(name)
    assert (job["TrainingJobStatus"], job["SecondaryStatus"]) == ("Stopped", "Stopped")
    assert [t["Status"] for t in job["SecondaryStatusTransitions"]] == [
        "Starting", "Downloading", "Stopping", "Stopped"]
    assert took < 15  # the rest of the download (over a minute at this pace) was not waited for
    assert any(name in path for path in slow_s3.slowed)
    recorder.check(sm, name)
    no_leftovers(docker_engine, server)


def test_max_runtime_counts_from_the_training_start_so_a_download_can_time_out(
        make_server: Callable[..., SmlocalServer], slow_s3: SlowS3Proxy, docker_engine: docker.DockerClient,
        unique_name: Callable[[str], str]) -> None:
    server = make_server("--stop-grace-seconds", "5")
    sm, s3 = server.client(), server.client("s3")
    name = unique_name("dl-timeout")
    channels = slow_channel(s3, name)
    slow_s3.slow_down(name)
    with Recorder(server) as recorder:
        sm.create_training_job(**sh_job(name, algorithm(), InputDataConfig=channels,
                                        StoppingCondition={"MaxRuntimeInSeconds": 3}))
        job = wait_for_status(sm, name, FINAL, timeout=30)
    slow_s3.release(name)
    assert (job["TrainingJobStatus"], job["SecondaryStatus"]) == ("Stopped", "MaxRuntimeExceeded")
    assert [t["Status"] for t in job["SecondaryStatusTransitions"]] == [
        "Starting", "Downloading", "Stopping", "MaxRuntimeExceeded"]
    assert 3 <= job["TrainingTimeInSeconds"] < 15
    recorder.check(sm, name)
    no_leftovers(docker_engine, server)


def test_stop_while_training_saves_the_model_in_the_grace_period(
        make_server: Callable[..., SmlocalServer], docker_engine: docker.DockerClient,
        unique_name: Callable[[str], str]) -> None:
    server = make_server("--stop-grace-seconds", "30")
    sm = server.client()
    name = unique_name("stop-train")
    with Recorder(server) as recorder:
        sm.create_training_job(**sh_job(name, algorithm(save_on_term=True)))
        training(server, sm, name)
        sm.stop_training_job(TrainingJobName=name)
        wait_until(lambda: "got SIGTERM" in log_messages(server, name), 30, "SIGTERM")
        assert sm.describe_training_job(TrainingJobName=name)["TrainingJobStatus"] == "Stopping"
        finish(docker_engine, server, name)
        job = wait_for_status(sm, name, FINAL, timeout=30)
    assert (job["TrainingJobStatus"], job["SecondaryStatus"]) == ("Stopped", "Stopped")
    assert [t["Status"] for t in job["SecondaryStatusTransitions"]] == [
        "Starting", "Downloading", "Training", "Stopping", "Stopped"]
    assert model_files(server.client("s3"), name) == {"saved.txt": b"saved\n"}
    recorder.check(sm, name)
    no_leftovers(docker_engine, server)


def test_stop_while_uploading_keeps_stopping_until_the_model_is_saved(
        make_server: Callable[..., SmlocalServer], slow_s3: SlowS3Proxy, docker_engine: docker.DockerClient,
        unique_name: Callable[[str], str]) -> None:
    server = make_server("--stop-grace-seconds", "5")
    sm, s3 = server.client(), server.client("s3")
    name = unique_name("stop-up")
    slow_s3.slow_down(name)
    with Recorder(server) as recorder:
        stop_while_uploading(server, sm, docker_engine, name)
        with pytest.raises(ClientError) as err:  # a second stop
            sm.stop_training_job(TrainingJobName=name)
        assert err.value.response["Error"] == {
            "Code": "ValidationException",
            "Message": "The request was rejected because the training job is in status Stopping."}
        time.sleep(1)
        # Still saving the model: the job reads Stopping, never Uploading again.
        described = sm.describe_training_job(TrainingJobName=name)
        assert (described["TrainingJobStatus"], described["SecondaryStatus"]) == ("Stopping", "Stopping")
        slow_s3.release(name)
        job = wait_for_status(sm, name, FINAL, timeout=60)
    assert (job["TrainingJobStatus"], job["SecondaryStatus"]) == ("Stopped", "Stopped")
    assert [t["Status"] for t in job["SecondaryStatusTransitions"]] == [
        "Starting", "Downloading", "Training", "Uploading", "Stopping", "Stopped"]
    assert len(model_files(s3, name)["weights.bin"]) == 12 * 2**20
    recorder.check(sm, name)
    no_leftovers(docker_engine, server)


# ---- restart in each phase ----------------------------------------------------------------------

PHASES = ["pending", "downloading", "training", "uploading", "stopping"]


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
@pytest.mark.parametrize("phase", PHASES)
def test_restart_in_each_phase_ends_as_sagemaker_would(
        make_server: Callable[..., SmlocalServer], slow_s3: SlowS3Proxy, docker_engine: docker.DockerClient,
        unique_name: Callable[[str], str], phase: str, kill: bool) -> None:
    server = make_server("--max-concurrent-jobs", "1", "--stop-grace-seconds", "60")
    sm, s3 = server.client(), server.client("s3")
    name = unique_name(f"rs-{phase}-{'k' if kill else 't'}")
    blocker = unique_name(f"rsb-{phase}-{'k' if kill else 't'}")
    with Recorder(server) as recorder:
        if phase == "pending":  # queued behind a job that holds the one slot
            sm.create_training_job(**sh_job(blocker, algorithm()))
            training(server, sm, blocker)
            sm.create_training_job(**sh_job(name, algorithm()))
            in_phase(sm, name, "Pending")
        elif phase == "downloading":
            channels = slow_channel(s3, name)
            slow_s3.slow_down(name)
            sm.create_training_job(**sh_job(name, algorithm(), InputDataConfig=channels))
            in_phase(sm, name, "Downloading")
        elif phase == "uploading":
            slow_s3.slow_down(name)
            sm.create_training_job(**sh_job(name, algorithm(big_model=True)))
            training(server, sm, name)
            finish(docker_engine, server, name)
            in_phase(sm, name, "Uploading")
        else:
            sm.create_training_job(**sh_job(name, algorithm(save_on_term=phase == "stopping")))
            training(server, sm, name)
            if phase == "stopping":
                sm.stop_training_job(TrainingJobName=name)
                wait_until(lambda: "got SIGTERM" in log_messages(server, name), 30, "SIGTERM")
        before = sm.describe_training_job(TrainingJobName=name)
        assert before["SecondaryStatus"] == phase.capitalize()

        server.restart(kill=kill)
        slow_s3.release(name)
        if phase == "pending":
            finish(docker_engine, server, blocker)
        if phase in ("pending", "downloading"):  # they run (again) from the start
            training(server, sm, name)
        finish(docker_engine, server, name)
        job = wait_for_status(sm, name, FINAL, timeout=120)

    expected = ("Stopped", "Stopped") if phase == "stopping" else ("Completed", "Completed")
    assert (job["TrainingJobStatus"], job["SecondaryStatus"]) == expected, job.get("FailureReason")
    recorder.check(sm, name)
    files = model_files(s3, name)
    if phase == "stopping":
        assert files == {"saved.txt": b"saved\n"}
        # The new process continued the grace period: SIGTERM was sent once.
        assert log_messages(server, name).count("got SIGTERM") == 1
        assert [t["Status"] for t in job["SecondaryStatusTransitions"]] == [
            "Starting", "Downloading", "Training", "Stopping", "Stopped"]
    elif phase == "uploading":
        assert len(files["weights.bin"]) == 12 * 2**20
    else:
        assert files == {"model.txt": b"trained\n"}
        waited = ["Pending", "Starting"] if phase == "pending" else []
        assert [t["Status"] for t in job["SecondaryStatusTransitions"]] == [
            "Starting", *waited, "Downloading", "Training", "Uploading", "Completed"]
    if phase == "pending":
        assert wait_for_status(sm, blocker, FINAL)["TrainingJobStatus"] == "Completed"
    no_leftovers(docker_engine, server)


def test_a_restart_while_a_stopped_job_uploads_keeps_the_stop(
        make_server: Callable[..., SmlocalServer], slow_s3: SlowS3Proxy, docker_engine: docker.DockerClient,
        unique_name: Callable[[str], str]) -> None:
    server = make_server("--stop-grace-seconds", "5")
    sm, s3 = server.client(), server.client("s3")
    name = unique_name("stop-up-kill")
    slow_s3.slow_down(name)
    with Recorder(server) as recorder:
        stop_while_uploading(server, sm, docker_engine, name)
        server.restart(kill=True)
        slow_s3.release(name)
        job = wait_for_status(sm, name, FINAL, timeout=60)
    assert (job["TrainingJobStatus"], job["SecondaryStatus"]) == ("Stopped", "Stopped")
    assert len(model_files(s3, name)["weights.bin"]) == 12 * 2**20
    recorder.check(sm, name)
    no_leftovers(docker_engine, server)


# ---- chaos ------------------------------------------------------------------------------------

def test_chaos_ten_jobs_in_mixed_phases_survive_a_sigkill(
        make_server: Callable[..., SmlocalServer], slow_s3: SlowS3Proxy, docker_engine: docker.DockerClient,
        unique_name: Callable[[str], str]) -> None:
    server = make_server("--max-concurrent-jobs", "8", "--stop-grace-seconds", "60")
    sm, s3 = server.client(), server.client("s3")
    plan = (["training"] * 3 + ["stopping"] + ["uploading"] * 2 + ["downloading"] * 2 + ["queued"] * 2)
    names = [unique_name(f"chaos-{i}-{kind}") for i, kind in enumerate(plan)]
    kinds = dict(zip(names, plan, strict=True))
    with Recorder(server) as recorder:
        for name, kind in kinds.items():
            channels = {"InputDataConfig": slow_channel(s3, name)} if kind == "downloading" else {}
            if kind in ("downloading", "uploading"):
                slow_s3.slow_down(name)
            sm.create_training_job(**sh_job(name, algorithm(big_model=kind == "uploading",
                                                            save_on_term=kind == "stopping"), **channels))
        for name, kind in kinds.items():
            if kind in ("training", "stopping", "uploading"):
                training(server, sm, name)
            if kind == "uploading":
                finish(docker_engine, server, name)
                in_phase(sm, name, "Uploading")
            if kind == "stopping":
                sm.stop_training_job(TrainingJobName=name)
                wait_until(lambda n=name: "got SIGTERM" in log_messages(server, n), 30, "SIGTERM")
            if kind == "downloading":
                in_phase(sm, name, "Downloading")
        phases = {n: sm.describe_training_job(TrainingJobName=n)["SecondaryStatus"] for n in names}
        assert sorted(phases.values()) == sorted(
            ["Training"] * 3 + ["Stopping"] + ["Uploading"] * 2 + ["Downloading"] * 2 + ["Pending"] * 2)

        server.restart(kill=True)
        for name in names:
            slow_s3.release(name)
        # Let every algorithm (and the stopping one's SIGTERM handler) finish, as they come up.
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            finish_all(docker_engine, server)
            summaries = sm.list_training_jobs(MaxResults=100)["TrainingJobSummaries"]
            if all(s["TrainingJobStatus"] in FINAL for s in summaries):
                break
            time.sleep(0.5)
        jobs = {n: wait_for_status(sm, n, FINAL, timeout=10) for n in names}

    for name, kind in kinds.items():
        expected = ("Stopped", "Stopped") if kind == "stopping" else ("Completed", "Completed")
        assert (jobs[name]["TrainingJobStatus"], jobs[name]["SecondaryStatus"]) == expected, (
            name, jobs[name].get("FailureReason"))
        recorder.check(sm, name)
    assert model_files(s3, names[plan.index("stopping")]) == {"saved.txt": b"saved\n"}
    # Nothing orphaned: containers, networks (but the next job's spare), mounts, job folders.
    no_leftovers(docker_engine, server)
    assert not list((server.data_dir / "jobs").iterdir())
    assert not [p for p in Path(server.data_dir).glob("jobs/*")]
