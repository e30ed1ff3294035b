"""The wire layer's front: which service, operation and wire protocol a request is, and the shared bits.

Every AWS RPC protocol names the service: AWS JSON 1.0/1.1 by the model's target prefix in the
`X-Amz-Target` header (`SageMaker.CreateTrainingJob`), Smithy RPC v2 CBOR by the same prefix in the path
(`/service/GraniteServiceVersion20100801/operation/GetMetricStatistics`), the query protocol by the API
version in its form body (`Action=GetRole&Version=2010-05-08`). `resolve` tries each wire protocol and
looks the name up in the service registry, which only finds services that speak that protocol (their
model's `protocols`); then it checks the service serves that operation. Nothing here knows any
particular service.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from server.aws.protocol_cbor import RpcV2Cbor
from server.aws.protocol_json import AwsJson
from server.aws.protocol_query import AwsQuery
from server.aws.registry import Service, ServiceRegistry
from server.aws.wire import WireMatch, WireProtocol
from smlocal.core.errors import ApiError

JSON = AwsJson()
CBOR = RpcV2Cbor()
QUERY = AwsQuery()
# Path-routed protocols first, then the form-encoded query protocol: AWS JSON claims every other `POST /`.
WIRE_PROTOCOLS: tuple[WireProtocol, ...] = (CBOR, QUERY, JSON)


def new_request_id() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True)
class Route:
    """Where a request goes. `service` is known as soon as the target names one, even when the
    operation is not served, so an auth check can compare the credential scope's service with
    `service.signing_name` before `error` is raised."""

    wire: WireProtocol
    service: Service | None
    operation: str | None
    error: ApiError | None = None

    def raise_if_unresolved(self) -> None:
        if self.error is not None:
            raise self.error


def resolve(registry: ServiceRegistry, method: str, path: str, headers: Mapping[str, str],
            body: bytes = b"") -> Route:
    """Never raises: an unknown operation is a Route with `error` set, answered in the request's protocol."""
    for wire in WIRE_PROTOCOLS:
        match = wire.match(method, path, headers, body)
        if match is not None:
            return _route(registry, wire, match)
    return Route(JSON, None, None, ApiError("UnknownOperationException", f"Unknown operation {method} /{path}"))


def _route(registry: ServiceRegistry, wire: WireProtocol, match: WireMatch) -> Route:
    service = registry.find(wire.name, match.service_key) if match.service_key else None
    if service is None:
        return Route(wire, None, None, wire.unknown_operation(match))
    if not service.serves(match.operation):
        return Route(wire, service, None, wire.unknown_operation(match))
    return Route(wire, service, match.operation)
