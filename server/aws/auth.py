"""SigV4 on incoming requests, checked the way AWS checks it, with botocore's own signer.

Every signed request (Authorization header, or a presigned query string) must carry a well-formed
credential scope whose region is a real region name and whose service is the one the target belongs to:
the region becomes part of ARNs and folder names, so it is never taken on trust. With keys configured the
date, the access key and the signature are checked too, and a request more than 15 minutes off the
server's clock is refused, so a captured request cannot be replayed later.

The error codes and texts are AWS's own, as clients report them from the real endpoints:
- `Credential should be scoped to correct service: 'sagemaker'. ` (InvalidSignatureException, HTTP 400,
  from SageMaker itself: disneystreaming/smithy4s#1568, JuliaCloud/AWS.jl#334);
- `Credential should be scoped to a valid region, not 'us-east-1'. ` (aws/aws-sdk-ruby#508,
  aws/aws-sdk-js#4545: InvalidSignatureException), AWS's answer for a region it does not serve;
- `Signature expired: 20140325T143453Z is now earlier than 20140325T143751Z (20140325T145251Z - 15 min.)`
  (InvalidSignatureException, aws/aws-sdk-js#254; the second date is now - 15 min., the third now), and
  its mirror `Signature not yet current: <date> is still later than <now + 15 min.> (<now> + 15 min.)`;
- `Credential must have exactly 5 slash-delimited elements, e.g. keyid/date/region/service/term, got
  '<credential>'` (IncompleteSignature(Exception), boto/boto3#1752, aws/aws-sdk-go#1042);
- `Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '20151124' !=
  '20151125', from '20151125T154140Z'.` (tedder/requests-aws4auth#7).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit, urlunsplit

import regex
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from server.aws.regions import is_valid_region
from smlocal.core.errors import ApiError

ALGORITHM = "AWS4-HMAC-SHA256"
TERMINATOR = "aws4_request"
# How far X-Amz-Date may be from the server's clock, either way (AWS's SigV4 window).
MAX_SKEW_SECONDS = 15 * 60
# X-Amz-Expires may say up to a week (the SigV4 query-string limit), but AWS's JSON and query services
# refuse a presigned request 15 minutes after its X-Amz-Date whatever it says (aws/aws-sdk-go#2167), and so
# do we; a shorter X-Amz-Expires shortens that.
MAX_PRESIGN_EXPIRES = 7 * 24 * 3600

_TIMESTAMP = regex.compile(r"\d{8}T\d{6}Z")
_TIMESTAMP_FORMAT = "%Y%m%dT%H%M%SZ"
_HEADER_PARAMS = ("Credential", "Signature", "SignedHeaders")
_QUERY_PARAMS = ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Signature", "X-Amz-Date", "X-Amz-SignedHeaders")

_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. Check your AWS "
    "Secret Access Key and signing method. Consult the service documentation for details."
)


def _incomplete(message: str) -> ApiError:
    return ApiError("IncompleteSignatureException", message)


def _invalid(message: str) -> ApiError:
    return ApiError("InvalidSignatureException", message)


@dataclass(frozen=True)
class CredentialScope:
    access_key: str
    date: str
    region: str
    service: str
    terminator: str

    @classmethod
    def parse(cls, credential: str) -> CredentialScope:
        parts = credential.split("/")
        if len(parts) != 5:
            raise _incomplete("Credential must have exactly 5 slash-delimited elements, e.g. "
                              f"keyid/date/region/service/term, got '{credential}'")
        return cls(*parts)


@dataclass(frozen=True)
class SignedRequest:
    """What a client sent to sign its request, from the Authorization header or a presigned URL."""

    scope: CredentialScope
    signed_headers: tuple[str, ...]
    signature: str
    timestamp: str | None
    # Presigned only: its lifetime, and the URL as it was signed (without X-Amz-Signature).
    expires: int | None = None
    signed_url: str | None = None

    @property
    def presigned(self) -> bool:
        return self.signed_url is not None


def _header_params(authorization: str) -> dict[str, str]:
    """`Credential=..., SignedHeaders=..., Signature=...` in any order, after the algorithm."""
    params = {}
    for part in authorization[len(ALGORITHM):].split(","):
        key, sep, value = part.strip().partition("=")
        if sep:
            params[key] = value.strip()
    return params


def _from_header(authorization: str, headers: Mapping[str, str]) -> SignedRequest:
    params = _header_params(authorization) if authorization.startswith(ALGORITHM + " ") else {}
    timestamp = headers.get("x-amz-date")
    missing = [f"Authorization header requires '{p}' parameter." for p in _HEADER_PARAMS if not params.get(p)]
    if timestamp is None:
        missing.append("Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.")
    if missing:
        raise _incomplete(" ".join(missing) + f" Authorization={authorization}")
    return SignedRequest(
        scope=CredentialScope.parse(params["Credential"]),
        signed_headers=tuple(params["SignedHeaders"].lower().split(";")),
        signature=params["Signature"],
        timestamp=timestamp,
    )


def _from_query(url: str) -> SignedRequest | None:
    parts = urlsplit(url)
    values = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    if "X-Amz-Algorithm" not in values and "X-Amz-Signature" not in values:
        return None
    missing = [p for p in _QUERY_PARAMS if not values.get(p)]
    if missing or values["X-Amz-Algorithm"] != ALGORITHM:
        raise _incomplete("AWS query-string parameters must include 'X-Amz-Algorithm', 'X-Amz-Credential', "
                          "'X-Amz-Signature', 'X-Amz-Date', 'X-Amz-SignedHeaders'. Re-examine the query-string "
                          "parameters.")
    expires_text = values.get("X-Amz-Expires", str(MAX_SKEW_SECONDS))
    if not expires_text.isdigit() or not 1 <= int(expires_text) <= MAX_PRESIGN_EXPIRES:
        raise _incomplete(f"X-Amz-Expires must be a number of seconds from 1 to {MAX_PRESIGN_EXPIRES}, "
                          f"got '{expires_text}'.")
    # The signature covers the query string exactly as sent, minus X-Amz-Signature itself.
    query = "&".join(p for p in parts.query.split("&") if p.partition("=")[0] != "X-Amz-Signature")
    return SignedRequest(
        scope=CredentialScope.parse(values["X-Amz-Credential"]),
        signed_headers=tuple(values["X-Amz-SignedHeaders"].lower().split(";")),
        signature=values["X-Amz-Signature"],
        timestamp=values["X-Amz-Date"],
        expires=int(expires_text),
        signed_url=urlunsplit(parts._replace(query=query)),
    )


def read_signature(url: str, headers: Mapping[str, str]) -> SignedRequest | None:
    """The request's SigV4 signature, or None when it carries none (`headers` with lower-case names)."""
    authorization = headers.get("authorization")
    presigned = _from_query(url)
    if authorization is not None and presigned is not None:
        raise _incomplete("Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter or the "
                          "Authorization header should be specified")
    if authorization is not None:
        return _from_header(authorization, headers)
    return presigned


def check_scope(scope: CredentialScope, signing_name: str | None) -> None:
    """The scope names a real region, the service the target belongs to, and AWS's terminator."""
    problems = []
    if not is_valid_region(scope.region):
        problems.append(f"Credential should be scoped to a valid region, not '{scope.region}'. ")
    # None: the target names no service served here, which the dispatcher reports once auth passed.
    if signing_name is not None and scope.service != signing_name:
        problems.append(f"Credential should be scoped to correct service: '{signing_name}'. ")
    if scope.terminator != TERMINATOR:
        problems.append(f"Credential should be scoped with a valid terminator: '{TERMINATOR}', "
                        f"not '{scope.terminator}'. ")
    if problems:
        raise _invalid("".join(problems))


def _stamp(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime(_TIMESTAMP_FORMAT)


def _window(seconds: int) -> str:
    return f"{seconds // 60} min." if seconds % 60 == 0 else f"{seconds} sec."


def check_time(signed: SignedRequest, now: float) -> None:
    """X-Amz-Date is well-formed, matches the scope's date and lies within AWS's window around `now`."""
    timestamp = signed.timestamp or ""
    if not _TIMESTAMP.fullmatch(timestamp):
        raise _incomplete(f"Date must be in ISO-8601 'basic format'. Got '{timestamp}'. "
                          "See http://en.wikipedia.org/wiki/ISO_8601")
    if signed.scope.date != timestamp[:8]:
        raise _invalid("Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from "
                       f"HTTP: '{signed.scope.date}' != '{timestamp[:8]}', from '{timestamp}'.")
    try:
        signed_at = dt.datetime.strptime(timestamp, _TIMESTAMP_FORMAT).replace(tzinfo=dt.UTC).timestamp()
    except ValueError:
        raise _incomplete(f"Date must be in ISO-8601 'basic format'. Got '{timestamp}'. "
                          "See http://en.wikipedia.org/wiki/ISO_8601") from None
    if signed_at > now + MAX_SKEW_SECONDS:
        raise _invalid(f"Signature not yet current: {timestamp} is still later than "
                       f"{_stamp(now + MAX_SKEW_SECONDS)} ({_stamp(now)} + {_window(MAX_SKEW_SECONDS)})")
    lifetime = min(signed.expires, MAX_SKEW_SECONDS) if signed.presigned and signed.expires else MAX_SKEW_SECONDS
    if signed_at < now - lifetime:
        raise _invalid(f"Signature expired: {timestamp} is now earlier than {_stamp(now - lifetime)} "
                       f"({_stamp(now)} - {_window(lifetime)})")


class Authenticator:
    """Decides, per request, which region it is scoped to and whether its signature holds.

    Without keys every signature is accepted (and an unsigned request gets `default_region`), but the
    scope must still be well-formed, name a real region and the right service.
    """

    def __init__(self, default_region: str, access_key: str | None = None, secret_key: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.default_region = default_region
        self.keys = Credentials(access_key, secret_key) if access_key and secret_key else None
        self.clock = clock

    @property
    def required(self) -> bool:
        return self.keys is not None

    def authenticate(self, method: str, url: str, headers: Mapping[str, str], body: bytes,
                     signing_name: str | None) -> str:
        """The region the request is scoped to; raises the AWS auth error a real endpoint would give.

        `signing_name` is the signing name of the service the request's target belongs to (the botocore
        model's `signingName`, e.g. `sagemaker`, `logs`, `monitoring`).
        """
        lowered = {k.lower(): v for k, v in headers.items()}
        signed = read_signature(url, lowered)
        if signed is None:
            if self.keys is not None:
                raise ApiError("MissingAuthenticationTokenException", "Missing Authentication Token", 403)
            return self.default_region
        check_scope(signed.scope, signing_name)
        if self.keys is not None:
            self._verify(signed, method, url, lowered, body)
        return signed.scope.region

    def _verify(self, signed: SignedRequest, method: str, url: str, headers: Mapping[str, str],
                body: bytes) -> None:
        assert self.keys is not None
        check_time(signed, self.clock())
        if signed.scope.access_key != self.keys.access_key:
            raise ApiError("UnrecognizedClientException", "The security token included in the request is invalid.")
        declared = headers.get("x-amz-content-sha256")
        if declared is not None and declared != hashlib.sha256(body).hexdigest():
            # botocore signs the declared hash in place of the body's: it must be the body's.
            raise _invalid(_MISMATCH)
        request = AWSRequest(method=method, url=signed.signed_url or url, data=body,
                             headers={name: headers.get(name, "") for name in signed.signed_headers})
        request.context["timestamp"] = signed.timestamp
        signer = SigV4Auth(self.keys, signed.scope.service, signed.scope.region)
        expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
        if not hmac.compare_digest(expected, signed.signature):
            raise _invalid(_MISMATCH)
