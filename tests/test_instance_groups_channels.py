"""S3DataSource.InstanceGroupNames: on a heterogeneous cluster, a channel goes only to the hosts of the groups it
names, and a ShardedByS3Key channel is split among those hosts only.

End to end against a real `smlocal serve`, real containers and a real S3 server; the providers each host gets
(Pipe and FastFile included) and the create-time validation in-process and over the API.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from runner.inputs import FileInput, InputContext, make_providers
from runner.layout import HostLayout, input_data_config, prepare
from smlocal.core.jobspec import JobSpec
from tests.support.runner_jobs import INPUT_BUCKET, model_files, run_job, s3_channel, sh_job

SERVER = "runner_server"  # `sm` and `s3` are clients of the runner plugin's server (tests/conftest.py)

# Group A: algo-1; group B: algo-2 and algo-3 (hosts are numbered across groups in request order).
GROUPS = {"VolumeSizeInGB": 10, "InstanceGroups": [
    {"InstanceGroupName": "A", "InstanceType": "ml.c5.xlarge", "InstanceCount": 1},
    {"InstanceGroupName": "B", "InstanceType": "ml.m5.large", "InstanceCount": 2}]}


def limited(name: str, uri: str, groups: list[str], distribution: str = "ShardedByS3Key", **extra: Any,
            ) -> dict[str, Any]:
    channel = s3_channel(name, uri, **extra)
    channel["DataSource"]["S3DataSource"].update(S3DataDistributionType=distribution, InstanceGroupNames=groups)
    return channel


def test_a_channel_limited_to_a_group_reaches_only_its_hosts_and_is_sharded_among_them(
        sm: Any, s3: Any, unique_name: Callable[[str], str]) -> None:
    name = unique_name("groups")
    for i in range(4):
        s3.put_object(Bucket=INPUT_BUCKET, Key=f"{name}/train/part-{i}.csv", Body=f"part {i}\n".encode())
    s3.put_object(Bucket=INPUT_BUCKET, Key=f"{name}/vocab/vocab.txt", Body=b"vocab\n")
    script = ("cd /opt/ml/input && me=$(hostname) && mkdir -p /opt/ml/model/$me && "
              "find data -type f | sort > /opt/ml/model/$me/files && ls data > /opt/ml/model/$me/folders && "
              "cp config/inputdataconfig.json /opt/ml/model/$me/")
    request = sh_job(name, script, ResourceConfig=GROUPS, InputDataConfig=[
        limited("train", f"s3://{INPUT_BUCKET}/{name}/train/", ["B"]),
        s3_channel("vocab", f"s3://{INPUT_BUCKET}/{name}/vocab/")])
    job = run_job(sm, request)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    assert job["InputDataConfig"][0]["DataSource"]["S3DataSource"]["InstanceGroupNames"] == ["B"]  # echoed
    files = model_files(s3, name)

    def listing(host: str, what: str) -> list[str]:
        return files[f"{host}/{what}"].decode().split()

    # algo-1 (group A): no folder for the channel, and its inputdataconfig.json does not list it.
    assert listing("algo-1", "folders") == ["vocab"]
    assert listing("algo-1", "files") == ["data/vocab/vocab.txt"]
    assert sorted(json.loads(files["algo-1/inputdataconfig.json"])) == ["vocab"]
    # algo-2 and algo-3 (group B) split the four objects: two hosts, not three.
    assert listing("algo-2", "files") == ["data/train/part-0.csv", "data/train/part-2.csv", "data/vocab/vocab.txt"]
    assert listing("algo-3", "files") == ["data/train/part-1.csv", "data/train/part-3.csv", "data/vocab/vocab.txt"]
    for host in ("algo-2", "algo-3"):
        config = json.loads(files[f"{host}/inputdataconfig.json"])
        assert sorted(config) == ["train", "vocab"]
        assert config["train"]["S3DistributionType"] == "ShardedByS3Key"


@pytest.mark.parametrize(("resource", "groups", "message"), [
    (GROUPS, ["A", "C"], "Invalid instance group names for channel train: C not defined in "
                         "ResourceConfig.InstanceGroups (A, B)"),
    ({"InstanceType": "ml.m5.large", "InstanceCount": 2, "VolumeSizeInGB": 10}, ["A"],
     "Invalid instance group names for channel train: A not defined in ResourceConfig.InstanceGroups (none: the "
     "job has no InstanceGroups)"),
])
def test_a_group_the_job_does_not_have_is_refused_at_create(
        sm: Any, unique_name: Callable[[str], str], resource: dict[str, Any], groups: list[str],
        message: str) -> None:
    name = unique_name("bad-groups")
    request = sh_job(name, "true", ResourceConfig=resource,
                     InputDataConfig=[limited("train", f"s3://{INPUT_BUCKET}/{name}/", groups)])
    with pytest.raises(sm.exceptions.ClientError) as raised:
        sm.create_training_job(**request)
    assert raised.value.response["Error"] == {"Code": "ValidationException", "Message": message}
    with pytest.raises(sm.exceptions.ClientError):
        sm.describe_training_job(TrainingJobName=name)  # nothing was stored


# ---- in-process: which hosts get which providers --------------------------------------------------


@pytest.mark.parametrize("mode", ["File", "Pipe", "FastFile"])
def test_providers_are_made_for_the_groups_hosts_only_and_count_only_them(tmp_path: Path, mode: str) -> None:
    request = sh_job("units", "true", ResourceConfig=GROUPS, InputDataConfig=[
        limited("train", "s3://bucket/train/", ["B"], InputMode=mode),
        limited("solo", "s3://bucket/solo/", ["A"], distribution="FullyReplicated", InputMode=mode),
        s3_channel("all", "s3://bucket/all/", InputMode=mode)])
    spec = JobSpec.from_request(request)
    layouts = [HostLayout(tmp_path, host) for host in spec.hosts]
    providers = make_providers(InputContext(spec, layouts, lambda: None))  # type: ignore[arg-type,return-value]

    channels = {host: [p.channel.name for p in found] for host, found in providers.items()}
    assert channels == {"algo-1": ["solo", "all"], "algo-2": ["train", "all"], "algo-3": ["train", "all"]}
    shards = {(p.host, p.channel.name): (p.host_index, p.host_count) for found in providers.values() for p in found}
    assert shards[("algo-2", "train")] == (0, 2) and shards[("algo-3", "train")] == (1, 2)
    assert shards[("algo-1", "solo")] == (0, 1)
    assert [shards[(h, "all")] for h in spec.hosts] == [(0, 3), (1, 3), (2, 3)]
    if mode == "File":  # one staging per channel, into its own hosts' folders only
        assert all(isinstance(p, FileInput) for found in providers.values() for p in found)


def test_the_tree_of_a_host_outside_the_groups_has_no_folder_and_no_entry_for_the_channel(tmp_path: Path) -> None:
    spec = JobSpec.from_request(sh_job("units", "true", ResourceConfig=GROUPS, InputDataConfig=[
        limited("train", "s3://bucket/train/", ["B"]), s3_channel("all", "s3://bucket/all/")]))
    for host, expected in (("algo-1", ["all"]), ("algo-2", ["all", "train"]), ("algo-3", ["all", "train"])):
        layout = HostLayout(tmp_path, host)
        prepare(layout, spec)
        assert sorted(p.name for p in (layout.opt_ml / "input" / "data").iterdir()) == expected
        written = json.loads((layout.config_dir / "inputdataconfig.json").read_text())
        assert sorted(written) == expected == sorted(input_data_config(spec, host))
    assert sorted(input_data_config(spec)) == ["all", "train"]  # no host: every channel
