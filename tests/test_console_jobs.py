"""The console's job page and feeds for jobs that really ran (real containers, the real S3 server), over
plain HTTP: what a container wrote is shown as text, each host's log and metric series is there, and the
artifacts download byte for byte."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from tests.support.console import get, text_of
from tests.support.jobs import wait_for_status
from tests.support.runner_jobs import (
    OUTPUT_BUCKET,
    s3_client,
    sh_job,
)
from tests.support.smlocal import SmlocalServer

FINAL = {"Completed", "Failed", "Stopped"}


def _events(server: SmlocalServer, name: str, stream: str) -> list[str]:
    messages, token = [], None
    while True:
        page = get(server, f"/console/api/jobs/{name}/logs", params={"stream": stream, "token": token or ""}).json()
        messages += [e["message"] for e in page["events"]]
        if not page["events"]:
            return messages
        token = page["nextToken"]


def test_failure_reason_and_log_lines_from_a_container_are_text(runner_server: SmlocalServer,
                                                                 unique_name: Callable[[str], str]) -> None:
    name = unique_name("hostile")
    sm = runner_server.client()
    s3_client(runner_server)
    script = ("echo '<script>alert(1)</script>'; printf '<img src=x onerror=alert(2)> & more' "
              "> /opt/ml/output/failure; exit 3")
    sm.create_training_job(**sh_job(name, script))
    job = wait_for_status(sm, name, FINAL, timeout=90)
    assert job["TrainingJobStatus"] == "Failed"
    assert job["FailureReason"] == ("AlgorithmError: <img src=x onerror=alert(2)> & more, exit code: 3\n"
                                    "Last log lines:\n<script>alert(1)</script>")

    html = get(runner_server, f"/console/jobs/{name}").text
    assert "<img src=x" not in html
    assert ('<pre id="failure-reason">AlgorithmError: &lt;img src=x onerror=alert(2)&gt; &amp; more, exit code: 3\n'
            "Last log lines:\n&lt;script&gt;alert(1)&lt;/script&gt;</pre>") in html
    assert "FailureReason AlgorithmError: <img src=x onerror=alert(2)> & more" in text_of(html)
    # The log feed is JSON: the line as the container printed it, for the page to set as text.
    [stream] = [s["name"] for s in get(runner_server, f"/console/api/jobs/{name}/streams").json()["streams"]]
    assert "<script>alert(1)</script>" in _events(runner_server, name, stream)
    assert get(runner_server, f"/console/api/jobs/{name}/logs",
               params={"stream": stream}).headers["content-type"] == "application/json"


def test_two_hosts_have_a_log_and_a_metric_series_each_and_both_artifacts_download(
        runner_server: SmlocalServer, unique_name: Callable[[str], str]) -> None:
    name = unique_name("twohosts")
    sm = runner_server.client()
    s3 = s3_client(runner_server)
    script = ('n=$(hostname | cut -d- -f2); for i in 1 2 3; do echo "host $n loss=$n.$i"; sleep 1.1; done; '
              'echo "model of $n" > /opt/ml/model/m$n; echo report > /opt/ml/output/data/r$n')
    sm.create_training_job(**sh_job(name, script, ResourceConfig={
        "InstanceType": "ml.m5.large", "InstanceCount": 2, "VolumeSizeInGB": 5},
        AlgorithmSpecification={"MetricDefinitions": [{"Name": "loss", "Regex": r"loss=([0-9.]+)"}]}))
    job = wait_for_status(sm, name, FINAL, timeout=120)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")

    streams = get(runner_server, f"/console/api/jobs/{name}/streams").json()["streams"]
    assert [s["host"] for s in streams] == ["algo-1", "algo-2"]
    for n, stream in enumerate(streams, 1):
        assert _events(runner_server, name, stream["name"]) == [f"host {n} loss={n}.{i}" for i in (1, 2, 3)]

    feed = get(runner_server, f"/console/api/jobs/{name}/metrics").json()
    [loss] = feed["metrics"]
    assert feed["period"] == 1
    # Each value in its own second (GetMetricData, period 1, per host), in time order.
    assert {s["host"]: [v for _, v in s["points"]] for s in loss["series"]} == {
        "algo-1": [1.1, 1.2, 1.3], "algo-2": [2.1, 2.2, 2.3]}
    for series in loss["series"]:
        times = [t for t, _ in series["points"]]
        assert times == sorted(times)

    page = get(runner_server, f"/console/jobs/{name}").text
    assert text_of(page).count("Completed") >= 2
    for artifact in ("model.tar.gz", "output.tar.gz"):
        link = f"/console/jobs/{name}/artifacts/{artifact}"
        assert f'href="{link}"' in page
        stored = s3.get_object(Bucket=OUTPUT_BUCKET, Key=f"models/{name}/output/{artifact}")["Body"].read()
        downloaded = get(runner_server, link)
        assert downloaded.status_code == 200
        assert downloaded.content == stored
        size = re.search(rf"{re.escape(artifact)}</a>\s*<span class=\"muted\">([\d,]+) bytes", page)
        assert size and int(size.group(1).replace(",", "")) == len(stored)


def test_the_list_shows_a_finished_jobs_times_as_describe_gives_them(
        runner_server: SmlocalServer, unique_name: Callable[[str], str]) -> None:
    name = unique_name("timed")
    sm = runner_server.client()
    s3_client(runner_server)
    sm.create_training_job(**sh_job(name, "sleep 1; echo done"))
    job: dict[str, Any] = wait_for_status(sm, name, FINAL, timeout=90)
    assert job["TrainingJobStatus"] == "Completed"
    row = re.search(rf'<tr data-job="{name}">(.*?)</tr>',
                    get(runner_server, "/console/fragments/jobs", params={"name": name}).text, re.S)
    assert row
    cells = [text_of(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row.group(1), re.S)]
    fmt = "%Y-%m-%d %H:%M:%S"
    took = (job["TrainingEndTime"] - job["CreationTime"]).total_seconds()
    assert cells[:6] == [name, "Completed", "Completed", "1", job["CreationTime"].astimezone().strftime(fmt),
                         job["TrainingEndTime"].astimezone().strftime(fmt)]
    # Creation to end (1.5 s or so: under 10 s the console shows tenths).
    assert cells[6].endswith(" s") and abs(float(cells[6].removesuffix(" s")) - took) <= 0.11, (cells[6], took)
