"""SageMaker Python SDK v2 (`sagemaker<3`, in .venv-sdk2), unmodified, against smlocal: the README's
snippet end to end, TrainingJobAnalytics over a job's whole metric series, and `Session().default_bucket()`
with no bucket named anywhere."""

from __future__ import annotations

import json
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.support.jobs import job_request, wait_for_status
from tests.support.sdk_run import (
    assert_walked_to,
    check_default_bucket,
    check_default_bucket_asks_aws_without_aws_data,
    readme_snippet,
    run_guarded,
    store_only_server,
    upload_quickstart_data,
)
from tests.support.smlocal import SmlocalServer

FINAL = {"Completed", "Failed", "Stopped"}


@pytest.fixture(scope="module")
def server(module_smlocal_factory: Callable[..., SmlocalServer], test_images: docker.DockerClient) -> SmlocalServer:
    return module_smlocal_factory("--stop-grace-seconds", "2")


def test_readme_v2_snippet_trains_streams_logs_and_downloads_the_model(
        server: SmlocalServer, tmp_path: Path, unique_name: Callable[[str], str]) -> None:
    bucket = unique_name("sdk2")
    upload_quickstart_data(server, bucket, tmp_path)
    run = run_guarded(2, readme_snippet(2), server, bucket, tmp_path)
    assert run.result.returncode == 0, run.output[-6000:] + server.log()
    assert run.guard.report() == []

    job, seen = run.only_job()
    assert_walked_to(seen, "Completed/Completed")
    # fit(logs="All") printed the container's lines, then the seconds; attach().logs() printed them again.
    out = run.result.stdout
    assert out.count("[train] fitting LogisticRegression") == 2, out
    assert out.count("train_accuracy=") == 2
    assert "Training seconds:" in out and "Billable seconds:" in out
    assert out.index("[train] fitting") < out.index("Training seconds:")
    # The analytics dataframe holds the metric the job logged.
    assert "train:accuracy" in out
    model = tmp_path / "sdk2-model" / "model.tar.gz"
    with tarfile.open(model) as tar:
        assert "model.joblib" in [n.removeprefix("./") for n in tar.getnames()]
    described = server.client().describe_training_job(TrainingJobName=job)
    assert described["AlgorithmSpecification"]["TrainingImage"] == "smlocal-example/sklearn:1"
    assert described["ModelArtifacts"]["S3ModelArtifacts"] == f"s3://{bucket}/output/{job}/output/model.tar.gz"


ANALYTICS = """
import json
import boto3
from sagemaker.analytics import TrainingJobAnalytics

print("cloudwatch protocol:", boto3.client("cloudwatch").meta.service_model.resolved_protocol)
frame = TrainingJobAnalytics("{job}", period=1).dataframe()
print("FRAME " + frame.to_json(orient="records"))
per_minute = TrainingJobAnalytics("{job}").dataframe()
print("MINUTES " + per_minute.to_json(orient="records"))
"""


def test_training_job_analytics_dataframe_holds_every_logged_value(
        server: SmlocalServer, tmp_path: Path, unique_name: Callable[[str], str]) -> None:
    name = unique_name("analytics")
    server.client("s3").create_bucket(Bucket="smlocal-test-output")
    values = [0.9, 0.7, 0.45, 0.3, 0.25]
    # One value per second (1.1 s apart): with period=1 each lands in a period of its own.
    script = "; ".join(f'echo "epoch {i}: loss={v}"; sleep 1.1' for i, v in enumerate(values, 1))
    sm = server.client()
    sm.create_training_job(**job_request(name, AlgorithmSpecification={
        "TrainingImage": "smlocal-test/busybox:1", "TrainingInputMode": "File",
        "ContainerEntrypoint": ["sh", "-c", script],
        "MetricDefinitions": [{"Name": "loss", "Regex": r"loss=([0-9.]+)"}]}))
    statuses = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        job = sm.describe_training_job(TrainingJobName=name)
        status = f"{job['TrainingJobStatus']}/{job['SecondaryStatus']}"
        if not statuses or statuses[-1] != status:
            statuses.append(status)
        if job["TrainingJobStatus"] in FINAL:
            break
        time.sleep(0.2)
    assert statuses[-1] == "Completed/Completed" and "InProgress/Training" in statuses, statuses
    assert wait_for_status(sm, name, FINAL)["FinalMetricDataList"][0]["Value"] == 0.25

    run = run_guarded(2, ANALYTICS.replace("{job}", name), server, "unused", tmp_path)
    assert run.result.returncode == 0, run.output[-6000:]
    assert run.guard.report() == []
    # The pinned SDK's botocore talks AWS JSON 1.0 to CloudWatch (the model also offers CBOR and query).
    assert "cloudwatch protocol: json" in run.result.stdout
    frame: list[dict[str, Any]] = json.loads(run.result.stdout.split("FRAME ", 1)[1].splitlines()[0])
    assert [row["value"] for row in frame] == values
    assert {row["metric_name"] for row in frame} == {"loss"}
    assert [row["timestamp"] for row in frame] == sorted(row["timestamp"] for row in frame)
    assert frame[0]["timestamp"] == 0.0 and frame[-1]["timestamp"] >= 4.0
    # The default period averages per minute, as CloudWatch does: the values' mean over the minutes they span.
    minutes = json.loads(run.result.stdout.split("MINUTES ", 1)[1].splitlines()[0])
    assert 1 <= len(minutes) <= 2
    if len(minutes) == 1:
        assert minutes[0]["value"] == pytest.approx(sum(values) / len(values))


@pytest.fixture(scope="module", params=["files", "memory"])
def store_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmlocalServer]:
    yield from store_only_server(tmp_path_factory.mktemp(f"smlocal-{request.param}"), request.param)


SDK_IMPORTS = "from sagemaker import Session\nfrom sagemaker.s3 import S3Downloader, S3Uploader\n"


def test_default_bucket_is_the_sdks_own_made_in_smlocals_store(store_server: SmlocalServer, tmp_path: Path) -> None:
    check_default_bucket(2, SDK_IMPORTS, store_server, tmp_path)


@pytest.mark.parametrize("store_server", ["files"], indirect=True)
def test_without_aws_data_path_the_default_bucket_asks_aws(store_server: SmlocalServer, tmp_path: Path) -> None:
    check_default_bucket_asks_aws_without_aws_data(2, SDK_IMPORTS, store_server, tmp_path)
