"""The default embedded store (`--s3-store files`): objects are plain files under `<data-dir>/s3`, they
survive restarts of smlocal, and the rclone process lives exactly as long as smlocal."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.jobs import job_request, wait_for_status
from tests.support.smlocal import SmlocalServer, free_port

FINAL = {"Completed", "Failed", "Stopped"}
# Reads its channel and leaves a model behind.
TRAIN = ("set -e; cat /opt/ml/input/data/train/* > /opt/ml/model/seen.txt; "
         "echo weights > /opt/ml/model/weights.bin; mkdir -p /opt/ml/output/data; echo out > /opt/ml/output/data/o")


def _children(pid: int) -> dict[int, str]:
    """The processes whose parent is `pid`: {pid: command name}."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...; comm may hold spaces and parentheses.
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
            found[int(entry.name)] = comm
    return found


def _rclone_of(server: SmlocalServer) -> int:
    assert server.process is not None
    pids = [pid for pid, comm in _children(server.process.pid).items() if comm == "rclone"]
    assert len(pids) == 1, _children(server.process.pid)
    return pids[0]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def _tar_files(body: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        return {m.name.removeprefix("./"): tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def _eventually(check: Any, timeout: float = 5.0) -> Any:
    """rclone re-reads a folder at most a second after it changed behind its back."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except Exception:  # noqa: BLE001 - a 404 or a short listing alike
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture()
def server(tmp_path: Path) -> SmlocalServer:
    server = SmlocalServer(tmp_path / "data", None, ["--stop-grace-seconds", "2"]).start()
    yield server
    server.stop()


@pytest.mark.usefixtures("test_images")
def test_data_buckets_and_models_survive_restarts(server: SmlocalServer) -> None:
    store = server.data_dir / "s3"
    s3 = server.client("s3")
    s3.create_bucket(Bucket="workshop")
    s3.put_object(Bucket="workshop", Key="data/train/part-1.csv", Body=b"1,2\n")
    # The teacher's way: a file copied straight into the bucket's folder.
    (store / "workshop" / "data" / "train" / "part-2.csv").write_bytes(b"3,4\n")
    s3.create_bucket(Bucket="empty-bucket")
    assert (store / "workshop" / "data" / "train" / "part-1.csv").read_bytes() == b"1,2\n"
    # The folder was listed by the PUT just before the copy: rclone sees the copy a second later.
    _eventually(lambda: s3.head_object(Bucket="workshop", Key="data/train/part-2.csv"))

    sm = server.client()
    request = job_request("persisted-job", OutputDataConfig={"S3OutputPath": "s3://workshop/output"},
                          InputDataConfig=[{"ChannelName": "train", "DataSource": {"S3DataSource": {
                              "S3DataType": "S3Prefix", "S3Uri": "s3://workshop/data/train/"}}}])
    request["AlgorithmSpecification"]["ContainerEntrypoint"] = ["sh", "-c", TRAIN]
    sm.create_training_job(**request)
    job = wait_for_status(sm, "persisted-job", FINAL, timeout=180)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    model_uri = job["ModelArtifacts"]["S3ModelArtifacts"]
    assert model_uri == "s3://workshop/output/persisted-job/output/model.tar.gz"
    model = s3.get_object(Bucket="workshop", Key="output/persisted-job/output/model.tar.gz")["Body"].read()
    assert _tar_files(model) == {"seen.txt": b"1,2\n3,4\n", "weights.bin": b"weights\n"}
    # The artifact is a plain file where the key says.
    assert (store / "workshop" / "output" / "persisted-job" / "output" / "model.tar.gz").read_bytes() == model
    before = sorted((str(p.relative_to(store)), p.read_bytes()) for p in store.rglob("*") if p.is_file())

    for kill in (False, True):  # SIGTERM, then SIGKILL: nothing is flushed on the way out
        server.restart(kill=kill)
        s3 = server.client("s3")
        assert {"workshop", "empty-bucket"} <= {b["Name"] for b in s3.list_buckets()["Buckets"]}
        assert [o["Key"] for o in s3.list_objects_v2(Bucket="workshop")["Contents"]] == [
            "data/train/part-1.csv", "data/train/part-2.csv",
            "output/persisted-job/output/model.tar.gz", "output/persisted-job/output/output.tar.gz"]
        assert s3.get_object(Bucket="workshop", Key="data/train/part-1.csv")["Body"].read() == b"1,2\n"
        described = server.client().describe_training_job(TrainingJobName="persisted-job")
        assert described["TrainingJobStatus"] == "Completed"
        bucket, _, key = described["ModelArtifacts"]["S3ModelArtifacts"].removeprefix("s3://").partition("/")
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == model
        assert sorted((str(p.relative_to(store)), p.read_bytes())
                      for p in store.rglob("*") if p.is_file()) == before


def test_files_copied_into_the_folder_are_served(tmp_path: Path) -> None:
    server = SmlocalServer(tmp_path / "data", None, ["--no-run-jobs"]).start()
    try:
        s3 = server.client("s3")
        s3.create_bucket(Bucket="existing")
        s3.list_objects_v2(Bucket="existing")  # rclone has now read the bucket's folder once
        store = server.data_dir / "s3"
        (store / "existing" / "set" / "a").mkdir(parents=True)
        (store / "existing" / "set" / "a" / "x.csv").write_bytes(b"x\n")
        (store / "new-bucket" / "deep" / "er").mkdir(parents=True)
        (store / "new-bucket" / "deep" / "er" / "y.bin").write_bytes(b"\x00" * 1000)

        def visible() -> None:
            assert [o["Key"] for o in s3.list_objects_v2(Bucket="existing").get("Contents", [])] == ["set/a/x.csv"]
            assert "new-bucket" in [b["Name"] for b in s3.list_buckets()["Buckets"]]
            assert [o["Key"] for o in s3.list_objects_v2(Bucket="new-bucket")["Contents"]] == ["deep/er/y.bin"]

        _eventually(visible)
        assert s3.get_object(Bucket="existing", Key="set/a/x.csv")["Body"].read() == b"x\n"
        assert s3.head_object(Bucket="new-bucket", Key="deep/er/y.bin")["ContentLength"] == 1000
        env = {**server.cli_env(), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        listing = subprocess.run(["aws", "s3", "ls", "--recursive", "s3://new-bucket/"], env=env,
                                 capture_output=True, text=True, timeout=120)
        assert listing.returncode == 0 and listing.stdout.split()[-1] == "deep/er/y.bin", listing
    finally:
        server.stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_the_store_process_dies_with_smlocal(tmp_path: Path, sig: signal.Signals) -> None:
    server = SmlocalServer(tmp_path / "data", None, ["--no-run-jobs"]).start()
    try:
        rclone = _rclone_of(server)
        assert _alive(rclone)
        assert server.process is not None
        server.process.send_signal(sig)
        server.process.wait(30)
        assert _wait_gone(rclone), f"rclone {rclone} outlived smlocal ({sig.name})"
        # Its port is free again: a new smlocal gets it.
        server.start()
        assert _rclone_of(server) != rclone
    finally:
        server.stop()


@pytest.mark.parametrize("kind", ["files", "memory"])
def test_a_taken_port_is_a_clear_error(tmp_path: Path, kind: str) -> None:
    port = free_port()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        result = subprocess.run(
            [sys.executable, "-m", "server.cli", "serve", "--no-run-jobs", "--port", str(free_port()),
             "--data-dir", str(tmp_path / "data"), "--s3-store", kind, "--embedded-s3-port", str(port)],
            capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "250"})
    assert result.returncode == 1
    assert f"port 127.0.0.1:{port} is taken" in result.stdout, result.stdout + result.stderr
    assert "--embedded-s3-port" in result.stdout and "Traceback" not in result.stdout + result.stderr


def test_banner_names_the_store_its_folder_and_its_keys(tmp_path: Path) -> None:
    server = SmlocalServer(tmp_path / "data", None, ["--no-run-jobs", "--s3-access-key", "teacher",
                                                     "--s3-secret-key", "s3cret-word"]).start()
    try:
        log = server.log()
        assert f"{server.s3_endpoint} (embedded, files in {(tmp_path / 'data' / 's3').resolve()}/<bucket>/<key>)" in log
        assert "S3 keys        teacher / <--s3-secret-key>" in log
        assert "s3cret-word" not in log
        assert "export AWS_ACCESS_KEY_ID=teacher" in log
        s3 = server.client("s3", access_key="teacher", secret_key="s3cret-word")
        s3.create_bucket(Bucket="keys-work")
        assert (tmp_path / "data" / "s3" / "keys-work").is_dir()
        # rclone does not see the key in its argv (not in every `ps`), only in its environment.
        cmdline = Path(f"/proc/{_rclone_of(server)}/cmdline").read_bytes()
        assert b"s3cret-word" not in cmdline and b"--rc" not in cmdline
    finally:
        server.stop()

    memory = SmlocalServer(tmp_path / "memory", None, ["--no-run-jobs", "--s3-store", "memory"]).start()
    try:
        assert "IN MEMORY" in memory.log()
        assert "export AWS_ACCESS_KEY_ID=minioadmin AWS_SECRET_ACCESS_KEY=minioadmin" in memory.log()
        assert not (tmp_path / "memory" / "s3").exists()
    finally:
        memory.stop()


# A training container's boto3 (the toolkit's, 1.44 here) downloads a large object in ranged parts; rclone
# answers each part with the whole object's CRC32, which that boto3 would reject unless the container is told
# to check response checksums only when required (smlocal sets it for the files store).
CHECK_DOWNLOAD = """
import boto3, hashlib, os
boto3.client("s3").download_file(os.environ["BUCKET"], os.environ["KEY"], "/tmp/object")
with open("/tmp/object", "rb") as f, open("/opt/ml/model/sha256", "w") as out:
    out.write(hashlib.sha256(f.read()).hexdigest())
"""


@pytest.mark.usefixtures("test_images")
def test_a_container_downloads_a_large_object_stored_with_a_checksum(server: SmlocalServer) -> None:
    from tests.support.docker_env import TOOLKIT_IMAGE

    s3, sm = server.client("s3"), server.client()
    s3.create_bucket(Bucket="ranged")
    body = os.urandom(9 * 2**20)  # over boto3's 8 MiB multipart threshold: downloaded in ranged parts
    s3.put_object(Bucket="ranged", Key="big.bin", Body=body, ChecksumAlgorithm="CRC32")
    s3.put_object(Bucket="ranged", Key="code/check.py", Body=CHECK_DOWNLOAD.encode())
    code = {"ChannelName": "code", "DataSource": {"S3DataSource": {
        "S3DataType": "S3Prefix", "S3Uri": "s3://ranged/code/", "S3DataDistributionType": "FullyReplicated"}}}

    def job(name: str, **environment: str) -> dict[str, Any]:
        request = job_request(name, TOOLKIT_IMAGE, OutputDataConfig={"S3OutputPath": "s3://ranged/out"},
                              InputDataConfig=[code], Environment={"BUCKET": "ranged", "KEY": "big.bin", **environment})
        request["AlgorithmSpecification"]["ContainerEntrypoint"] = [
            "/opt/sagemaker-training/bin/python3", "/opt/ml/input/data/code/check.py"]
        sm.create_training_job(**request)
        return wait_for_status(sm, name, FINAL, timeout=120)

    done = job("ranged-get")
    assert done["TrainingJobStatus"] == "Completed", done.get("FailureReason")
    model = s3.get_object(Bucket="ranged", Key="out/ranged-get/output/model.tar.gz")["Body"].read()
    assert _tar_files(model)["sha256"].decode() == hashlib.sha256(body).hexdigest()
    # What the setting prevents: the same download with boto3's default check fails on this store.
    strict = job("ranged-get-strict", AWS_RESPONSE_CHECKSUM_VALIDATION="when_supported")
    assert strict["TrainingJobStatus"] == "Failed"
    assert "FlexibleChecksumError" in strict["FailureReason"]
