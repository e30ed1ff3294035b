"""STS GetCallerIdentity on smlocal's port, over the query protocol (`Version=2011-06-15`): a real boto3 STS
client and the aws CLI over HTTP, the raw form-encoded wire, and its errors (an unknown version or action, a
credential scoped to another service or region, a wrong or missing signature) as STS's XML, never a 500.

Every caller is the IAM user `smlocal` of the server's account, the account in the SageMaker ARNs: what
the SageMaker SDKs' `default_bucket()` puts in the bucket's name (tests/test_sdk_v2.py, test_sdk_v3.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from xml.etree import ElementTree

import pytest
import regex
import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from tests.support.awscli import aws
from tests.support.jobs import job_request
from tests.support.smlocal import SmlocalServer

NS = {"sts": "https://sts.amazonaws.com/doc/2011-06-15/"}
ACCOUNT = "123456789012"
KEYS = ("AKIDLOCAL", "s3cr3t/key+value")
OTHER_ACCOUNT = "210987654321"
# An IAM user's unique id: AIDA and 17 more of IAM's id characters.
USER_ID = regex.compile(r"AIDA[A-Z2-7]{17}")
FORM = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
IDENTITY = "Action=GetCallerIdentity&Version=2011-06-15"


@pytest.fixture(scope="module")
def secured(module_smlocal_factory: Callable[..., SmlocalServer]) -> SmlocalServer:
    """Keys required, and an account other than the default."""
    return module_smlocal_factory("--no-run-jobs", "--account-id", OTHER_ACCOUNT,
                                  env={"SMLOCAL_ACCESS_KEY": KEYS[0], "SMLOCAL_SECRET_KEY": KEYS[1]})


def identity_of(response: dict[str, Any]) -> tuple[str, str, str]:
    return response["Account"], response["Arn"], response["UserId"]


def test_the_caller_is_the_smlocal_user_of_the_servers_account(api_server: SmlocalServer) -> None:
    sts = api_server.client("sts")
    account, arn, user_id = identity_of(sts.get_caller_identity())
    assert (account, arn) == (ACCOUNT, f"arn:aws:iam::{ACCOUNT}:user/smlocal")
    assert USER_ID.fullmatch(user_id), user_id
    # The same caller whatever the keys or the region the request is signed for.
    other = api_server.client("sts", region="eu-west-1", access_key="someone", secret_key="else")
    assert identity_of(other.get_caller_identity()) == (account, arn, user_id)
    # IAM takes the caller's ARN as a principal to simulate.
    [result] = api_server.client("iam").simulate_principal_policy(
        PolicySourceArn=arn, ActionNames=["sagemaker:CreateTrainingJob"])["EvaluationResults"]
    assert result["EvalDecision"] == "allowed"


def test_the_account_is_the_one_in_sagemaker_arns(secured: SmlocalServer, api_server: SmlocalServer) -> None:
    sts = secured.client("sts", access_key=KEYS[0], secret_key=KEYS[1])
    account, arn, user_id = identity_of(sts.get_caller_identity())
    assert (account, arn) == (OTHER_ACCOUNT, f"arn:aws:iam::{OTHER_ACCOUNT}:user/smlocal")
    # Another account's user `smlocal` is another user, with an id of its own.
    assert USER_ID.fullmatch(user_id) and user_id != api_server.client("sts").get_caller_identity()["UserId"]
    job = secured.client(access_key=KEYS[0], secret_key=KEYS[1]).create_training_job(**job_request("sts-account"))
    assert job["TrainingJobArn"] == f"arn:aws:sagemaker:us-east-1:{account}:training-job/sts-account"


def test_aws_cli_get_caller_identity(api_server: SmlocalServer) -> None:
    done = aws(api_server, "sts", "get-caller-identity")
    identity = json.loads(done.stdout)
    assert (identity["Account"], identity["Arn"]) == (ACCOUNT, f"arn:aws:iam::{ACCOUNT}:user/smlocal")
    assert identity["UserId"] == api_server.client("sts").get_caller_identity()["UserId"]


def test_query_wire_answers_in_sts_xml(api_server: SmlocalServer) -> None:
    # Unsigned: a server without keys answers it in its default region, as any other request.
    ok = requests.post(api_server.endpoint + "/", data=IDENTITY, headers=FORM, timeout=10)
    assert ok.status_code == 200 and ok.headers["content-type"].startswith("text/xml")
    root = ElementTree.fromstring(ok.content)
    assert root.tag == "{https://sts.amazonaws.com/doc/2011-06-15/}GetCallerIdentityResponse"
    result = root.find("sts:GetCallerIdentityResult", NS)
    assert result is not None
    assert result.findtext("sts:Account", namespaces=NS) == ACCOUNT
    assert result.findtext("sts:Arn", namespaces=NS) == f"arn:aws:iam::{ACCOUNT}:user/smlocal"
    assert USER_ID.fullmatch(result.findtext("sts:UserId", namespaces=NS) or "")
    assert root.findtext("sts:ResponseMetadata/sts:RequestId", namespaces=NS) == ok.headers["x-amzn-requestid"]


def error_of(response: requests.Response) -> tuple[int, str, str, str]:
    """(HTTP status, Type, Code, Message) of a query-protocol error document."""
    error = ElementTree.fromstring(response.content).find("{*}Error")
    assert error is not None, response.text
    return (response.status_code, error.findtext("{*}Type") or "", error.findtext("{*}Code") or "",
            error.findtext("{*}Message") or "")


@pytest.mark.parametrize(("body", "code", "message"), [
    ("Action=GetCallerIdentity&Version=2011-06-16", "InvalidAction",
     "Could not find operation GetCallerIdentity for version 2011-06-16"),
    ("Action=GetCallerIdentity", "InvalidAction", "Could not find operation GetCallerIdentity for version NO_VERSION"),
    # IAM's version: the action is looked up in the service the version names.
    ("Action=GetCallerIdentity&Version=2010-05-08", "InvalidAction",
     "Could not find operation GetCallerIdentity for version 2010-05-08"),
    ("Action=AssumeRole&Version=2011-06-15", "InvalidAction",
     "Could not find operation AssumeRole for version 2011-06-15"),
    ("Version=2011-06-15", "MissingAction", "The request is missing an action or a required parameter."),
], ids=["unknown-version", "no-version", "iam-version", "unserved-action", "no-action"])
def test_unknown_versions_and_actions_are_sts_errors(api_server: SmlocalServer, body: str, code: str,
                                                     message: str) -> None:
    response = requests.post(api_server.endpoint + "/", data=body, headers=FORM, timeout=10)
    assert error_of(response) == (400, "Sender", code, message)


def signed(server: SmlocalServer, service: str, region: str = "us-east-1", keys: tuple[str, str] = KEYS,
           body: str = IDENTITY) -> requests.Response:
    """The GetCallerIdentity form, signed by botocore's own signer for `service` and `region`."""
    request = AWSRequest(method="POST", url=server.endpoint + "/", data=body.encode(), headers=dict(FORM))
    SigV4Auth(Credentials(*keys), service, region).add_auth(request)
    return requests.post(request.url, data=request.body, headers=dict(request.headers), timeout=10)


@pytest.mark.parametrize(("service", "region", "message"), [
    ("iam", "us-east-1", "Credential should be scoped to correct service: 'sts'. "),
    ("sts", "moon-1", "Credential should be scoped to a valid region, not 'moon-1'. "),
], ids=["iam-scope", "no-such-region"])
def test_a_credential_scoped_elsewhere_is_refused(api_server: SmlocalServer, service: str, region: str,
                                                  message: str) -> None:
    # Checked without keys configured too: the scope's region becomes part of ARNs.
    assert signed(api_server, "sts").status_code == 200
    assert error_of(signed(api_server, service, region)) == (400, "Sender", "SignatureDoesNotMatch", message)


def test_with_keys_configured_only_their_signature_passes(secured: SmlocalServer) -> None:
    assert signed(secured, "sts").status_code == 200
    status, fault, code, message = error_of(signed(secured, "sts", keys=(KEYS[0], "wrong")))
    assert (status, fault, code) == (400, "Sender", "SignatureDoesNotMatch")
    assert message.startswith("The request signature we calculated does not match the signature you provided.")
    # A body changed after signing.
    request = AWSRequest(method="POST", url=secured.endpoint + "/", data=IDENTITY.encode(), headers=dict(FORM))
    SigV4Auth(Credentials(*KEYS), "sts", "us-east-1").add_auth(request)
    tampered = requests.post(request.url, data=IDENTITY + "&Extra=1", headers=dict(request.headers), timeout=10)
    assert error_of(tampered)[2] == "SignatureDoesNotMatch"
    assert error_of(signed(secured, "sts", keys=("AKIDOTHER", KEYS[1])))[2:] == (
        "InvalidClientTokenId", "The security token included in the request is invalid.")
    unsigned = requests.post(secured.endpoint + "/", data=IDENTITY, headers=FORM, timeout=10)
    assert error_of(unsigned) == (403, "Sender", "MissingAuthenticationToken", "Missing Authentication Token")
    # boto3 reads them as STS's errors.
    with pytest.raises(ClientError) as info:
        secured.client("sts", access_key=KEYS[0], secret_key="wrong").get_caller_identity()
    assert info.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
