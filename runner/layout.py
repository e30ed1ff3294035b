"""The per-host /opt/ml tree on the host and the config files SageMaker writes into it.

Permissions: the data dir and every job folder are private (0700); the bind-mounted tree opens only
what an algorithm running as any uid needs: it reads `/opt/ml/input` (0755, files 0644) and writes
`model`, `output`, the checkpoints and the other synced folders (0777). Docker resolves bind-mount sources
as root, so the private folders above the tree do not keep a non-root container user out of its own tree.

Synced folders (`JobSpec.synced_folders()`: checkpoints, TensorBoard's, the debug hook's) each have a host
folder, `HostLayout.synced_dir`: the checkpoints their own (mounted at their LocalPath); a LocalPath inside
/opt/ml/output or /opt/ml/model the matching folder inside the host's output or model folder, seen through
their mount (only output/data goes into output.tar.gz, runner.artifacts); any other LocalPath
`<host>/synced/<kind>`, mounted there.
"""

from __future__ import annotations

import json
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from smlocal.core.jobspec import KIND_CHECKPOINTS, JobSpec, SyncedFolder

CONTAINER_ROOT = "/opt/ml"
PRIVATE = 0o700
READABLE_DIR = 0o755
READABLE_FILE = 0o644
WRITABLE_DIR = 0o777
WRITABLE_FILE = 0o666
# The platform's writable folders: a synced folder inside one needs no mount of its own.
WRITABLE_PLATFORM_DIRS = ("output", "model")
# The files smdebug reads (smdebug/core/config_constants.py: DEFAULT_CONFIG_FILE_PATH,
# DEFAULT_SAGEMAKER_TENSORBOARD_PATH; env SMDEBUG_CONFIG_FILE_PATH / TENSORBOARD_CONFIG_FILE_PATH override them).
DEBUG_HOOK_CONFIG_FILE = "debughookconfig.json"
TENSORBOARD_CONFIG_FILE = "tensorboardoutputconfig.json"


@dataclass(frozen=True)
class HostLayout:
    """Paths of one host's tree `<data_dir>/jobs/<job>/<host>/opt/ml`; `container_mounts` says which parts
    the container sees, and where."""

    job_root: Path
    host: str = "algo-1"

    @property
    def opt_ml(self) -> Path:
        return self.job_root / self.host / "opt" / "ml"

    @property
    def config_dir(self) -> Path:
        return self.opt_ml / "input" / "config"

    def channel_dir(self, channel: str) -> Path:
        return self.opt_ml / "input" / "data" / channel

    @property
    def model_dir(self) -> Path:
        return self.opt_ml / "model"

    @property
    def output_dir(self) -> Path:
        return self.opt_ml / "output"

    @property
    def output_data_dir(self) -> Path:
        return self.opt_ml / "output" / "data"

    @property
    def failure_file(self) -> Path:
        return self.opt_ml / "output" / "failure"

    @property
    def checkpoints_dir(self) -> Path:
        return self.opt_ml / "checkpoints"

    @property
    def input_dir(self) -> Path:
        return self.opt_ml / "input"

    @property
    def staging_dir(self) -> Path:
        """Scratch space for tarballs, outside the tree the container can touch."""
        return self.job_root / "staging"

    @property
    def synced_root(self) -> Path:
        """Where synced folders outside /opt/ml/output and /opt/ml/model live (private, like the host folder)."""
        return self.job_root / self.host / "synced"

    def synced_dir(self, folder: SyncedFolder) -> Path:
        """The host folder of a synced folder (see the module's docstring)."""
        if folder.kind == KIND_CHECKPOINTS:
            return self.checkpoints_dir
        inside = inside_platform_dir(folder.local_path)
        if inside is not None:
            top, rel = inside
            return self.opt_ml.joinpath(top, *rel.parts)
        return self.synced_root / folder.kind


def inside_platform_dir(local_path: str) -> tuple[str, PurePosixPath] | None:
    """("output" | "model", the rest) for a container path inside /opt/ml/output or /opt/ml/model, else None."""
    path = PurePosixPath(posixpath.normpath(local_path))
    for top in WRITABLE_PLATFORM_DIRS:
        base = PurePosixPath(CONTAINER_ROOT, top)
        if path == base or base in path.parents:
            return top, path.relative_to(base)
    return None


def job_folder_name(job_name: str, region: str, account_id: str, creation_time: float) -> str:
    # Names are unique per account and region only, and a deleted job's name can be used again while the
    # old job's folder is still being removed: the creation time tells the two apart. A job name has no
    # dots, so this cannot clash.
    return f"{job_name}.{region}.{account_id}.{int(creation_time * 1000)}"


def job_root(data_dir: Path | str, job_name: str, region: str, account_id: str, creation_time: float) -> Path:
    return Path(data_dir) / "jobs" / job_folder_name(job_name, region, account_id, creation_time)


def resource_config(spec: JobSpec, host: str) -> dict[str, Any]:
    mine = spec.group_of(host)
    return {
        "current_host": host,
        "current_instance_type": mine.instance_type,
        "current_group_name": mine.name,
        "hosts": spec.hosts,
        "instance_groups": [{"instance_group_name": g.name, "instance_type": g.instance_type, "hosts": list(g.hosts)}
                            for g in spec.instance_groups],
        "network_interface_name": "eth0",
    }


def input_data_config(spec: JobSpec, host: str | None = None) -> dict[str, Any]:
    """inputdataconfig.json of `host`: only the channels it gets (a channel with InstanceGroupNames is listed on
    those groups' hosts only, so the training toolkit's SM_CHANNELS names no folder the host lacks; inferred,
    SageMaker documents only that the data goes to those groups). `host` None: every channel."""
    config: dict[str, Any] = {}
    for channel in spec.channels:
        if host is not None and host not in spec.channel_hosts(channel):
            continue
        entry: dict[str, Any] = {}
        if channel.content_type:
            entry["ContentType"] = channel.content_type
        entry["TrainingInputMode"] = channel.input_mode
        entry["S3DistributionType"] = channel.s3.distribution if channel.s3 else "FullyReplicated"
        entry["RecordWrapperType"] = channel.record_wrapper
        config[channel.name] = entry
    return config


def checkpoint_config(spec: JobSpec) -> dict[str, Any] | None:
    if spec.checkpoint is None:
        return None
    return {"LocalPath": spec.checkpoint.local_path, "S3Uri": spec.checkpoint.s3_uri}


def debug_hook_config(spec: JobSpec) -> dict[str, Any] | None:
    """debughookconfig.json as SageMaker writes it: the request's DebugHookConfig with the job's own S3 prefix and
    absent members as null. Seen in files captured from real jobs (shiftan/simple_sagemaker, examples/single_task/
    expected_output, 2020: `{"S3OutputPath": "<S3OutputPath>/<job>/debug-output", "LocalPath": "/opt/ml/output/
    tensors", "HookParameters": null, "CollectionConfigurations": null}`) and in smdebug's own samples
    (tests/tensorflow/test_sagemaker.py: `{"CollectionName": "weights", "CollectionParameters": null}`)."""
    hook = spec.debug_hook
    if hook is None:
        return None
    collections = [{"CollectionName": name, "CollectionParameters": dict(params) or None}
                   for name, params in hook.collections]
    return {
        "S3OutputPath": hook.output_uri(spec.name),
        "LocalPath": hook.local_path,
        "HookParameters": dict(hook.hook_parameters) or None,
        "CollectionConfigurations": collections or None,
    }


def tensorboard_output_config(spec: JobSpec) -> dict[str, Any] | None:
    """tensorboardoutputconfig.json as SageMaker writes it. The same capture: a request with LocalPath
    "/opt/ml/output/tensorboard" gave `{"S3OutputPath": "<S3OutputPath>/<job>/tensorboard-output", "LocalPath":
    "/opt/ml/output/tensorboard/"}`, the LocalPath with a slash added; smdebug reads only LocalPath
    (smdebug/core/json_config.py, get_tensorboard_dir_from_json_config)."""
    board = spec.tensorboard
    if board is None:
        return None
    local = board.local_path if board.local_path.endswith("/") else f"{board.local_path}/"
    return {"S3OutputPath": board.output_uri(spec.name), "LocalPath": local}


def container_mounts(layout: HostLayout, spec: JobSpec) -> dict[str, str]:
    """Host path -> container path of what the platform provides under /opt/ml, and nothing else.

    SageMaker provides /opt/ml/input (config and data), /opt/ml/model and /opt/ml/output, and the
    checkpoint LocalPath when CheckpointConfig is set (developer guide: "SageMaker Training and
    Inference Toolkits" > containers structure, docs.aws.amazon.com/sagemaker/latest/dg/amazon-sagemaker-toolkits.html;
    "How Amazon SageMaker AI Processes Training Output", .../dg/your-algorithms-training-algo-output.html;
    API CheckpointConfig: LocalPath defaults to /opt/ml/checkpoints/). The rest of the image's /opt/ml
    stays as the image has it: the toolkit's own README bakes the script into /opt/ml/code
    (`ENV SAGEMAKER_PROGRAM train.py`), and a mount over the whole /opt/ml would hide it. TensorBoard's and the
    debug hook's LocalPath get a mount of their own only outside /opt/ml/output and /opt/ml/model.
    """
    mounts = {
        str(layout.input_dir): f"{CONTAINER_ROOT}/input",
        str(layout.model_dir): f"{CONTAINER_ROOT}/model",
        str(layout.output_dir): f"{CONTAINER_ROOT}/output",
    }
    if spec.checkpoint is not None:
        mounts[str(layout.checkpoints_dir)] = posixpath.normpath(spec.checkpoint.local_path)
    for folder in spec.synced_folders():
        if folder.kind != KIND_CHECKPOINTS and inside_platform_dir(folder.local_path) is None:
            mounts[str(layout.synced_dir(folder))] = folder.local_path
    return mounts


def _make_dir(path: Path, mode: int) -> None:
    path.mkdir(exist_ok=True)
    os.chmod(path, mode)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
    os.chmod(path, READABLE_FILE)


def make_private_dir(path: Path) -> None:
    """A folder only smlocal's user may enter (with any missing parents, private too)."""
    path.mkdir(mode=PRIVATE, parents=True, exist_ok=True)
    os.chmod(path, PRIVATE)


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _make_writable_path(base: Path, rel: PurePosixPath) -> None:
    """`base/rel` and every folder between them, writable by any uid. Each component is created or opened
    relative to its parent without following a link, so a link the container left in its tree (a restarted
    job's) is an OSError, never a host folder opened up."""
    fd = os.open(base, _DIR_FLAGS)
    try:
        for part in rel.parts:
            try:
                os.mkdir(part, WRITABLE_DIR, dir_fd=fd)
            except FileExistsError:
                pass
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
            os.fchmod(fd, WRITABLE_DIR)
    finally:
        os.close(fd)


def _make_synced_dirs(layout: HostLayout, spec: JobSpec) -> None:
    """The host folders of TensorBoard's and the debug hook's LocalPath (the checkpoints' is part of the tree)."""
    for folder in spec.synced_folders():
        if folder.kind == KIND_CHECKPOINTS:
            continue
        inside = inside_platform_dir(folder.local_path)
        if inside is not None:
            top, rel = inside
            _make_writable_path(layout.opt_ml / top, rel)
        else:
            make_private_dir(layout.synced_root)
            _make_dir(layout.synced_dir(folder), WRITABLE_DIR)


def _write_output_configs(layout: HostLayout, spec: JobSpec) -> None:
    for name, config in ((DEBUG_HOOK_CONFIG_FILE, debug_hook_config(spec)),
                         (TENSORBOARD_CONFIG_FILE, tensorboard_output_config(spec))):
        if config is not None:
            _write_json(layout.config_dir / name, config)


def prepare(layout: HostLayout, spec: JobSpec) -> None:
    """Create the host's /opt/ml tree with its config files and empty channel folders."""
    make_private_dir(layout.job_root)
    for d in (layout.job_root / layout.host, layout.opt_ml.parent, layout.staging_dir):
        _make_dir(d, PRIVATE)
    for d in (layout.opt_ml, layout.opt_ml / "input", layout.config_dir, layout.opt_ml / "input" / "data"):
        _make_dir(d, READABLE_DIR)
    for d in (layout.model_dir, layout.output_dir, layout.output_data_dir, layout.checkpoints_dir):
        _make_dir(d, WRITABLE_DIR)
    _write_json(layout.config_dir / "hyperparameters.json", dict(spec.hyperparameters))
    _write_json(layout.config_dir / "inputdataconfig.json", input_data_config(spec, layout.host))
    _write_json(layout.config_dir / "resourceconfig.json", resource_config(spec, layout.host))
    checkpoints = checkpoint_config(spec)
    if checkpoints is not None:
        _write_json(layout.config_dir / "checkpointconfig.json", checkpoints)
    _write_output_configs(layout, spec)
    _make_synced_dirs(layout, spec)
    for channel in spec.channels:
        if layout.host in spec.channel_hosts(channel):
            _make_dir(layout.channel_dir(channel.name), READABLE_DIR)
