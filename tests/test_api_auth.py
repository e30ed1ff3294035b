"""Optional SigV4: with keys configured, only requests signed with them pass."""

from __future__ import annotations

import pytest
import requests
from botocore.exceptions import ClientError

from tests.support.jobs import job_request


@pytest.fixture(scope="module")
def secured(smlocal_factory):  # noqa: ANN001, ANN201
    return smlocal_factory("--no-run-jobs", env={"SMLOCAL_ACCESS_KEY": "AKIDLOCAL",
                                                 "SMLOCAL_SECRET_KEY": "s3cr3t/key+value"})


def test_signed_with_configured_keys(secured):
    sm = secured.client(access_key="AKIDLOCAL", secret_key="s3cr3t/key+value", region="eu-west-1")
    arn = sm.create_training_job(**job_request("signed-job", HyperParameters={"a": "ü ✓"}))["TrainingJobArn"]
    assert ":eu-west-1:" in arn
    assert sm.describe_training_job(TrainingJobName="signed-job")["HyperParameters"] == {"a": "ü ✓"}


def test_wrong_secret(secured):
    sm = secured.client(access_key="AKIDLOCAL", secret_key="wrong")
    with pytest.raises(ClientError) as info:
        sm.list_training_jobs()
    assert info.value.response["Error"]["Code"] == "InvalidSignatureException"


def test_unknown_access_key(secured):
    sm = secured.client(access_key="AKIDOTHER", secret_key="s3cr3t/key+value")
    with pytest.raises(ClientError) as info:
        sm.list_training_jobs()
    assert info.value.response["Error"]["Code"] == "UnrecognizedClientException"


def test_unsigned_request(secured):
    response = requests.post(secured.endpoint + "/", data="{}", timeout=10, headers={
        "X-Amz-Target": "SageMaker.ListTrainingJobs", "Content-Type": "application/x-amz-json-1.1"})
    assert response.status_code == 403
    assert response.json()["__type"] == "MissingAuthenticationTokenException"


def test_tampered_body(secured):
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    request = AWSRequest(method="POST", url=secured.endpoint + "/", data=b"{}", headers={
        "X-Amz-Target": "SageMaker.ListTrainingJobs", "Content-Type": "application/x-amz-json-1.1"})
    SigV4Auth(Credentials("AKIDLOCAL", "s3cr3t/key+value"), "sagemaker", "us-east-1").add_auth(request)
    headers = dict(request.headers)
    ok = requests.post(secured.endpoint + "/", data=b"{}", headers=headers, timeout=10)
    assert ok.status_code == 200
    tampered = requests.post(secured.endpoint + "/", data=b'{"MaxResults": 5}', headers=headers, timeout=10)
    assert tampered.json()["__type"] == "InvalidSignatureException"


def test_any_signature_without_configured_keys(api_server):
    sm = api_server.client(access_key="whatever", secret_key="anything")
    assert "TrainingJobSummaries" in sm.list_training_jobs()
