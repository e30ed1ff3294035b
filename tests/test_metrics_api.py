"""Training metrics over time through CloudWatch's API: AWS JSON 1.0 (what botocore picks today), Smithy
RPC v2 CBOR (the model's first protocol) and the query protocol (what older botocore releases speak), all
with real botocore clients over HTTP."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import botocore.session
import cbor2
import pytest
import requests
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.support.jobs import assert_completed_in_order, wait_recording
from tests.support.runner_jobs import (
    s3_client,
    sh_job,
)
from tests.support.smlocal import SmlocalServer

NAMESPACE = "/aws/sagemaker/TrainingJobs"
TWO_HOSTS = {"InstanceType": "ml.m5.large", "InstanceCount": 2, "VolumeSizeInGB": 10}
# Host n prints loss=n.1 .. n.4, one a second, and an accuracy once.
SCRIPT = ('n=$(hostname | cut -d- -f2); for i in 1 2 3 4; do echo "epoch $i loss=$n.$i"; sleep 1.1; done; '
          'echo "accuracy: 0.9$n"')
DEFINITIONS = [{"Name": "train:loss", "Regex": r"loss=([0-9.]+)"},
               {"Name": "train:accuracy", "Regex": r"accuracy: (\S+)"}]


def cloudwatch_speaking(protocol: str, server: SmlocalServer, folder: Path, access_key: str = "test",
                        secret_key: str = "test") -> Any:
    """A botocore CloudWatch client that speaks `protocol` (its model reduced to that one protocol)."""
    session = botocore.session.get_session()
    loader = session.get_component("data_loader")
    model = loader.load_service_model("cloudwatch", "service-2")
    model["metadata"]["protocols"] = [protocol]
    model["metadata"]["protocol"] = protocol
    target = folder / protocol / "cloudwatch" / model["metadata"]["apiVersion"]
    target.mkdir(parents=True, exist_ok=True)
    (target / "service-2.json").write_text(json.dumps(model))
    loader.search_paths.insert(0, str(folder / protocol))
    client = session.create_client("cloudwatch", endpoint_url=server.endpoint, region_name="us-east-1",
                                   aws_access_key_id=access_key, aws_secret_access_key=secret_key,
                                   config=Config(retries={"max_attempts": 1}))
    assert client.meta.service_model.resolved_protocol == protocol
    return client


def cbor_cloudwatch(server: SmlocalServer, folder: Path, access_key: str = "test", secret_key: str = "test") -> Any:
    return cloudwatch_speaking("smithy-rpc-v2-cbor", server, folder, access_key, secret_key)


@pytest.fixture(scope="module")
def metric_job(runner_server: SmlocalServer) -> dict[str, Any]:
    s3_client(runner_server)
    name = f"metrics-two-hosts-{int(time.time())}"
    sm = runner_server.client()
    sm.create_training_job(**sh_job(name, SCRIPT, ResourceConfig=TWO_HOSTS,
                                    AlgorithmSpecification={"MetricDefinitions": DEFINITIONS}))
    job, seen = wait_recording(sm, name, {"Completed", "Failed", "Stopped"})
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    assert_completed_in_order(seen)
    assert "InProgress/Training" in seen  # it trains for ~4.5 s
    return job


@pytest.fixture(scope="module")
def json_cloudwatch(runner_server: SmlocalServer) -> Any:
    client = runner_server.client("cloudwatch")
    assert client.meta.service_model.resolved_protocol == "json"
    return client


@pytest.fixture(scope="module")
def cbor_client(runner_server: SmlocalServer, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return cbor_cloudwatch(runner_server, tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def query_client(runner_server: SmlocalServer, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return cloudwatch_speaking("query", runner_server, tmp_path_factory.mktemp("models"))


@pytest.fixture()
def cloudwatch(request: pytest.FixtureRequest, wire: str) -> Any:
    """The module's CloudWatch client for the wire protocol a test is parametrized with."""
    return request.getfixturevalue({"json": "json_cloudwatch", "cbor": "cbor_client", "query": "query_client"}[wire])


def window(job: dict[str, Any]) -> dict[str, Any]:
    # As TrainingJobAnalytics asks: from the training start to a minute after its end.
    return {"StartTime": job["TrainingStartTime"], "EndTime": job["TrainingEndTime"] + dt.timedelta(minutes=1)}


def host_dims(job: dict[str, Any], host: str) -> list[dict[str, str]]:
    return [{"Name": "Host", "Value": f"{job['TrainingJobName']}/{host}"}]


def job_dims(job: dict[str, Any]) -> list[dict[str, str]]:
    return [{"Name": "TrainingJobName", "Value": job["TrainingJobName"]}]


@pytest.mark.parametrize("wire", ["json", "cbor", "query"])
def test_every_value_of_every_host_is_served(metric_job: dict[str, Any], cloudwatch: Any,
                                             wire: str) -> None:
    for n in (1, 2):
        per_second = cloudwatch.get_metric_statistics(
            Namespace=NAMESPACE, MetricName="train:loss", Dimensions=host_dims(metric_job, f"algo-{n}"), Period=1,
            Statistics=["Average", "SampleCount"], **window(metric_job))["Datapoints"]
        assert [p["Average"] for p in sorted(per_second, key=lambda p: p["Timestamp"])] == [
            float(f"{n}.{i}") for i in range(1, 5)]
        assert all(p["SampleCount"] == 1.0 and p["Unit"] == "None" for p in per_second)
        assert all(isinstance(p["Timestamp"], dt.datetime) for p in per_second)
        assert all(metric_job["TrainingStartTime"] - dt.timedelta(seconds=1) <= p["Timestamp"]
                   <= metric_job["TrainingEndTime"] for p in per_second)

    # Both hosts together, over whole minutes, as TrainingJobAnalytics' default period does.
    minutes = cloudwatch.get_metric_statistics(
        Namespace=NAMESPACE, MetricName="train:loss", Dimensions=job_dims(metric_job), Period=60,
        Statistics=["SampleCount", "Sum", "Minimum", "Maximum"], **window(metric_job))["Datapoints"]
    assert sum(p["SampleCount"] for p in minutes) == 8
    assert round(sum(p["Sum"] for p in minutes), 6) == round(sum(n + i / 10 for n in (1, 2) for i in range(1, 5)), 6)
    assert min(p["Minimum"] for p in minutes) == 1.1 and max(p["Maximum"] for p in minutes) == 2.4
    percentiles = cloudwatch.get_metric_statistics(
        Namespace=NAMESPACE, MetricName="train:accuracy", Dimensions=job_dims(metric_job), Period=300,
        ExtendedStatistics=["p50", "p100"], **window(metric_job))["Datapoints"]
    assert [p["ExtendedStatistics"] for p in percentiles] == [{"p50": 0.91, "p100": 0.92}]
    # Other namespaces, dimension sets and units hold nothing.
    for other in ({"Namespace": "AWS/EC2", "Dimensions": job_dims(metric_job)},
                  {"Namespace": NAMESPACE, "Dimensions": job_dims(metric_job) + host_dims(metric_job, "algo-1")},
                  {"Namespace": NAMESPACE, "Dimensions": job_dims(metric_job), "Unit": "Seconds"}):
        assert cloudwatch.get_metric_statistics(MetricName="train:loss", Period=60, Statistics=["Average"],
                                                **other, **window(metric_job))["Datapoints"] == []


@pytest.mark.parametrize("wire", ["json", "cbor", "query"])
def test_get_metric_data_and_list_metrics(metric_job: dict[str, Any], cloudwatch: Any,
                                          wire: str) -> None:
    name = metric_job["TrainingJobName"]
    results = cloudwatch.get_metric_data(MetricDataQueries=[
        {"Id": "host2", "MetricStat": {"Metric": {"Namespace": NAMESPACE, "MetricName": "train:loss",
                                                  "Dimensions": host_dims(metric_job, "algo-2")},
                                       "Period": 1, "Stat": "Maximum"}},
        {"Id": "acc", "MetricStat": {"Metric": {"Namespace": NAMESPACE, "MetricName": "train:accuracy",
                                                "Dimensions": job_dims(metric_job)},
                                     "Period": 60, "Stat": "SampleCount"}, "Label": "accuracy samples"},
    ], ScanBy="TimestampAscending", **window(metric_job))["MetricDataResults"]
    by_id = {r["Id"]: r for r in results}
    assert by_id["host2"]["Values"] == [2.1, 2.2, 2.3, 2.4] and by_id["host2"]["StatusCode"] == "Complete"
    assert by_id["host2"]["Timestamps"] == sorted(by_id["host2"]["Timestamps"])
    assert (by_id["acc"]["Label"], sum(by_id["acc"]["Values"])) == ("accuracy samples", 2.0)

    listed = cloudwatch.list_metrics(Namespace=NAMESPACE, Dimensions=[{"Name": "TrainingJobName", "Value": name}])
    assert sorted(m["MetricName"] for m in listed["Metrics"]) == ["train:accuracy", "train:loss"]
    hosts = cloudwatch.list_metrics(Namespace=NAMESPACE, MetricName="train:loss",
                                    Dimensions=[{"Name": "Host"}])["Metrics"]
    assert {d["Value"] for m in hosts for d in m["Dimensions"]} >= {f"{name}/algo-1", f"{name}/algo-2"}


@pytest.mark.parametrize("wire", ["json", "cbor", "query"])
def test_errors_are_the_models_exceptions(metric_job: dict[str, Any], cloudwatch: Any,
                                          wire: str) -> None:
    base = {"Namespace": NAMESPACE, "MetricName": "train:loss", "Dimensions": job_dims(metric_job)}
    with pytest.raises(cloudwatch.exceptions.InvalidParameterValueException) as info:
        cloudwatch.get_metric_statistics(**base, Period=7, Statistics=["Average"], **window(metric_job))
    assert info.value.response["Error"]["Code"] == "InvalidParameterValue"
    with pytest.raises(cloudwatch.exceptions.InvalidParameterCombinationException):
        cloudwatch.get_metric_statistics(**base, Period=60, Statistics=["Average"], ExtendedStatistics=["p90"],
                                         **window(metric_job))
    with pytest.raises(cloudwatch.exceptions.InvalidParameterCombinationException) as info:
        cloudwatch.get_metric_statistics(**base, Period=1, Statistics=["Average"], StartTime=0, EndTime=86400)
    assert "exceeds the limit of 1,440" in info.value.response["Error"]["Message"]
    with pytest.raises(cloudwatch.exceptions.MissingRequiredParameterException):
        cloudwatch.get_metric_statistics(**base, Period=60, **window(metric_job))
    with pytest.raises(ClientError) as info:
        cloudwatch.get_metric_statistics(**base, Period=60, Statistics=["Average"], StartTime=100, EndTime=50)
    assert info.value.response["Error"]["Code"] == "InvalidParameterValue"


def _cbor_post(server: SmlocalServer, path: str, body: dict[str, Any]) -> requests.Response:
    return requests.post(server.endpoint + path, data=cbor2.dumps(body), timeout=10, headers={
        "smithy-protocol": "rpc-v2-cbor", "Content-Type": "application/cbor", "Accept": "application/cbor"})


def test_cbor_on_the_wire(runner_server: SmlocalServer, metric_job: dict[str, Any]) -> None:
    ok = _cbor_post(runner_server, "/service/GraniteServiceVersion20100801/operation/GetMetricStatistics", {
        "Namespace": NAMESPACE, "MetricName": "train:loss", "Dimensions": host_dims(metric_job, "algo-1"),
        "StartTime": cbor2.CBORTag(1, metric_job["TrainingStartTime"].timestamp()),
        "EndTime": cbor2.CBORTag(1, metric_job["TrainingEndTime"].timestamp() + 60),
        "Period": 60, "Statistics": ["Maximum"]})
    assert ok.status_code == 200
    assert ok.headers["smithy-protocol"] == "rpc-v2-cbor" and ok.headers["content-type"] == "application/cbor"
    points = cbor2.loads(ok.content)["Datapoints"]
    assert all(isinstance(p["Timestamp"], dt.datetime) for p in points)  # CBOR tag 1, decoded by cbor2
    assert max(p["Maximum"] for p in points) == 1.4

    invalid = _cbor_post(runner_server, "/service/GraniteServiceVersion20100801/operation/GetMetricStatistics",
                         {"Namespace": NAMESPACE, "MetricName": "x" * 300, "StartTime": cbor2.CBORTag(1, 0),
                          "EndTime": cbor2.CBORTag(1, 60), "Period": 60, "Statistics": ["Average"]})
    assert invalid.status_code == 400
    assert invalid.headers["x-amzn-query-error"] == "ValidationError;Sender"
    body = cbor2.loads(invalid.content)
    assert body["__type"] == "ValidationException"
    assert "at 'metricName' failed to satisfy constraint: Member must have length less than or equal to 255" \
        in body["message"]
    garbage = requests.post(runner_server.endpoint
                            + "/service/GraniteServiceVersion20100801/operation/ListMetrics", data=b"\xff\x00",
                            headers={"smithy-protocol": "rpc-v2-cbor"}, timeout=10)
    assert cbor2.loads(garbage.content)["__type"] == "SerializationException"
    # SageMaker speaks AWS JSON only; its operations are unknown over CBOR.
    sagemaker = _cbor_post(runner_server, "/service/SageMaker/operation/ListTrainingJobs", {})
    assert sagemaker.status_code == 400 and cbor2.loads(sagemaker.content)["__type"] == "UnknownOperationException"
    unserved = _cbor_post(runner_server, "/service/GraniteServiceVersion20100801/operation/PutMetricData", {})
    assert cbor2.loads(unserved.content)["__type"] == "UnknownOperationException"


def test_json_1_0_on_the_wire(runner_server: SmlocalServer) -> None:
    response = requests.post(runner_server.endpoint + "/", data=json.dumps({"Period": 7}), timeout=10, headers={
        "X-Amz-Target": "GraniteServiceVersion20100801.GetMetricStatistics",
        "Content-Type": "application/x-amz-json-1.0", "x-amzn-query-mode": "true"})
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/x-amz-json-1.0")
    body = response.json()
    assert body["__type"] == "ValidationException"
    assert body["Message"].startswith("4 validation errors detected: ")
    assert response.headers["x-amzn-query-error"] == "ValidationError;Sender"


def _query_post(server: SmlocalServer, fields: dict[str, str]) -> requests.Response:
    return requests.post(server.endpoint + "/", data=fields, timeout=10,
                         headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})


def _query_error(response: requests.Response) -> tuple[str, str, str]:
    root = ElementTree.fromstring(response.content)
    namespace = {"cw": "http://monitoring.amazonaws.com/doc/2010-08-01/"}
    error = root.find("cw:Error", namespace)
    assert root.tag == "{http://monitoring.amazonaws.com/doc/2010-08-01/}ErrorResponse" and error is not None
    assert root.findtext("cw:RequestId", namespaces=namespace) == response.headers["x-amzn-requestid"]
    return tuple(error.findtext(f"cw:{part}", namespaces=namespace) or "" for part in ("Type", "Code", "Message"))


def test_query_on_the_wire(runner_server: SmlocalServer, metric_job: dict[str, Any]) -> None:
    start = metric_job["TrainingStartTime"].astimezone(dt.UTC)
    ok = _query_post(runner_server, {
        "Action": "GetMetricStatistics", "Version": "2010-08-01", "Namespace": NAMESPACE, "MetricName": "train:loss",
        "Dimensions.member.1.Name": "Host", "Dimensions.member.1.Value": f"{metric_job['TrainingJobName']}/algo-1",
        "StartTime": start.strftime("%Y-%m-%dT%H:%M:%SZ"), "EndTime": (start + dt.timedelta(minutes=2)).isoformat(),
        "Period": "60", "Statistics.member.1": "Maximum"})
    assert ok.status_code == 200 and ok.headers["content-type"].startswith("text/xml")
    namespace = {"cw": "http://monitoring.amazonaws.com/doc/2010-08-01/"}
    result = ElementTree.fromstring(ok.content).find("cw:GetMetricStatisticsResult", namespace)
    assert result is not None and result.findtext("cw:Label", namespaces=namespace) == "train:loss"
    points = result.findall("cw:Datapoints/cw:member", namespace)
    assert max(float(p.findtext("cw:Maximum", namespaces=namespace) or 0) for p in points) == 1.4
    assert all((p.findtext("cw:Timestamp", namespaces=namespace) or "").endswith("Z") for p in points)

    # A constraint failure is the query protocol's ValidationError; the model's errors go by their query codes.
    invalid = _query_post(runner_server, {"Action": "GetMetricStatistics", "Version": "2010-08-01", "Period": "7"})
    assert invalid.status_code == 400
    kind, code, message = _query_error(invalid)
    assert (kind, code) == ("Sender", "ValidationError") and message.startswith("4 validation errors detected: ")
    modelled = _query_post(runner_server, {
        "Action": "GetMetricStatistics", "Version": "2010-08-01", "Namespace": NAMESPACE, "MetricName": "m",
        "StartTime": "2026-01-01T00:00:00Z", "EndTime": "2026-01-01T01:00:00Z", "Period": "7",
        "Statistics.member.1": "Average"})
    assert _query_error(modelled)[:2] == ("Sender", "InvalidParameterValue")
    # Unknown and missing actions, in the query protocol's words; SageMaker does not speak it at all.
    unserved = _query_post(runner_server, {"Action": "PutMetricData", "Version": "2010-08-01"})
    assert _query_error(unserved)[1:] == ("InvalidAction", "Could not find operation PutMetricData for version "
                                                           "2010-08-01")
    assert _query_error(_query_post(runner_server, {"Version": "2010-08-01"}))[1] == "MissingAction"
    sagemaker = _query_post(runner_server, {"Action": "ListTrainingJobs", "Version": "2017-07-24"})
    assert sagemaker.status_code == 400
    assert ElementTree.fromstring(sagemaker.content).findtext("Error/Code") == "InvalidAction"


def test_sigv4_holds_for_every_service_and_wire_protocol(smlocal_factory: Any, tmp_path: Path) -> None:
    """Signed with the configured keys, Logs, CloudWatch JSON, CBOR and query, and IAM (query) requests
    pass; signed with another secret, each is refused in its own protocol."""
    secured = smlocal_factory("--no-run-jobs", env={"SMLOCAL_ACCESS_KEY": "AKIDLOCAL", "SMLOCAL_SECRET_KEY": "s3cr3t"})

    def clients(secret: str) -> list[Any]:
        return [secured.client("logs", access_key="AKIDLOCAL", secret_key=secret),
                secured.client("cloudwatch", access_key="AKIDLOCAL", secret_key=secret),
                cbor_cloudwatch(secured, tmp_path / secret, "AKIDLOCAL", secret),
                cloudwatch_speaking("query", secured, tmp_path / secret, "AKIDLOCAL", secret),
                secured.client("iam", access_key="AKIDLOCAL", secret_key=secret)]

    logs, cloudwatch, cbor, query, iam = clients("s3cr3t")
    assert logs.describe_log_groups()["logGroups"] == []
    assert cloudwatch.list_metrics()["Metrics"] == []
    assert cbor.list_metrics()["Metrics"] == []
    assert query.list_metrics()["Metrics"] == []
    assert iam.get_role(RoleName="SageMakerRole")["Role"]["RoleName"] == "SageMakerRole"
    calls = ("describe_log_groups", "list_metrics", "list_metrics", "list_metrics", "get_role")
    # The query protocol's name for a signature that does not match (the JSON protocols' InvalidSignatureException).
    codes = ["InvalidSignatureException"] * 3 + ["SignatureDoesNotMatch"] * 2
    for client, call, code in zip(clients("wrong"), calls, codes, strict=True):
        with pytest.raises(ClientError) as info:
            getattr(client, call)(**({"RoleName": "SageMakerRole"} if call == "get_role" else {}))
        assert info.value.response["Error"]["Code"] == code
