"""The CloudWatch Logs API on smlocal's port: the aws CLI and boto3 read real jobs' logs, live and paged."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests
from botocore.exceptions import ClientError

from tests.support.awscli import aws
from tests.support.jobs import assert_completed_in_order, wait_recording
from tests.support.logs import stream_files
from tests.support.runner_jobs import (
    FINAL,
    log_messages,
    s3_client,
    sh_job,
    wait_until,
)
from tests.support.smlocal import SmlocalServer

SERVER = "runner_server"  # `sm` and `s3` are clients of the runner plugin's server (tests/conftest.py)

GROUP = "/aws/sagemaker/TrainingJobs"
TWO_HOSTS = {"InstanceType": "ml.m5.large", "InstanceCount": 2, "VolumeSizeInGB": 10}
# Each host prints 30 numbered lines; every tenth also carries a loss.
THIRTY_LINES = ('for i in $(seq 1 30); do echo "$(hostname) line $i"; '
                'if [ $((i % 10)) -eq 0 ]; then echo "$(hostname) loss=$i"; fi; done')


@pytest.fixture()
def logs(runner_server: SmlocalServer) -> Any:
    return runner_server.client("logs")


@pytest.fixture(scope="module")
def two_host_job(runner_server: SmlocalServer) -> dict[str, Any]:
    """A finished two-host job with 33 events per host (shared by the read-only tests below)."""
    sm = runner_server.client()
    s3_client(runner_server)
    name = f"logs-two-hosts-{int(time.time())}"
    sm.create_training_job(**sh_job(name, THIRTY_LINES, ResourceConfig=TWO_HOSTS))
    job, seen = wait_recording(sm, name, FINAL)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    assert_completed_in_order(seen)
    return job


def lines_of(host: str) -> list[str]:
    out = []
    for i in range(1, 31):
        out.append(f"{host} line {i}")
        if i % 10 == 0:
            out.append(f"{host} loss={i}")
    return out


def stream_of(logs: Any, job: str, host: str) -> str:
    streams = logs.describe_log_streams(logGroupName=GROUP, logStreamNamePrefix=f"{job}/{host}-")["logStreams"]
    [stream] = streams
    return stream["logStreamName"]


# ---- the aws CLI --------------------------------------------------------------------------------


def test_cli_describe_log_streams_pages_across_hosts(runner_server: SmlocalServer,
                                                     two_host_job: dict[str, Any]) -> None:
    name = two_host_job["TrainingJobName"]
    base = ["logs", "describe-log-streams", "--log-group-name", GROUP, "--log-stream-name-prefix", f"{name}/"]
    first = json.loads(aws(runner_server, *base, "--max-items", "1").stdout)
    assert len(first["logStreams"]) == 1 and first["NextToken"]
    second = json.loads(aws(runner_server, *base, "--max-items", "1", "--starting-token", first["NextToken"]).stdout)
    assert "NextToken" not in second
    streams = first["logStreams"] + second["logStreams"]
    assert [s["logStreamName"].split("/")[1].rsplit("-", 1)[0] for s in streams] == ["algo-1", "algo-2"]
    for stream in streams:
        assert stream["logStreamName"].startswith(f"{name}/algo-")
        created = stream["creationTime"]
        assert created % 1000 == 0 and created >= int(two_host_job["CreationTime"].timestamp()) * 1000
        assert created <= stream["firstEventTimestamp"] <= stream["lastEventTimestamp"] <= stream["lastIngestionTime"]
    # The CLI's own pagination (page size 1) walks the same two pages.
    everything = json.loads(aws(runner_server, *base, "--page-size", "1").stdout)
    assert [s["logStreamName"] for s in everything["logStreams"]] == [s["logStreamName"] for s in streams]
    # Newest event last: ordering by LastEventTime, descending, has no prefix (CloudWatch forbids one).
    by_time = json.loads(aws(runner_server, "logs", "describe-log-streams", "--log-group-name", GROUP,
                             "--order-by", "LastEventTime", "--descending").stdout)["logStreams"]
    last_events = [s.get("lastEventTimestamp", 0) for s in by_time]
    assert last_events == sorted(last_events, reverse=True)


def test_cli_get_log_events_pages_forward_and_backward(runner_server: SmlocalServer, logs: Any,
                                                       two_host_job: dict[str, Any]) -> None:
    name = two_host_job["TrainingJobName"]
    stream = stream_of(logs, name, "algo-2")
    base = ["logs", "get-log-events", "--log-group-name", GROUP, "--log-stream-name", stream]
    pages: list[list[str]] = []
    page = json.loads(aws(runner_server, *base, "--start-from-head", "--limit", "7").stdout)
    while True:
        pages.append([e["message"] for e in page["events"]])
        for event in page["events"]:
            assert isinstance(event["timestamp"], int) and isinstance(event["ingestionTime"], int)
        if not page["events"]:
            break
        token = page["nextForwardToken"]
        page = json.loads(aws(runner_server, *base, "--limit", "7", "--next-token", token).stdout)
    assert [len(p) for p in pages] == [7, 7, 7, 7, 5, 0]
    assert [m for p in pages for m in p] == lines_of("algo-2")
    # At the end the forward token stays put: a tail that polls it sees only new lines.
    assert page["nextForwardToken"] == token

    # Without --start-from-head: the newest events, then older ones through the backward token.
    newest = json.loads(aws(runner_server, *base, "--limit", "5").stdout)
    assert [e["message"] for e in newest["events"]] == lines_of("algo-2")[-5:]
    older = json.loads(aws(runner_server, *base, "--limit", "5", "--next-token",
                           newest["nextBackwardToken"]).stdout)
    assert [e["message"] for e in older["events"]] == lines_of("algo-2")[-10:-5]


def test_cli_filter_log_events_interleaves_hosts_and_pages(runner_server: SmlocalServer, logs: Any,
                                                           two_host_job: dict[str, Any]) -> None:
    name = two_host_job["TrainingJobName"]
    base = ["logs", "filter-log-events", "--log-group-name", GROUP, "--log-stream-name-prefix", f"{name}/"]
    found = json.loads(aws(runner_server, *base, "--filter-pattern", '"line 1"', "--page-size", "4").stdout)
    expected = sorted(m for host in ("algo-1", "algo-2") for m in lines_of(host) if "line 1" in m)
    assert sorted(e["message"] for e in found["events"]) == expected and len(expected) == 22
    stamps = [e["timestamp"] for e in found["events"]]
    assert stamps == sorted(stamps)
    assert len({e["eventId"] for e in found["events"]}) == 22
    assert {e["logStreamName"].split("/")[1].rsplit("-", 1)[0] for e in found["events"]} == {"algo-1", "algo-2"}

    # The service's own pages, as the CLI fetched them: limit 4 -> a nextToken until the last page.
    pages, token = [], None
    while True:
        page = logs.filter_log_events(logGroupName=GROUP, logStreamNamePrefix=f"{name}/", filterPattern='"line 1"',
                                      limit=4, **({"nextToken": token} if token else {}))
        pages.append(len(page["events"]))
        token = page.get("nextToken")
        if token is None:
            break
    assert pages == [4, 4, 4, 4, 4, 2]

    # `?` alternatives, exclusions and one named stream.
    stream = stream_of(logs, name, "algo-1")
    alternatives = json.loads(aws(runner_server, "logs", "filter-log-events", "--log-group-name", GROUP,
                                  "--log-stream-names", stream, "--filter-pattern",
                                  '?"line 7" ?loss=30 -"line 27"').stdout)
    assert [e["message"] for e in alternatives["events"]] == ["algo-1 line 7", "algo-1 loss=30"]


def test_time_window_applies_to_get_and_filter(logs: Any, two_host_job: dict[str, Any]) -> None:
    name = two_host_job["TrainingJobName"]
    stream = stream_of(logs, name, "algo-1")
    events = logs.get_log_events(logGroupName=GROUP, logStreamName=stream, startFromHead=True)["events"]
    middle = events[len(events) // 2]["timestamp"]
    after = logs.get_log_events(logGroupName=GROUP, logStreamName=stream, startFromHead=True,
                                startTime=middle)["events"]
    assert [e["message"] for e in after] == [e["message"] for e in events if e["timestamp"] >= middle]
    before = logs.filter_log_events(logGroupName=GROUP, logStreamNames=[stream], endTime=middle)["events"]
    assert [e["message"] for e in before] == [e["message"] for e in events if e["timestamp"] < middle]


# ---- what SDK v2's fit(logs=True) relies on ------------------------------------------------------


def test_sdk_pagination_traps_are_honoured(logs: Any, two_host_job: dict[str, Any]) -> None:
    name = two_host_job["TrainingJobName"]
    # fit() loops `while "nextToken" in response` without passing it back.
    streams = logs.describe_log_streams(logGroupName=GROUP, logStreamNamePrefix=f"{name}/",
                                        orderBy="LogStreamName", limit=50)
    assert "nextToken" not in streams and len(streams["logStreams"]) == 2
    # It reads until a page is empty, following nextForwardToken, starting from a timestamp.
    stream = streams["logStreams"][0]["logStreamName"]
    first = logs.get_log_events(logGroupName=GROUP, logStreamName=stream, startTime=0, startFromHead=True)
    assert len(first["events"]) == 33 and first["nextForwardToken"]
    last = logs.get_log_events(logGroupName=GROUP, logStreamName=stream, startTime=0, startFromHead=True,
                               nextToken=first["nextForwardToken"])
    assert last["events"] == [] and last["nextForwardToken"]


# ---- errors ---------------------------------------------------------------------------------------


def _code(call: Callable[[], Any]) -> tuple[str, str]:
    with pytest.raises(ClientError) as info:
        call()
    return info.value.response["Error"]["Code"], info.value.response["Error"]["Message"]


def test_missing_group_stream_and_bad_tokens(runner_server: SmlocalServer, logs: Any,
                                             two_host_job: dict[str, Any]) -> None:
    name = two_host_job["TrainingJobName"]
    # Logs belong to an account and region: the group does not exist where no job ran.
    elsewhere = runner_server.client("logs", region="eu-north-1")
    assert _code(lambda: elsewhere.describe_log_streams(logGroupName=GROUP)) == (
        "ResourceNotFoundException", "The specified log group does not exist.")
    assert elsewhere.describe_log_groups()["logGroups"] == []
    assert [g["logGroupName"] for g in logs.describe_log_groups(logGroupNamePrefix="/aws/sagemaker")["logGroups"]] \
        == [GROUP]
    assert _code(lambda: logs.get_log_events(logGroupName="/aws/lambda/x", logStreamName=f"{name}/algo-1-1")) == (
        "ResourceNotFoundException", "The specified log group does not exist.")
    assert _code(lambda: logs.get_log_events(logGroupName=GROUP, logStreamName=f"{name}/algo-9-1")) == (
        "ResourceNotFoundException", "The specified log stream does not exist.")
    stream = stream_of(logs, name, "algo-1")
    other = stream_of(logs, name, "algo-2")
    foreign = logs.get_log_events(logGroupName=GROUP, logStreamName=other, limit=1)["nextForwardToken"]
    own = logs.get_log_events(logGroupName=GROUP, logStreamName=stream, limit=1)["nextForwardToken"]
    inside_an_event = f"f/{1:020d}/{own.rsplit('/', 1)[1]}"
    # A token of another stream, a forged one, and one that points inside an event are refused.
    for bad in (foreign, "f/12/abc", inside_an_event):
        assert _code(lambda b=bad: logs.get_log_events(logGroupName=GROUP, logStreamName=stream, nextToken=b))[0] \
            == "InvalidParameterException"
    assert _code(lambda: logs.describe_log_streams(logGroupName=GROUP, logStreamNamePrefix=name,
                                                   orderBy="LastEventTime"))[0] == "InvalidParameterException"
    assert _code(lambda: logs.filter_log_events(logGroupName=GROUP, filterPattern="{ $.x = 1 }"))[0] \
        == "InvalidParameterException"
    assert _code(lambda: logs.filter_log_events(logGroupName=GROUP, nextToken="bm90IGEgdG9rZW4="))[0] \
        == "InvalidParameterException"


def _raw(server: SmlocalServer, operation: str, body: dict[str, Any]) -> requests.Response:
    return requests.post(server.endpoint + "/", data=json.dumps(body), timeout=10, headers={
        "X-Amz-Target": f"Logs_20140328.{operation}", "Content-Type": "application/x-amz-json-1.1"})


def test_model_constraints_are_invalid_parameter_exceptions(runner_server: SmlocalServer) -> None:
    # botocore checks `min` itself; what it lets through, the server checks against the logs model.
    response = _raw(runner_server, "GetLogEvents", {"logGroupName": GROUP, "logStreamName": "a:b*", "limit": 10001})
    assert response.status_code == 400
    body = response.json()
    assert body["__type"] == "InvalidParameterException"
    assert body["Message"].startswith("2 validation errors detected: ")
    assert "Value 'a:b*' at 'logStreamName' failed to satisfy constraint: Member must satisfy regular " \
           "expression pattern: [^:*]*" in body["Message"]
    assert "Value '10001' at 'limit' failed to satisfy constraint: Member must have value less than or equal " \
           "to 10000" in body["Message"]
    missing = _raw(runner_server, "GetLogEvents", {"logGroupName": GROUP}).json()
    assert (missing["__type"], missing["Message"]) == (
        "InvalidParameterException", "1 validation error detected: Value null at 'logStreamName' failed to "
        "satisfy constraint: Member must not be null")
    unserved = _raw(runner_server, "PutLogEvents", {})
    assert unserved.json()["__type"] == "UnknownOperationException"
    assert unserved.headers["content-type"].startswith("application/x-amz-json-1.1")


# ---- a flood at the very end ---------------------------------------------------------------------


def test_a_container_that_floods_and_exits_at_once_keeps_its_last_lines(
        runner_server: SmlocalServer, sm: Any, s3: Any, unique_name: Callable[[str], str]) -> None:
    """Docker ends a followed output when the container exits, dropping what smlocal had not read yet; the
    follower reads the rest: every line once, and the metrics and the tail from the very last ones."""
    name = unique_name("flood-exit")
    filler = "filler line printed far faster than a log follower writes it down"
    sm.create_training_job(**sh_job(name, f'yes "{filler}" | head -n 40000; echo "loss=0.125"; echo "the end"',
                                    AlgorithmSpecification={"MetricDefinitions": [
                                        {"Name": "loss", "Regex": r"loss=([0-9.]+)"}]}))
    job, _ = wait_recording(sm, name, FINAL)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    assert [(m["MetricName"], m["Value"]) for m in job["FinalMetricDataList"]] == [("loss", 0.125)]
    messages = log_messages(runner_server, name)
    assert messages[-2:] == ["loss=0.125", "the end"]
    assert messages.count(filler) == 40000


# ---- live -----------------------------------------------------------------------------------------


def test_a_line_is_readable_while_the_job_still_runs(runner_server: SmlocalServer, sm: Any, logs: Any,
                                                     unique_name: Callable[[str], str]) -> None:
    name = unique_name("live")
    sm.create_training_job(**sh_job(name, 'echo "first line"; sleep 8; echo "second line"'))
    statuses: list[str] = []
    seen: list[tuple[float, dict[str, Any], str]] = []

    def first_line_visible() -> bool:
        job = sm.describe_training_job(TrainingJobName=name)
        statuses.append(f"{job['TrainingJobStatus']}/{job['SecondaryStatus']}")
        try:
            streams = logs.describe_log_streams(logGroupName=GROUP, logStreamNamePrefix=f"{name}/")["logStreams"]
        except logs.exceptions.ResourceNotFoundException:
            return False
        for stream in streams:
            events = logs.get_log_events(logGroupName=GROUP, logStreamName=stream["logStreamName"],
                                         startFromHead=True)["events"]
            if events:
                seen.append((time.time(), events[0], statuses[-1]))
                return len(events) == 1
        return False

    wait_until(first_line_visible, 60, "the first line through GetLogEvents")
    seen_at, event, status = seen[-1]
    assert event["message"] == "first line"
    assert status == "InProgress/Training", statuses
    # Served as the container printed it, not when it ended (it sleeps 8 s before the second line).
    # The line's own timestamp is Docker's; measured here about 0.1 s on an idle machine, the bound
    # leaves room for a loaded one.
    lag = seen_at - event["timestamp"] / 1000
    print(f"first line visible {lag:.3f} s after it was printed; statuses seen: {statuses}")
    assert lag < 4.0, lag
    job = sm.describe_training_job(TrainingJobName=name)
    assert job["TrainingJobStatus"] == "InProgress"
    sm.stop_training_job(TrainingJobName=name)
    stopped, after_stop = wait_recording(sm, name, FINAL, timeout=60)
    assert stopped["TrainingJobStatus"] == "Stopped" and after_stop[0] in ("Stopping/Stopping", "Stopped/Stopped")


# ---- a re-created name ----------------------------------------------------------------------------


def test_a_recreated_job_gets_fresh_logs_and_metrics(runner_server: SmlocalServer, sm: Any, logs: Any,
                                                     unique_name: Callable[[str], str]) -> None:
    name = unique_name("again")
    cloudwatch = runner_server.client("cloudwatch")
    definitions = {"MetricDefinitions": [{"Name": "loss", "Regex": r"loss=([0-9.]+)"}]}

    def losses(job: dict[str, Any]) -> list[float]:
        points = cloudwatch.get_metric_statistics(
            Namespace=GROUP, MetricName="loss", Dimensions=[{"Name": "TrainingJobName", "Value": name}],
            StartTime=job["CreationTime"], EndTime=job["LastModifiedTime"].timestamp() + 60, Period=60,
            Statistics=["Sum", "SampleCount"])["Datapoints"]
        return [p["Sum"] for p in points]

    def stored_points() -> tuple[int, int]:
        """(points of jobs that exist, points of no job): the store itself, not what the API shows."""
        with sqlite3.connect(runner_server.data_dir / "smlocal.db") as db:
            live = db.execute("SELECT COUNT(*) FROM metric_points WHERE job_id IN "
                              "(SELECT id FROM training_jobs WHERE name = ?)", (name,)).fetchone()[0]
            orphans = db.execute("SELECT COUNT(*) FROM metric_points WHERE job_id NOT IN "
                                 "(SELECT id FROM training_jobs)").fetchone()[0]
        return live, orphans

    sm.create_training_job(**sh_job(name, 'echo "old incarnation loss=1"', AlgorithmSpecification=definitions))
    old, seen = wait_recording(sm, name, FINAL)
    assert old["TrainingJobStatus"] == "Completed", old.get("FailureReason")
    assert_completed_in_order(seen)
    old_stream = stream_of(logs, name, "algo-1")
    assert losses(old) == [1.0]
    assert stored_points() == (1, 0)
    sm.delete_training_job(TrainingJobName=name)
    assert stored_points() == (0, 0)
    # Gone with the job: its stream, its files and its metric points.
    assert _code(lambda: logs.get_log_events(logGroupName=GROUP, logStreamName=old_stream))[0] \
        == "ResourceNotFoundException"
    assert logs.describe_log_streams(logGroupName=GROUP, logStreamNamePrefix=f"{name}/")["logStreams"] == []
    assert stream_files(runner_server.data_dir, name) == []
    assert losses(old) == []

    sm.create_training_job(**sh_job(name, 'echo "new incarnation loss=2"', AlgorithmSpecification=definitions))
    new, seen = wait_recording(sm, name, FINAL)
    assert new["TrainingJobStatus"] == "Completed", new.get("FailureReason")
    # The new incarnation starts from the beginning, not from where the deleted one ended.
    assert seen[0] in ("InProgress/Starting", "InProgress/Downloading"), seen
    assert_completed_in_order(seen)
    messages = [e["message"] for e in logs.filter_log_events(
        logGroupName=GROUP, logStreamNamePrefix=f"{name}/")["events"]]
    assert messages == ["new incarnation loss=2"]
    assert losses(new) == [2.0]

