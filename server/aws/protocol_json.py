"""AWS JSON 1.0 and 1.1 on the wire: `POST /`, `X-Amz-Target: <prefix>.<Operation>`, JSON bodies.

The two versions differ only in the content type, which follows the service model's `jsonVersion`.
Timestamps are epoch seconds (JSON numbers) both ways, as the handlers keep them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from botocore.model import OperationModel, StructureShape
from fastapi.responses import Response

from server.aws.wire import WireMatch, error_headers, unknown_operation_exception
from smlocal.core.errors import ApiError

if TYPE_CHECKING:
    from server.aws.registry import Service

DEFAULT_JSON_VERSION = "1.1"


def content_type(service: Service | None) -> str:
    version = service.model.metadata.get("jsonVersion", DEFAULT_JSON_VERSION) if service else DEFAULT_JSON_VERSION
    return f"application/x-amz-json-{version}"


def _not_json(constant: str) -> Any:
    # Python's decoder reads NaN and Infinity, which JSON does not have (and AWS's parsers refuse).
    raise ValueError(f"{constant} is not JSON")


def parse_body(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        params = json.loads(body, parse_constant=_not_json)
    except (ValueError, UnicodeDecodeError, RecursionError):
        # RecursionError: a body nested deeper than the decoder's stack (`{"a":{"a":...` ten thousand deep).
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
