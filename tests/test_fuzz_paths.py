"""Path traversal through the API (issue 21, item 7): hostile names never reach a file outside a job's folders.

What was already proven elsewhere is not repeated: S3 keys that climb out of a channel (`safe_relative_path`,
tests/test_runner_units.py), a manifest entry `../../outside` (tests/test_runner_staging.py), channel names
`.` and `..` and checkpoint paths over the platform's folders (tests/test_api_validation.py), tar members of
model artifacts (tests/test_agent.py), local channel roots (tests/test_local_channels.py). Here: log stream
names in GetLogEvents and FilterLogEvents, training job names in every place one is read, and S3 keys with
`..`, absolute paths and NUL bytes carried by a manifest through a real job on the simulated backend; each
followed by a look at the file system around the server's data dir.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.support.jobs import job_request
from tests.support.smlocal import SmlocalServer

BUCKET = "fuzz-paths"
GROUP = "/aws/sagemaker/TrainingJobs"
# A file beside the data dir (a traversal's first target) and one at the root of /tmp.
CANARY = "escape-canary"
CLIMBS = ["../" * n + CANARY for n in (1, 2, 3, 8, 20)]
HOSTILE_NAMES = [
    *CLIMBS, f"/tmp/{CANARY}", "/etc/passwd", "..", ".", "a/../../..", "job\x00", "\x00", "%2e%2e%2f" * 4,
    "..\\..\\" + CANARY, "job/../../../../etc/passwd",
]


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmlocalServer]:
    """A simulated server whose data dir sits alone in a folder, so that anything written beside it shows."""
    data_dir = tmp_path_factory.mktemp("paths") / "data"
    server = SmlocalServer(data_dir, None, ["--backend", "simulated"],
                           {"DOCKER_HOST": f"unix://{data_dir.parent}/no-docker.sock"}).start()
    server.client("s3").create_bucket(Bucket=BUCKET)
    yield server
    server.stop()


def _outside(server: SmlocalServer) -> set[str]:
    """What exists beside the data dir and in /tmp under the canary's name."""
    beside = {p.name for p in server.data_dir.parent.iterdir()}
    return beside | {p.name for p in Path("/tmp").glob(f"{CANARY}*")}


def _done(sm: Any, name: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (job := sm.describe_training_job(TrainingJobName=name))["TrainingJobStatus"] == "InProgress":
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    return job


@pytest.fixture(scope="module")
def completed_job(sim: SmlocalServer) -> str:
    """A job that ran and logged: its streams are what hostile stream names try to climb out of."""
    sm, name = sim.client(), "paths-logged"
    sm.create_training_job(**job_request(name, "bench/simulated:1",
                                         OutputDataConfig={"S3OutputPath": f"s3://{BUCKET}/out"},
                                         Tags=[{"Key": "smlocal:training-seconds", "Value": "0"}]))
    assert _done(sm, name)["TrainingJobStatus"] == "Completed"
    return name


@pytest.mark.parametrize("stream", HOSTILE_NAMES + ["{job}/../../../../etc/passwd", "{job}/algo-1/../../x"])
def test_get_log_events_never_reads_outside_the_jobs_streams(sim, completed_job, stream):
    logs = sim.client("logs")
    stream = stream.replace("{job}", completed_job)
    with pytest.raises(ClientError) as err:
        logs.get_log_events(logGroupName=GROUP, logStreamName=stream, startFromHead=True)
    assert err.value.response["Error"]["Code"] in ("ResourceNotFoundException", "InvalidParameterException")
    assert "root:" not in str(err.value)


@pytest.mark.parametrize("stream", HOSTILE_NAMES)
def test_filter_log_events_finds_nothing_outside_the_jobs_streams(sim, completed_job, stream):
    logs = sim.client("logs")
    for params in ({"logStreamNames": [stream]}, {"logStreamNamePrefix": stream}):
        try:
            found = logs.filter_log_events(logGroupName=GROUP, **params)
        except ClientError as e:
            assert e.response["Error"]["Code"] in ("ResourceNotFoundException", "InvalidParameterException")
            continue
        assert found["events"] == [], (params, found["events"][:3])
    streams = logs.describe_log_streams(logGroupName=GROUP, logStreamNamePrefix=stream)["logStreams"]
    assert streams == []


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_training_job_names_that_climb_are_refused_everywhere(sim, name):
    sm, before = sim.client(), _outside(sim)
    calls = [
        lambda: sm.create_training_job(**job_request(name)),
        lambda: sm.describe_training_job(TrainingJobName=name),
        lambda: sm.stop_training_job(TrainingJobName=name),
        lambda: sm.delete_training_job(TrainingJobName=name),
        lambda: sm.update_training_job(TrainingJobName=name, ProfilerConfig={"DisableProfiler": True}),
    ]
    for call in calls:
        with pytest.raises(ClientError) as err:
            call()
        assert err.value.response["Error"]["Code"] in ("ValidationException", "ResourceNotFound"), err.value
    assert _outside(sim) == before


def test_manifest_keys_that_climb_or_carry_nul_fail_the_job_and_write_nothing_outside(sim):
    """A manifest lists keys the runner joins to its prefix: climbing, absolute, with a NUL byte. The job fails
    with a ClientError, as SageMaker fails a bad manifest, and nothing is written outside its folders."""
    sm, s3, before = sim.client(), sim.client("s3"), _outside(sim)
    s3.put_object(Bucket=BUCKET, Key="data/ok.csv", Body=b"1,2\n")
    for n, entry in enumerate([*CLIMBS[:2], f"/tmp/{CANARY}", "ok.csv\x00../../x", "\x00"]):
        s3.put_object(Bucket=BUCKET, Key=f"manifest-{n}", Body=json.dumps([{"prefix": f"s3://{BUCKET}/data/"},
                                                                           "ok.csv", entry]).encode())
        name = f"paths-manifest-{n}"
        channel = {"ChannelName": "train", "DataSource": {"S3DataSource": {
            "S3DataType": "ManifestFile", "S3Uri": f"s3://{BUCKET}/manifest-{n}"}}}
        sm.create_training_job(**job_request(name, "bench/simulated:1", InputDataConfig=[channel],
                                             OutputDataConfig={"S3OutputPath": f"s3://{BUCKET}/out"},
                                             Tags=[{"Key": "smlocal:training-seconds", "Value": "0"}]))
        job = _done(sm, name)
        assert job["TrainingJobStatus"] == "Failed", (entry, job.get("FailureReason"))
        assert job["FailureReason"].startswith("ClientError: Data download failed:"), job["FailureReason"]
    assert _outside(sim) == before
