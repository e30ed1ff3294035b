"""The per-host /opt/ml tree on the host and the config files SageMaker writes into it."""

from __future__ import annotations

import json
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONTAINER_ROOT = "/opt/ml"
DEFAULT_CHECKPOINT_PATH = "/opt/ml/checkpoints"
DEFAULT_GROUP = "homogeneousCluster"


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


def job_folder_name(job_name: str, region: str, account_id: str) -> str:
    # Names are unique per account and region only; a job name has no dots, so this cannot clash.
    return f"{job_name}.{region}.{account_id}"


def job_root(data_dir: Path | str, job_name: str, region: str, account_id: str) -> Path:
    return Path(data_dir) / "jobs" / job_folder_name(job_name, region, account_id)


def host_names(count: int) -> list[str]:
    return [f"algo-{i}" for i in range(1, count + 1)]


def _instance_groups(request: dict[str, Any]) -> list[dict[str, Any]]:
    rc = request.get("ResourceConfig") or {}
    groups = rc.get("InstanceGroups")
    if groups:
        # Heterogeneous clusters number hosts across groups in request order.
        result, next_host = [], 1
        for g in groups:
            count = int(g.get("InstanceCount", 1))
            hosts = [f"algo-{i}" for i in range(next_host, next_host + count)]
            next_host += count
            result.append({"instance_group_name": g["InstanceGroupName"],
                           "instance_type": g["InstanceType"], "hosts": hosts})
        return result
    return [{"instance_group_name": DEFAULT_GROUP, "instance_type": rc.get("InstanceType", "ml.m5.large"),
             "hosts": host_names(int(rc.get("InstanceCount", 1)))}]


def all_hosts(request: dict[str, Any]) -> list[str]:
    hosts = [h for g in _instance_groups(request) for h in g["hosts"]]
    return sorted(hosts, key=lambda h: int(h.rsplit("-", 1)[1]))


def resource_config(request: dict[str, Any], host: str) -> dict[str, Any]:
    groups = _instance_groups(request)
    mine = next(g for g in groups if host in g["hosts"])
    return {
        "current_host": host,
        "current_instance_type": mine["instance_type"],
        "current_group_name": mine["instance_group_name"],
        "hosts": all_hosts(request),
        "instance_groups": groups,
        "network_interface_name": "eth0",
    }


def input_data_config(request: dict[str, Any]) -> dict[str, Any]:
    job_mode = (request.get("AlgorithmSpecification") or {}).get("TrainingInputMode", "File")
    config: dict[str, Any] = {}
    for channel in request.get("InputDataConfig") or []:
        s3 = (channel.get("DataSource") or {}).get("S3DataSource") or {}
        entry: dict[str, Any] = {}
        if channel.get("ContentType"):
            entry["ContentType"] = channel["ContentType"]
        entry["TrainingInputMode"] = channel.get("InputMode") or job_mode
        entry["S3DistributionType"] = s3.get("S3DataDistributionType", "FullyReplicated")
        entry["RecordWrapperType"] = channel.get("RecordWrapperType", "None")
        config[channel["ChannelName"]] = entry
    return config


def checkpoint_config(request: dict[str, Any]) -> dict[str, Any] | None:
    cc = request.get("CheckpointConfig")
    if not cc:
        return None
    return {"LocalPath": cc.get("LocalPath") or DEFAULT_CHECKPOINT_PATH, "S3Uri": cc["S3Uri"]}


def container_mounts(layout: HostLayout, checkpoints: dict[str, Any] | None) -> dict[str, str]:
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
    if checkpoints is not None:
        mounts[str(layout.checkpoints_dir)] = posixpath.normpath(checkpoints["LocalPath"])
    return mounts


def _make_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    # The image may run as any uid; the tree is the container's to write.
    os.chmod(path, 0o777)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
    os.chmod(path, 0o666)


def prepare(layout: HostLayout, request: dict[str, Any]) -> None:
    """Create the host's /opt/ml tree with its config files and empty channel folders."""
    for d in (layout.job_root, layout.job_root / layout.host, layout.opt_ml.parent, layout.opt_ml,
              layout.opt_ml / "input", layout.config_dir, layout.opt_ml / "input" / "data",
              layout.model_dir, layout.output_dir, layout.output_data_dir, layout.checkpoints_dir):
        _make_dir(d)
    layout.staging_dir.mkdir(parents=True, exist_ok=True)
    hyperparameters = {str(k): str(v) for k, v in (request.get("HyperParameters") or {}).items()}
    _write_json(layout.config_dir / "hyperparameters.json", hyperparameters)
    _write_json(layout.config_dir / "inputdataconfig.json", input_data_config(request))
    _write_json(layout.config_dir / "resourceconfig.json", resource_config(request, layout.host))
    checkpoints = checkpoint_config(request)
    if checkpoints is not None:
        _write_json(layout.config_dir / "checkpointconfig.json", checkpoints)
    for channel in request.get("InputDataConfig") or []:
        _make_dir(layout.channel_dir(channel["ChannelName"]))


def is_real_dir(path: Path, root: Path) -> bool:
    """True if `path` is a directory reached from `root` without following any symlink.

    The container owns the tree and could swap a folder for a link to the host's / before we read it.
    """
    try:
        rel = path.relative_to(root)
    except ValueError:
        return False
    current = root
    for part in ("",) + rel.parts:
        current = current / part if part else current
        if current.is_symlink() or not current.is_dir():
            return False
    return True
