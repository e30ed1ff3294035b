"""The AWS query protocol on the wire: `POST /`, a form-encoded body, XML responses.

A request is `Action=<Operation>&Version=<API version>&<members>`: nested members are dotted
(`Role.Path`), list items numbered from 1 (`ActionNames.member.1`, or `ActionNames.1` when the model
flattens the list), map entries `Name.entry.N.key` / `.value`, and every value is text. The parse walks
the operation's input shape to rebuild the structure botocore's `QuerySerializer` flattened, with
numbers and booleans typed, so the model-driven validation sees what the JSON protocols hand it.

The answer is `<OperationResponse xmlns=...><OperationResult>...</OperationResult><ResponseMetadata>`,
the result serialised by walking the output shape (lists as `<member>` elements unless flattened, maps
as `<entry><key/><value/></entry>`, timestamps in ISO 8601, booleans `true`/`false`). Errors are
`<ErrorResponse><Error><Type/><Code/><Message/></Error><RequestId/></ErrorResponse>`, with the query
protocol's own names for the protocol-level errors (AWS's "Common Errors": `ValidationError`,
`InvalidAction`, `SignatureDoesNotMatch`, ...), and a query-compatible service's modelled errors under the
codes its model gives them (CloudWatch's `InvalidParameterValueException` is `InvalidParameterValue`).
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs
from xml.etree import ElementTree

import regex
from botocore.model import OperationModel, Shape, StructureShape
from fastapi.responses import Response

from server.aws.wire import WireMatch
from smlocal.core.errors import ApiError

if TYPE_CHECKING:
    from server.aws.registry import Service

FORM_MEDIA_TYPE = "application/x-www-form-urlencoded"
XML_MEDIA_TYPE = "text/xml"

# The JSON protocols' names for protocol-level errors, and the query protocol's for the same failures.
_QUERY_CODES = {
    "ValidationException": "ValidationError",
    "InvalidSignatureException": "SignatureDoesNotMatch",
    "IncompleteSignatureException": "IncompleteSignature",
    "UnrecognizedClientException": "InvalidClientTokenId",
    "MissingAuthenticationTokenException": "MissingAuthenticationToken",
}

_MISSING = object()
# What XML 1.0 cannot hold, even as a character reference: most control characters, lone surrogates,
# U+FFFE/U+FFFF. A request may carry them (a form field is any UTF-8), and an answer that echoes one
# would be a document no client parses.
_NOT_XML = regex.compile(r"[^\t\n\r\x20-\uD7FF\uE000-\uFFFD\U00010000-\U0010FFFF]")


# -- the request ------------------------------------------------------------------------------------


def form_fields(body: bytes) -> dict[str, str] | None:
    """The body's fields (first value of each), or None when it is not a form."""
    try:
        parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        return None
    return {key: values[0] for key, values in parsed.items()}


def _serialized_name(shape: Shape, default: str) -> str:
    return shape.serialization.get("name", default)


def _scalar(shape: Shape, text: str) -> Any:
    """The typed value of a field; text that is no valid value is left for validation to report."""
    kind = shape.type_name
    try:
        if kind in ("integer", "long"):
            return int(text)
        if kind in ("float", "double"):
            return float(text)
    except ValueError:
        return text
    if kind == "boolean" and text in ("true", "false"):
        return text == "true"
    return text


def _value(fields: Mapping[str, str], shape: Shape, key: str) -> Any:
    kind = shape.type_name
    if kind == "structure":
        if not any(name.startswith(key + ".") for name in fields):
            return _MISSING
        return _structure(fields, shape, key)  # type: ignore[arg-type]
    if kind == "list":
        if fields.get(key) == "":  # botocore sends an empty list as `Name=`
            return []
        if shape.serialization.get("flattened"):
            item_name = shape.member.serialization.get("name")
            prefix = ".".join([*key.split(".")[:-1], item_name]) if item_name else key
        else:
            prefix = f"{key}.{_serialized_name(shape.member, 'member')}"
        items = []
        while (item := _value(fields, shape.member, f"{prefix}.{len(items) + 1}")) is not _MISSING:
            items.append(item)
        return items or _MISSING
    if kind == "map":
        prefix = key if shape.serialization.get("flattened") else f"{key}.entry"
        key_name = _serialized_name(shape.key, "key")
        value_name = _serialized_name(shape.value, "value")
        entries: dict[str, Any] = {}
        n = 1
        while (entry_key := fields.get(f"{prefix}.{n}.{key_name}")) is not None:
            value = _value(fields, shape.value, f"{prefix}.{n}.{value_name}")
            entries[entry_key] = None if value is _MISSING else value
            n += 1
        return entries or _MISSING
    text = fields.get(key)
    return _MISSING if text is None else _scalar(shape, text)


def _structure(fields: Mapping[str, str], shape: StructureShape, prefix: str) -> dict[str, Any]:
    params = {}
    for name, member in shape.members.items():
        serialized = _serialized_name(member, name)
        value = _value(fields, member, f"{prefix}.{serialized}" if prefix else serialized)
        if value is not _MISSING:
            params[name] = value
    return params


# -- the response -----------------------------------------------------------------------------------


def _text(shape: Shape, value: Any) -> str:
    kind = shape.type_name
    if kind == "boolean":
        return "true" if value else "false"
    if kind == "timestamp":
        moment = value if isinstance(value, dt.datetime) else dt.datetime.fromtimestamp(float(value), dt.UTC)
        return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    if kind == "blob":
        raw = value.encode() if isinstance(value, str) else bytes(value)
        return base64.b64encode(raw).decode()
    if kind in ("float", "double"):
        return repr(float(value))
    return str(value)


def _add(parent: ElementTree.Element, name: str, text: str) -> None:
    """A child element holding `text`, with what XML cannot hold replaced by U+FFFD."""
    ElementTree.SubElement(parent, name).text = _NOT_XML.sub("\ufffd", text)


def _element(parent: ElementTree.Element, name: str, shape: Shape, value: Any) -> None:
    kind = shape.type_name
    if kind == "structure":
        node = ElementTree.SubElement(parent, name)
        for member_name, member in shape.members.items():
            if value.get(member_name) is not None:
                _member(node, member_name, member, value[member_name])
    elif kind == "list":
        node = ElementTree.SubElement(parent, name)
        item_name = _serialized_name(shape.member, "member")
        for item in value:
            _element(node, item_name, shape.member, item)
    elif kind == "map":
        flattened = shape.serialization.get("flattened")
        holder = parent if flattened else ElementTree.SubElement(parent, name)
        for key, item in value.items():
            entry = ElementTree.SubElement(holder, name if flattened else "entry")
            _element(entry, _serialized_name(shape.key, "key"), shape.key, key)
            _element(entry, _serialized_name(shape.value, "value"), shape.value, item)
    else:
        _add(parent, name, _text(shape, value))


def _member(parent: ElementTree.Element, member_name: str, member: Shape, value: Any) -> None:
    if member.type_name == "list" and member.serialization.get("flattened"):
        # A flattened list is its items, repeated, under the item's name (else the member's).
        item_name = member.member.serialization.get("name") or _serialized_name(member, member_name)
        for item in value:
            _element(parent, item_name, member.member, item)
        return
    _element(parent, _serialized_name(member, member_name), member, value)


def _document(root: ElementTree.Element) -> bytes:
    return ElementTree.tostring(root, encoding="utf-8", xml_declaration=False)


def _root(tag: str, service: Service | None) -> ElementTree.Element:
    namespace = service.model.metadata.get("xmlNamespace") if service is not None else None
    return ElementTree.Element(tag, {"xmlns": namespace} if namespace else {})


def result_document(service: Service, operation: OperationModel, payload: dict[str, Any], request_id: str) -> bytes:
    root = _root(f"{operation.name}Response", service)
    shape = operation.output_shape
    if shape is not None:
        wrapper = shape.serialization.get("resultWrapper")
        holder = ElementTree.SubElement(root, wrapper) if wrapper else root
        for member_name, member in shape.members.items():
            if payload.get(member_name) is not None:
                _member(holder, member_name, member, payload[member_name])
    metadata = ElementTree.SubElement(root, "ResponseMetadata")
    ElementTree.SubElement(metadata, "RequestId").text = request_id
    return _document(root)


def _modelled_error(service: Service | None, code: str) -> dict[str, Any] | None:
    """The `error` trait of the model's error shape that goes by `code` on the query wire."""
    if service is None:
        return None
    for shape in service.model.error_shapes:
        error = shape.metadata.get("error") or {}
        if error.get("code", shape.name) == code:
            return error
    return None


def query_error(error: ApiError, service: Service | None) -> tuple[str, str, int]:
    """(code, Sender|Receiver, HTTP status) of an error as the query protocol reports it."""
    compatible = service.query_error_code(error.code) if service is not None else None
    code = compatible[0] if compatible else _QUERY_CODES.get(error.code, error.code)
    modelled = _modelled_error(service, code)
    if modelled is not None:
        fault = "Sender" if modelled.get("senderFault") else "Receiver"
        return code, fault, int(modelled.get("httpStatusCode", error.status))
    return code, "Sender" if error.status < 500 else "Receiver", error.status


def error_document(error: ApiError, request_id: str, service: Service | None) -> tuple[bytes, int]:
    code, fault, status = query_error(error, service)
    root = _root("ErrorResponse", service)
    detail = ElementTree.SubElement(root, "Error")
    _add(detail, "Type", fault)
    _add(detail, "Code", code)
    _add(detail, "Message", error.message)
    _add(root, "RequestId", request_id)
    return _document(root), status


class AwsQuery:
    name = "query"

    def match(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> WireMatch | None:
        content_type = (headers.get("content-type") or "").split(";")[0].strip().lower()
        if method != "POST" or path or content_type != FORM_MEDIA_TYPE:
            return None
        fields = form_fields(body) or {}
        action = fields.get("Action", "")
        return WireMatch(fields.get("Version", ""), action, f"{action}|{fields.get('Version', '')}")

    def unknown_operation(self, match: WireMatch) -> ApiError:
        if not match.operation:
            return ApiError("MissingAction", "The request is missing an action or a required parameter.")
        return ApiError("InvalidAction",
                        f"Could not find operation {match.operation} for version {match.service_key or 'NO_VERSION'}")

    def parse(self, body: bytes, shape: StructureShape | None) -> dict[str, Any]:
        fields = form_fields(body)
        if fields is None:
            raise ApiError("MalformedQueryString", "The query string is not valid UTF-8.")
        return {} if shape is None else _structure(fields, shape, "")

    def response(self, service: Service, operation: OperationModel, payload: dict[str, Any],
                 request_id: str) -> Response:
        return Response(content=result_document(service, operation, payload, request_id), status_code=200,
                        media_type=XML_MEDIA_TYPE, headers={"x-amzn-requestid": request_id})

    def error_response(self, error: ApiError, request_id: str, service: Service | None) -> Response:
        document, status = error_document(error, request_id, service)
        return Response(content=document, status_code=status, media_type=XML_MEDIA_TYPE,
                        headers={"x-amzn-requestid": request_id})
