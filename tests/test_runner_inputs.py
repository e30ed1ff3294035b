"""The InputProvider seam: when a job calls its providers' hooks, on every end path.

The job runs in-process (a JobExecution on a real Docker engine and a real S3 server) with a provider
registered for Pipe channels that records what it sees at each hook. Pipe and FastFile providers
(FIFO writers, a FUSE mount) plug in here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from runner import inputs
from runner.backend import LABEL_JOB_ARN
from runner.docker_backend import DockerBackend
from runner.execution import JobExecution, data_dir_label
from runner.inputs import FileInput
from runner.networks import NetworkPool
from runner.subnets import SubnetAllocator, host_routes, resolve_job_subnets
from smlocal.core.lifecycle import Lifecycle
from smlocal.core.settings import Settings
from smlocal.core.store import Store
from tests.support.docker_env import BUSYBOX_IMAGE
from tests.support.jobs import job_request
from tests.support.s3server import S3Server

BUCKET = "smlocal-test-inputs"


class RecordingInput(FileInput):
    """File staging, plus a record of each hook with what the host's container and folder were then."""

    calls: list[tuple[str, str, str | None, bool]] = []
    backend: DockerBackend
    gate: threading.Event | None = None  # when set by a test, prepare waits for it (a long download)

    def _record(self, hook: str) -> None:
        found = self.backend.containers({LABEL_JOB_ARN: self.context.spec.arn})
        states = {c.host: c.state for c in found}
        RecordingInput.calls.append((hook, self.host, states.get(self.host), self.folder.is_dir()))

    def prepare(self, cancelled: Callable[[], bool]) -> None:
        super().prepare(cancelled)
        self._record("prepare")
        if self.gate is not None:
            self.gate.wait(30)

    def start(self) -> None:
        self._record("start")

    def stop(self) -> None:
        self._record("stop")


@pytest.fixture()
def run_job(tmp_path: Path, s3_server: S3Server, test_images: docker.DockerClient, monkeypatch: pytest.MonkeyPatch
            ) -> Iterator[Callable[..., dict[str, Any]]]:
    settings = Settings(data_dir=tmp_path / "data", s3_endpoint=s3_server.endpoint, stop_grace_seconds=1)
    lifecycle = Lifecycle(Store(tmp_path / "smlocal.db"))
    backend = DockerBackend()
    networks = NetworkPool(backend, data_dir_label(settings),
                           SubnetAllocator(resolve_job_subnets(None, host_routes(), backend.networks())))
    monkeypatch.setattr(RecordingInput, "backend", backend, raising=False)
    monkeypatch.setattr(RecordingInput, "calls", [])
    monkeypatch.setattr(RecordingInput, "gate", None)
    monkeypatch.setitem(inputs.PROVIDERS, "Pipe", RecordingInput)
    s3 = s3_server.client_with_bucket(BUCKET)
    s3.put_object(Bucket=BUCKET, Key="data/a.csv", Body=b"1\n")
    s3_server.client_with_bucket("smlocal-test-output")

    def run(name: str, script: str, *, stop_when: str | None = None, **overrides: Any) -> dict[str, Any]:
        request = job_request(name, BUSYBOX_IMAGE, InputDataConfig=[
            {"ChannelName": "stream", "InputMode": "Pipe",
             "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": f"s3://{BUCKET}/data/"}}}],
            **overrides)
        request["AlgorithmSpecification"]["ContainerEntrypoint"] = ["sh", "-c", script]
        job = lifecycle.create(account_id="123456789012", region="us-east-1", name=name, request=request, tags=[])
        execution = JobExecution(lifecycle.claim(job.arn), settings, lifecycle, backend, networks, threading.Event())
        lifecycle.subscribe(lambda j: execution.request_stop() if j.arn == job.arn and j.status == "Stopping"
                            else None)
        worker = threading.Thread(target=execution.run_new)
        worker.start()
        if stop_when is not None:
            while not any(call[0] == stop_when for call in RecordingInput.calls):
                assert worker.is_alive(), RecordingInput.calls
                worker.join(0.05)
            lifecycle.request_stop(job.arn)
            if RecordingInput.gate is not None:
                RecordingInput.gate.set()
        worker.join(60)
        assert not worker.is_alive()
        ended = lifecycle.get(job.arn)
        assert not execution.root.exists()  # the job's folder went after the providers stopped
        return {"status": ended.status, "secondary": ended.secondary_status, "calls": list(RecordingInput.calls),
                "reason": ended.failure_reason}

    try:
        yield run
    finally:
        networks.close()  # the spare the last job's cleanup made


def test_hooks_run_in_the_hosts_order_of_life(run_job: Callable[..., dict[str, Any]]) -> None:
    job = run_job("inputs-completed", "cat /opt/ml/input/data/stream/a.csv; sleep 1",
                  ResourceConfig={"InstanceType": "ml.m5.large", "InstanceCount": 2, "VolumeSizeInGB": 1})
    assert job["status"] == "Completed", job["reason"]
    # prepared before the container starts (created already: the image is local), started once it runs,
    # stopped before the folder is removed; each host has its own provider.
    for host in ("algo-1", "algo-2"):
        mine = [(hook, state, folder) for hook, h, state, folder in job["calls"] if h == host]
        assert mine[:2] == [("prepare", "created", True), ("start", "running", True)]
        assert [hook for hook, *_ in mine[2:]] == ["stop", "stop"]  # after the exit, and again at cleanup
        assert all(folder for *_, folder in mine)
    prepares = [i for i, c in enumerate(job["calls"]) if c[0] == "prepare"]
    starts = [i for i, c in enumerate(job["calls"]) if c[0] == "start"]
    assert max(prepares) < min(starts)  # every host's inputs are ready before any algorithm starts


@pytest.mark.parametrize(("stop_when", "script", "expected"), [
    ("prepare", "sleep 30", ("Stopped", "Stopped")),  # stopped before the container started
    ("start", "trap 'exit 0' TERM; while true; do sleep 0.1; done", ("Stopped", "Stopped")),
    (None, "exit 3", ("Failed", "Failed")),
], ids=["stopped-before-start", "stopped-while-running", "failed"])
def test_providers_are_stopped_on_every_end_path(run_job: Callable[..., dict[str, Any]], stop_when: str | None,
                                                 script: str, expected: tuple[str, str]) -> None:
    if stop_when == "prepare":
        RecordingInput.gate = threading.Event()  # the stop comes while the inputs are being prepared
    job = run_job(f"inputs-{stop_when or 'failed'}", script, stop_when=stop_when)
    assert (job["status"], job["secondary"]) == expected
    hooks = [hook for hook, *_ in job["calls"]]
    assert hooks[0] == "prepare" and hooks[-1] == "stop"
    assert ("start" in hooks) == (stop_when != "prepare")
