"""AWS JSON 1.1 on the wire: the target header, the body, responses and error bodies."""

from __future__ import annotations

import json
import uuid
from typing import Any

from botocore.model import Shape
from fastapi.responses import Response

from server.errors import ApiError

CONTENT_TYPE = "application/x-amz-json-1.1"
TARGET_PREFIX = "SageMaker."


def new_request_id() -> str:
    return str(uuid.uuid4())


def operation_from_target(target: str | None, known: set[str]) -> str:
    if not target or not target.startswith(TARGET_PREFIX):
        raise ApiError("UnknownOperationException", f"Unknown operation {target or ''}".rstrip())
    op = target[len(TARGET_PREFIX):]
    if op not in known:
        raise ApiError("UnknownOperationException", f"Unknown operation {target}")
    return op


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


def shape_output(shape: Shape | None, value: Any) -> Any:
    """Keep only modelled members, so responses never leak internal fields."""
    if shape is None or value is None:
        return value
    kind = shape.type_name
    if kind == "structure":
        return {
            name: shaped
            for name, member in shape.members.items()
            if name in value and (shaped := shape_output(member, value[name])) is not None
        }
    if kind == "list":
        return [shape_output(shape.member, item) for item in value]
    if kind == "map":
        return {k: shape_output(shape.value, v) for k, v in value.items()}
    return value


def json_response(payload: dict[str, Any], request_id: str, status: int = 200) -> Response:
    return Response(
        content=json.dumps(payload, separators=(",", ":")),
        status_code=status,
        media_type=CONTENT_TYPE,
        headers={"x-amzn-requestid": request_id},
    )


def error_response(error: ApiError, request_id: str) -> Response:
    response = json_response({"__type": error.code, "Message": error.message}, request_id, error.status)
    response.headers["x-amzn-errortype"] = error.code
    return response
