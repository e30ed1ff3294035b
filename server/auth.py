"""Optional SigV4 verification: recompute the client's signature with botocore's own signer."""

from __future__ import annotations

import hmac

import regex
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from server.errors import ApiError

_AUTH = regex.compile(
    r"AWS4-HMAC-SHA256\s+Credential=(?P<akid>[^/\s,]+)/(?P<date>\d{8})/(?P<region>[^/\s,]+)/"
    r"(?P<service>[^/\s,]+)/aws4_request,\s*SignedHeaders=(?P<signed>[^,\s]+),\s*Signature=(?P<sig>[0-9a-f]+)"
)

_INVALID_SIGNATURE = (
    "The request signature we calculated does not match the signature you provided. Check your AWS "
    "Secret Access Key and signing method. Consult the service documentation for details."
)


class SigV4Verifier:
    def __init__(self, access_key: str, secret_key: str) -> None:
        self.access_key = access_key
        self.secret_key = secret_key

    def verify(self, method: str, url: str, headers: dict[str, str], body: bytes) -> None:
        """Raise the AWS auth error a real endpoint would give, or return when the signature holds."""
        lowered = {k.lower(): v for k, v in headers.items()}
        authorization = lowered.get("authorization")
        if not authorization:
            raise ApiError("MissingAuthenticationTokenException", "Missing Authentication Token", 403)
        match = _AUTH.match(authorization.strip())
        if match is None:
            raise ApiError("IncompleteSignatureException",
                           f"Authorization header requires 'Credential', 'Signature' and 'SignedHeaders'. "
                           f"Authorization={authorization}")
        if match["akid"] != self.access_key:
            raise ApiError("UnrecognizedClientException", "The security token included in the request is invalid.")
        timestamp = lowered.get("x-amz-date")
        if not timestamp or not timestamp.startswith(match["date"]):
            raise ApiError("IncompleteSignatureException", "Date must be in ISO-8601 'basic format'. "
                           "Got missing or mismatched X-Amz-Date")

        signed = match["signed"].split(";")
        request = AWSRequest(method=method, url=url, data=body,
                             headers={name: lowered.get(name, "") for name in signed})
        request.context["timestamp"] = timestamp
        signer = SigV4Auth(Credentials(self.access_key, self.secret_key), match["service"], match["region"])
        canonical = signer.canonical_request(request)
        expected = signer.signature(signer.string_to_sign(request, canonical), request)
        if not hmac.compare_digest(expected, match["sig"]):
            raise ApiError("InvalidSignatureException", _INVALID_SIGNATURE, 403)
