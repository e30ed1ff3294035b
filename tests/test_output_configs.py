"""TensorBoardOutputConfig and DebugHookConfig: parsing, the synced folders, the config files, the API's rules.

The unit tests need no engine; the API tests talk to the session's `--no-run-jobs` server, so no container runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from runner.layout import HostLayout, container_mounts, prepare
from smlocal.core.jobspec import DebugHookSpec, JobSpec, SyncedFolder, TensorBoardSpec
from tests.support.jobs import job_request


def spec_of(**request: Any) -> JobSpec:
    base = {"ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1},
            "OutputDataConfig": {"S3OutputPath": "s3://b/out"}}
    return JobSpec.from_request({**base, **request}, name="job-1")


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


# ---- JobSpec -----------------------------------------------------------------------------------


def test_neither_config_means_nothing_synced_but_the_checkpoints() -> None:
    spec = spec_of()
    assert spec.tensorboard is None and spec.debug_hook is None
    assert spec.synced_folders() == ()


def test_absent_members_get_sagemakers_defaults() -> None:
    spec = spec_of(TensorBoardOutputConfig={"S3OutputPath": "s3://b/tb"}, DebugHookConfig={"S3OutputPath": "s3://b/d"})
    assert spec.tensorboard == TensorBoardSpec("/opt/ml/output/tensorboard", "s3://b/tb")
    assert spec.debug_hook == DebugHookSpec("/opt/ml/output/tensors", "s3://b/d", {}, ())


def test_the_debug_hook_keeps_its_parameters_and_collections_in_order() -> None:
    spec = spec_of(DebugHookConfig={
        "S3OutputPath": "s3://b/d", "LocalPath": "/opt/ml/output/hook/",
        "HookParameters": {"save_interval": "10", "include_workers": "all"},
        "CollectionConfigurations": [{"CollectionName": "weights"},
                                     {"CollectionName": "losses", "CollectionParameters": {"save_interval": "5"}}]})
    assert spec.debug_hook == DebugHookSpec(
        "/opt/ml/output/hook/", "s3://b/d", {"save_interval": "10", "include_workers": "all"},
        (("weights", {}), ("losses", {"save_interval": "5"})))


def test_synced_folders_in_order_with_the_prefixes_sagemaker_adds() -> None:
    spec = spec_of(CheckpointConfig={"S3Uri": "s3://b/ckpt", "LocalPath": "/opt/ml/checkpoints/"},
                   DebugHookConfig={"S3OutputPath": "s3://b/base/"},
                   TensorBoardOutputConfig={"S3OutputPath": "s3://b", "LocalPath": "/logs//tb/"})
    assert spec.synced_folders() == (
        SyncedFolder("checkpoints", "/opt/ml/checkpoints", "s3://b/ckpt", restore=True, delete=True),
        SyncedFolder("tensorboard", "/logs/tb", "s3://b/job-1/tensorboard-output", restore=False, delete=False),
        SyncedFolder("debug-output", "/opt/ml/output/tensors", "s3://b/base/job-1/debug-output",
                     restore=False, delete=False),
    )


# ---- the host tree ------------------------------------------------------------------------------


def test_prepare_writes_the_config_files_as_sagemaker_does(tmp_path: Path) -> None:
    layout = HostLayout(tmp_path / "j")
    prepare(layout, spec_of(
        TensorBoardOutputConfig={"S3OutputPath": "s3://b/tb/"},
        DebugHookConfig={"S3OutputPath": "s3://b/d", "HookParameters": {"save_interval": "2"},
                         "CollectionConfigurations": [{"CollectionName": "weights"},
                                                      {"CollectionName": "losses",
                                                       "CollectionParameters": {"save_interval": "1"}}]}))
    debug = layout.config_dir / "debughookconfig.json"
    board = layout.config_dir / "tensorboardoutputconfig.json"
    assert json.loads(debug.read_text()) == {
        "S3OutputPath": "s3://b/d/job-1/debug-output",
        "LocalPath": "/opt/ml/output/tensors",
        "HookParameters": {"save_interval": "2"},
        "CollectionConfigurations": [{"CollectionName": "weights", "CollectionParameters": None},
                                     {"CollectionName": "losses", "CollectionParameters": {"save_interval": "1"}}],
    }
    assert json.loads(board.read_text()) == {"S3OutputPath": "s3://b/tb/job-1/tensorboard-output",
                                             "LocalPath": "/opt/ml/output/tensorboard/"}
    assert mode(debug) == mode(board) == 0o644
    # The folders, inside the host's output folder: seen through its mount, writable by any uid.
    for d in (layout.output_dir / "tensors", layout.output_dir / "tensorboard"):
        assert d.is_dir() and mode(d) == 0o777, d
    assert container_mounts(layout, spec_of()) == container_mounts(layout, spec_of(
        TensorBoardOutputConfig={"S3OutputPath": "s3://b/tb/"}, DebugHookConfig={"S3OutputPath": "s3://b/d"}))


def test_a_bare_debug_hook_config_is_written_with_nulls(tmp_path: Path) -> None:
    # As in a file captured from a real job: absent members are null, the default LocalPath has no slash.
    layout = HostLayout(tmp_path / "j")
    prepare(layout, spec_of(DebugHookConfig={"S3OutputPath": "s3://b/d"}))
    assert json.loads((layout.config_dir / "debughookconfig.json").read_text()) == {
        "S3OutputPath": "s3://b/d/job-1/debug-output", "LocalPath": "/opt/ml/output/tensors",
        "HookParameters": None, "CollectionConfigurations": None}
    assert not (layout.config_dir / "tensorboardoutputconfig.json").exists()


def test_no_config_files_without_the_configs(tmp_path: Path) -> None:
    layout = HostLayout(tmp_path / "j")
    prepare(layout, spec_of())
    assert not (layout.config_dir / "debughookconfig.json").exists()
    assert not (layout.config_dir / "tensorboardoutputconfig.json").exists()
    assert not layout.synced_root.exists()


def test_a_folder_deeper_in_model_gets_every_missing_parent_writable(tmp_path: Path) -> None:
    layout = HostLayout(tmp_path / "j")
    spec = spec_of(TensorBoardOutputConfig={"S3OutputPath": "s3://b/tb", "LocalPath": "/opt/ml/model/tb/run-1"})
    prepare(layout, spec)
    (folder,) = spec.synced_folders()
    assert layout.synced_dir(folder) == layout.model_dir / "tb" / "run-1"
    for d in (layout.model_dir / "tb", layout.model_dir / "tb" / "run-1"):
        assert mode(d) == 0o777, d
    assert str(layout.synced_dir(folder)) not in container_mounts(layout, spec)


def test_a_folder_elsewhere_has_a_host_folder_and_a_mount_of_its_own(tmp_path: Path) -> None:
    layout = HostLayout(tmp_path / "j")
    spec = spec_of(TensorBoardOutputConfig={"S3OutputPath": "s3://b/tb", "LocalPath": "/logs/tb/"},
                   DebugHookConfig={"S3OutputPath": "s3://b/d", "LocalPath": "/opt/ml/debug"},
                   CheckpointConfig={"S3Uri": "s3://b/ckpt", "LocalPath": "/ckpt"})
    prepare(layout, spec)
    checkpoints, board, debug = spec.synced_folders()
    assert layout.synced_dir(checkpoints) == layout.checkpoints_dir
    assert layout.synced_dir(board) == layout.job_root / "algo-1" / "synced" / "tensorboard"
    assert layout.synced_dir(debug) == layout.job_root / "algo-1" / "synced" / "debug-output"
    assert mode(layout.synced_root) == 0o700
    assert mode(layout.synced_dir(board)) == mode(layout.synced_dir(debug)) == 0o777
    mounts = container_mounts(layout, spec)
    assert mounts[str(layout.synced_dir(board))] == "/logs/tb"
    assert mounts[str(layout.synced_dir(debug))] == "/opt/ml/debug"
    assert mounts[str(layout.checkpoints_dir)] == "/ckpt"
    assert len(mounts) == 6  # input, model, output, checkpoints and the two


def test_prepare_does_not_follow_a_link_left_in_the_tree(tmp_path: Path) -> None:
    outside = tmp_path / "host-folder"
    outside.mkdir(mode=0o700)
    layout = HostLayout(tmp_path / "j")
    spec = spec_of(TensorBoardOutputConfig={"S3OutputPath": "s3://b/tb"})
    prepare(layout, spec_of())
    os.symlink(outside, layout.output_dir / "tensorboard")
    with pytest.raises(OSError):
        prepare(layout, spec)
    assert mode(outside) == 0o700


# ---- the API ------------------------------------------------------------------------------------


def rejected(client: Any, request: dict[str, Any]) -> str:
    with pytest.raises(ClientError) as info:
        client.create_training_job(**request)
    error = info.value.response["Error"]
    assert error["Code"] == "ValidationException"
    with pytest.raises(ClientError):
        client.describe_training_job(TrainingJobName=request["TrainingJobName"])
    return error["Message"]


@pytest.mark.parametrize("local_path", ["/opt/ml/input/tb", "/opt/ml/input", "/opt/ml/output", "/opt/ml/model/",
                                        "/opt/ml", "/opt", "/", "tensorboard", "", "//opt/ml/tb"])
def test_a_tensorboard_path_must_be_a_folder_of_its_own(sm, unique_name, local_path) -> None:
    request = job_request(unique_name("bad-tb"), TensorBoardOutputConfig={"S3OutputPath": "s3://b/tb",
                                                                          "LocalPath": local_path})
    assert rejected(sm, request) == (
        f"Invalid TensorBoardOutputConfig.LocalPath '{local_path}': it must be an absolute path in the container, "
        "outside /opt/ml/input and neither /opt/ml/model, /opt/ml/output nor a folder above them (the default is "
        "/opt/ml/output/tensorboard).")


def test_a_debug_hook_path_under_the_input_is_rejected(sm, unique_name) -> None:
    request = job_request(unique_name("bad-dbg"), DebugHookConfig={"S3OutputPath": "s3://b/d",
                                                                   "LocalPath": "/opt/ml/input/config/x"})
    assert rejected(sm, request).startswith("Invalid DebugHookConfig.LocalPath '/opt/ml/input/config/x': it must be")


@pytest.mark.parametrize(("checkpoint", "tensorboard", "debug", "message"), [
    ({"S3Uri": "s3://b/c"}, "/opt/ml/checkpoints/tb", None,
     "Invalid TensorBoardOutputConfig.LocalPath '/opt/ml/checkpoints/tb': it overlaps CheckpointConfig.LocalPath "
     "'/opt/ml/checkpoints'; each folder synced to S3 needs a path of its own."),
    ({"S3Uri": "s3://b/c", "LocalPath": "/opt/ml/output/tensors/ck"}, None, None,
     "Invalid DebugHookConfig.LocalPath '/opt/ml/output/tensors': it overlaps CheckpointConfig.LocalPath "
     "'/opt/ml/output/tensors/ck'; each folder synced to S3 needs a path of its own."),
    (None, "/opt/ml/output/both/", "/opt/ml/output/both",
     "Invalid DebugHookConfig.LocalPath '/opt/ml/output/both': it overlaps TensorBoardOutputConfig.LocalPath "
     "'/opt/ml/output/both/'; each folder synced to S3 needs a path of its own."),
])
def test_synced_folders_cannot_overlap(sm, unique_name, checkpoint, tensorboard, debug, message) -> None:
    overrides: dict[str, Any] = {"DebugHookConfig": {"S3OutputPath": "s3://b/d"}}
    if checkpoint is not None:
        overrides["CheckpointConfig"] = checkpoint
    if tensorboard is not None:
        overrides["TensorBoardOutputConfig"] = {"S3OutputPath": "s3://b/tb", "LocalPath": tensorboard}
    if debug is not None:
        overrides["DebugHookConfig"]["LocalPath"] = debug
    assert rejected(sm, job_request(unique_name("overlap"), **overrides)) == message


def test_an_accepted_job_echoes_both_configs(sm, unique_name) -> None:
    name = unique_name("echo")
    board = {"S3OutputPath": "s3://b/tb", "LocalPath": "/logs/tb"}
    debug = {"S3OutputPath": "s3://b/d", "HookParameters": {"save_interval": "10"},
             "CollectionConfigurations": [{"CollectionName": "losses",
                                           "CollectionParameters": {"save_interval": "1"}}]}
    sm.create_training_job(**job_request(name, TensorBoardOutputConfig=board, DebugHookConfig=debug,
                                         CheckpointConfig={"S3Uri": "s3://b/c"}))
    job = sm.describe_training_job(TrainingJobName=name)
    # As requested: SageMaker adds `<job>/tensorboard-output` and `<job>/debug-output` only where it puts the files.
    assert job["TensorBoardOutputConfig"] == board
    assert job["DebugHookConfig"] == debug
