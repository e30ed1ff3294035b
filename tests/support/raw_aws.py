"""A raw AWS client for the fuzz: any input, in any wire protocol a service speaks, signed and sent as is.

boto3 would refuse or reshape what the fuzz means to send (a string where a number goes, a list past its
size), so requests are encoded here without looking at types: AWS JSON and RPC v2 CBOR dump the value,
the query protocol flattens it along the input shape and writes any leaf as text. The request is signed
with SigV4 (botocore's signer) and sent on one kept-alive connection.

`check_response` is what every answer must be, whatever was sent: no 5xx, no Python traceback or
exception text, and an error in the shape the protocol gives errors, with a code the model knows or one
AWS's front end answers with.
"""

from __future__ import annotations

import http.client
import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote
from xml.etree import ElementTree

import cbor2
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.model import ServiceModel, Shape

REGION = "us-east-1"
KEY = "minioadmin"

# The codes AWS's front end answers any service with (AWS's "Common Errors"), in the JSON protocols' and
# the query protocol's names.
GENERIC_CODES = frozenset({
    "ValidationException", "ValidationError", "SerializationException", "UnknownOperationException",
    "InvalidAction", "MissingAction", "MalformedQueryString", "InvalidParameterException",
    "InvalidParameterValue", "InvalidParameterValueException", "InvalidParameterCombination",
    "InvalidParameterCombinationException", "MissingParameter", "MissingRequiredParameterException",
    "InvalidQueryParameter", "InvalidSignatureException", "IncompleteSignatureException", "SignatureDoesNotMatch",
    "IncompleteSignature", "UnrecognizedClientException", "InvalidClientTokenId", "AccessDeniedException",
    "MissingAuthenticationTokenException", "MissingAuthenticationToken", "ThrottlingException",
    "ResourceNotFoundException", "ResourceNotFound", "ResourceLimitExceeded", "ResourceInUse",
    "ConflictException", "NoSuchEntity", "InvalidInput",
})
# What a response body must never hold: Python speaking instead of the service.
PYTHON_LEAKS = re.compile(
    r"Traceback \(most recent call last\)|File \"[^\"]+\", line \d+|\b(?:KeyError|TypeError|AttributeError|"
    r"IndexError|ZeroDivisionError|OverflowError|RecursionError|UnicodeDecodeError|UnicodeEncodeError|"
    r"AssertionError|NameError|sqlite3\.|sqlalchemy\.|NoneType)\b")


@dataclass(frozen=True)
class RawRequest:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


# ---- encoding -------------------------------------------------------------------------------------


def _query_fields(shape: Shape | None, value: Any, prefix: str, out: list[tuple[str, str]]) -> None:
    """Flatten `value` as botocore's QuerySerializer would, writing anything that does not fit as text."""
    kind = shape.type_name if shape is not None else None
    if kind == "structure" and isinstance(value, dict):
        for name, item in value.items():
            member = shape.members.get(name)
            serialized = member.serialization.get("name", name) if member is not None else str(name)
            _query_fields(member, item, f"{prefix}.{serialized}" if prefix else serialized, out)
    elif kind == "list" and isinstance(value, list):
        if not value:
            out.append((prefix, ""))
        flattened = shape.serialization.get("flattened")
        item_name = shape.member.serialization.get("name", "member")
        for i, item in enumerate(value, 1):
            _query_fields(shape.member, item, f"{prefix}.{i}" if flattened else f"{prefix}.{item_name}.{i}", out)
    elif kind == "map" and isinstance(value, dict):
        for i, (key, item) in enumerate(value.items(), 1):
            out.append((f"{prefix}.entry.{i}.key", str(key)))
            _query_fields(shape.value, item, f"{prefix}.entry.{i}.value", out)
    elif isinstance(value, bool):
        out.append((prefix, "true" if value else "false"))
    elif value is not None:
        out.append((prefix, json.dumps(value) if isinstance(value, (dict, list)) else str(value)))


def _text(value: str) -> str:
    # Lone surrogates cannot travel as UTF-8: they go as the replacement character.
    return value.encode("utf-8", "replace").decode("utf-8")


def encode(model: ServiceModel, operation: str, protocol: str, params: Any) -> RawRequest:
    """The request `params` make for `operation` in `protocol` (json, smithy-rpc-v2-cbor or query)."""
    prefix = model.metadata.get("targetPrefix")
    if protocol == "json":
        version = model.metadata.get("jsonVersion", "1.1")
        return RawRequest("/", {"Content-Type": f"application/x-amz-json-{version}",
                                "X-Amz-Target": f"{prefix}.{operation}"},
                          json.dumps(params, ensure_ascii=True).encode())
    if protocol == "smithy-rpc-v2-cbor":
        return RawRequest(f"/service/{prefix}/operation/{operation}",
                          {"Content-Type": "application/cbor", "Accept": "application/cbor",
                           "smithy-protocol": "rpc-v2-cbor"}, cbor2.dumps(params))
    if protocol == "query":
        fields: list[tuple[str, str]] = [("Action", operation), ("Version", model.metadata["apiVersion"])]
        if isinstance(params, dict):
            _query_fields(model.operation_model(operation).input_shape, params, "", fields)
        body = "&".join(f"{quote(k, safe='')}={quote(_text(v), safe='')}" for k, v in fields)
        return RawRequest("/", {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}, body.encode())
    raise ValueError(f"no encoder for protocol {protocol}")


# ---- sending --------------------------------------------------------------------------------------


@dataclass
class RawClient:
    """One kept-alive connection to an smlocal endpoint (`http://127.0.0.1:<port>`)."""

    endpoint: str
    region: str = REGION
    _conn: http.client.HTTPConnection | None = field(default=None, repr=False)

    def send(self, signing_name: str, request: RawRequest, sign: bool = True) -> RawResponse:
        headers = dict(request.headers)
        if sign:
            aws = AWSRequest(method="POST", url=self.endpoint + request.path, data=request.body, headers=headers)
            SigV4Auth(Credentials(KEY, KEY), signing_name, self.region).add_auth(aws)
            headers = dict(aws.headers.items())
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.request("POST", request.path, body=request.body, headers=headers)
                answer = conn.getresponse()
                return RawResponse(answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read())
            except (http.client.HTTPException, ConnectionError):
                # The server may close a kept-alive connection after an answer it found malformed: reopen once.
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            host, port = self.endpoint.removeprefix("http://").split(":")
            self._conn = http.client.HTTPConnection(host, int(port), timeout=30)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# ---- what every answer must be ----------------------------------------------------------------------


def known_codes(model: ServiceModel | None) -> frozenset[str]:
    codes = set(GENERIC_CODES)
    for shape in model.error_shapes if model is not None else ():
        codes.add(shape.name)
        codes.add((shape.metadata.get("error") or {}).get("code", shape.name))
    return frozenset(codes)


def error_code(response: RawResponse) -> str | None:
    """The error code of an answer in any of the three protocols; None when the body is no error."""
    media = response.headers.get("content-type", "")
    if "xml" in media:
        root = ElementTree.fromstring(response.body)
        code = root.find(".//{*}Error/{*}Code")
        if code is None:
            code = root.find(".//Error/Code")
        return code.text if code is not None else None
    if "cbor" in media:
        return cbor2.loads(response.body).get("__type")
    return json.loads(response.body).get("__type")


def problems(response: RawResponse, model: ServiceModel | None) -> list[str]:
    """What is wrong with an answer; empty when it is one AWS could have given."""
    found = []
    if response.status >= 500:
        found.append(f"HTTP {response.status}")
    text = response.body.decode("utf-8", "replace")
    leak = PYTHON_LEAKS.search(text)
    if leak:
        found.append(f"Python text in the body: {leak.group(0)!r}")
    try:
        code = error_code(response)
    except Exception as e:  # noqa: BLE001 - any undecodable body is itself the finding
        return [*found, f"undecodable body ({type(e).__name__}): {text[:200]!r}"]
    if response.status >= 400:
        if not code:
            found.append(f"error without a code: {text[:200]!r}")
        elif code not in known_codes(model):
            found.append(f"error code {code!r} is neither the model's nor a generic AWS one")
        if code == "InternalFailure":
            found.append("InternalFailure")
    return found


def check_response(response: RawResponse, model: ServiceModel | None, what: str) -> None:
    found = problems(response, model)
    assert not found, f"{what}: {'; '.join(found)}\n{response.body[:600]!r}"
