"""Optional SigV4: with keys configured, only requests signed with them pass."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from unittest import mock
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from tests.support.jobs import job_request


@pytest.fixture(scope="module")
def secured(module_smlocal_factory):  # noqa: ANN001, ANN201
    return module_smlocal_factory("--no-run-jobs", env={"SMLOCAL_ACCESS_KEY": "AKIDLOCAL",
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


# ---- SigV4 as AWS checks it ------------------------------------------------------------------------

KEYS = ("AKIDLOCAL", "s3cr3t/key+value")
TARGET_HEADERS = {"X-Amz-Target": "SageMaker.ListTrainingJobs", "Content-Type": "application/x-amz-json-1.1"}
MISMATCH = ("The request signature we calculated does not match the signature you provided. Check your AWS Secret "
            "Access Key and signing method. Consult the service documentation for details.")


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def _stamp(moment: dt.datetime) -> str:
    return moment.strftime("%Y%m%dT%H%M%SZ")


def sign(endpoint: str, body: bytes = b"{}", *, at: dt.datetime | None = None, service: str = "sagemaker",
         region: str = "us-east-1", keys: tuple[str, str] = KEYS, presign_expires: int | None = None,
         headers: dict[str, str] | None = None) -> AWSRequest:
    """A request signed by botocore's own signer, with its clock set to `at`."""
    request = AWSRequest(method="POST", url=endpoint + "/", data=body, headers=dict(headers or TARGET_HEADERS))
    credentials = Credentials(*keys)
    signer = (SigV4QueryAuth(credentials, service, region, expires=presign_expires) if presign_expires
              else SigV4Auth(credentials, service, region))
    with mock.patch("botocore.auth.get_current_datetime", return_value=at or _utcnow()):
        signer.add_auth(request)
    return request


def send(request: AWSRequest) -> requests.Response:
    return requests.post(request.url, data=request.body or b"", headers=dict(request.headers), timeout=10)


def error_of(response: requests.Response) -> tuple[int, str, str]:
    body = response.json()
    return response.status_code, body["__type"], body["Message"]


@pytest.mark.parametrize("minutes", [-14, 14])
def test_clock_skew_within_15_minutes_is_accepted(secured, minutes):
    response = send(sign(secured.endpoint, at=_utcnow() + dt.timedelta(minutes=minutes)))
    assert response.status_code == 200, response.text


def test_signature_older_than_15_minutes_is_expired(secured):
    signed_at = _utcnow() - dt.timedelta(minutes=16)
    before = _utcnow()
    status, code, message = error_of(send(sign(secured.endpoint, at=signed_at)))
    after = _utcnow()
    assert (status, code) == (400, "InvalidSignatureException")
    match = re.fullmatch(r"Signature expired: (\d{8}T\d{6}Z) is now earlier than (\d{8}T\d{6}Z) "
                         r"\((\d{8}T\d{6}Z) - 15 min\.\)", message)
    assert match, message
    assert match[1] == _stamp(signed_at)
    now = dt.datetime.strptime(match[3], "%Y%m%dT%H%M%SZ")
    assert before.replace(microsecond=0) <= now <= after
    assert match[2] == _stamp(now - dt.timedelta(minutes=15))


def test_signature_from_the_future_is_not_yet_current(secured):
    signed_at = _utcnow() + dt.timedelta(minutes=20)
    status, code, message = error_of(send(sign(secured.endpoint, at=signed_at)))
    assert (status, code) == (400, "InvalidSignatureException")
    assert re.fullmatch(rf"Signature not yet current: {_stamp(signed_at)} is still later than \d{{8}}T\d{{6}}Z "
                        r"\(\d{8}T\d{6}Z \+ 15 min\.\)", message), message


def test_a_captured_request_cannot_be_replayed_later(secured):
    # The same bytes that were accepted when fresh are refused once the window has passed.
    captured = sign(secured.endpoint, at=_utcnow() - dt.timedelta(minutes=15, seconds=30))
    fresh = sign(secured.endpoint)
    assert send(fresh).status_code == 200
    assert error_of(send(captured))[1] == "InvalidSignatureException"


def test_boto3_with_a_skewed_clock_is_refused(secured):
    sm = secured.client(access_key=KEYS[0], secret_key=KEYS[1])
    with mock.patch("botocore.auth.get_current_datetime", return_value=_utcnow() - dt.timedelta(hours=2)):
        with pytest.raises(ClientError) as info:
            sm.list_training_jobs()
    assert info.value.response["Error"]["Code"] == "InvalidSignatureException"
    assert info.value.response["Error"]["Message"].startswith("Signature expired: ")


def test_scope_must_name_the_targets_service(secured):
    status, code, message = error_of(send(sign(secured.endpoint, service="s3")))
    assert (status, code, message) == (
        400, "InvalidSignatureException", "Credential should be scoped to correct service: 'sagemaker'. ")


def test_scope_service_is_checked_without_keys_too(api_server):
    status, code, message = error_of(send(sign(api_server.endpoint, service="logs", keys=("any", "thing"))))
    assert (code, message) == ("InvalidSignatureException", "Credential should be scoped to correct service: "
                                                             "'sagemaker'. ")


@pytest.mark.parametrize("region", ["..evil", "mars-north-1", "us-east-1/x", "US-EAST-1"])
def test_region_must_be_an_aws_region(api_server, unique_name, region):
    # Without keys too: the region becomes part of ARNs and folder names.
    name = unique_name()
    request = sign(api_server.endpoint, json.dumps(job_request(name)).encode(), region=region, keys=("a", "b"),
                   headers={**TARGET_HEADERS, "X-Amz-Target": "SageMaker.CreateTrainingJob"})
    status, code, message = error_of(send(request))
    assert status == 400
    if "/" in region:  # one slash too many is a malformed credential, not a bad region
        assert code == "IncompleteSignatureException"
        assert message.startswith("Credential must have exactly 5 slash-delimited elements, e.g. "
                                  "keyid/date/region/service/term, got 'a/")
    else:
        assert (code, message) == ("InvalidSignatureException",
                                   f"Credential should be scoped to a valid region, not '{region}'. ")
    with pytest.raises(ClientError):
        api_server.client().describe_training_job(TrainingJobName=name)


def test_boto3_in_an_unknown_region_is_refused(api_server):
    with pytest.raises(ClientError) as info:
        api_server.client(region="mars-north-1").list_training_jobs()
    assert info.value.response["Error"] == {
        "Code": "InvalidSignatureException",
        "Message": "Credential should be scoped to a valid region, not 'mars-north-1'. "}


@pytest.mark.parametrize("region", ["eu-central-1", "cn-north-1", "us-gov-west-1", "ap-southeast-5"])
def test_every_partitions_regions_are_served(api_server, unique_name, region):
    sm = api_server.client(region=region)
    arn = sm.create_training_job(**job_request(unique_name()))["TrainingJobArn"]
    assert f":sagemaker:{region}:123456789012:" in arn


def test_scope_date_must_match_x_amz_date(secured):
    request = sign(secured.endpoint)
    stamp = request.headers["X-Amz-Date"]
    other_day = (dt.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ") + dt.timedelta(days=1)).strftime("%Y%m%d")
    headers = dict(request.headers)
    headers["Authorization"] = headers["Authorization"].replace(f"/{stamp[:8]}/", f"/{other_day}/")
    response = requests.post(request.url, data=request.body, headers=headers, timeout=10)
    status, code, message = error_of(response)
    assert (code, message) == ("InvalidSignatureException", "Date in Credential scope does not match YYYYMMDD from "
                               f"ISO-8601 version of date from HTTP: '{other_day}' != '{stamp[:8]}', from '{stamp}'.")


def test_missing_x_amz_date(secured):
    request = sign(secured.endpoint)
    del request.headers["X-Amz-Date"]
    status, code, message = error_of(send(request))
    assert code == "IncompleteSignatureException"
    assert "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header." in message


def test_declared_payload_hash_must_be_the_bodys(secured):
    # A signed X-Amz-Content-SHA256 stands for the body in the signature: a different body must not pass.
    fake = hashlib.sha256(b'{"MaxResults": 1}').hexdigest()
    request = sign(secured.endpoint, b'{"MaxResults": 1}', headers={**TARGET_HEADERS, "X-Amz-Content-SHA256": fake})
    assert send(request).status_code == 200
    tampered = requests.post(request.url, data=b'{"MaxResults": 2}', headers=dict(request.headers), timeout=10)
    assert error_of(tampered)[1] == "InvalidSignatureException"


# ---- presigned (query-string) signatures -----------------------------------------------------------


def test_presigned_request_is_accepted(secured):
    request = sign(secured.endpoint, b"", presign_expires=300)
    query = parse_qs(urlsplit(request.url).query)
    assert {"X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires", "X-Amz-SignedHeaders",
            "X-Amz-Signature"} <= set(query)
    assert "Authorization" not in request.headers
    response = send(request)
    assert response.status_code == 200, response.text
    assert "TrainingJobSummaries" in response.json()


def test_presigned_request_with_a_wrong_secret_or_changed_body(secured):
    wrong = sign(secured.endpoint, b"", presign_expires=300, keys=(KEYS[0], "not-the-secret"))
    assert error_of(send(wrong))[1:] == ("InvalidSignatureException", MISMATCH)
    good = sign(secured.endpoint, b"", presign_expires=300)
    changed = requests.post(good.url, data=b'{"MaxResults": 1}', headers=dict(good.headers), timeout=10)
    assert error_of(changed)[1] == "InvalidSignatureException"
    retargeted = requests.post(good.url, data=b"", timeout=10,
                               headers={**dict(good.headers), "X-Amz-Target": "SageMaker.DeleteTrainingJob"})
    assert error_of(retargeted)[1] == "InvalidSignatureException"


def test_presigned_request_expires(secured):
    status, code, message = error_of(send(sign(secured.endpoint, b"", presign_expires=60,
                                                at=_utcnow() - dt.timedelta(seconds=90))))
    assert (status, code) == (400, "InvalidSignatureException")
    assert re.fullmatch(r"Signature expired: \d{8}T\d{6}Z is now earlier than \d{8}T\d{6}Z "
                        r"\(\d{8}T\d{6}Z - 1 min\.\)", message), message
    # However long it says it lives, a presigned request is refused 15 minutes after it was signed.
    status, code, message = error_of(send(sign(secured.endpoint, b"", presign_expires=3600,
                                                at=_utcnow() - dt.timedelta(minutes=20))))
    assert code == "InvalidSignatureException" and message.endswith(" - 15 min.)")


def test_presigned_request_must_be_complete(secured):
    request = sign(secured.endpoint, b"", presign_expires=300)
    query = "&".join(p for p in urlsplit(request.url).query.split("&") if not p.startswith("X-Amz-SignedHeaders="))
    response = requests.post(f"{secured.endpoint}/?{query}", data=b"", headers=dict(request.headers), timeout=10)
    status, code, message = error_of(response)
    assert code == "IncompleteSignatureException"
    assert message.startswith("AWS query-string parameters must include 'X-Amz-Algorithm'")
