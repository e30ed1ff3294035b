"""Raw HTTP against the server: what botocore's client-side checks would never let through."""

from __future__ import annotations

import json

import requests

from tests.support.jobs import job_request

HEADERS = {"Content-Type": "application/x-amz-json-1.1"}


def post(server, target: str | None, body: bytes | str | dict) -> requests.Response:  # noqa: ANN001
    headers = dict(HEADERS)
    if target is not None:
        headers["X-Amz-Target"] = target
    data = json.dumps(body) if isinstance(body, dict) else body
    return requests.post(server.endpoint + "/", data=data, headers=headers, timeout=10)


def error_of(response: requests.Response) -> tuple[str, str]:
    body = response.json()
    return body["__type"], body["Message"]


def test_unknown_operation(api_server):
    response = post(api_server, "SageMaker.LaunchRocket", {})
    assert response.status_code == 400
    assert error_of(response)[0] == "UnknownOperationException"
    assert response.headers["x-amzn-requestid"]


def test_missing_target_header(api_server):
    response = post(api_server, None, {})
    assert response.status_code == 400
    assert error_of(response)[0] == "UnknownOperationException"


def test_other_service_prefix_is_unknown(api_server):
    response = post(api_server, "DynamoDB_20120810.ListTables", {})
    assert error_of(response)[0] == "UnknownOperationException"


def test_bad_json_is_serialization_exception(api_server):
    # Nested past the decoder's stack too (found by tests/test_fuzz_api.py: it was an InternalFailure).
    for body in ("{not json", "[1, 2]", "\"a string\"", '{"a":' * 100_000):
        response = post(api_server, "SageMaker.ListTrainingJobs", body)
        assert response.status_code == 400, body
        assert error_of(response)[0] == "SerializationException", body


def test_a_number_no_integer_or_long_holds_is_a_serialization_exception(api_server):
    """Found by the fuzz (tests/test_fuzz_api.py, bench/api_fuzz.py): ListTags' MaxResults has no maximum in the
    model, and 10**40 reached SQLite; a timestamp of 10**400 overflowed a float; NaN reached GetMetricData's
    arithmetic. Each was an InternalFailure."""
    arn = "arn:aws:sagemaker:us-east-1:123456789012:training-job/none"
    for target, body in (("SageMaker.ListTags", {"ResourceArn": arn, "MaxResults": 10**40}),
                         ("SageMaker.ListTrainingJobs", {"MaxResults": 2**31}),
                         ("Logs_20140328.GetLogEvents",
                          {"logGroupName": "g", "logStreamName": "s", "limit": -(2**31) - 1}),
                         ("Logs_20140328.FilterLogEvents", {"logGroupName": "g", "startTime": 2**63}),
                         # Timestamps a date cannot hold, NaN and an infinity (not JSON, which Python reads).
                         ("SageMaker.ListHyperParameterTuningJobs", '{"CreationTimeAfter": 1' + "0" * 400 + "}"),
                         ("SageMaker.ListTrainingJobs", '{"CreationTimeBefore": 1e300}'),
                         ("SageMaker.ListTrainingJobs", '{"CreationTimeBefore": 1e999}'),
                         ("SageMaker.ListTrainingJobs", '{"CreationTimeBefore": NaN}'),
                         ("SageMaker.ListTrainingJobs", '{"LastModifiedTimeAfter": -Infinity}')):
        response = post(api_server, target, body)
        assert response.status_code == 400, (target, response.text)
        assert error_of(response)[0] == "SerializationException", (target, response.text)


def test_wrong_member_type_is_serialization_exception(api_server, unique_name):
    request = job_request(unique_name())
    request["StoppingCondition"]["MaxRuntimeInSeconds"] = "ten minutes"
    response = post(api_server, "SageMaker.CreateTrainingJob", request)
    assert response.status_code == 400
    code, message = error_of(response)
    assert code == "SerializationException"
    assert "STRING_VALUE" in message


def test_missing_required_members_all_reported(api_server, unique_name):
    response = post(api_server, "SageMaker.CreateTrainingJob", {"TrainingJobName": unique_name()})
    code, message = error_of(response)
    assert code == "ValidationException"
    assert message.startswith("5 validation errors detected: ")
    for member in ("algorithmSpecification", "roleArn", "outputDataConfig", "resourceConfig",
                   "stoppingCondition"):
        assert f"Value null at '{member}' failed to satisfy constraint: Member must not be null" in message


def test_missing_nested_required_member(api_server, unique_name):
    request = job_request(unique_name())
    del request["OutputDataConfig"]["S3OutputPath"]
    code, message = error_of(post(api_server, "SageMaker.CreateTrainingJob", request))
    assert (code, message) == (
        "ValidationException",
        "1 validation error detected: Value null at 'outputDataConfig.s3OutputPath' failed to satisfy "
        "constraint: Member must not be null",
    )


def test_oversized_map_rejected(api_server, unique_name):
    request = job_request(unique_name(), HyperParameters={f"k{i}": "v" for i in range(101)})
    code, message = error_of(post(api_server, "SageMaker.CreateTrainingJob", request))
    assert code == "ValidationException"
    assert "at 'hyperParameters' failed to satisfy constraint: Member must have length less than or equal " \
           "to 100" in message


def test_empty_body_means_no_parameters(api_server):
    response = post(api_server, "SageMaker.ListTrainingJobs", "")
    assert response.status_code == 200
    assert "TrainingJobSummaries" in response.json()


def test_success_carries_request_id_and_json_content_type(api_server):
    response = post(api_server, "SageMaker.ListTrainingJobs", {})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-amz-json-1.1")
    assert len(response.headers["x-amzn-requestid"]) >= 32


def test_unmodelled_members_are_ignored_and_never_echoed(api_server, unique_name):
    name = unique_name()
    request = job_request(name, NotAMember={"x": 1})
    request["ResourceConfig"]["Secret"] = "hidden"
    assert post(api_server, "SageMaker.CreateTrainingJob", request).status_code == 200
    described = post(api_server, "SageMaker.DescribeTrainingJob", {"TrainingJobName": name}).json()
    assert "NotAMember" not in described
    assert "Secret" not in described["ResourceConfig"]
    assert "runner_state" not in json.dumps(described)


def test_timestamps_are_epoch_seconds(api_server, unique_name):
    name = unique_name()
    post(api_server, "SageMaker.CreateTrainingJob", job_request(name))
    described = post(api_server, "SageMaker.DescribeTrainingJob", {"TrainingJobName": name}).json()
    assert isinstance(described["CreationTime"], (int, float))
    assert described["CreationTime"] > 1.6e9
    assert isinstance(described["SecondaryStatusTransitions"][0]["StartTime"], (int, float))


def test_get_is_not_an_operation(api_server):
    response = requests.get(api_server.endpoint + "/", timeout=10)
    assert response.status_code == 400
    assert response.json()["__type"] == "UnknownOperationException"
