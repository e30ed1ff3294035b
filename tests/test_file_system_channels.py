"""FileSystemDataSource (EFS, FSx for Lustre): a folder of this machine stands for the file system
(`serve --file-system FS_ID=DIR`), and a channel is the folder its DirectoryPath names there, mounted at
/opt/ml/input/data/<channel> read-only or read-write as FileSystemAccessMode says.

End to end against a real `smlocal serve` and real containers: what a job reads and writes through the mount;
an unmapped id, a DirectoryPath leading out of the folder and a bad flag refused before anything runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import pytest

from smlocal.core.file_systems import FileSystemRefused, FileSystems, directory_parts
from tests.support.runner_jobs import build_test_images, leftovers, model_files, run_job, s3_client, sh_job, wait_until
from tests.support.smlocal import SmlocalServer

EFS_ID = "fs-0123456789abcdef0"
FSX_ID = "fs-00aa11bb"
UNMAPPED_ID = "fs-0fedcba987654321"

# Reads the channel, then tries to write into it; says what happened in the model.
SCRIPT = ("cd /opt/ml/input/data/shared && mkdir -p /opt/ml/model/out && cat rows.csv > /opt/ml/model/out/read && "
          "if { echo written > from-job.txt; } 2>/opt/ml/model/out/error; then echo wrote; else echo refused; fi "
          "> /opt/ml/model/out/write")


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    efs = tmp_path_factory.mktemp("efs")
    (efs / "datasets" / "train").mkdir(parents=True)
    (efs / "datasets" / "train" / "rows.csv").write_text("efs rows\n")
    (efs / "scratch").mkdir()
    (efs / "scratch" / "rows.csv").write_text("scratch rows\n")
    (efs / "outside").symlink_to("/etc")  # a link leading out of the file system
    fsx = tmp_path_factory.mktemp("fsx")
    (fsx / "imagenet").mkdir()
    (fsx / "imagenet" / "rows.csv").write_text("fsx rows\n")
    for folder in (efs, fsx):  # any container user may read (and, for rw, write) as on a shared file system
        for path in [folder, *folder.rglob("*")]:
            if not path.is_symlink():
                path.chmod(0o777 if path.is_dir() else 0o666)
    return {"efs": efs, "fsx": fsx}


@pytest.fixture(scope="module")
def server(module_smlocal_factory: Callable[..., SmlocalServer], docker_engine: docker.DockerClient,
           folders: dict[str, Path]) -> SmlocalServer:
    build_test_images(docker_engine)
    return module_smlocal_factory("--stop-grace-seconds", "1.5", "--file-system", f"{EFS_ID}={folders['efs']}",
                                  "--file-system", f"{FSX_ID}={folders['fsx']}")


def fs_channel(fs_id: str, fs_type: str, path: str, mode: str = "ro") -> dict[str, Any]:
    return {"ChannelName": "shared", "DataSource": {"FileSystemDataSource": {
        "FileSystemId": fs_id, "FileSystemType": fs_type, "DirectoryPath": path, "FileSystemAccessMode": mode}}}


def outcome(s3: Any, name: str) -> dict[str, str]:
    return {k.removeprefix("out/"): v.decode() for k, v in model_files(s3, name).items()}


def test_a_read_only_channel_is_read_from_the_folder_and_a_write_fails_inside_the_container(
        server: SmlocalServer, folders: dict[str, Path], unique_name: Callable[[str], str],
        docker_engine: docker.DockerClient) -> None:
    sm, s3 = server.client(), s3_client(server)
    name = unique_name("efs-ro")
    job = run_job(sm, sh_job(name, SCRIPT, InputDataConfig=[fs_channel(EFS_ID, "EFS", "/datasets/train")]))
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    assert job["InputDataConfig"][0]["DataSource"]["FileSystemDataSource"]["FileSystemId"] == EFS_ID  # echoed
    result = outcome(s3, name)
    assert (result["read"], result["write"]) == ("efs rows\n", "refused\n")
    assert "Read-only file system" in result["error"], result["error"]
    assert not (folders["efs"] / "datasets" / "train" / "from-job.txt").exists()
    assert wait_until(lambda: leftovers(docker_engine, server, name) == [], 30, "cleanup")


def test_a_read_write_channel_writes_into_the_folder(
        server: SmlocalServer, folders: dict[str, Path], unique_name: Callable[[str], str]) -> None:
    sm, s3 = server.client(), s3_client(server)
    name = unique_name("efs-rw")
    job = run_job(sm, sh_job(name, SCRIPT, InputDataConfig=[fs_channel(EFS_ID, "EFS", "scratch", "rw")]))
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    result = outcome(s3, name)
    assert (result["read"], result["write"]) == ("scratch rows\n", "wrote\n")
    assert (folders["efs"] / "scratch" / "from-job.txt").read_text() == "written\n"


def test_an_fsx_lustre_directory_path_starts_with_the_mount_name(
        server: SmlocalServer, unique_name: Callable[[str], str]) -> None:
    sm, s3 = server.client(), s3_client(server)
    name = unique_name("fsx")
    job = run_job(sm, sh_job(name, SCRIPT, InputDataConfig=[fs_channel(FSX_ID, "FSxLustre", "/abcdef12/imagenet")]))
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    assert outcome(s3, name)["read"] == "fsx rows\n"


@pytest.mark.parametrize(("channel", "reason"), [
    (fs_channel(UNMAPPED_ID, "EFS", "/"),
     f"file system {UNMAPPED_ID} is not mapped to a folder on this server (mapped: {FSX_ID}, {EFS_ID}); start "
     f"smlocal with --file-system {UNMAPPED_ID}=DIR"),
    (fs_channel(EFS_ID, "EFS", "/outside/ssl"),
     f"DirectoryPath '/outside/ssl' leads out of file system {EFS_ID} through a symbolic link"),
    (fs_channel(EFS_ID, "EFS", "/datasets/../../x"), "DirectoryPath '/datasets/../../x' climbs out of the file system "
                                                     "with '..'"),
    (fs_channel(FSX_ID, "FSxLustre", "/"), "DirectoryPath '/' of an FSx for Lustre file system must start with its "
                                           "mount name (/<MountName>/<path>)"),
])
def test_a_channel_smlocal_cannot_serve_is_refused_at_create(
        server: SmlocalServer, unique_name: Callable[[str], str], channel: dict[str, Any], reason: str) -> None:
    sm = server.client()
    name = unique_name("fs-refused")
    with pytest.raises(sm.exceptions.ClientError) as raised:
        sm.create_training_job(**sh_job(name, "true", InputDataConfig=[channel]))
    assert raised.value.response["Error"] == {
        "Code": "ValidationException", "Message": f"Invalid FileSystemDataSource in channel 'shared': {reason}."}
    with pytest.raises(sm.exceptions.ClientError):
        sm.describe_training_job(TrainingJobName=name)


def test_a_directory_path_that_is_no_folder_fails_the_job_as_the_users_error(
        server: SmlocalServer, unique_name: Callable[[str], str]) -> None:
    # Accepted at create (SageMaker cannot look into the file system then either), found out before it runs.
    sm = server.client()
    name = unique_name("fs-file")
    job = run_job(sm, sh_job(name, "true", InputDataConfig=[fs_channel(EFS_ID, "EFS", "/datasets/train/rows.csv")]))
    assert (job["TrainingJobStatus"], job["FailureReason"]) == (
        "Failed", "ClientError: channel 'shared': DirectoryPath '/datasets/train/rows.csv' is not a directory of "
                  f"file system {EFS_ID}.")


def test_the_flag_is_checked_when_the_server_starts(tmp_path: Path, folders: dict[str, Path]) -> None:
    data_dir = tmp_path / "data"
    for value, error in ((f"{EFS_ID}", "is not FS_ID=DIR"), (f"efs-1={folders['efs']}", "is not a file system id"),
                         (f"{EFS_ID}={tmp_path / 'missing'}", "is not a folder"),
                         (f"{EFS_ID}={tmp_path}", "overlaps smlocal's data dir")):
        # The env var, as the other flags: SMLOCAL_FILE_SYSTEM.
        env = {**os.environ, "SMLOCAL_FILE_SYSTEM": value, "COLUMNS": "250"}
        done = subprocess.run([sys.executable, "-m", "server.cli", "serve", "--no-run-jobs", "--data-dir",
                               str(data_dir), "--port", "1"], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, (value, done.stdout, done.stderr)
        assert "--file-system" in done.stderr and error in " ".join(done.stderr.split()), (value, done.stderr)


def test_directory_paths_are_read_per_file_system_type(tmp_path: Path) -> None:
    assert directory_parts("EFS", "/a/b") == ("a", "b") == directory_parts("EFS", "a/b/")
    assert directory_parts("EFS", "") == () == directory_parts("EFS", "/")
    assert directory_parts("FSxLustre", "/mnt1/a/b") == ("a", "b")
    assert directory_parts("FSxLustre", "/mnt1") == ()
    (tmp_path / "fs" / "a").mkdir(parents=True)
    (tmp_path / "fs" / "a" / "up").symlink_to("..")  # a link that stays inside is fine
    systems = FileSystems.of({EFS_ID: tmp_path / "fs"}, tmp_path / "fs" / "a" / "data")
    assert systems.resolve(EFS_ID, "EFS", "/a/up/a") == (tmp_path / "fs" / "a").resolve()
    assert systems.resolve(EFS_ID, "EFS", "/a/../a") == (tmp_path / "fs" / "a").resolve()  # '..' staying inside
    with pytest.raises(FileSystemRefused, match="leads out"):
        systems.resolve(EFS_ID, "EFS", "/a/data/x")  # smlocal's data dir is never a file system
