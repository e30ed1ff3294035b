"""runner.agent: a job host's inputs and outputs moved on its node, by the service image's agent.

The containers run as the Swarm backend's tasks would (tests/support/agent_node.py), with plain `docker run`:
each of a host's folders is a named volume, mounted at its path on the server in the agent's containers and at
its path in the container in the "algorithm's" (busybox). The job root is a path that does not exist on this
machine: nothing the agent does goes through the test machine's disk, only through the volumes and S3. The
unpacking of parts and the sharding of a host's channel are also checked in-process, where every refused
member can be looked for on disk.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from runner.agent import Agent, agent_environment, parts_location, run_command
from runner.agent_protocol import (
    AGENT_ENTRYPOINT,
    ENV_VAR,
    AgentJob,
    Event,
    Exit,
    S3Access,
    agent_command,
    parse_events,
)
from runner.artifact_parts import PartRefused, pack_part, unpack_part
from smlocal.core.jobspec import JobSpec
from tests.support.agent_node import AgentNode, job_record
from tests.support.docker_env import BUSYBOX_IMAGE
from tests.support.s3server import S3Server

BUCKET = "smlocal-test-agent"
OUTPUT = f"s3://{BUCKET}/output"
# The server's path of the job's folder: it does not exist here, and needs not.
SERVER_JOBS = "/srv/smlocal-data/jobs"


def request(name: str, *, hosts: int = 1, channels: list[dict[str, Any]] | None = None,
            **extra: Any) -> dict[str, Any]:
    return {"TrainingJobName": name, "RoleArn": "arn:aws:iam::123456789012:role/agent-test",
            "AlgorithmSpecification": {"TrainingImage": BUSYBOX_IMAGE, "TrainingInputMode": "File"},
            "ResourceConfig": {"InstanceCount": hosts, "InstanceType": "ml.m5.large", "VolumeSizeInGB": 1},
            "InputDataConfig": channels or [],
            "OutputDataConfig": {"S3OutputPath": OUTPUT},
            "StoppingCondition": {"MaxRuntimeInSeconds": 600}, **extra}


def channel(name: str, uri: str, **extra: Any) -> dict[str, Any]:
    source = {"S3DataType": "S3Prefix", "S3Uri": uri, "S3DataDistributionType": extra.pop("distribution",
                                                                                          "FullyReplicated")}
    return {"ChannelName": name, "DataSource": {"S3DataSource": source}, **extra}


def job_root(name: str) -> str:
    return f"{SERVER_JOBS}/{name}.us-east-1.123456789012.1700000000000"


def tar_members(s3: Any, key: str) -> dict[str, tarfile.TarInfo | bytes]:
    """name -> content of a file, or its TarInfo for anything else."""
    body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    found: dict[str, tarfile.TarInfo | bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
        for member in tar:
            f = tar.extractfile(member) if member.isreg() else None
            found[member.name] = f.read() if f is not None else member
    return found


def keys(s3: Any, prefix: str) -> set[str]:
    return {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])}


def wait_until(predicate: Any, timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture()
def s3(s3_server: S3Server) -> Any:
    return s3_server.client_with_bucket(BUCKET)


@pytest.fixture()
def name() -> str:
    return f"agent-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def node(test_images: docker.DockerClient, service_image: str, s3_server: S3Server) -> Iterator[AgentNode]:
    made = AgentNode(test_images, service_image, S3Access(s3_server.endpoint, "test", "test", "us-east-1"))
    yield made
    assert made.remove_all() == []
    selector = {"label": [f"{k}={v}" for k, v in made.labels.items()]}
    assert test_images.containers.list(all=True, filters=selector) == []
    assert test_images.volumes.list(filters=selector) == []


# ---- the contract --------------------------------------------------------------------------------------


def test_the_environment_carries_the_job_and_reads_back_as_sent() -> None:
    record = job_record(request("contract", hosts=2), "contract")
    s3 = S3Access("http://10.0.0.1:9000", "key", "secret", "eu-west-1")
    env = agent_environment(record, "algo-2", job_root("contract"), s3, ["algo-1"], run="3", always_model=True)
    assert list(env) == [ENV_VAR]
    config = AgentJob.from_json(env[ENV_VAR])
    assert config == AgentJob(job={"name": "contract", "arn": record.arn, "account_id": "123456789012",
                                   "region": "us-east-1", "creation_time": 1_700_000_000.0,
                                   "request": record.request},
                              host="algo-2", job_root=job_root("contract"), s3=s3, peers=("algo-1",), run="3",
                              always_model=True)
    # What JobSpec.from_job makes of the record, the agent makes of the environment.
    assert Agent(config, threading.Event()).spec == JobSpec.from_job(record)
    assert AGENT_ENTRYPOINT == ("python", "-m", "runner.agent")
    assert agent_command("upload", always_model=True) == ["upload", "--always-model"]
    assert agent_command("stage", always_model=True) == ["stage"]


def test_events_are_found_in_a_log_whatever_surrounds_them() -> None:
    log = ['2026-01-01T00:00:00Z agent.1.x@node-2 | {"event":"staged","notices":[]}',
           b'{"event": "uploaded", "model": "s3://b/k"}\n',
           "INFO smlocal.runner: {not json",
           '{"event": "no-such-event"}',
           '["event", "staged"]',
           "plain text"]
    assert parse_events(log) == [{"event": "staged", "notices": []}, {"event": "uploaded", "model": "s3://b/k"}]


# ---- stage and sidecar ------------------------------------------------------------------------------------


def test_stage_downloads_file_channels_and_the_sidecar_feeds_a_pipe_to_the_algorithm(
        node: AgentNode, s3: Any, name: str) -> None:
    files = {"a.csv": b"1,2\n", "b.csv": b"3,4\n", "sub/c.csv": b"5,6\n"}
    for rel, body in files.items():
        s3.put_object(Bucket=BUCKET, Key=f"{name}/file/{rel}", Body=body)
    records = [os.urandom(300_000), b"second object\n"]
    for index, body in enumerate(records):
        s3.put_object(Bucket=BUCKET, Key=f"{name}/pipe/part-{index}", Body=body)
    s3.put_object(Bucket=BUCKET, Key=f"{name}/fast/x.txt", Body=b"fast\n")
    record = job_record(request(name, channels=[
        channel("train", f"s3://{BUCKET}/{name}/file/"),
        channel("stream", f"s3://{BUCKET}/{name}/pipe/", InputMode="Pipe"),
        channel("quick", f"s3://{BUCKET}/{name}/fast/", InputMode="FastFile"),
    ], HyperParameters={"epochs": "3"}), name)
    root = job_root(name)

    stage = node.agent(record, "algo-1", root, "stage")
    assert stage.exit_code == Exit.OK, stage.describe()
    events = stage.events()
    assert [e["event"] for e in events] == [Event.STAGING, Event.STAGED]
    # FastFile cannot be mounted for another container from the agent's task: downloaded, and said so.
    [notice] = events[-1]["notices"]
    assert notice.startswith("FastFile channel 'quick' is downloaded as in File mode: ")

    code, out = node.algorithm(record, "algo-1", root, "cd /opt/ml/input && find . -type f -o -type p | sort && "
                               "cat data/train/a.csv data/train/b.csv data/train/sub/c.csv data/quick/x.txt && "
                               "cat config/hyperparameters.json config/resourceconfig.json")
    assert code == 0, out
    listing, _, rest = out.partition("1,2\n")
    assert listing.split() == ["./config/hyperparameters.json", "./config/inputdataconfig.json",
                               "./config/resourceconfig.json", "./data/quick/x.txt", "./data/stream_0",
                               "./data/train/a.csv", "./data/train/b.csv", "./data/train/sub/c.csv"]
    assert rest.startswith("3,4\n5,6\nfast\n")
    assert '"epochs": "3"' in rest and '"current_host": "algo-1"' in rest

    sidecar = node.agent(record, "algo-1", root, "sidecar", wait=False)
    sidecar.wait_for_event(Event.SIDECAR_READY)
    # The algorithm reads the FIFO from its own container: two epochs, each the objects in key order.
    code, out = node.algorithm(record, "algo-1", root, "cat /opt/ml/input/data/stream_0 | md5sum && "
                               "cat /opt/ml/input/data/stream_1 | md5sum")
    assert code == 0, out
    digest = hashlib.md5(b"".join(records)).hexdigest()
    assert [line.split()[0] for line in out.splitlines()] == [digest, digest]

    sidecar.container.kill(signal="SIGTERM")
    assert sidecar.wait() == Exit.OK, sidecar.describe()
    assert [e["event"] for e in sidecar.events()] == [Event.SIDECAR_READY, Event.SYNCED]


def test_a_missing_prefix_fails_staging_with_sagemakers_client_error(node: AgentNode, s3: Any, name: str) -> None:
    uri = f"s3://{BUCKET}/{name}/missing/"
    record = job_record(request(name, channels=[channel("train", uri)]), name)
    stage = node.agent(record, "algo-1", job_root(name), "stage")
    assert stage.exit_code == Exit.CLIENT_ERROR, stage.describe()
    [failed] = stage.named(Event.FAILED)
    assert failed["reason"] == (
        f'ClientError: Data download failed: No S3 objects found under S3 URL "{uri}" given in input data source. '
        "Please ensure that the bucket exists in the selected region (us-east-1), that objects exist under that "
        'S3 prefix, and that the role "arn:aws:iam::123456789012:role/agent-test" has "s3:ListBucket" '
        f'permissions on bucket "{BUCKET}".')
    assert stage.named(Event.STAGED) == []


@pytest.mark.parametrize("staging_volume", [True, False], ids=["state-kept-from-stage", "seeded-by-sidecar"])
def test_checkpoints_are_restored_at_staging_and_synced_while_and_after_the_algorithm_runs(
        node: AgentNode, s3: Any, name: str, staging_volume: bool) -> None:
    prefix = f"{name}/checkpoints"
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}/ckpt-1.pt", Body=b"epoch 1")
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}/old/ckpt-0.pt", Body=b"epoch 0")
    record = job_record(request(name, CheckpointConfig={"S3Uri": f"s3://{BUCKET}/{prefix}"}), name)
    root = job_root(name)

    stage = node.agent(record, "algo-1", root, "stage", staging=staging_volume)
    assert stage.exit_code == Exit.OK, stage.describe()
    code, out = node.algorithm(record, "algo-1", root, "cd /opt/ml/checkpoints && cat ckpt-1.pt old/ckpt-0.pt")
    assert (code, out) == (0, "epoch 1epoch 0")

    sidecar = node.agent(record, "algo-1", root, "sidecar", staging=staging_volume, wait=False)
    sidecar.wait_for_event(Event.SIDECAR_READY)
    # While it runs: a new checkpoint reaches S3, a deleted one leaves it.
    code, out = node.algorithm(record, "algo-1", root,
                               "cd /opt/ml/checkpoints && echo 'epoch 2' > ckpt-2.pt && rm old/ckpt-0.pt")
    assert code == 0, out
    wait_until(lambda: keys(s3, prefix) == {f"{prefix}/ckpt-1.pt", f"{prefix}/ckpt-2.pt"}, 30,
               "the running sync")
    # Written just before the end: the last sync takes it.
    code, out = node.algorithm(record, "algo-1", root, "echo 'epoch 3' > /opt/ml/checkpoints/ckpt-3.pt")
    assert code == 0, out
    sidecar.container.kill(signal="SIGTERM")
    assert sidecar.wait() == Exit.OK, sidecar.describe()
    assert sidecar.named(Event.SYNCED)
    assert keys(s3, prefix) == {f"{prefix}/ckpt-1.pt", f"{prefix}/ckpt-2.pt", f"{prefix}/ckpt-3.pt"}
    assert s3.get_object(Bucket=BUCKET, Key=f"{prefix}/ckpt-3.pt")["Body"].read() == b"epoch 3\n"


# ---- upload --------------------------------------------------------------------------------------------


def test_two_hosts_outputs_merge_into_one_model_tarball_with_algo_1_winning(
        node: AgentNode, s3: Any, name: str) -> None:
    record = job_record(request(name, hosts=2), name)
    root = job_root(name)
    for host in ("algo-1", "algo-2"):
        stage = node.agent(record, host, root, "stage")
        assert stage.exit_code == Exit.OK, stage.describe()
    code, out = node.algorithm(record, "algo-1", root, "cd /opt/ml && echo one > model/shared.txt && "
                               "echo first > model/only-1.txt && echo o1 > output/data/from-1.txt")
    assert code == 0, out
    code, out = node.algorithm(record, "algo-2", root, "cd /opt/ml && echo two > model/shared.txt && "
                               "echo second > model/only-2.txt && mkdir -p model/sub && echo deep > model/sub/deep.txt"
                               " && ln -s /etc/passwd model/link && mkfifo model/fifo && echo o2 > "
                               "output/data/from-2.txt && printf 'ValueError: bad things' > output/failure")
    assert code == 0, out

    part = node.agent(record, "algo-2", root, "upload", peers=("algo-1",))
    assert part.exit_code == Exit.OK, part.describe()
    events = part.events()
    assert events[0] == {"event": "failure-file", "text": "ValueError: bad things"}
    part_key = f"output/{name}/.smlocal-parts/algo-2.tar"
    assert events[1] == {"event": "part-uploaded", "uri": f"s3://{BUCKET}/{part_key}"}
    assert str(parts_location(JobSpec.from_job(record)).child("algo-2.tar")) == events[1]["uri"]
    assert keys(s3, f"output/{name}/") == {part_key}

    first = node.agent(record, "algo-1", root, "upload", peers=("algo-2",), always_model=True)
    assert first.exit_code == Exit.OK, first.describe()
    assert first.events() == [{"event": "uploaded", "model": f"{OUTPUT}/{name}/output/model.tar.gz", "missing": []}]
    model = tar_members(s3, f"output/{name}/output/model.tar.gz")
    link = model.pop("link")
    assert isinstance(link, tarfile.TarInfo) and link.issym() and link.linkname == "/etc/passwd"
    sub = model.pop("sub")
    assert isinstance(sub, tarfile.TarInfo) and sub.isdir()
    assert model == {"shared.txt": b"one\n", "only-1.txt": b"first\n", "only-2.txt": b"second\n",
                     "sub/deep.txt": b"deep\n"}
    output = tar_members(s3, f"output/{name}/output/output.tar.gz")
    assert output == {"from-1.txt": b"o1\n", "from-2.txt": b"o2\n"}
    assert keys(s3, f"output/{name}/") == {f"output/{name}/output/model.tar.gz",
                                           f"output/{name}/output/output.tar.gz"}


def test_a_missing_part_fails_a_completed_jobs_upload_and_is_left_out_of_a_failed_ones(
        node: AgentNode, s3: Any, name: str) -> None:
    record = job_record(request(name, hosts=2), name)
    root = job_root(name)
    assert node.agent(record, "algo-1", root, "stage").exit_code == Exit.OK
    code, out = node.algorithm(record, "algo-1", root, "echo one > /opt/ml/model/m.txt")
    assert code == 0, out

    completed = node.agent(record, "algo-1", root, "upload", peers=("algo-2",), always_model=True)
    assert completed.exit_code == Exit.INTERNAL_ERROR, completed.describe()
    [failed] = completed.named(Event.FAILED)
    assert failed["reason"].startswith("InternalServerError: PartMissing: the output of algo-2 is not in ")
    assert keys(s3, f"output/{name}/") == set()

    failed_job = node.agent(record, "algo-1", root, "upload", peers=("algo-2",))
    assert failed_job.exit_code == Exit.OK, failed_job.describe()
    assert failed_job.named(Event.UPLOADED) == [
        {"event": "uploaded", "model": f"{OUTPUT}/{name}/output/model.tar.gz", "missing": ["algo-2"]}]
    assert tar_members(s3, f"output/{name}/output/model.tar.gz") == {"m.txt": b"one\n"}


def _part(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info, body in members:
            if body is not None:
                info.size = len(body)
            tar.addfile(info, io.BytesIO(body) if body is not None else None)
    return buffer.getvalue()


def _file(name: str, body: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), body


def _special(name: str, kind: bytes, target: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


# Each one a part that must be refused, with what it tries; `escaped` is where it would write.
HOSTILE_PARTS = {
    "dotdot": [_file("model/ok.txt"), _file("../../../../../../../../../../../tmp/{tag}")],
    "dotdot-inside": [_file("model/../../../../../../../../../tmp/{tag}")],
    "absolute": [_file("/tmp/{tag}")],
    "through-a-link": [_special("model/evil", tarfile.SYMTYPE, "/tmp"), _file("model/evil/{tag}")],
    "through-a-link-dir": [_special("model/evil", tarfile.SYMTYPE, "/tmp"), _special("model/evil/{tag}",
                                                                                     tarfile.DIRTYPE)],
    "hard-link": [_special("model/hard", tarfile.LNKTYPE, "/etc/passwd")],
    "device": [_special("model/dev", tarfile.CHRTYPE)],
    "fifo": [_special("model/fifo", tarfile.FIFOTYPE)],
    "outside-the-folders": [_file("input/config/{tag}")],
    "the-failure-file": [_file("output/failure")],
    "twice": [_file("model/a"), _file("model/a")],
}


def _hostile(kind: str, tag: str) -> bytes:
    members = []
    for info, body in HOSTILE_PARTS[kind]:
        copy = tarfile.TarInfo(info.name.replace("{tag}", tag))
        copy.type, copy.linkname = info.type, info.linkname
        members.append((copy, body))
    return _part(members)


@pytest.mark.parametrize("kind", sorted(HOSTILE_PARTS))
def test_a_hostile_part_is_refused_and_writes_nothing_outside(tmp_path: Path, kind: str) -> None:
    tag = f"escaped-{uuid.uuid4().hex[:8]}"
    part = tmp_path / "part.tar"
    part.write_bytes(_hostile(kind, tag))
    with pytest.raises(PartRefused):
        unpack_part(part, tmp_path / "dest" / "opt" / "ml")
    assert not (Path("/tmp") / tag).exists() and not os.path.lexists(Path("/tmp") / tag)
    outside = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")
               if not p.relative_to(tmp_path).as_posix().startswith("dest")}
    assert outside == {"part.tar"}
    assert not any(tag in str(p) for p in (tmp_path / "dest").rglob("*"))


def test_a_part_keeps_links_as_links_and_skips_fifos(tmp_path: Path) -> None:
    opt_ml = tmp_path / "tree" / "opt" / "ml"
    (opt_ml / "model" / "sub").mkdir(parents=True)
    (opt_ml / "output" / "data").mkdir(parents=True)
    (opt_ml / "model" / "sub" / "w.bin").write_bytes(b"weights")
    (opt_ml / "model" / "run.sh").write_bytes(b"#!/bin/sh\n")
    os.chmod(opt_ml / "model" / "run.sh", 0o755)
    os.symlink("/etc/shadow", opt_ml / "model" / "secret")
    os.mkfifo(opt_ml / "model" / "fifo")
    (opt_ml / "output" / "data" / "d.txt").write_bytes(b"data")
    (opt_ml / "output" / "failure").write_bytes(b"not in a part")
    part = tmp_path / "part.tar"
    pack_part(opt_ml, part)
    dest = tmp_path / "back" / "opt" / "ml"
    unpack_part(part, dest)
    found = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*"))
    assert found == ["model", "model/run.sh", "model/secret", "model/sub", "model/sub/w.bin", "output",
                     "output/data", "output/data/d.txt"]
    assert os.readlink(dest / "model" / "secret") == "/etc/shadow"
    assert (dest / "model" / "sub" / "w.bin").read_bytes() == b"weights"
    assert os.stat(dest / "model" / "run.sh").st_mode & 0o777 == 0o755


def test_a_hostile_part_in_s3_fails_the_upload_and_nothing_is_written_outside(
        node: AgentNode, s3: Any, name: str) -> None:
    record = job_record(request(name, hosts=2), name)
    root = job_root(name)
    assert node.agent(record, "algo-1", root, "stage").exit_code == Exit.OK
    tag = f"escaped-{uuid.uuid4().hex[:8]}"
    part_key = f"output/{name}/.smlocal-parts/algo-2.tar"
    s3.put_object(Bucket=BUCKET, Key=part_key, Body=_hostile("dotdot", tag))

    upload = node.agent(record, "algo-1", root, "upload", peers=("algo-2",), always_model=True)
    assert upload.exit_code == Exit.CLIENT_ERROR, upload.describe()
    [failed] = upload.named(Event.FAILED)
    assert failed["reason"].startswith("ClientError: Artifact upload failed: the output of algo-2 was refused: ")
    assert f"tmp/{tag}" in failed["reason"]
    with pytest.raises(docker.errors.NotFound):
        upload.container.get_archive(f"/tmp/{tag}")
    assert keys(s3, f"output/{name}/") == set()  # no model, and the part is gone


# ---- in-process: one host of a sharded channel -------------------------------------------------------------


def test_a_host_stages_only_its_own_shard_and_no_other_hosts_tree(
        tmp_path: Path, s3: Any, s3_server: S3Server, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    for index in range(5):
        s3.put_object(Bucket=BUCKET, Key=f"{name}/shards/part-{index}", Body=f"{index}\n".encode())
    record = job_record(request(name, hosts=2, channels=[
        channel("train", f"s3://{BUCKET}/{name}/shards/", distribution="ShardedByS3Key")]), name)
    root = tmp_path / "jobs" / name
    env = agent_environment(record, "algo-2", root, S3Access(s3_server.endpoint, "test", "test"), ["algo-1"])
    Agent(AgentJob.from_json(env[ENV_VAR]), threading.Event()).stage()
    assert [e["event"] for e in parse_events(capsys.readouterr().out.splitlines())] == ["staging", "staged"]
    folder = root / "algo-2" / "opt" / "ml" / "input" / "data" / "train"
    assert sorted(p.name for p in folder.iterdir()) == ["part-1", "part-3"]  # host 2 of 2: objects 1, 3
    assert sorted(p.name for p in root.iterdir()) == ["algo-2", "staging"]
    # Every input mode counts the shards over all the job's hosts, not the one host here.
    for mode in ("Pipe", "FastFile", "File"):
        record = job_record(request(name, hosts=3, channels=[channel(
            "train", f"s3://{BUCKET}/{name}/shards/", distribution="ShardedByS3Key", InputMode=mode)]), name)
        env = agent_environment(record, "algo-2", root, S3Access(s3_server.endpoint, "test", "test"), [])
        [provider] = Agent(AgentJob.from_json(env[ENV_VAR]), threading.Event()).providers()
        assert (provider.host, provider.host_index, provider.host_count) == ("algo-2", 1, 3)



def test_a_file_system_channel_is_left_to_the_backend_and_a_local_channel_fails(
        tmp_path: Path, s3_server: S3Server, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    file_system = {"ChannelName": "fs", "DataSource": {"FileSystemDataSource": {
        "FileSystemId": "fs-0123456789abcdef0", "FileSystemType": "EFS", "FileSystemAccessMode": "ro",
        "DirectoryPath": "/data"}}}
    access = S3Access(s3_server.endpoint, "test", "test")

    def stage(channels: list[dict[str, Any]]) -> tuple[int, list[dict[str, Any]]]:
        record = job_record(request(name, channels=channels), name)
        env = agent_environment(record, "algo-1", tmp_path / uuid.uuid4().hex, access, [])
        code = run_command(Agent(AgentJob.from_json(env[ENV_VAR]), threading.Event()).stage)
        return code, parse_events(capsys.readouterr().out.splitlines())

    # The folder standing for the file system is the backend's to mount: nothing to stage, nothing refused.
    assert stage([file_system]) == (Exit.OK, [{"event": "staging", "notices": []},
                                              {"event": "staged", "notices": []}])
    code, events = stage([channel("local", f"file://{tmp_path}")])
    assert code == Exit.CLIENT_ERROR
    assert events[-1]["event"] == "failed"
    assert events[-1]["reason"].startswith(f"ClientError: channel 'local': file://{tmp_path} names a folder of "
                                           "smlocal's machine, which algo-1 does not run on")
