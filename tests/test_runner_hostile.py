"""The container as an adversary: what it leaves in /opt/ml or prints must not hang, fill or leak the host.

Each hostile job is followed by an ordinary one on the same server, which must run normally.
Real containers and a real S3 server (as test_runner_jobs); the tree readers are also tried in-process.
"""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import pytest

from runner import tree
from runner.failure import read_failure_file
from runner.layout import HostLayout, prepare
from runner.log_follower import MAX_EVENT_BYTES
from runner.mounts import mounts_under, remove_tree
from smlocal.core.jobspec import JobSpec
from tests.support.docker_env import BUSYBOX_IMAGE
from tests.support.logs import stream_files
from tests.support.runner_jobs import (
    INPUT_BUCKET,
    OUTPUT_BUCKET,
    log_messages,
    model_files,
    run_job,
    s3_channel,
    sh_job,
    wait_until,
)
from tests.support.smlocal import SmlocalServer

SERVER = "runner_server"  # `sm` and `s3` are clients of the runner plugin's server (tests/conftest.py)

NOBODY_IMAGE = "smlocal-test/runner-nobody:1"


def then_a_normal_job_runs(sm: Any, s3: Any, unique_name: Callable[[str], str], variant: str = "") -> None:
    name = unique_name(f"after{variant}")
    job = run_job(sm, sh_job(name, "echo fine > /opt/ml/model/ok; echo normal"))
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    assert model_files(s3, name) == {"ok": b"fine\n"}


# ---- the failure file --------------------------------------------------------------------------

@pytest.mark.parametrize(("kind", "make"), [
    ("fifo", "mkfifo /opt/ml/output/failure"),
    # /dev/urandom's numbers: reading it on the host would put host bytes in FailureReason.
    ("device", "mknod /opt/ml/output/failure c 1 9"),
], ids=["fifo", "device-node"])
def test_a_failure_file_that_is_not_a_regular_file_is_ignored(
        sm: Any, s3: Any, unique_name: Callable[[str], str], kind: str, make: str) -> None:
    name = unique_name(f"failure-{kind}")
    started = time.monotonic()
    job = run_job(sm, sh_job(name, f"{make} && echo planted; exit 5"), timeout=60)
    assert job["TrainingJobStatus"] == "Failed"
    assert job["FailureReason"] == (
        "AlgorithmError: the training container exited with a non-zero status, exit code: 5\n"
        "Last log lines:\nplanted")
    assert time.monotonic() - started < 60
    then_a_normal_job_runs(sm, s3, unique_name, kind)


def test_an_output_folder_linked_to_the_host_leaks_nothing(
        runner_server: SmlocalServer, sm: Any, s3: Any, unique_name: Callable[[str], str]) -> None:
    name = unique_name("linked-output")
    host_dir = Path(tempfile.mkdtemp(prefix="smlocal-host-"))
    (host_dir / "failure").write_text("HOST SECRET failure")
    (host_dir / "data").mkdir()
    (host_dir / "data" / "secret.txt").write_text("HOST SECRET data")
    # Inside the container these host paths mean nothing; on the host they would, if followed.
    script = (f"rm -rf /opt/ml/output && ln -s {host_dir} /opt/ml/output && "
              f"(rm -rf /opt/ml/model && ln -s {host_dir} /opt/ml/model || ln -s {host_dir} /opt/ml/model/link); "
              "echo linked; exit 3")
    try:
        job = run_job(sm, sh_job(name, script, s3=s3))
        assert job["TrainingJobStatus"] == "Failed"
        assert "HOST SECRET" not in job["FailureReason"]
        assert job["FailureReason"].startswith("AlgorithmError: the training container exited with a non-zero")
        listed = s3.list_objects_v2(Bucket=OUTPUT_BUCKET, Prefix=f"models/{name}/").get("Contents", [])
        for obj in listed:
            assert b"HOST SECRET" not in s3.get_object(Bucket=OUTPUT_BUCKET, Key=obj["Key"])["Body"].read()
        assert (host_dir / "failure").read_text() == "HOST SECRET failure"  # and nothing was changed there
    finally:
        for p in sorted(host_dir.rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        host_dir.rmdir()
    then_a_normal_job_runs(sm, s3, unique_name)


def test_a_model_folder_replaced_by_a_link_to_root_gives_an_empty_model(
        sm: Any, s3: Any, unique_name: Callable[[str], str]) -> None:
    name = unique_name("linked-model")
    script = ("(rm -rf /opt/ml/model && ln -s / /opt/ml/model) || "
              "(ln -s / /opt/ml/model/root && ln -s /etc/passwd /opt/ml/model/passwd); "
              "rm -rf /opt/ml/output/data && ln -s /etc /opt/ml/output/data; echo done")
    job = run_job(sm, sh_job(name, script))
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    body = s3.get_object(Bucket=OUTPUT_BUCKET, Key=f"models/{name}/output/model.tar.gz")["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        assert all(m.issym() for m in tar.getmembers())  # links stay links (or the folder is empty)
    assert b"root:" not in body
    # output/data was a link: nothing to upload.
    assert "Contents" not in s3.list_objects_v2(Bucket=OUTPUT_BUCKET, Prefix=f"models/{name}/output/output")
    then_a_normal_job_runs(sm, s3, unique_name)


# ---- the log -----------------------------------------------------------------------------------

@pytest.mark.parametrize("newline", [True, False], ids=["line", "no-newline"])
def test_a_10_mib_log_line_becomes_one_event_of_256_kib(
        runner_server: SmlocalServer, sm: Any, s3: Any, unique_name: Callable[[str], str], newline: bool) -> None:
    name = unique_name("hugeline-nl" if newline else "hugeline")
    script = "echo before; head -c 10485760 /dev/zero | tr '\\0' x" + ("; echo; echo after" if newline else "")
    job = run_job(sm, sh_job(name, script), timeout=120)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    messages = log_messages(runner_server, name)
    assert messages == ["before", "x" * MAX_EVENT_BYTES] + (["after"] if newline else [])
    # Every stored event fits CloudWatch's limit (message bytes + 26).
    for stream in stream_files(runner_server.data_dir, name):
        for line in stream.read_text().splitlines():
            assert len(json.loads(line)["message"].encode()) + 26 <= 256 * 1024
    then_a_normal_job_runs(sm, s3, unique_name, "nl" if newline else "")


def test_a_catastrophic_metric_regex_is_dropped_and_the_api_keeps_answering(
        runner_server: SmlocalServer, sm: Any, s3: Any, unique_name: Callable[[str], str]) -> None:
    name = unique_name("redos")
    # `(a|aa)+$` on "aaa...ab" backtracks for longer than the universe has left, with `re` or `regex`.
    script = ("i=0; while [ $i -lt 20 ]; do echo aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab; "
              "i=$((i+1)); done; echo loss=0.25; sleep 1; echo loss=0.125")
    request = sh_job(name, script, AlgorithmSpecification={"MetricDefinitions": [
        {"Name": "evil", "Regex": "(a|aa)+$"}, {"Name": "loss", "Regex": r"loss=([0-9.]+)"}]})
    sm.create_training_job(**request)
    # While the job's log is matched, the API answers (a client that gives up after 5 s would fail here).
    quick = runner_server.client(read_timeout=5, connect_timeout=5)
    while True:
        job = quick.describe_training_job(TrainingJobName=name)
        if job["TrainingJobStatus"] in ("Completed", "Failed", "Stopped"):
            break
        time.sleep(0.1)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    assert [(m["MetricName"], m["Value"]) for m in job["FinalMetricDataList"]] == [("loss", 0.125)]
    assert "metric 'evil'" in runner_server.log() and "no longer evaluated" in runner_server.log()
    then_a_normal_job_runs(sm, s3, unique_name)


# ---- an algorithm that is not root ---------------------------------------------------------------

def test_an_algorithm_running_as_nobody_reads_its_inputs_and_writes_its_outputs(
        runner_server: SmlocalServer, sm: Any, s3: Any, unique_name: Callable[[str], str],
        docker_engine: docker.DockerClient) -> None:
    with tempfile.TemporaryDirectory() as ctx:
        (Path(ctx) / "Dockerfile").write_text(f"FROM {BUSYBOX_IMAGE}\nUSER 65534:65534\n")
        docker_engine.images.build(path=ctx, tag=NOBODY_IMAGE, pull=False, rm=True, forcerm=True)
    name = unique_name("nobody")
    s3.put_object(Bucket=INPUT_BUCKET, Key=f"{name}/train/sub/data.csv", Body=b"1,2\n")
    script = ("set -e; id -u > /opt/ml/model/uid; cat /opt/ml/input/data/train/sub/data.csv > /opt/ml/model/data; "
              "cat /opt/ml/input/config/hyperparameters.json > /opt/ml/model/hp; mkdir /opt/ml/model/deep; "
              "echo o > /opt/ml/output/data/o.txt; echo c > /opt/ml/checkpoints/c; "
              "if echo x > /opt/ml/input/config/x 2>/dev/null; then echo config-writable; fi")
    # The checkpoint folder is there because the job asks for checkpoints, as on SageMaker.
    job = run_job(sm, sh_job(name, script, image=NOBODY_IMAGE, s3=s3, HyperParameters={"a": "1"},
                             InputDataConfig=[s3_channel("train", f"s3://{INPUT_BUCKET}/{name}/train/")],
                             CheckpointConfig={"S3Uri": f"s3://{OUTPUT_BUCKET}/{name}/checkpoints"}))
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    assert s3.get_object(Bucket=OUTPUT_BUCKET, Key=f"{name}/checkpoints/c")["Body"].read() == b"c\n"
    files = model_files(s3, name)
    assert {k: v for k, v in files.items() if k != "train.sh"} == {
        "uid": b"65534\n", "data": b"1,2\n", "hp": b'{\n  "a": "1"\n}\n'}
    assert "config-writable" not in log_messages(runner_server, name)  # what it only reads, it cannot change
    # On the host, nobody else can enter the data dir's job folders.
    assert stat.S_IMODE(runner_server.data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((runner_server.data_dir / "jobs").stat().st_mode) == 0o700


# ---- in-process: the tree readers ----------------------------------------------------------------

@pytest.fixture()
def layout(tmp_path: Path) -> HostLayout:
    layout = HostLayout(tmp_path / "job")
    prepare(layout, JobSpec.from_request({}))
    return layout


def _in_thread(work: Callable[[], Any], timeout: float = 10) -> Any:
    result: list[Any] = []
    worker = threading.Thread(target=lambda: result.append(work()), daemon=True)
    worker.start()
    worker.join(timeout)
    assert not worker.is_alive(), "blocked"
    return result[0]


def test_failure_file_readers_never_block_or_read_devices(layout: HostLayout, tmp_path: Path) -> None:
    os.mkfifo(layout.failure_file)
    assert _in_thread(lambda: read_failure_file(layout)) is None  # a plain open() would wait for a writer
    layout.failure_file.unlink()
    os.mknod(layout.failure_file, 0o600 | stat.S_IFCHR, os.makedev(1, 5))  # /dev/zero
    assert _in_thread(lambda: read_failure_file(layout)) is None
    layout.failure_file.unlink()
    # A folder on the way that is a link is not followed either.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "failure").write_text("host secret")
    layout.output_dir.rename(tmp_path / "old-output")
    layout.output_dir.symlink_to(elsewhere)
    assert read_failure_file(layout) is None
    layout.output_dir.unlink()
    (tmp_path / "old-output").rename(layout.output_dir)
    layout.failure_file.write_bytes(b"x" * 100_000)  # read capped, cut to 1024 characters
    assert read_failure_file(layout) == "x" * 1024


def test_walking_a_tree_reports_links_and_skips_fifos_and_devices(layout: HostLayout, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "s.txt").write_text("host")
    (layout.model_dir / "real.txt").write_text("model")
    (layout.model_dir / "sub").mkdir()
    (layout.model_dir / "sub" / "deep.txt").write_text("deep")
    (layout.model_dir / "dirlink").symlink_to(secret)
    (layout.model_dir / "filelink").symlink_to(secret / "s.txt")
    os.mkfifo(layout.model_dir / "fifo")
    os.mknod(layout.model_dir / "dev", 0o600 | stat.S_IFCHR, os.makedev(1, 5))
    entries = _in_thread(lambda: [(e.path, e.kind, e.link_target) for e in tree.walk(layout.opt_ml, "model")])
    assert entries == [("dirlink", "link", str(secret)), ("filelink", "link", str(secret / "s.txt")),
                       ("real.txt", "file", ""), ("sub", "dir", ""), ("sub/deep.txt", "file", "")]
    # The folder itself being a link: nothing at all.
    (layout.output_data_dir).rmdir()
    layout.output_data_dir.symlink_to(secret)
    assert list(tree.walk(layout.opt_ml, "output/data")) == []
    assert not tree.has_content(layout.opt_ml, "output/data")


# ---- mounts inside a job's folder (FastFile's, later) ---------------------------------------------

def _bind(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "--bind", str(source), str(target)], check=True)


def test_a_job_folder_is_removed_only_after_what_is_mounted_in_it(tmp_path: Path) -> None:
    data = tmp_path / "users-data"
    data.mkdir()
    (data / "precious.csv").write_text("keep me")
    job = tmp_path / "jobs" / "j.us-east-1.123456789012"
    channel = job / "algo-1" / "opt" / "ml" / "input" / "data" / "train"
    _bind(data, channel)
    assert mounts_under(job) == [channel]
    assert remove_tree(job)
    assert not job.exists() and mounts_under(tmp_path) == []
    assert (data / "precious.csv").read_text() == "keep me"  # deleted through the mount it would be gone


def test_a_restarted_server_unmounts_before_it_sweeps_a_leftover_job_folder(
        smlocal_factory: Callable[..., SmlocalServer], tmp_path: Path, docker_engine: docker.DockerClient) -> None:
    data = tmp_path / "users-data"
    data.mkdir()
    (data / "precious.csv").write_text("keep me")
    data_dir = tmp_path / "server"
    leftover = data_dir / "jobs" / "ghost.us-east-1.123456789012"
    _bind(data, leftover / "algo-1" / "opt" / "ml" / "input" / "data" / "train")
    try:
        server = smlocal_factory("--stop-grace-seconds", "1", data_dir=data_dir)
        assert wait_until(lambda: not leftover.exists(), 30, "the sweep")
        assert mounts_under(data_dir) == []
        assert (data / "precious.csv").read_text() == "keep me"
        assert server.client().list_training_jobs()["TrainingJobSummaries"] == []
    finally:
        for point in mounts_under(tmp_path):
            subprocess.run(["umount", "-l", str(point)], check=False)
