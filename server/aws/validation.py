"""Request validation driven by the service models that ship inside botocore.

The walk checks what AWS's front end checks (required members, types, lengths, ranges, whole-string
patterns, enums, list and map sizes) and phrases failures the way AWS does:
``1 validation error detected: Value 'x_y' at 'trainingJobName' failed to satisfy constraint: ...``.
Type mismatches are ``SerializationException``, as AWS's JSON deserializer reports them.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
from dataclasses import dataclass, field
from typing import Any

import regex
from botocore.model import ListShape, MapShape, Shape, StructureShape

from smlocal.core.errors import ApiError

_MAX_ERRORS_SHOWN = 10
_CONTAINERS = ("structure", "list", "map")

# Values smlocal accepts beyond the model, keyed by (structure shape, member): a training channel may
# name a folder on this machine (`file:///data/train`), which the runner copies in.
LOCAL_EXTENSIONS: dict[tuple[str, str], regex.Pattern[str]] = {
    ("S3DataSource", "S3Uri"): regex.compile(r"file:///.*"),
}


@functools.lru_cache(maxsize=1024)
def _compiled(pattern: str) -> regex.Pattern[str] | None:
    try:
        return regex.compile(pattern)
    except regex.error:
        # A pattern this engine cannot read is not a reason to reject a request AWS would accept.
        return None


def member_path(parent: str, name: str) -> str:
    """AWS reports member paths in lowerCamelCase, dotted."""
    lowered = name[:1].lower() + name[1:]
    return f"{parent}.{lowered}" if parent else lowered


def java_repr(value: Any) -> str:
    """How AWS's (Java) front end prints a value inside `Value '...'`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={java_repr(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(java_repr(v) for v in value) + "]"
    return str(value)


def _quoted(value: Any) -> str:
    return "null" if value is None else f"'{java_repr(value)}'"


def _constraints_of(shape: Shape) -> list[str]:
    """Every constraint of a shape, as AWS lists them for map keys and values."""
    meta = shape.metadata
    out = []
    if shape.type_name in ("string", "list", "map", "blob"):
        if "min" in meta and meta["min"] > 0:
            out.append(f"Member must have length greater than or equal to {meta['min']}")
        if "max" in meta:
            out.append(f"Member must have length less than or equal to {meta['max']}")
    if "pattern" in meta:
        out.append(f"Member must satisfy regular expression pattern: {meta['pattern']}")
    if getattr(shape, "enum", None):
        out.append(f"Member must satisfy enum value set: [{', '.join(shape.enum)}]")
    return out


@dataclass
class _Walk:
    errors: list[str] = field(default_factory=list)

    def fail(self, value: Any, path: str, constraint: str) -> None:
        self.errors.append(f"Value {_quoted(value)} at '{path}' failed to satisfy constraint: {constraint}")

    # -- scalar checks ---------------------------------------------------------------------

    def _scalar_violations(self, shape: Shape, value: Any) -> list[str]:
        meta = shape.metadata
        found = []
        if shape.type_name == "string":
            if "min" in meta and len(value) < meta["min"]:
                found.append(f"Member must have length greater than or equal to {meta['min']}")
            if "max" in meta and len(value) > meta["max"]:
                found.append(f"Member must have length less than or equal to {meta['max']}")
            pattern = meta.get("pattern")
            if pattern is not None:
                compiled = _compiled(pattern)
                if compiled is not None and compiled.fullmatch(value) is None:
                    found.append(f"Member must satisfy regular expression pattern: {pattern}")
            if shape.enum and value not in shape.enum:
                found.append(f"Member must satisfy enum value set: [{', '.join(shape.enum)}]")
        elif shape.type_name in ("integer", "long", "float", "double"):
            if "min" in meta and value < meta["min"]:
                found.append(f"Member must have value greater than or equal to {meta['min']}")
            if "max" in meta and value > meta["max"]:
                found.append(f"Member must have value less than or equal to {meta['max']}")
        return found

    # -- the walk --------------------------------------------------------------------------

    def value(self, shape: Shape, value: Any, path: str) -> Any:
        """Check one value against its shape and return it with unmodelled members dropped."""
        kind = shape.type_name
        if kind == "structure":
            return self.structure(shape, value, path)  # type: ignore[arg-type]
        if kind == "list":
            return self.list(shape, value, path)  # type: ignore[arg-type]
        if kind == "map":
            return self.map(shape, value, path)  # type: ignore[arg-type]
        value = _coerce_scalar(shape, value, path)
        for constraint in self._scalar_violations(shape, value):
            self.fail(value, path, constraint)
        return value

    def structure(self, shape: StructureShape, value: Any, path: str,
                  extra_required: tuple[str, ...] = ()) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise _type_error(value, "structure", path)
        if shape.metadata.get("document"):
            return value
        cleaned: dict[str, Any] = {}
        required = list(shape.required_members) + [m for m in extra_required if m not in shape.required_members]
        for name, member in shape.members.items():
            member_value = value.get(name)
            sub = member_path(path, name)
            if member_value is None:
                if name in required:
                    self.fail(None, sub, "Member must not be null")
                continue
            extension = LOCAL_EXTENSIONS.get((shape.name, name))
            if extension is not None and isinstance(member_value, str) and extension.fullmatch(member_value):
                cleaned[name] = member_value
                continue
            cleaned[name] = self.value(member, member_value, sub)
        return cleaned

    def list(self, shape: ListShape, value: Any, path: str) -> list[Any]:
        if not isinstance(value, list):
            raise _type_error(value, "list", path)
        self._size(shape, value, path)
        return [self.value(shape.member, item, f"{path}.{i}.member") for i, item in enumerate(value, 1)]

    def map(self, shape: MapShape, value: Any, path: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise _type_error(value, "map", path)
        self._size(shape, value, path)
        cleaned = {}
        bad_keys = bad_values = False
        for key, item in value.items():
            bad_keys |= bool(self._scalar_violations(shape.key, key))
            if shape.value.type_name in _CONTAINERS:
                item = self.value(shape.value, item, f"{path}.{key}")
            else:
                item = _coerce_scalar(shape.value, item, path)
                bad_values |= bool(self._scalar_violations(shape.value, item))
            cleaned[key] = item
        if bad_keys:
            self.fail(value, path, f"Map keys must satisfy constraint: [{', '.join(_constraints_of(shape.key))}]")
        if bad_values:
            self.fail(value, path,
                      f"Map value must satisfy constraint: [{', '.join(_constraints_of(shape.value))}]")
        return cleaned

    def _size(self, shape: Shape, value: list[Any] | dict[str, Any], path: str) -> None:
        meta = shape.metadata
        if "min" in meta and len(value) < meta["min"]:
            self.fail(value, path, f"Member must have length greater than or equal to {meta['min']}")
        if "max" in meta and len(value) > meta["max"]:
            self.fail(value, path, f"Member must have length less than or equal to {meta['max']}")


_JSON_KIND = {str: "STRING_VALUE", bool: "BOOLEAN_VALUE", int: "NUMBER_VALUE", float: "NUMBER_VALUE",
              list: "START_ARRAY", dict: "START_OBJECT"}
_JAVA_TYPE = {"string": "String", "integer": "Integer", "long": "Long", "boolean": "Boolean",
              "float": "Float", "double": "Double", "timestamp": "Date", "structure": "Structure",
              "list": "List", "map": "Map", "blob": "ByteBuffer"}


_JAVA_RANGE = {"integer": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}
# The epoch seconds of years 1 to 9999, what a date can be here; past them a timestamp overflowed later, as
# a NaN or an infinity (`1e999` in JSON, or CBOR's own) did in any float (found by the fuzz).
_EPOCH_RANGE = (-62_135_596_800.0, 253_402_300_799.0)


def _out_of_range(kind: str, path: str) -> ApiError:
    return ApiError("SerializationException",
                    f"NUMBER_VALUE can not be converted to {_JAVA_TYPE.get(kind, kind)} (at '{path}'): out of range")


def _finite(value: int | float, kind: str, path: str) -> float:
    try:
        number = float(value)
    except OverflowError:
        raise _out_of_range(kind, path) from None
    if not math.isfinite(number):
        raise _out_of_range(kind, path)
    return number


def _type_error(value: Any, type_name: str, path: str) -> ApiError:
    found = _JSON_KIND.get(type(value), "VALUE")
    return ApiError("SerializationException",
                    f"{found} can not be converted to {_JAVA_TYPE.get(type_name, type_name)} (at '{path}')")


def _coerce_scalar(shape: Shape, value: Any, path: str) -> Any:
    kind = shape.type_name
    if kind == "string" and isinstance(value, str):
        return value
    if kind in ("integer", "long") and isinstance(value, int) and not isinstance(value, bool):
        low, high = _JAVA_RANGE[kind]
        if not low <= value <= high:
            # What AWS's (Java) deserializer makes of a number no Integer or Long holds; unchecked, it reached
            # SQLite as a LIMIT and failed there (found by the fuzz, tests/test_fuzz_api.py).
            raise _out_of_range(kind, path)
        return value
    if kind in ("float", "double") and isinstance(value, (int, float)) and not isinstance(value, bool):
        return _finite(value, kind, path)
    if kind == "boolean" and isinstance(value, bool):
        return value
    if kind == "blob" and isinstance(value, (str, bytes)):  # base64 text in JSON, a byte string in CBOR
        return value
    if kind == "timestamp":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            seconds = _finite(value, kind, path)
            if not _EPOCH_RANGE[0] <= seconds <= _EPOCH_RANGE[1]:
                raise _out_of_range(kind, path)
            return seconds
        if isinstance(value, dt.datetime):  # CBOR's tag 1 arrives decoded
            return value.timestamp()
        if isinstance(value, str):
            try:
                return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except (ValueError, OverflowError, OSError):
                pass
    raise _type_error(value, kind, path)


def raise_if_errors(errors: list[str], code: str = "ValidationException") -> None:
    if not errors:
        return
    count = len(errors)
    noun = "error" if count == 1 else "errors"
    raise ApiError(code,
                   f"{count} validation {noun} detected: " + "; ".join(errors[:_MAX_ERRORS_SHOWN]))


def validate_input(shape: StructureShape | None, params: dict[str, Any],
                   extra_required: tuple[str, ...] = (), error_code: str = "ValidationException") -> dict[str, Any]:
    """Validate an operation's input against its model shape; return only the modelled members.

    `error_code` is what the service calls a constraint failure (CloudWatch Logs:
    InvalidParameterException).
    """
    if shape is None:
        return {}
    walk = _Walk()
    cleaned = walk.structure(shape, params, "", extra_required)
    raise_if_errors(walk.errors, error_code)
    return cleaned
