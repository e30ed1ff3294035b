"""The query protocol's parse and serialisation against botocore's own: what botocore's QuerySerializer
flattens, `server.aws.protocol_query` rebuilds; what it writes, botocore's QueryParser reads back. Driven by
real models with nested structures, lists of structures, maps, flattened lists (SimpleDB), timestamps,
doubles and booleans."""

from __future__ import annotations

import datetime as dt
from typing import Any
from urllib.parse import urlencode

import botocore.session
import pytest
from botocore.parsers import create_parser
from botocore.serialize import create_serializer

from server.aws.protocol_query import AwsQuery, error_document, result_document
from server.aws.registry import Service
from smlocal.core.errors import ApiError

SESSION = botocore.session.get_session()
QUERY = AwsQuery()
WHEN = dt.datetime(2026, 11, 27, 23, 10, 52, 123000, tzinfo=dt.UTC)


class _NoHandlers:
    def handlers(self) -> dict[str, Any]:
        return {}


def service(name: str) -> Service:
    return Service.of(name, _NoHandlers())


def as_sent(name: str, operation: str, params: dict[str, Any]) -> bytes:
    """The body botocore sends for `operation(**params)`."""
    model = SESSION.get_service_model(name).operation_model(operation)
    request = create_serializer("query").serialize_to_request(params, model)
    return urlencode(request["body"]).encode()


@pytest.mark.parametrize(("name", "operation", "params"), [
    ("iam", "SimulatePrincipalPolicy", {
        "PolicySourceArn": "arn:aws:iam::123456789012:role/r", "ActionNames": ["s3:GetObject", "s3:PutObject"],
        "ContextEntries": [{"ContextKeyName": "aws:SourceIp", "ContextKeyValues": ["10.0.0.1", "10.0.0.2"],
                            "ContextKeyType": "ipList"}],
        "MaxItems": 5}),
    ("cloudwatch", "GetMetricData", {
        "MetricDataQueries": [{"Id": "a", "MetricStat": {"Metric": {
            "Namespace": "/aws/sagemaker/TrainingJobs", "MetricName": "loss",
            "Dimensions": [{"Name": "TrainingJobName", "Value": "job"}]}, "Period": 60, "Stat": "Average"},
            "ReturnData": False}],
        "StartTime": WHEN, "EndTime": WHEN, "ScanBy": "TimestampAscending"}),
    ("cloudwatch", "PutMetricData", {"Namespace": "n", "MetricData": [
        {"MetricName": "m", "Value": 0.25, "Values": [1.5, 2.0], "Counts": [1.0, 3.0]}]}),
    ("sns", "CreateTopic", {"Name": "t", "Attributes": {"DisplayName": "d", "Policy": "{}"},
                            "Tags": [{"Key": "k", "Value": "v"}]}),
    ("sdb", "BatchDeleteAttributes", {"DomainName": "d", "Items": [
        {"Name": "i1", "Attributes": [{"Name": "a", "Value": "1"}, {"Name": "b", "Value": "2"}]},
        {"Name": "i2"}]}),
    ("iam", "ListRoles", {}),
], ids=["nested-lists", "timestamps-and-booleans", "doubles", "map", "flattened-lists", "no-members"])
def test_parse_rebuilds_what_botocore_flattened(name: str, operation: str, params: dict[str, Any]) -> None:
    body = as_sent(name, operation, params)
    model = SESSION.get_service_model(name)
    match = QUERY.match("POST", "", {"content-type": "application/x-www-form-urlencoded; charset=utf-8"}, body)
    assert match is not None
    assert (match.service_key, match.operation) == (model.metadata["apiVersion"], operation)
    parsed = QUERY.parse(body, model.operation_model(operation).input_shape)
    # Timestamps stay ISO 8601 text here (the validation walk reads them): the same moment.
    for key, value in params.items():
        if isinstance(value, dt.datetime):
            assert dt.datetime.fromisoformat(parsed.pop(key).replace("Z", "+00:00")) == value
            params = {k: v for k, v in params.items() if k != key}
    assert parsed == params


def test_empty_list_and_unconvertible_values() -> None:
    shape = SESSION.get_service_model("iam").operation_model("SimulatePrincipalPolicy").input_shape
    body = b"Action=SimulatePrincipalPolicy&Version=2010-05-08&ActionNames=&MaxItems=ten&PolicySourceArn=x"
    # An empty list is `Name=`; a number that is none is left as text for the validation walk to refuse.
    assert QUERY.parse(body, shape) == {"ActionNames": [], "MaxItems": "ten", "PolicySourceArn": "x"}
    with pytest.raises(ApiError) as info:
        QUERY.parse(b"Action=\xff", shape)
    assert info.value.code == "MalformedQueryString"


@pytest.mark.parametrize(("name", "operation", "payload"), [
    ("iam", "GetRole", {"Role": {"Path": "/", "RoleName": "r", "RoleId": "AROAEXAMPLE1234567890",
                                 "Arn": "arn:aws:iam::123456789012:role/r", "CreateDate": WHEN,
                                 "AssumeRolePolicyDocument": "%7B%7D", "MaxSessionDuration": 3600,
                                 "RoleLastUsed": {}, "Tags": [{"Key": "a<b", "Value": "x&y"}]}}),
    ("iam", "SimulatePrincipalPolicy", {"EvaluationResults": [
        {"EvalActionName": "s3:GetObject", "EvalResourceName": "*", "EvalDecision": "allowed",
         "MatchedStatements": [{"SourcePolicyId": "PolicyInputList.1", "SourcePolicyType": "none"}],
         "MissingContextValues": ["aws:SourceIp"], "EvalDecisionDetails": {"IAM Policy": "allowed"},
         "PermissionsBoundaryDecisionDetail": {"AllowedByPermissionsBoundary": False}}],
        "IsTruncated": True, "Marker": "m"}),
    ("cloudwatch", "GetMetricData", {"MetricDataResults": [
        {"Id": "a", "Label": "loss", "Timestamps": [WHEN, WHEN + dt.timedelta(seconds=1)], "Values": [0.5, 2.0],
         "StatusCode": "Complete"}], "Messages": []}),
    ("sdb", "GetAttributes", {"Attributes": [{"Name": "a", "Value": "1"}, {"Name": "b", "Value": "2"}]}),
], ids=["timestamps-and-escaping", "maps-and-booleans", "doubles-and-timestamp-lists", "flattened-list"])
def test_botocore_reads_back_what_is_written(name: str, operation: str, payload: dict[str, Any]) -> None:
    svc = service(name)
    model = svc.model.operation_model(operation)
    body = result_document(svc, model, payload, "request-1")
    parsed = create_parser("query").parse({"body": body, "headers": {}, "status_code": 200}, model.output_shape)
    assert parsed.pop("ResponseMetadata")["RequestId"] == "request-1"
    if name == "cloudwatch":
        payload = {**payload, "Messages": []}  # an empty list reads back as an empty list
    assert parsed == payload


def test_errors_carry_the_query_codes() -> None:
    iam, cloudwatch = service("iam"), service("cloudwatch")
    parser = create_parser("query")

    def read(error: ApiError, svc: Service) -> tuple[dict[str, Any], int]:
        body, status = error_document(error, "request-2", svc)
        parsed = parser.parse({"body": body, "headers": {}, "status_code": status}, None)
        assert parsed["ResponseMetadata"]["RequestId"] == "request-2"
        return parsed["Error"], status

    # A modelled error: its status and fault from the model (IAM's NoSuchEntity is a 404).
    assert read(ApiError("NoSuchEntity", "The role with name x cannot be found."), iam) == (
        {"Type": "Sender", "Code": "NoSuchEntity", "Message": "The role with name x cannot be found."}, 404)
    # The JSON protocols' names become the query protocol's; a query-compatible service's errors their codes.
    assert read(ApiError("ValidationException", "1 validation error detected: ..."), iam)[0]["Code"] == \
        "ValidationError"
    assert read(ApiError("InvalidSignatureException", "..."), iam)[0]["Code"] == "SignatureDoesNotMatch"
    assert read(ApiError("InvalidParameterValueException", "bad"), cloudwatch)[0]["Code"] == "InvalidParameterValue"
    assert read(ApiError("InternalFailure", "oops", 500), iam) == (
        {"Type": "Receiver", "Code": "InternalFailure", "Message": "oops"}, 500)


def test_characters_xml_cannot_hold_are_replaced_not_written() -> None:
    """A form field may carry any UTF-8, control characters too (found by tests/test_fuzz_api.py): an error
    that echoes one is still a document botocore reads, with U+FFFD where XML 1.0 has no character."""
    body, status = error_document(ApiError("InvalidInput", "Invalid Entity Arn: a\x1fb\x00c\ufffe\td"), "r-1",
                                  service("iam"))
    parsed = create_parser("query").parse({"body": body, "headers": {}, "status_code": status}, None)
    assert parsed["Error"]["Message"] == "Invalid Entity Arn: a\ufffdb\ufffdc\ufffd\td"
