"""Smithy RPC v2 CBOR on the wire: `POST /service/<prefix>/operation/<Operation>`, CBOR bodies.

Clients send `smithy-protocol: rpc-v2-cbor` and expect it back. Timestamps travel as CBOR tag 1 (epoch
seconds), blobs as byte strings; the output walk follows the operation's output shape to know which is
which. Errors carry `__type` and `message`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import cbor2
import regex
from botocore.model import OperationModel, Shape, StructureShape
from fastapi.responses import Response

from server.aws.wire import WireMatch, error_headers, unknown_operation_exception
from smlocal.core.errors import ApiError

if TYPE_CHECKING:
    from server.aws.registry import Service

MEDIA_TYPE = "application/cbor"
_PATH = regex.compile(r"service/(?P<service>[^/]+)/operation/(?P<operation>[^/]+)")
_SERIALIZATION = "Start of structure or map found where not expected."


def to_cbor_value(shape: Shape | None, value: Any) -> Any:
    if shape is None or value is None:
        return value
    kind = shape.type_name
    if kind == "structure":
        return {name: to_cbor_value(shape.members.get(name), item) for name, item in value.items()}
    if kind == "list":
        return [to_cbor_value(shape.member, item) for item in value]
    if kind == "map":
        return {k: to_cbor_value(shape.value, v) for k, v in value.items()}
    if kind == "timestamp":
        seconds = value.timestamp() if isinstance(value, dt.datetime) else float(value)
        return cbor2.CBORTag(1, seconds)
    if kind in ("float", "double") and isinstance(value, int):
        return float(value)
    if kind == "blob" and isinstance(value, str):
        return value.encode()
    return value


class RpcV2Cbor:
    name = "smithy-rpc-v2-cbor"

    def match(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> WireMatch | None:
        found = _PATH.fullmatch(path)
        if found is None:
            return None
        label = f"{found['service']}.{found['operation']}"
        if method != "POST":
            return WireMatch("", "", label)
        return WireMatch(found["service"], found["operation"], label)

    def unknown_operation(self, match: WireMatch) -> ApiError:
        return unknown_operation_exception(match)

    def parse(self, body: bytes, shape: StructureShape | None) -> dict[str, Any]:
        if not body:
            return {}
        try:
            params = cbor2.loads(body)
        except Exception:  # noqa: BLE001 - cbor2 raises several types for malformed input
            raise ApiError("SerializationException", _SERIALIZATION) from None
        if not isinstance(params, dict):
            raise ApiError("SerializationException", _SERIALIZATION)
        return params

    def _cbor_response(self, payload: Any, request_id: str, status: int,
                       extra: dict[str, str] | None = None) -> Response:
        headers = {"x-amzn-requestid": request_id, "smithy-protocol": "rpc-v2-cbor", **(extra or {})}
        return Response(content=cbor2.dumps(payload), status_code=status, media_type=MEDIA_TYPE, headers=headers)

    def response(self, service: Service, operation: OperationModel, payload: dict[str, Any],
                 request_id: str) -> Response:
        return self._cbor_response(to_cbor_value(operation.output_shape, payload), request_id, 200)

    def error_response(self, error: ApiError, request_id: str, service: Service | None) -> Response:
        return self._cbor_response({"__type": error.code, "message": error.message}, request_id, error.status,
                                   error_headers(error, service))
