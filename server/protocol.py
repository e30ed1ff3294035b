"""The wire layer's front: which service, operation and wire protocol a request is, and the shared bits.

Every AWS RPC protocol names the service by its model's target prefix: AWS JSON 1.0/1.1 in the
`X-Amz-Target` header (`SageMaker.CreateTrainingJob`), Smithy RPC v2 CBOR in the path
(`/service/GraniteServiceVersion20100801/operation/GetMetricStatistics`). `resolve` tries each wire
protocol, looks the prefix up in the service registry and checks that the service speaks that protocol
(its model's `protocols`) and serves that operation. Nothing here knows any particular service.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from botocore.model import Shape

from server.errors import ApiError
from server.protocol_cbor import RpcV2Cbor
from server.protocol_json import AwsJson, WireMatch, WireProtocol
from server.services import Service, ServiceRegistry

JSON = AwsJson()
CBOR = RpcV2Cbor()
# Path-routed protocols first: AWS JSON claims every `POST /`.
WIRE_PROTOCOLS: tuple[WireProtocol, ...] = (CBOR, JSON)


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


def resolve(registry: ServiceRegistry, method: str, path: str, headers: Mapping[str, str]) -> Route:
    """Never raises: an unknown operation is a Route with `error` set, answered in the request's protocol."""
    for wire in WIRE_PROTOCOLS:
        match = wire.match(method, path, headers)
        if match is not None:
            return _route(registry, wire, match)
    return Route(JSON, None, None, ApiError("UnknownOperationException", f"Unknown operation {method} /{path}"))


def _route(registry: ServiceRegistry, wire: WireProtocol, match: WireMatch) -> Route:
    service = registry.by_target_prefix(match.target_prefix) if match.target_prefix else None
    unknown = ApiError("UnknownOperationException", f"Unknown operation {match.label}".rstrip())
    if service is None or wire.name not in service.protocols:
        return Route(wire, None, None, unknown)
    if not service.serves(match.operation):
        return Route(wire, service, None, unknown)
    return Route(wire, service, match.operation)


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
