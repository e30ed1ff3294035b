"""AWS JSON 1.0 and 1.1 on the wire: `POST /`, `X-Amz-Target: <prefix>.<Operation>`, JSON bodies.

The two versions differ only in the content type, which follows the service model's `jsonVersion`.
Timestamps are epoch seconds (JSON numbers) both ways, as the handlers keep them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from botocore.model import OperationModel, StructureShape
from fastapi.responses import Response

from smlocal.core.errors import ApiError

if TYPE_CHECKING:
    from server.aws.registry import Service

DEFAULT_JSON_VERSION = "1.1"


@dataclass(frozen=True)
class WireMatch:
    """A request recognised as one wire protocol: the service key and operation it names.

    The key is how the protocol names a service: the model's target prefix for AWS JSON and RPC v2 CBOR,
    its API version for the query protocol (`Service.route_key`)."""

    service_key: str
    operation: str
    label: str  # how an unknown operation is named back to the client


class WireProtocol(Protocol):
    name: str

    def match(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> WireMatch | None: ...

    def unknown_operation(self, match: WireMatch) -> ApiError: ...

    def parse(self, body: bytes, shape: StructureShape | None) -> dict[str, Any]: ...

    def response(self, service: Service, operation: OperationModel, payload: dict[str, Any],
                 request_id: str) -> Response: ...

    def error_response(self, error: ApiError, request_id: str, service: Service | None) -> Response: ...


def unknown_operation_exception(match: WireMatch) -> ApiError:
    """How AWS JSON and RPC v2 CBOR services answer an operation they do not have."""
    return ApiError("UnknownOperationException", f"Unknown operation {match.label}".rstrip())


def content_type(service: Service | None) -> str:
    version = service.model.metadata.get("jsonVersion", DEFAULT_JSON_VERSION) if service else DEFAULT_JSON_VERSION
    return f"application/x-amz-json-{version}"


def parse_body(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        params = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ApiError("SerializationException", "Start of structure or map found where not expected.") from None
    if not isinstance(params, dict):
        raise ApiError("SerializationException", "Start of structure or map found where not expected.")
    return params


def json_response(payload: dict[str, Any], request_id: str, status: int = 200,
                  media_type: str = "application/x-amz-json-1.1") -> Response:
    return Response(
        content=json.dumps(payload, separators=(",", ":")),
        status_code=status,
        media_type=media_type,
        headers={"x-amzn-requestid": request_id},
    )


def error_headers(error: ApiError, service: Service | None) -> dict[str, str]:
    headers = {"x-amzn-errortype": error.code}
    query = service.query_error_code(error.code) if service is not None else None
    if query is not None:
        headers["x-amzn-query-error"] = f"{query[0]};{query[1]}"
    return headers


class AwsJson:
    name = "json"

    def match(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> WireMatch | None:
        if method != "POST" or path:
            return None
        target = headers.get("x-amz-target") or ""
        prefix, dot, operation = target.rpartition(".")
        if not dot:
            return WireMatch("", "", target)
        return WireMatch(prefix, operation, target)

    def unknown_operation(self, match: WireMatch) -> ApiError:
        return unknown_operation_exception(match)

    def parse(self, body: bytes, shape: StructureShape | None) -> dict[str, Any]:
        return parse_body(body)

    def response(self, service: Service, operation: OperationModel, payload: dict[str, Any],
                 request_id: str) -> Response:
        return json_response(payload, request_id, media_type=content_type(service))

    def error_response(self, error: ApiError, request_id: str, service: Service | None) -> Response:
        response = json_response({"__type": error.code, "Message": error.message}, request_id, error.status,
                                 media_type=content_type(service))
        response.headers.update(error_headers(error, service))
        return response
