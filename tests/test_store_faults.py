"""The S3 store going away under running jobs.

The embedded store (rclone, a process of its own) killed while a job stages: smlocal restarts it, the job's
transfers wait for it (bounded retries with backoff) and the job completes with its data whole; /health
says what happened. An external store stopped for good while a job trains: the upload gives up after its
retries and the job fails with a ClientError-style reason; with the store back, the next job completes.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from runner.host_address import docker_bridge_gateway
from tests.support.jobs import assert_completed_in_order, wait_recording
from tests.support.runner_jobs import FINAL, INPUT_BUCKET, OUTPUT_BUCKET, model_files, s3_channel, sh_job, wait_until
from tests.support.s3server import start_s3_server
from tests.support.smlocal import SmlocalServer


def _health(server: SmlocalServer) -> dict[str, Any]:
    with urllib.request.urlopen(server.endpoint + "/health", timeout=10) as response:
        return json.load(response)


def _store_pid(server: SmlocalServer) -> int | None:
    assert server.process is not None
    found = subprocess.run(["pgrep", "-P", str(server.process.pid), "-f", "serve s3"], capture_output=True,
                           text=True, check=False).stdout.split()
    return int(found[0]) if found else None


def _hold(addresses: list[str], port: int) -> list[socket.socket] | None:
    """Listen on the store's addresses, so nothing else can, and reset every connection at once: a store that
    does not serve. None if something already listens there again."""
    held = []
    for address in addresses:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # its old connections may linger
        try:
            sock.bind((address, port))
            sock.listen(64)
        except OSError:
            sock.close()
            for s in held:
                s.close()
            return None
        held.append(sock)
    for sock in held:
        threading.Thread(target=_reset_all, args=(sock,), daemon=True).start()
    return held


def _reset_all(listener: socket.socket) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return  # closed: the hold is over
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # a reset, not a FIN
        conn.close()


@pytest.fixture()
def embedded_server(tmp_path: Path, docker_engine: docker.DockerClient) -> Iterator[SmlocalServer]:
    server = SmlocalServer(tmp_path / "data", None, ["--stop-grace-seconds", "1"]).start()
    try:
        yield server
    finally:
        server.stop()


def test_the_embedded_store_killed_as_a_job_stages_is_restarted_and_the_job_completes(
        embedded_server: SmlocalServer) -> None:
    server = embedded_server
    s3, sm = server.client("s3"), server.client()
    for bucket in (INPUT_BUCKET, OUTPUT_BUCKET):
        s3.create_bucket(Bucket=bucket)
    digest = hashlib.md5()
    for i in range(20):
        body = os.urandom(64 * 1024)
        digest.update(body)
        s3.put_object(Bucket=INPUT_BUCKET, Key=f"data/part-{i:02d}", Body=body)
    assert "restarted if it dies" in server.log()
    assert _health(server)["s3Store"] == {"up": True, "restarts": 0, "lastExitCode": None, "lastRestart": None}

    # Killed, and its port held so that it cannot come back at once: the job starts while it is gone.
    addresses = ["127.0.0.1"] + ([gateway] if (gateway := docker_bridge_gateway()) else [])
    held = None
    for _ in range(10):  # smlocal may restart it before the port is held: kill it again then
        pid = wait_until(lambda: _store_pid(server), 20, "the store's process")
        os.kill(pid, signal.SIGKILL)
        held = _hold(addresses, server.embedded_s3_port) if _wait_dead(pid) else None
        if held:
            break
    assert held, "could not catch the store's port"
    name = f"store-killed-{os.urandom(4).hex()}"
    try:
        sm.create_training_job(**sh_job(
            name, "cat /opt/ml/input/data/train/part-* | md5sum | cut -d' ' -f1 > /opt/ml/model/sum",
            InputDataConfig=[s3_channel("train", f"s3://{INPUT_BUCKET}/data/")]))
        down = wait_until(lambda: not (h := _health(server))["s3Store"]["up"] and h, 15, "health saying so")
        assert down["status"] == "degraded" and "does not restart" in down["problem"], down
        time.sleep(3)  # the job waits on the store meanwhile
        assert sm.describe_training_job(TrainingJobName=name)["TrainingJobStatus"] == "InProgress"
    finally:
        for sock in held:
            sock.shutdown(socket.SHUT_RDWR)  # wakes its accept(): a close alone would leave it listening
            sock.close()
    job, seen = wait_recording(sm, name, FINAL, timeout=180)
    assert job["TrainingJobStatus"] == "Completed", (seen, job.get("FailureReason"))
    assert_completed_in_order(seen)
    assert model_files(s3, name)["sum"].decode().strip() == digest.hexdigest()
    health = _health(server)
    assert health["status"] == "ok" and health["s3Store"]["up"] is True, health
    assert health["s3Store"]["restarts"] >= 1 and health["s3Store"]["lastExitCode"] == -signal.SIGKILL, health


def _wait_dead(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ")[-1].startswith("Z"):
                    return True  # dead, not yet reaped by smlocal
        except FileNotFoundError:
            return True
        time.sleep(0.01)
    return False


def test_an_external_store_stopped_for_good_fails_the_upload_and_the_next_job_runs_when_it_is_back(
        tmp_path: Path, docker_engine: docker.DockerClient) -> None:
    store = start_s3_server()
    server = SmlocalServer(tmp_path / "data", store.endpoint, ["--stop-grace-seconds", "1"]).start()
    try:
        sm = server.client()
        store.client_with_bucket(OUTPUT_BUCKET)
        name = f"store-gone-{os.urandom(4).hex()}"
        sm.create_training_job(**sh_job(name, "sleep 3; echo weights > /opt/ml/model/w"))
        wait_until(lambda: sm.describe_training_job(TrainingJobName=name)["SecondaryStatus"] == "Training",
                   60, "Training")
        port = store.port
        store.stop()
        job, seen = wait_recording(sm, name, FINAL, timeout=180)
        assert job["TrainingJobStatus"] == "Failed", (seen, job.get("FailureReason"))
        assert job["FailureReason"].startswith(f"ClientError: Artifact upload to s3://{OUTPUT_BUCKET}/"), job
        assert "the S3 store did not answer" in job["FailureReason"], job["FailureReason"]
        assert "InProgress/Uploading" in seen, seen
        # The API answered throughout; with the store back (same address), the next job completes.
        store = start_s3_server(port=port)
        s3 = store.client_with_bucket(OUTPUT_BUCKET)
        after = f"store-back-{os.urandom(4).hex()}"
        sm.create_training_job(**sh_job(after, "echo fine > /opt/ml/model/ok"))
        job, seen = wait_recording(sm, after, FINAL, timeout=120)
        assert job["TrainingJobStatus"] == "Completed", (seen, job.get("FailureReason"))
        assert model_files(s3, after) == {"ok": b"fine\n"}
    finally:
        server.stop()
        store.stop()
