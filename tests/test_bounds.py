"""What a job can make the server hold is bounded: one host's log stream (--max-log-bytes-per-host) and the
jobs waiting for a slot (--max-waiting-jobs), through boto3 over real HTTP and real containers."""

from __future__ import annotations

import base64
import json
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from botocore.exceptions import ClientError

from smlocal.core.logstore import is_cut_line
from tests.support.jobs import job_request, wait_for_status
from tests.support.logs import stream_files
from tests.support.runner_jobs import (
    FINAL,
    build_test_images,
    log_messages,
    s3_client,
    settle,
    sh_job,
    wait_until,
)
from tests.support.smlocal import SmlocalServer

GROUP = "/aws/sagemaker/TrainingJobs"
CAP = 64 * 1024
FILLER = "filler: the training log, repeated to fill the stream far past its cap"
# About 3 MB of output, 45 times the cap, in well under a second; a metric line before it. The lines after
# it come just before the container exits.
FLOOD = f'echo "loss=9.5"; yes "{FILLER}" | head -n 40000; '
LOSS = [{"Name": "train:loss", "Regex": r"loss=([0-9.]+)"}]


@pytest.fixture(scope="module")
def capped(module_smlocal_factory: Callable[..., SmlocalServer], docker_engine: docker.DockerClient
           ) -> Iterator[SmlocalServer]:
    build_test_images(docker_engine)
    server = module_smlocal_factory("--max-log-bytes-per-host", str(CAP), "--stop-grace-seconds", "1")
    s3_client(server)
    yield server
    settle(server, docker_engine)


def _stored_events(logs: Any, job: str) -> list[dict[str, Any]]:
    """algo-1's stream through GetLogEvents, page after page until an empty one."""
    [stream] = logs.describe_log_streams(logGroupName=GROUP, logStreamNamePrefix=f"{job}/algo-1-")["logStreams"]
    events: list[dict[str, Any]] = []
    page = logs.get_log_events(logGroupName=GROUP, logStreamName=stream["logStreamName"], startFromHead=True)
    while page["events"]:
        events += page["events"]
        page = logs.get_log_events(logGroupName=GROUP, logStreamName=stream["logStreamName"],
                                   nextToken=page["nextForwardToken"])
    return events


def _assert_cut_near_the_cap(server: SmlocalServer, logs: Any, job: str) -> list[str]:
    messages = [e["message"] for e in _stored_events(logs, job)]
    assert is_cut_line(messages[-1]), messages[-3:]
    assert messages[-1].startswith(f"smlocal: this log stream was cut at {CAP} bytes (--max-log-bytes-per-host)")
    assert sum(map(is_cut_line, messages)) == 1
    filler = [m for m in messages if m == FILLER]
    # Stopped near the cap (each filler line is about 140 bytes on disk), not long before it.
    assert CAP * 0.9 / 140 < len(filler) < CAP / 100
    [file] = stream_files(server.data_dir, job)
    assert CAP * 0.9 < file.stat().st_size <= CAP
    return messages


def test_a_stream_past_its_cap_is_cut_and_its_lines_still_count(capped: SmlocalServer,
                                                                 unique_name: Callable[[str], str]) -> None:
    sm, logs = capped.client(), capped.client("logs")
    name = unique_name("log-cap")
    sm.create_training_job(**sh_job(name, FLOOD + 'echo "loss=0.125"; echo "the last line"',
                                    AlgorithmSpecification={"MetricDefinitions": LOSS}))
    job = wait_for_status(sm, name, FINAL, timeout=90)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    messages = _assert_cut_near_the_cap(capped, logs, name)
    assert "loss=9.5" in messages and "loss=0.125" not in messages and "the last line" not in messages
    # The final metric comes from a line after the cut: dropped from the stream, not from the metrics.
    assert [(m["MetricName"], m["Value"]) for m in job["FinalMetricDataList"]] == [("train:loss", 0.125)]
    # FilterLogEvents finds only what was kept.
    found = logs.filter_log_events(logGroupName=GROUP, logStreamNamePrefix=f"{name}/", filterPattern="loss")
    assert [e["message"] for e in found["events"]] == ["loss=9.5"]


def test_the_failure_reason_quotes_lines_past_the_cut(capped: SmlocalServer,
                                                      unique_name: Callable[[str], str]) -> None:
    sm, logs = capped.client(), capped.client("logs")
    name = unique_name("log-cap-fails")
    sm.create_training_job(**sh_job(name, FLOOD + 'echo "fatal: the data ran out at row 7"; exit 3'))
    job = wait_for_status(sm, name, FINAL, timeout=90)
    assert job["TrainingJobStatus"] == "Failed"
    assert "exit code: 3" in job["FailureReason"] and "fatal: the data ran out at row 7" in job["FailureReason"]
    assert "fatal: the data ran out at row 7" not in _assert_cut_near_the_cap(capped, logs, name)


def test_a_restarted_server_keeps_a_cut_stream_cut(smlocal_factory: Callable[..., SmlocalServer],
                                                   docker_engine: docker.DockerClient,
                                                   unique_name: Callable[[str], str]) -> None:
    build_test_images(docker_engine)
    server = smlocal_factory("--max-log-bytes-per-host", str(CAP), "--stop-grace-seconds", "1")
    sm, logs = server.client(), server.client("logs")
    s3_client(server)
    name = unique_name("log-cap-restart")
    sm.create_training_job(**sh_job(name, FLOOD + f'sleep 5; yes "{FILLER}" | head -n 2000; echo "loss=0.25"',
                                    AlgorithmSpecification={"MetricDefinitions": LOSS}))
    wait_until(lambda: any(map(is_cut_line, log_messages(server, name))), 60, "the stream to be cut")
    # Killed mid-job: the restarted server adopts the container and takes the stream up again.
    server.stop(kill=True)
    server.start()
    job = wait_for_status(sm, name, FINAL, timeout=90)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    _assert_cut_near_the_cap(server, logs, name)
    assert [(m["MetricName"], m["Value"]) for m in job["FinalMetricDataList"]] == [("train:loss", 0.25)]
    settle(server, docker_engine)


def test_jobs_past_the_waiting_cap_are_refused_and_not_stored(smlocal_factory: Callable[..., SmlocalServer],
                                                              docker_engine: docker.DockerClient,
                                                              unique_name: Callable[[str], str]) -> None:
    build_test_images(docker_engine)
    server = smlocal_factory("--max-concurrent-jobs", "1", "--max-waiting-jobs", "2", "--stop-grace-seconds", "1")
    sm = server.client()
    s3_client(server)
    holder, first, second, refused = (unique_name(p) for p in ("holder", "wait-1", "wait-2", "refused"))
    sm.create_training_job(**sh_job(holder, "sleep 300"))
    wait_until(lambda: sm.describe_training_job(TrainingJobName=holder)["SecondaryStatus"] == "Training", 60,
               "the holder to train")
    for name in (first, second):
        sm.create_training_job(**sh_job(name, "true"))
    for name in (first, second):
        wait_until(lambda n=name: sm.describe_training_job(TrainingJobName=n)["SecondaryStatus"] == "Pending", 30,
                   f"{name} to wait")

    with pytest.raises(ClientError) as info:
        sm.create_training_job(**sh_job(refused, "true"))
    error = info.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert error["Error"]["Code"] == "ResourceLimitExceeded"
    assert error["Error"]["Message"] == (
        "The account-level service limit 'Number of training jobs waiting for an instance' is 2 Jobs, with current "
        "utilization of 2 Jobs and a request delta of 1 Jobs. Please start smlocal with a higher --max-waiting-jobs "
        "to request an increase for this limit.")
    # Nothing was stored for it.
    with pytest.raises(ClientError) as missing:
        sm.describe_training_job(TrainingJobName=refused)
    assert missing.value.response["Error"]["Code"] == "ValidationException"
    assert sm.list_training_jobs(NameContains=refused)["TrainingJobSummaries"] == []
    assert len(sm.list_training_jobs(StatusEquals="InProgress")["TrainingJobSummaries"]) == 3

    # The cap counts waiting jobs: one stopped while it waits makes room for the next.
    sm.stop_training_job(TrainingJobName=second)
    assert wait_for_status(sm, second, FINAL, timeout=30)["TrainingJobStatus"] == "Stopped"
    sm.create_training_job(**sh_job(refused, "true"))
    sm.stop_training_job(TrainingJobName=holder)
    for name in (first, refused):
        assert wait_for_status(sm, name, FINAL, timeout=60)["TrainingJobStatus"] == "Completed"
    settle(server, docker_engine)


# ---- FilterLogEvents pages ------------------------------------------------------------------------


@pytest.fixture()
def simulated_logs(tmp_path: Path) -> Iterator[SmlocalServer]:
    """A simulated server (no engine: it writes the streams itself) whose jobs print 300 lines each, several
    to a millisecond, on each of 3 hosts; 3 such jobs done."""
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"rules": [{"training-seconds": 0.1, "log": [
        f"step {i} loss={1 / (i + 1):.5f}" for i in range(300)]}]}))
    server = SmlocalServer(tmp_path / "data", None, ["--backend", "simulated", "--simulate-rules", str(rules),
                                                     "--max-hosts-per-job", "3"]).start()
    try:
        sm = server.client()
        s3_client(server)
        names = [f"filter-merge-{i}" for i in range(3)]
        for name in names:
            sm.create_training_job(**job_request(name, ResourceConfig={
                "InstanceType": "ml.m5.large", "InstanceCount": 3, "VolumeSizeInGB": 10}))
        for name in names:
            assert wait_for_status(sm, name, FINAL, timeout=60)["TrainingJobStatus"] == "Completed"
        yield server
    finally:
        server.stop()


def _reference(logs: Any) -> list[tuple[int, str, str]]:
    """Every event of the group, each stream read whole through GetLogEvents, in FilterLogEvents' order:
    timestamp, then stream name, then place in its stream."""
    keyed = []
    for stream in logs.describe_log_streams(logGroupName=GROUP)["logStreams"]:
        name = stream["logStreamName"]
        page = logs.get_log_events(logGroupName=GROUP, logStreamName=name, startFromHead=True, limit=1000)
        position = 0
        while page["events"]:
            for event in page["events"]:
                keyed.append((event["timestamp"], name, position, event["message"]))
                position += 1
            page = logs.get_log_events(logGroupName=GROUP, logStreamName=name, nextToken=page["nextForwardToken"])
    return [(ts, name, message) for ts, name, _, message in sorted(keyed)]


def _pages(logs: Any, limit: int, **params: Any) -> list[list[dict[str, Any]]]:
    pages, token = [], None
    while True:
        page = logs.filter_log_events(logGroupName=GROUP, limit=limit, **params, **({"nextToken": token} if token
                                                                                     else {}))
        pages.append(page["events"])
        token = page.get("nextToken")
        if token is None:
            return pages


def test_filter_log_events_pages_merge_every_stream_in_order(simulated_logs: SmlocalServer) -> None:
    logs = simulated_logs.client("logs")
    reference = _reference(logs)
    assert len({name for _, name, _ in reference}) == 9 and len(reference) == 9 * 300
    # Timestamps are shared within and across streams: the order past the timestamp is the tie-break's.
    assert len({ts for ts, _, _ in reference}) < len(reference) / 2

    pages = _pages(logs, 97)
    assert [len(p) for p in pages[:-1]] == [97] * (len(pages) - 1) and 0 < len(pages[-1]) <= 97
    events = [e for page in pages for e in page]
    assert [(e["timestamp"], e["logStreamName"], e["message"]) for e in events] == reference
    assert len({e["eventId"] for e in events}) == len(events)
    # The hosts of a job print at once: their streams interleave, not one after another (8 switches).
    streams = [e["logStreamName"] for e in events]
    assert sum(a != b for a, b in zip(streams, streams[1:], strict=False)) > 100

    # With a pattern and a time window, the pages are the reference's matching part.
    middle = reference[len(reference) // 2][0]
    matching = [r for r in reference if "loss=0.00" in r[2] and r[0] >= middle]
    pages = _pages(logs, 40, filterPattern='"loss=0.00"', startTime=middle)
    assert [len(p) for p in pages[:-1]] == [40] * (len(pages) - 1)
    assert [(e["timestamp"], e["logStreamName"], e["message"]) for page in pages for e in page] == matching

    # A token is tied to its query, as CloudWatch's are.
    first = logs.filter_log_events(logGroupName=GROUP, limit=5)
    with pytest.raises(ClientError) as info:
        logs.filter_log_events(logGroupName=GROUP, limit=5, filterPattern="loss", nextToken=first["nextToken"])
    assert info.value.response["Error"]["Code"] == "InvalidParameterException"
    # A crafted one that inflates to 50 MiB is refused, not inflated.
    bomb = "z" + base64.urlsafe_b64encode(zlib.compress(b" " * (50 << 20))).decode()
    with pytest.raises(ClientError) as info:
        logs.filter_log_events(logGroupName=GROUP, limit=5, nextToken=bomb)
    assert info.value.response["Error"]["Code"] == "InvalidParameterException"
