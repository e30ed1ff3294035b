"""Scripted CreateTrainingJob faults (server/services/sagemaker/faults.py), as boto3 sees them with its own retries
off and on: the `smlocal:create-error` tag, and a `--simulate-rules` file's `create-error`.

The API-only server (--no-run-jobs) is enough for what CreateTrainingJob answers; a simulated server (no engine:
DOCKER_HOST points nowhere) shows a job that boto3's retries got through running to Completed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.support.jobs import job_request, wait_for_status
from tests.support.smlocal import STORE_KEY, SmlocalServer

CAPACITY_REASON = ("CapacityError: Unable to provision requested ML compute capacity. "
                   "Please retry using a different ML instance type.")
RATE_EXCEEDED = "Rate exceeded"
INTERNAL_FAILURE = "The request processing has failed because of an unknown error, exception or failure."
QUOTA = ("The account-level service limit 'ml.m5.large for training job usage' is 0 Instances, with current "
         "utilization of 0 Instances and a request delta of 1 Instances. Please contact AWS support to request an "
         "increase for this limit.")
NO_ENGINE = {"DOCKER_HOST": "tcp://127.0.0.1:9"}


def sagemaker(server: SmlocalServer, attempts: int, mode: str = "standard") -> Any:
    """A plain boto3 client of `server` with boto3's own retries: `attempts` in all (1: retries off)."""
    return boto3.client("sagemaker", endpoint_url=server.endpoint, region_name="us-east-1",
                        aws_access_key_id=STORE_KEY, aws_secret_access_key=STORE_KEY,
                        config=Config(retries={"mode": mode, "total_max_attempts": attempts}))


def faulty(name: str, fault: str, **overrides: Any) -> dict[str, Any]:
    tags = [{"Key": "smlocal:create-error", "Value": fault}, *overrides.pop("Tags", [])]
    return job_request(name, Tags=tags, **overrides)


def refused(client: Any, request: dict[str, Any]) -> tuple[int, str, str, dict[str, Any]]:
    """(HTTP status, code, message, response metadata) of a create that fails."""
    with pytest.raises(ClientError) as info:
        client.create_training_job(**request)
    response = info.value.response
    return (response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Code"], response["Error"]["Message"],
            response["ResponseMetadata"])


def assert_not_created(client: Any, name: str) -> None:
    with pytest.raises(ClientError) as info:
        client.describe_training_job(TrainingJobName=name)
    assert info.value.response["Error"] == {"Code": "ValidationException", "Message": "Requested resource not found."}
    assert client.list_training_jobs(NameContains=name)["TrainingJobSummaries"] == []


# ---- the tag, retries off: what AWS answers, and no job ---------------------------------------------------------


@pytest.mark.parametrize(("fault", "status", "message"), [
    ("ThrottlingException", 400, RATE_EXCEEDED),
    ("InternalFailure", 500, INTERNAL_FAILURE),
    ("ResourceLimitExceeded", 400, QUOTA),
])
def test_retries_off_the_client_sees_aws_error_and_no_job_is_made(api_server: SmlocalServer, unique_name: Callable,
                                                                   fault: str, status: int, message: str) -> None:
    client, name = sagemaker(api_server, attempts=1), unique_name(fault)
    for _ in range(3):  # without a count: every time
        got_status, code, got_message, metadata = refused(client, faulty(name, fault))
        assert (got_status, code, got_message) == (status, fault, message)
        assert metadata["RetryAttempts"] == 0
    assert_not_created(client, name)


def test_the_error_is_on_the_wire_as_aws_json_1_1_shapes_it(api_server: SmlocalServer, unique_name: Callable) -> None:
    """The raw answer (boto3 parses `__type` and the x-amzn-ErrorType header alike)."""
    client = sagemaker(api_server, attempts=1)
    seen: dict[str, Any] = {}
    client.meta.events.register("after-call.sagemaker.CreateTrainingJob",
                                lambda http_response, **_: seen.update(http=http_response))
    refused(client, faulty(unique_name("wire"), "InternalFailure"))
    http = seen["http"]
    assert http.status_code == 500
    assert json.loads(http.content) == {"__type": "InternalFailure", "Message": INTERNAL_FAILURE}
    assert http.headers["x-amzn-ErrorType"] == "InternalFailure"
    assert http.headers["Content-Type"] == "application/x-amz-json-1.1"


def test_a_count_fails_that_many_times_then_creates(api_server: SmlocalServer, unique_name: Callable) -> None:
    client, name = sagemaker(api_server, attempts=1), unique_name("count")
    request = faulty(name, "ThrottlingException:2")
    assert [refused(client, request)[1] for _ in range(2)] == ["ThrottlingException"] * 2
    arn = client.create_training_job(**request)["TrainingJobArn"]
    assert client.describe_training_job(TrainingJobName=name)["TrainingJobArn"] == arn
    # Counted per job name: another job with the same tag meets its own two faults.
    other = unique_name("count")
    assert refused(client, faulty(other, "ThrottlingException:2"))[1] == "ThrottlingException"


# ---- boto3's own retries absorb a count ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["standard", "legacy"])
@pytest.mark.parametrize(("fault", "retries"), [("ThrottlingException:2", 2), ("InternalFailure:1", 1)])
def test_boto3_retries_get_through_a_counted_fault(api_server: SmlocalServer, unique_name: Callable, mode: str,
                                                   fault: str, retries: int) -> None:
    client, name = sagemaker(api_server, attempts=3, mode=mode), unique_name(f"retry-{mode}-{retries}")
    response = client.create_training_job(**faulty(name, fault))
    assert response["ResponseMetadata"]["RetryAttempts"] == retries
    job = client.describe_training_job(TrainingJobName=name)
    assert (job["TrainingJobArn"], job["TrainingJobStatus"]) == (response["TrainingJobArn"], "InProgress")


def test_boto3_gives_up_on_a_fault_without_count(api_server: SmlocalServer, unique_name: Callable) -> None:
    client, name = sagemaker(api_server, attempts=3), unique_name("always")
    status, code, message, metadata = refused(client, faulty(name, "ThrottlingException"))
    assert (status, code, message) == (400, "ThrottlingException", RATE_EXCEEDED)
    assert metadata["RetryAttempts"] == 2 and metadata["MaxAttemptsReached"] is True
    assert_not_created(client, name)


def test_boto3_does_not_retry_a_quota_error(api_server: SmlocalServer, unique_name: Callable) -> None:
    client, name = sagemaker(api_server, attempts=3), unique_name("quota")
    request = faulty(name, "ResourceLimitExceeded:1")
    status, code, _, metadata = refused(client, request)
    assert (status, code, metadata["RetryAttempts"]) == (400, "ResourceLimitExceeded", 0)
    # The pipeline's own retry (later, after asking for a quota increase) gets through: the count was one.
    assert client.create_training_job(**request)["ResponseMetadata"]["RetryAttempts"] == 0


# ---- CapacityError: a job that fails in Starting, as on AWS --------------------------------------------------------


def test_capacity_error_creates_the_job_failed_in_starting(api_server: SmlocalServer, unique_name: Callable) -> None:
    client, name = sagemaker(api_server, attempts=1), unique_name("capacity")
    arn = client.create_training_job(**faulty(name, "CapacityError"))["TrainingJobArn"]
    job = client.describe_training_job(TrainingJobName=name)
    assert (job["TrainingJobArn"], job["TrainingJobStatus"], job["SecondaryStatus"]) == (arn, "Failed", "Failed")
    assert job["FailureReason"] == CAPACITY_REASON
    assert [t["Status"] for t in job["SecondaryStatusTransitions"]] == ["Starting", "Failed"]
    assert "TrainingStartTime" not in job and "TrainingTimeInSeconds" not in job
    # The name is taken, as on AWS: a retry is a new job.
    assert refused(client, faulty(name, "CapacityError"))[1] == "ResourceInUse"


# ---- validation ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["Throttling", "ThrottlingException:0", "InternalFailure:x", "CapacityError:"])
def test_a_bad_value_is_a_validation_error_naming_the_tag(api_server: SmlocalServer, unique_name: Callable,
                                                          value: str) -> None:
    client, name = sagemaker(api_server, attempts=1), unique_name(f"bad-{len(value)}")
    status, code, message, _ = refused(client, faulty(name, value))
    assert (status, code) == (400, "ValidationException")
    assert f"Invalid value '{value}' for tag smlocal:create-error" in message
    assert_not_created(client, name)


# ---- a rules file --------------------------------------------------------------------------------------------------

RULES = {"rules": [
    {"match": {"name": "etl-*"}, "create-error": "ThrottlingException:2"},
    {"match": {"name": "capacity-*"}, "create-error": "CapacityError:1"},
    {"match": {"tags": {"team": "no-quota"}}, "create-error": "ResourceLimitExceeded"},
]}


@pytest.fixture(scope="module")
def rules_server(module_smlocal_factory: Callable[..., SmlocalServer],
                 tmp_path_factory: pytest.TempPathFactory) -> SmlocalServer:
    path = tmp_path_factory.mktemp("rules") / "faults.json"
    path.write_text(json.dumps(RULES))
    return module_smlocal_factory("--simulate-rules", str(path), "--no-run-jobs", env=NO_ENGINE)


def test_a_rule_throttles_each_matching_job_twice(rules_server: SmlocalServer, unique_name: Callable) -> None:
    off, on = sagemaker(rules_server, attempts=1), sagemaker(rules_server, attempts=3)
    first, second = unique_name("etl"), unique_name("etl")
    assert [refused(off, job_request(first))[1] for _ in range(2)] == ["ThrottlingException"] * 2
    assert off.create_training_job(**job_request(first))["ResponseMetadata"]["RetryAttempts"] == 0
    assert on.create_training_job(**job_request(second))["ResponseMetadata"]["RetryAttempts"] == 2
    # A job no rule matches is not touched.
    assert off.create_training_job(**job_request(unique_name("other")))["ResponseMetadata"]["RetryAttempts"] == 0


def test_a_rules_capacity_error_counts_the_jobs_it_matched(rules_server: SmlocalServer,
                                                          unique_name: Callable) -> None:
    """A client retries a job failed for capacity as a new job: the next one the rule matches gets through."""
    client = sagemaker(rules_server, attempts=1)
    first, retry = unique_name("capacity"), unique_name("capacity")
    client.create_training_job(**job_request(first))
    client.create_training_job(**job_request(retry))
    failed = client.describe_training_job(TrainingJobName=first)
    assert (failed["TrainingJobStatus"], failed["FailureReason"]) == ("Failed", CAPACITY_REASON)
    assert client.describe_training_job(TrainingJobName=retry)["TrainingJobStatus"] == "InProgress"


def test_a_tag_overrides_the_rule(rules_server: SmlocalServer, unique_name: Callable) -> None:
    client = sagemaker(rules_server, attempts=1)
    team = [{"Key": "team", "Value": "no-quota"}]
    assert refused(client, job_request(unique_name("team"), Tags=team))[:2] == (400, "ResourceLimitExceeded")
    overridden = faulty(unique_name("team"), "InternalFailure:1", Tags=team)
    assert refused(client, overridden)[:2] == (500, "InternalFailure")
    assert client.create_training_job(**overridden)["TrainingJobArn"].endswith(overridden["TrainingJobName"])


# ---- a simulated backend: the job boto3's retries created runs -----------------------------------------------------


def test_on_the_simulated_backend_the_retried_job_completes(smlocal_factory: Callable[..., SmlocalServer],
                                                             unique_name: Callable) -> None:
    server = smlocal_factory("--backend", "simulated", env=NO_ENGINE)
    server.client("s3").create_bucket(Bucket="faults")
    client = sagemaker(server, attempts=3)
    output = {"OutputDataConfig": {"S3OutputPath": "s3://faults/models"}}
    name, capacity = unique_name("sim"), unique_name("sim")
    response = client.create_training_job(**faulty(name, "ThrottlingException:2", **output,
                                                   Tags=[{"Key": "smlocal:training-seconds", "Value": "0"}]))
    assert response["ResponseMetadata"]["RetryAttempts"] == 2
    client.create_training_job(**faulty(capacity, "CapacityError", **output))
    assert wait_for_status(client, name, {"Completed", "Failed", "Stopped"})["TrainingJobStatus"] == "Completed"
    # The runner left the job failed for capacity alone: nothing ran for it.
    job = client.describe_training_job(TrainingJobName=capacity)
    assert [t["Status"] for t in job["SecondaryStatusTransitions"]] == ["Starting", "Failed"]
    assert job["FailureReason"] == CAPACITY_REASON
