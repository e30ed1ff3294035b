"""IAM over the query protocol, as SageMaker clients ask it (GetRole, SimulatePrincipalPolicy): a real boto3
IAM client over HTTP, and the raw form-encoded wire.

smlocal enforces no IAM permissions, and says so in IAM's terms: every role exists and trusts SageMaker,
its own policies allow everything, and only what the request adds (PolicyInputList, a permissions
boundary) can deny.
"""

from __future__ import annotations

import json
from typing import Any
from xml.etree import ElementTree

import pytest
import requests

from tests.support.smlocal import SmlocalServer

NS = {"iam": "https://iam.amazonaws.com/doc/2010-05-08/"}
OTHER_ACCOUNT_ROLE = "arn:aws:iam::111122223333:role/service-role/AmazonSageMaker-ExecutionRole"


@pytest.fixture(scope="module")
def iam(api_server: SmlocalServer) -> Any:
    return api_server.client("iam")


def policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def test_get_role_names_a_role_that_sagemaker_may_assume(iam: Any) -> None:
    role = iam.get_role(RoleName="SageMakerRole")["Role"]
    assert role["Arn"] == "arn:aws:iam::123456789012:role/SageMakerRole"
    assert (role["RoleName"], role["Path"], role["MaxSessionDuration"]) == ("SageMakerRole", "/", 3600)
    assert role["RoleId"].startswith("AROA") and len(role["RoleId"]) == 21
    assert iam.get_role(RoleName="SageMakerRole")["Role"]["RoleId"] == role["RoleId"]
    assert iam.get_role(RoleName="Other")["Role"]["RoleId"] != role["RoleId"]
    # IAM sends the trust policy URL-encoded; botocore hands it over decoded, as a dict.
    [statement] = role["AssumeRolePolicyDocument"]["Statement"]
    assert statement == {"Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"},
                         "Action": "sts:AssumeRole"}
    assert role["CreateDate"].tzinfo is not None


def test_simulation_allows_every_action_on_every_resource(iam: Any) -> None:
    result = iam.simulate_principal_policy(
        PolicySourceArn=OTHER_ACCOUNT_ROLE, ActionNames=["s3:PutObject", "sagemaker:CreateTrainingJob"],
        ResourceArns=["arn:aws:s3:::workshop/*", "arn:aws:s3:::other/*"])
    assert result["IsTruncated"] is False and "Marker" not in result
    pairs = [(r["EvalActionName"], r["EvalResourceName"], r["EvalDecision"]) for r in result["EvaluationResults"]]
    assert pairs == [("s3:PutObject", "arn:aws:s3:::workshop/*", "allowed"),
                     ("s3:PutObject", "arn:aws:s3:::other/*", "allowed"),
                     ("sagemaker:CreateTrainingJob", "arn:aws:s3:::workshop/*", "allowed"),
                     ("sagemaker:CreateTrainingJob", "arn:aws:s3:::other/*", "allowed")]
    # Without ResourceArns the resource is "*"; users and groups are principals too.
    for source in ("arn:aws:iam::123456789012:user/alice", "arn:aws:iam::123456789012:group/admins"):
        result = iam.simulate_principal_policy(PolicySourceArn=source, ActionNames=["iam:PassRole"])
        [only] = result["EvaluationResults"]
        assert (only["EvalResourceName"], only["EvalDecision"], only["MatchedStatements"]) == ("*", "allowed", [])


def test_simulation_pages_with_marker_and_max_items(iam: Any) -> None:
    actions = [f"s3:Action{n}" for n in range(7)]
    first = iam.simulate_principal_policy(PolicySourceArn=OTHER_ACCOUNT_ROLE, ActionNames=actions, MaxItems=3)
    assert first["IsTruncated"] is True and len(first["EvaluationResults"]) == 3
    pages = list(iam.get_paginator("simulate_principal_policy").paginate(
        PolicySourceArn=OTHER_ACCOUNT_ROLE, ActionNames=actions, PaginationConfig={"PageSize": 3}))
    assert [len(p["EvaluationResults"]) for p in pages] == [3, 3, 1]
    assert [r["EvalActionName"] for p in pages for r in p["EvaluationResults"]] == actions
    # A marker belongs to the query that made it.
    with pytest.raises(iam.exceptions.ClientError) as info:
        iam.simulate_principal_policy(PolicySourceArn=OTHER_ACCOUNT_ROLE, ActionNames=["s3:Other"],
                                      Marker=first["Marker"])
    assert info.value.response["Error"]["Code"] == "ValidationError"


def test_policies_in_the_request_can_deny(iam: Any) -> None:
    deny_puts = policy({"Effect": "Deny", "Action": "s3:Put*", "Resource": "arn:aws:s3:::workshop/*"},
                       {"Effect": "Deny", "Action": "*", "Resource": "*", "Condition": {"Bool": {"aws:X": "true"}}})
    results = iam.simulate_principal_policy(
        PolicySourceArn=OTHER_ACCOUNT_ROLE, ActionNames=["s3:PutObject", "S3:GETOBJECT"],
        ResourceArns=["arn:aws:s3:::workshop/data", "arn:aws:s3:::other/data"], PolicyInputList=[deny_puts],
    )["EvaluationResults"]
    decisions = {(r["EvalActionName"], r["EvalResourceName"]): r["EvalDecision"] for r in results}
    assert decisions == {("s3:PutObject", "arn:aws:s3:::workshop/data"): "explicitDeny",
                         ("s3:PutObject", "arn:aws:s3:::other/data"): "allowed",
                         ("S3:GETOBJECT", "arn:aws:s3:::workshop/data"): "allowed",
                         ("S3:GETOBJECT", "arn:aws:s3:::other/data"): "allowed"}
    assert results[0]["MatchedStatements"] == [{"SourcePolicyId": "PolicyInputList.1", "SourcePolicyType": "none"}]
    # A permissions boundary: what it does not allow is an implicit deny.
    boundary = policy({"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"})
    results = iam.simulate_principal_policy(
        PolicySourceArn=OTHER_ACCOUNT_ROLE, ActionNames=["s3:GetObject", "iam:GetRole"],
        PermissionsBoundaryPolicyInputList=[boundary])["EvaluationResults"]
    assert [r["EvalDecision"] for r in results] == ["allowed", "implicitDeny"]
    assert results[1]["PermissionsBoundaryDecisionDetail"] == {"AllowedByPermissionsBoundary": False}


@pytest.mark.parametrize(("call", "code", "message"), [
    ({"PolicySourceArn": "arn:aws:sts::111122223333:assumed-role/Role/session", "ActionNames": ["s3:GetObject"]},
     "InvalidInput", "Invalid Entity Arn: arn:aws:sts::111122223333:assumed-role/Role/session"),
    ({"PolicySourceArn": OTHER_ACCOUNT_ROLE, "ActionNames": ["kms:Decrypt"], "ResourceArns": ["14a050d4-021e"]},
     "InvalidInput", "ResourceNames are not in a valid ARN format: 14a050d4-021e."),
    ({"PolicySourceArn": OTHER_ACCOUNT_ROLE, "ActionNames": ["s3:GetObject"], "PolicyInputList": ["{not json"]},
     "MalformedPolicyDocument", "Syntax errors in policy."),
    ({"PolicySourceArn": OTHER_ACCOUNT_ROLE, "ActionNames": ["s3:GetObject"], "MaxItems": 1001},
     "ValidationError", "1 validation error detected: Value '1001' at 'maxItems' failed to satisfy constraint: "
                        "Member must have value less than or equal to 1000"),
], ids=["assumed-role-arn", "resource-not-an-arn", "malformed-policy", "max-items"])
def test_simulation_refuses_bad_input_as_iam_does(iam: Any, call: dict[str, Any], code: str, message: str) -> None:
    with pytest.raises(iam.exceptions.ClientError) as info:
        iam.simulate_principal_policy(**call)
    error = info.value.response["Error"]
    assert (error["Code"], error["Message"], error["Type"]) == (code, message, "Sender")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_role_name_constraints_are_the_models(iam: Any) -> None:
    with pytest.raises(iam.exceptions.ClientError) as info:
        iam.get_role(RoleName="no spaces allowed")
    assert info.value.response["Error"]["Code"] == "ValidationError"
    assert "at 'roleName' failed to satisfy constraint: Member must satisfy regular expression pattern" \
        in info.value.response["Error"]["Message"]


def _post(server: SmlocalServer, body: str) -> requests.Response:
    return requests.post(server.endpoint + "/", data=body, timeout=10,
                         headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})


def test_query_wire_answers_in_iam_xml(api_server: SmlocalServer) -> None:
    ok = _post(api_server, "Action=SimulatePrincipalPolicy&Version=2010-05-08"
                           f"&PolicySourceArn={OTHER_ACCOUNT_ROLE}&ActionNames.member.1=s3%3AGetObject"
                           "&ActionNames.member.2=s3%3APutObject&MaxItems=1")
    assert ok.status_code == 200 and ok.headers["content-type"].startswith("text/xml")
    root = ElementTree.fromstring(ok.content)
    assert root.tag == "{https://iam.amazonaws.com/doc/2010-05-08/}SimulatePrincipalPolicyResponse"
    result = root.find("iam:SimulatePrincipalPolicyResult", NS)
    assert result is not None
    assert [m.findtext("iam:EvalActionName", namespaces=NS)
            for m in result.findall("iam:EvaluationResults/iam:member", NS)] == ["s3:GetObject"]
    assert result.findtext("iam:IsTruncated", namespaces=NS) == "true" and result.findtext("iam:Marker", namespaces=NS)
    assert root.findtext("iam:ResponseMetadata/iam:RequestId", namespaces=NS) == ok.headers["x-amzn-requestid"]

    missing = _post(api_server, "Action=GetRole&Version=2010-05-08")
    assert missing.status_code == 400
    error = ElementTree.fromstring(missing.content).find("iam:Error", NS)
    assert error is not None and error.findtext("iam:Code", namespaces=NS) == "ValidationError"
    assert error.findtext("iam:Message", namespaces=NS) == (
        "1 validation error detected: Value null at 'roleName' failed to satisfy constraint: Member must not be null")
    # Only what SageMaker clients need is served; the rest of IAM is an unknown action, as the rest of STS is.
    for body, code, message in (
            ("Action=CreateRole&Version=2010-05-08", "InvalidAction",
             "Could not find operation CreateRole for version 2010-05-08"),
            ("Action=AssumeRole&Version=2011-06-15", "InvalidAction",
             "Could not find operation AssumeRole for version 2011-06-15"),
            ("Version=2010-05-08", "MissingAction", "The request is missing an action or a required parameter.")):
        response = _post(api_server, body)
        assert response.status_code == 400, body
        error = ElementTree.fromstring(response.content).find(".//{*}Error")
        assert error is not None
        assert (error.findtext("{*}Code"), error.findtext("{*}Message")) == (code, message)
