"""ShardedByS3Key in every input mode: with 3 hosts, every object reaches exactly one host, whole.

File and FastFile deal the key-sorted objects round-robin (host i of n gets i, i+n, ...); Pipe does the
same per epoch, and with ShuffleConfig it deals a new permutation each epoch, so a host's shard changes
from epoch to epoch while every epoch still covers every object once.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from typing import Any

import pytest

from runner.inputs.pipe_sources import epoch_entries
from tests.support.jobs import wait_recording
from tests.support.pipe_jobs import completed, pipe_channel, put_objects, reader_job
from tests.support.runner_jobs import (
    FINAL,
    INPUT_BUCKET,
    model_files,
    sh_job,
)

SERVER = "runner_server"  # `sm` and `s3` are clients of the runner plugin's server (tests/conftest.py)

HOSTS = ("algo-1", "algo-2", "algo-3")
THREE_HOSTS = {"InstanceType": "ml.m5.large", "InstanceCount": 3, "VolumeSizeInGB": 1}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def objects_for(name: str) -> dict[str, bytes]:
    # Names whose key order differs from their listing by size or time, and one in a sub-folder.
    return {f"part-{i:02d}": os.urandom(100 + i) for i in range(9)} | {"sub/part-99": os.urandom(7)}


@pytest.mark.parametrize("mode", ["File", "FastFile"])
def test_file_and_fastfile_give_each_object_to_exactly_one_of_three_hosts(
        sm: Any, s3: Any, unique_name: Callable[[str], str], mode: str) -> None:
    name = unique_name(f"shard-{mode.lower()}")
    objects = objects_for(name)
    put_objects(s3, f"{name}/data", objects)
    script = ("d=/opt/ml/model/$(hostname); mkdir -p $d; cd /opt/ml/input/data/train && "
              "find . -type f | sort | xargs -r sha256sum > $d/sums")
    channel = {"ChannelName": "train", "InputMode": mode, "DataSource": {"S3DataSource": {
        "S3DataType": "S3Prefix", "S3Uri": f"s3://{INPUT_BUCKET}/{name}/data/",
        "S3DataDistributionType": "ShardedByS3Key"}}}
    sm.create_training_job(**sh_job(name, script, InputDataConfig=[channel], ResourceConfig=THREE_HOSTS))
    job, seen = wait_recording(sm, name, FINAL, timeout=120)
    completed(job, seen)
    files = model_files(s3, name)
    got = {host: [line.split("  ./", 1)[::-1] for line in files.get(f"{host}/sums", b"").decode().splitlines()]
           for host in HOSTS}
    keys = sorted(objects)
    for index, host in enumerate(HOSTS):
        assert got[host] == [[key, sha(objects[key])] for key in keys[index::3]]
    assert sorted(key for host in HOSTS for key, _ in got[host]) == keys  # each once, all of them


@pytest.mark.parametrize("seed", [None, 7], ids=["in-key-order", "shuffled"])
def test_pipe_gives_each_object_to_exactly_one_of_three_hosts_every_epoch(
        sm: Any, s3: Any, unique_name: Callable[[str], str], seed: int | None) -> None:
    name = unique_name(f"shard-pipe-{seed}")
    objects = objects_for(name)
    put_objects(s3, f"{name}/data", objects)
    extra = {"ShuffleConfig": {"Seed": seed}} if seed is not None else {}
    channels = [pipe_channel("train", f"s3://{INPUT_BUCKET}/{name}/data/", distribution="ShardedByS3Key",
                             RecordWrapperType="RecordIO", **extra)]
    request = reader_job(s3, name, channels, {"train": {"epochs": 3, "records": True}}, ResourceConfig=THREE_HOSTS)
    sm.create_training_job(**request)
    job, seen = wait_recording(sm, name, FINAL, timeout=120)
    completed(job, seen)
    files = model_files(s3, name)
    results = {host: json.loads(files[f"{host}/result.json"]) for host in HOSTS}
    assert all(r["errors"] == [] for r in results.values())
    keys = sorted(objects)
    by_hash = {sha(objects[k]): k for k in keys}
    shards = [[[by_hash[h] for h in results[host]["channels"]["train"][epoch]["records"]] for host in HOSTS]
              for epoch in range(3)]
    for epoch, hosts in enumerate(shards):
        assert sorted(k for shard in hosts for k in shard) == keys  # every object, exactly once, whole
        for index, shard in enumerate(hosts):
            assert shard == epoch_entries(keys, epoch, seed, True, index, 3, sort_key=lambda k: k)
    if seed is None:
        assert shards[0] == shards[1] == shards[2] == [keys[0::3], keys[1::3], keys[2::3]]
    else:
        assert shards[0] != shards[1] != shards[2]  # the shards change from epoch to epoch
