"""The registry of served AWS services: each is a botocore service model plus a provider object.

A provider offers `handlers()` (operation name -> callable taking the request context and the validated
input) and may set `validation_error` (the error code the model walk's failures carry, as the service
reports them), `extra_required` (operation -> members the service requires beyond the model) and
`on_event_loop` (operations served without a worker thread).
Adding a service means adding a provider here, nothing in the protocol code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import botocore.session
from botocore.model import OperationModel, ServiceModel, Shape

from server.aws.context import RequestContext
from server.aws.validation import validate_input

Handler = Callable[[Any, dict[str, Any]], dict[str, Any]]


class Provider(Protocol):
    def handlers(self) -> dict[str, Handler]: ...


@dataclass(frozen=True)
class Service:
    model: ServiceModel
    provider: Any
    handlers: dict[str, Handler] = field(default_factory=dict)

    @classmethod
    def of(cls, service_name: str, provider: Provider, session: botocore.session.Session | None = None) -> Service:
        """The service `service_name` as `session`'s loader finds its model (botocore's own by default)."""
        model = (session or botocore.session.get_session()).get_service_model(service_name)
        handlers = provider.handlers()
        unknown = set(handlers) - set(model.operation_names)
        if unknown:
            raise ValueError(f"{service_name} has no operations {sorted(unknown)}")
        return cls(model, provider, handlers)

    @property
    def name(self) -> str:
        return self.model.service_name

    @property
    def signing_name(self) -> str:
        """The service a SigV4 credential scope must name for requests to this service."""
        return self.model.signing_name

    @property
    def target_prefix(self) -> str | None:
        """AWS JSON's and RPC v2 CBOR's name for the service; query-protocol services have none."""
        return self.model.metadata.get("targetPrefix")

    def route_key(self, protocol: str) -> str | None:
        """How requests in `protocol` name this service: every query-protocol request carries the API
        version (`Version=2010-05-08`), the RPC protocols the target prefix."""
        if protocol == "query":
            return self.model.metadata.get("apiVersion")
        return self.target_prefix

    @property
    def protocols(self) -> list[str]:
        return list(self.model.metadata.get("protocols") or [self.model.metadata["protocol"]])

    @property
    def validation_error(self) -> str:
        return getattr(self.provider, "validation_error", "ValidationException")

    def extra_required(self, operation: str) -> tuple[str, ...]:
        return tuple(getattr(self.provider, "extra_required", {}).get(operation, ()))

    def runs_on_event_loop(self, operation: str) -> bool:
        """The provider's `on_event_loop`: operations quick enough, and never waiting on anything, to be served on
        the event loop rather than handed to a worker thread (a handoff costs more CPU than they do)."""
        return operation in getattr(self.provider, "on_event_loop", ())

    def serves(self, operation: str) -> bool:
        return operation in self.handlers

    def operation_model(self, operation: str) -> OperationModel:
        return self.model.operation_model(operation)

    def invoke(self, operation: str, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
        """The one way into a provider, for the wire dispatcher and the console alike: `params` checked
        against the botocore model (raises the ApiError a client gets), the handler called, and only the
        modelled output members kept."""
        model = self.operation_model(operation)
        valid = validate_input(model.input_shape, params, self.extra_required(operation), self.validation_error)
        return shape_output(model.output_shape, self.handlers[operation](ctx, valid)) or {}

    def query_error_code(self, code: str) -> tuple[str, str] | None:
        """For services that left the query protocol: (old code, Sender|Receiver) of a modelled error.

        Clients find the modelled exception through the `x-amzn-query-error` header built from it.
        """
        if not self.model.is_query_compatible:
            return None
        for shape in self.model.error_shapes:
            if shape.name == code:
                error = shape.metadata.get("error") or {}
                if "code" in error:
                    return error["code"], "Sender" if error.get("senderFault") else "Receiver"
        return None


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


class ServiceRegistry:
    """The services on one port, found by what each wire protocol names them by (`Service.route_key`)."""

    def __init__(self, services: Iterable[Service]) -> None:
        self._services = list(services)
        self._by_route: dict[tuple[str, str], Service] = {}
        for service in self._services:
            for protocol in service.protocols:
                key = service.route_key(protocol)
                if key is None:
                    continue
                if (protocol, key) in self._by_route:
                    raise ValueError(f"two services named {key} in protocol {protocol}")
                self._by_route[protocol, key] = service

    def find(self, protocol: str, key: str) -> Service | None:
        """The service a request in `protocol` names by `key`; None when no served service speaks it."""
        return self._by_route.get((protocol, key))

    def by_target_prefix(self, prefix: str) -> Service | None:
        return next((s for s in self._services if s.target_prefix == prefix), None)

    def __iter__(self):  # noqa: ANN204 - an iterator of Service
        return iter(self._services)
