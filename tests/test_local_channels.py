"""`file:///...` channels: only under the folders the operator names (`--local-channel-root`).

Refused at CreateTrainingJob when the path (links resolved) is outside every root; checked again when the
runner stages the data, where a link inside the folder that leads out fails the job.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
import threading
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from runner.inputs.errors import DataDownloadError
from runner.inputs.file_staging import stage_channels
from runner.layout import HostLayout, prepare
from smlocal.core.jobspec import JobSpec
from smlocal.core.local_channels import LocalChannelRoots
from tests.support.awscli import AWS
from tests.support.jobs import job_request, wait_for_status, wait_recording


def channel(uri: str, name: str = "train") -> dict[str, Any]:
    return {"ChannelName": name, "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": uri}}}


def refused(sm: Any, name: str, uri: str) -> str:
    """The ValidationException message for a job with this channel; the job must not exist afterwards."""
    with pytest.raises(ClientError) as info:
        sm.create_training_job(**job_request(name, InputDataConfig=[channel(uri)]))
    assert info.value.response["Error"]["Code"] == "ValidationException"
    with pytest.raises(ClientError):
        sm.describe_training_job(TrainingJobName=name)
    return info.value.response["Error"]["Message"]


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a secret that no channel may reach."""
    folder = tmp_path_factory.mktemp("outside")
    (folder / "secret.txt").write_text("host only")
    return folder


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, outside: Path) -> Path:
    folder = tmp_path_factory.mktemp("root")
    (folder / "data").mkdir()
    (folder / "data" / "a.csv").write_text("1,2\n")
    (folder / "link-out").symlink_to(outside)
    (folder / "link-in").symlink_to(folder / "data")
    return folder


@pytest.fixture(scope="module")
def rooted(module_smlocal_factory: Any, root: Path) -> Any:
    return module_smlocal_factory("--no-run-jobs", "--local-channel-root", str(root))


# ---- CreateTrainingJob --------------------------------------------------------------------------------


def test_file_channels_are_off_without_a_root(sm, unique_name, root):
    message = refused(sm, unique_name(), f"file://{root}/data")
    assert message == (f"Invalid S3Uri file://{root}/data in channel 'train': file:// channels are disabled on "
                       "this server; smlocal must be started with --local-channel-root DIR to allow folders under "
                       "DIR.")


def test_aws_cli_gets_a_clear_error(api_server, unique_name):
    cmd = [*AWS.split(), "--endpoint-url", api_server.endpoint, "sagemaker", "create-training-job",
           "--training-job-name", unique_name(), "--role-arn", "arn:aws:iam::123456789012:role/SageMakerRole",
           "--algorithm-specification", "TrainingImage=smlocal-test/busybox:1,TrainingInputMode=File",
           "--input-data-config", json.dumps([channel("file:///etc")]),
           "--output-data-config", "S3OutputPath=s3://models/out",
           "--resource-config", "InstanceType=ml.m5.large,InstanceCount=1,VolumeSizeInGB=5",
           "--stopping-condition", "MaxRuntimeInSeconds=300"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=api_server.cli_env(), timeout=120)
    assert result.returncode != 0
    assert ("An error occurred (ValidationException) when calling the CreateTrainingJob operation: Invalid S3Uri "
            "file:///etc in channel 'train': file:// channels are disabled on this server; smlocal must be started "
            "with --local-channel-root DIR to allow folders under DIR.") in result.stderr


def test_paths_under_the_root_are_accepted(rooted, unique_name, root):
    sm = rooted.client()
    for uri in (f"file://{root}/data", f"file://{root}/data/a.csv", f"file://{root}/link-in",
                f"file://{root}/not-yet-there"):
        name = unique_name()
        sm.create_training_job(**job_request(name, InputDataConfig=[channel(uri)]))
        assert sm.describe_training_job(TrainingJobName=name)["InputDataConfig"][0] == channel(uri)


def test_paths_outside_the_root_are_refused(rooted, unique_name, root, outside):
    sm = rooted.client()
    assert refused(sm, unique_name(), "file:///etc") == (
        f"Invalid S3Uri file:///etc in channel 'train': /etc is not under an allowed local channel root "
        f"(--local-channel-root: {root}).")
    # Spelled under the root, but `..` climbs out.
    message = refused(sm, unique_name(), f"file://{root}/data/../../{outside.name}")
    assert "is not under an allowed local channel root (--local-channel-root:" in message
    # Percent-escapes are decoded before the check, as the runner decodes them.
    assert "is not under an allowed local channel root" in refused(sm, unique_name(), "file:///%65tc")


def test_links_out_of_the_root_are_refused(rooted, unique_name, root):
    sm = rooted.client()
    for uri in (f"file://{root}/link-out", f"file://{root}/link-out/secret.txt"):
        message = refused(sm, unique_name(), uri)
        assert message.endswith("leads out of the allowed local channel roots through a symbolic link."), message


def test_the_data_dir_is_never_a_channel(smlocal_factory, unique_name, tmp_path):
    # Even when the operator's root holds it: it has other jobs' data and the database.
    data_dir = tmp_path / "state"
    server = smlocal_factory("--no-run-jobs", "--local-channel-root", str(tmp_path), data_dir=data_dir)
    sm = server.client()
    assert refused(sm, unique_name(), f"file://{data_dir}/smlocal.db").endswith(
        "is inside smlocal's data dir, which is never a channel.")
    assert refused(sm, unique_name(), f"file://{tmp_path}").endswith(
        "contains smlocal's data dir, which is never a channel.")


# ---- staging (in-process): checked again, links followed only inside the roots -----------------------


def _stage(tmp_path: Path, uri: str, roots: LocalChannelRoots | None, hosts: int = 1,
           distribution: str = "FullyReplicated") -> list[Path]:
    source = channel(uri)
    source["DataSource"]["S3DataSource"]["S3DataDistributionType"] = distribution
    request = {"InputDataConfig": [source], "ResourceConfig": {"InstanceCount": hosts}}
    layouts = [HostLayout(tmp_path / "job", f"algo-{i}") for i in range(1, hosts + 1)]
    spec = JobSpec.from_request(request)
    for layout in layouts:
        prepare(layout, spec)

    def no_s3() -> Any:
        raise AssertionError("a local channel needs no S3 client")

    stage_channels(spec, layouts, no_s3, lambda: False, roots)
    return [layout.channel_dir("train") for layout in layouts]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    """<tmp>/root/src with files, a link to a file and a folder inside the root, and <tmp>/outside."""
    root = tmp_path / "root"
    (root / "src" / "sub").mkdir(parents=True)
    (root / "src" / "a.csv").write_text("a")
    (root / "src" / "sub" / "b.csv").write_text("b")
    (root / "elsewhere").mkdir()
    (root / "elsewhere" / "c.csv").write_text("c")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("host only")
    return root


def test_links_inside_the_root_are_followed(tmp_path, tree):
    (tree / "src" / "c-link.csv").symlink_to(tree / "elsewhere" / "c.csv")
    (tree / "src" / "more").symlink_to(tree / "elsewhere")
    (tree / "src" / "sub" / "loop").symlink_to(tree / "src")  # a loop must not hang
    [folder] = _stage(tmp_path, f"file://{tree}/src", LocalChannelRoots.of([tree]))
    assert _files(folder) == {"a.csv": b"a", "sub/b.csv": b"b", "c-link.csv": b"c", "more/c.csv": b"c"}


@pytest.mark.parametrize("link_to", ["outside/secret.txt", "outside"])
def test_a_link_inside_the_folder_that_leads_out_fails_staging(tmp_path, tree, link_to):
    (tree / "src" / "sub" / "leak").symlink_to(tmp_path / link_to)
    with pytest.raises(DataDownloadError) as err:
        _stage(tmp_path, f"file://{tree}/src", LocalChannelRoots.of([tree]))
    assert err.value.reason == (f'ClientError: Data download failed: "{tree}/src/sub/leak" is a symbolic link that '
                                "leads out of the allowed local channel roots (--local-channel-root).")
    assert not any(p.name == "secret.txt" for p in (tmp_path / "job").rglob("*"))


def test_a_folder_swapped_for_a_link_after_create_fails_staging(tmp_path, tree):
    # Accepted at CreateTrainingJob; by staging time the folder has become a link out of the root.
    roots = LocalChannelRoots.of([tree])
    assert roots.refusal(tree / "src") is None
    (tree / "src").rename(tree / "src-before")
    (tree / "src").symlink_to(tmp_path / "outside")
    with pytest.raises(DataDownloadError) as err:
        _stage(tmp_path, f"file://{tree}/src", roots)
    assert err.value.reason == (f"ClientError: Data download failed: {tree}/src leads out of the allowed local "
                                "channel roots through a symbolic link.")


def test_no_roots_no_local_channels(tmp_path, tree):
    with pytest.raises(DataDownloadError, match="file:// channels are disabled on this server"):
        _stage(tmp_path, f"file://{tree}/src", None)


def test_fifos_in_the_folder_are_skipped_not_read(tmp_path, tree):
    os.mkfifo(tree / "src" / "pipe")
    done = threading.Event()
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["folders"] = _stage(tmp_path, f"file://{tree}/src", LocalChannelRoots.of([tree]))
        finally:
            done.set()

    threading.Thread(target=run, daemon=True).start()
    if not done.wait(30):
        # Unblock the reader so the thread can end, then fail.
        with open(tree / "src" / "pipe", "wb"):
            pass
        pytest.fail("staging blocked on a FIFO")
    assert _files(result["folders"][0]) == {"a.csv": b"a", "sub/b.csv": b"b"}


def test_sharded_local_folder_with_a_link_inside_the_root(tmp_path, tree):
    (tree / "src" / "z-link.csv").symlink_to(tree / "elsewhere" / "c.csv")
    folders = _stage(tmp_path, f"file://{tree}/src", LocalChannelRoots.of([tree]), hosts=2,
                     distribution="ShardedByS3Key")
    assert [_files(f) for f in folders] == [{"a.csv": b"a", "z-link.csv": b"c"}, {"sub/b.csv": b"b"}]


# ---- real jobs -----------------------------------------------------------------------------------------


@pytest.mark.usefixtures("test_images")
def test_file_uri_channel_is_staged(smlocal_factory, tmp_path):
    source = tmp_path / "dataset"
    (source / "nested").mkdir(parents=True)
    (source / "a.csv").write_text("1,2\n")
    (source / "nested" / "b.csv").write_text("3,4\n")
    server = smlocal_factory("--stop-grace-seconds", "2", "--local-channel-root", str(tmp_path))
    s3 = server.client("s3")
    s3.create_bucket(Bucket="local-channel-out")
    request = job_request(
        "local-channel-job", OutputDataConfig={"S3OutputPath": "s3://local-channel-out/models"},
        InputDataConfig=[channel(f"file://{source}")])
    request["AlgorithmSpecification"]["ContainerEntrypoint"] = [
        "sh", "-c", "cd /opt/ml/input/data/train && find . -type f | sort > /opt/ml/model/files.txt "
                    "&& cat a.csv nested/b.csv > /opt/ml/model/joined.csv"]
    sm = server.client()
    sm.create_training_job(**request)
    job, seen = wait_recording(sm, "local-channel-job", {"Completed", "Failed", "Stopped"}, timeout=180)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    assert "InProgress/Training" in seen and seen[-1] == "Completed/Completed"
    body = s3.get_object(Bucket="local-channel-out", Key="models/local-channel-job/output/model.tar.gz")["Body"]
    with tarfile.open(fileobj=io.BytesIO(body.read())) as tar:
        files = {m.name.removeprefix("./"): tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    assert files == {"files.txt": b"./a.csv\n./nested/b.csv\n", "joined.csv": b"1,2\n3,4\n"}


@pytest.mark.usefixtures("test_images")
def test_missing_local_folder_fails_the_job(smlocal_factory, tmp_path):
    server = smlocal_factory("--stop-grace-seconds", "2", "--local-channel-root", str(tmp_path))
    sm = server.client()
    sm.create_training_job(**job_request("local-missing", InputDataConfig=[channel(f"file://{tmp_path}/absent")]))
    job = wait_for_status(sm, "local-missing", {"Completed", "Failed", "Stopped"})
    assert job["TrainingJobStatus"] == "Failed"
    assert job["FailureReason"] == f'ClientError: Data download failed: local path "{tmp_path}/absent" does not exist.'


@pytest.mark.usefixtures("test_images")
def test_a_link_out_of_the_root_fails_a_real_job_before_training(smlocal_factory, tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "data").mkdir(parents=True)
    (root / "data" / "a.csv").write_text("a")
    outside.mkdir()
    (outside / "secret.txt").write_text("host only")
    (root / "data" / "leak.txt").symlink_to(outside / "secret.txt")
    server = smlocal_factory("--stop-grace-seconds", "2", "--local-channel-root", str(root))
    s3 = server.client("s3")
    s3.create_bucket(Bucket="local-leak-out")
    request = job_request("local-leak", OutputDataConfig={"S3OutputPath": "s3://local-leak-out/models"},
                          InputDataConfig=[channel(f"file://{root}/data")])
    request["AlgorithmSpecification"]["ContainerEntrypoint"] = ["sh", "-c", "cp -r /opt/ml/input/data /opt/ml/model/"]
    sm = server.client()
    sm.create_training_job(**request)
    job, seen = wait_recording(sm, "local-leak", {"Completed", "Failed", "Stopped"}, timeout=180)
    assert job["FailureReason"] == (f'ClientError: Data download failed: "{root}/data/leak.txt" is a symbolic link '
                                    "that leads out of the allowed local channel roots (--local-channel-root).")
    # It failed while downloading (a poll may miss so short a phase; the transitions do not), never trained.
    assert seen[-1] == "Failed/Failed" and "InProgress/Training" not in seen
    assert [t["Status"] for t in job["SecondaryStatusTransitions"]] == ["Starting", "Downloading", "Failed"]
    listed = s3.list_objects_v2(Bucket="local-leak-out").get("Contents", [])
    for obj in listed:
        body = s3.get_object(Bucket="local-leak-out", Key=obj["Key"])["Body"].read()
        assert b"host only" not in body
