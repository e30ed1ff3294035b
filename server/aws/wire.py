"""What every wire protocol is (`WireProtocol`), what it recognises in a request (`WireMatch`), and the error
pieces more than one of them answers with. AWS JSON, RPC v2 CBOR and the query protocol each implement it
in a module of their own (server.aws.protocol_json, protocol_cbor, protocol_query); server.aws.protocol
picks the one a request speaks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from botocore.model import OperationModel, StructureShape
from fastapi.responses import Response

from smlocal.core.errors import ApiError

if TYPE_CHECKING:
    from server.aws.registry import Service


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


def error_headers(error: ApiError, service: Service | None) -> dict[str, str]:
    headers = {"x-amzn-errortype": error.code}
    query = service.query_error_code(error.code) if service is not None else None
    if query is not None:
        headers["x-amzn-query-error"] = f"{query[0]};{query[1]}"
    return headers
