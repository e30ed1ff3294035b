"""The per-host /opt/ml tree on the host and the config files SageMaker writes into it.

Permissions: the data dir and every job folder are private (0700); the bind-mounted tree opens only
what an algorithm running as any uid needs: it reads `/opt/ml/input` (0755, files 0644) and writes
`model`, `output` and the checkpoints (0777). Docker resolves bind-mount sources as root, so the
private folders above the tree do not keep a non-root container user out of its own tree.
"""

from __future__ import annotations

import json
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smlocal.core.jobspec import JobSpec

CONTAINER_ROOT = "/opt/ml"
PRIVATE = 0o700
READABLE_DIR = 0o755
READABLE_FILE = 0o644
WRITABLE_DIR = 0o777
WRITABLE_FILE = 0o666


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


def input_data_config(spec: JobSpec) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for channel in spec.channels:
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


def container_mounts(layout: HostLayout, spec: JobSpec) -> dict[str, str]:
    """Host path -> container path of what the platform provides under /opt/ml, and nothing else.

    SageMaker provides /opt/ml/input (config and data), /opt/ml/model and /opt/ml/output, and the
    checkpoint LocalPath when CheckpointConfig is set (developer guide: "SageMaker Training and
    Inference Toolkits" > containers structure, docs.aws.amazon.com/sagemaker/latest/dg/amazon-sagemaker-toolkits.html;
    "How Amazon SageMaker AI Processes Training Output", .../dg/your-algorithms-training-algo-output.html;
    API CheckpointConfig: LocalPath defaults to /opt/ml/checkpoints/). The rest of the image's /opt/ml
    stays as the image has it: the toolkit's own README bakes the script into /opt/ml/code
    (`ENV SAGEMAKER_PROGRAM train.py`), and a mount over the whole /opt/ml would hide it.
    """
    mounts = {
        str(layout.input_dir): f"{CONTAINER_ROOT}/input",
        str(layout.model_dir): f"{CONTAINER_ROOT}/model",
        str(layout.output_dir): f"{CONTAINER_ROOT}/output",
    }
    if spec.checkpoint is not None:
        mounts[str(layout.checkpoints_dir)] = posixpath.normpath(spec.checkpoint.local_path)
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
    _write_json(layout.config_dir / "inputdataconfig.json", input_data_config(spec))
    _write_json(layout.config_dir / "resourceconfig.json", resource_config(spec, layout.host))
    checkpoints = checkpoint_config(spec)
    if checkpoints is not None:
        _write_json(layout.config_dir / "checkpointconfig.json", checkpoints)
    for channel in spec.channels:
        _make_dir(layout.channel_dir(channel.name), READABLE_DIR)
