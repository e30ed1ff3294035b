"""Hypothesis strategies drawn from botocore's shapes: requests for any operation a model describes.

`valid_input(op)` draws inputs the model accepts: required members always, optional ones sometimes,
strings from their enum or whole-string pattern within min/max, numbers within their range, lists and
maps within their sizes. `invalid_input(op)` takes such an input and breaks it in one place the way a
careless or hostile client would: a required member dropped, a value of the wrong type, a string or number
past its bounds, a value outside its enum, an unknown member. Values are drawn as the JSON protocols carry
them (timestamps as epoch seconds, blobs as base64 text), so the wire client only has to encode them.

Sizes are kept small on purpose (a list of at most a few items, text of a few dozen characters, optional
members past a few levels left out): the fuzz is for the server's code paths, not for its memory, and a
few hundred cases must run in seconds.
"""

from __future__ import annotations

import base64
import copy
import re
import string
from collections.abc import Mapping, Sequence
from typing import Any

from botocore.model import OperationModel, Shape, StructureShape
from hypothesis import strategies as st

# Past this depth optional members are left out, so recursive or very deep shapes stay small.
MAX_OPTIONAL_DEPTH = 4
MAX_TEXT = 40
MAX_ITEMS = 3

_INT_RANGE = {"integer": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}
# Epoch seconds from 1970 to 2100: the timestamps any client sends.
_EPOCH_RANGE = (0, 4_102_444_800)
# Values of the wrong kind for any member, plus the edges hostile clients like.
_WRONG_VALUES: tuple[Any, ...] = (
    None, True, False, 0, -1, 2**64, 10**30, -(10**30), 1.5, "", "x", "../../etc/passwd", "\x00", "\ud7ff" * 3,
    [], [None], {}, {"a": 1}, [[[[]]]],
)


def _regex(pattern: str) -> re.Pattern[str] | None:
    """botocore's patterns are Java's; the ones Python's `re` cannot read are drawn as plain text."""
    java_only = ("\\p{", "\\P{", "\\h", "\\Q", "(?<", "\\z", "\\Z", "++", "*+", "?+")
    if any(token in pattern for token in java_only):
        return None
    try:
        return re.compile(pattern)
    except re.error:
        return None


def _string(shape: Shape) -> st.SearchStrategy[str]:
    meta = shape.metadata
    if getattr(shape, "enum", None):
        return st.sampled_from(list(shape.enum))
    low = meta.get("min", 0)
    high = meta.get("max", MAX_TEXT)
    cap = max(low, min(high, MAX_TEXT))
    compiled = _regex(meta["pattern"]) if "pattern" in meta else None
    if compiled is not None:
        # A pattern's draws are kept to the model's lengths; a pattern that rarely fits falls back to text
        # (hypothesis would otherwise report the filter as too strict).
        drawn = st.from_regex(compiled, fullmatch=True).filter(lambda s: low <= len(s) <= high)
        return drawn
    alphabet = st.characters(codec="utf-8", exclude_categories=("Cs",))
    return st.text(alphabet=alphabet, min_size=low, max_size=cap)


def _number(shape: Shape) -> st.SearchStrategy[Any]:
    meta = shape.metadata
    if shape.type_name in _INT_RANGE:
        low, high = _INT_RANGE[shape.type_name]
        return st.integers(min_value=int(meta.get("min", low)), max_value=int(meta.get("max", high)))
    return st.floats(min_value=meta.get("min"), max_value=meta.get("max"), allow_nan=False, allow_infinity=False)


# Member name -> values that name something the server holds (a job created before the fuzz): drawn values
# rarely do, and a request about nothing stops at ResourceNotFound before the handler's own paths.
Known = Mapping[str, Sequence[Any]]


def value_strategy(shape: Shape, depth: int = 0, known: Known | None = None) -> st.SearchStrategy[Any]:
    """A valid value for `shape`."""
    kind = shape.type_name
    if kind == "structure":
        return structure_strategy(shape, depth, known)  # type: ignore[arg-type]
    if kind == "list":
        meta = shape.metadata
        low = meta.get("min", 0)
        return st.lists(value_strategy(shape.member, depth + 1, known), min_size=low,
                        max_size=max(low, min(meta.get("max", MAX_ITEMS), low + MAX_ITEMS)))
    if kind == "map":
        meta = shape.metadata
        low = meta.get("min", 0)
        return st.dictionaries(_string(shape.key), value_strategy(shape.value, depth + 1, known), min_size=low,
                               max_size=max(low, min(meta.get("max", MAX_ITEMS), low + MAX_ITEMS)))
    if kind == "string":
        return _string(shape)
    if kind in ("integer", "long", "float", "double"):
        return _number(shape)
    if kind == "boolean":
        return st.booleans()
    if kind == "timestamp":
        return st.one_of(st.integers(*_EPOCH_RANGE), st.floats(*_EPOCH_RANGE))
    if kind == "blob":
        return st.binary(max_size=32).map(lambda raw: base64.b64encode(raw).decode())
    return st.just(None)


def _member(name: str, shape: Shape, depth: int, known: Known | None) -> st.SearchStrategy[Any]:
    drawn = value_strategy(shape, depth, known)
    if known and known.get(name):
        return st.one_of(st.sampled_from(list(known[name])), drawn)
    return drawn


def structure_strategy(shape: StructureShape, depth: int = 0,
                       known: Known | None = None) -> st.SearchStrategy[dict[str, Any]]:
    if shape.metadata.get("document"):
        return st.dictionaries(st.text(string.ascii_letters, max_size=8), st.integers() | st.text(max_size=8),
                               max_size=3)
    required = set(shape.required_members)
    members = shape.members
    if depth >= MAX_OPTIONAL_DEPTH:
        optional: dict[str, st.SearchStrategy[Any]] = {}
    else:
        optional = {name: _member(name, m, depth + 1, known) for name, m in members.items() if name not in required}
    return st.fixed_dictionaries({name: _member(name, members[name], depth + 1, known) for name in required},
                                 optional=optional)


def valid_input(operation: OperationModel, known: Known | None = None,
                template: Mapping[str, Any] | None = None) -> st.SearchStrategy[dict[str, Any]]:
    """An input the model accepts; with a `template` (a request known to succeed), mostly that request with
    a few members drawn anew, which reaches the service's own rules past the model's."""
    if operation.input_shape is None:
        return st.just({})
    drawn = structure_strategy(operation.input_shape, known=known)
    if template is None:
        return drawn
    return st.one_of(drawn, _from_template(operation.input_shape, template, known))


@st.composite
def _from_template(draw: st.DrawFn, shape: StructureShape, template: Mapping[str, Any],
                   known: Known | None) -> dict[str, Any]:
    params = copy.deepcopy(dict(template))
    names = draw(st.lists(st.sampled_from(sorted(shape.members)), max_size=3, unique=True))
    for name in names:
        params[name] = draw(_member(name, shape.members[name], 1, known))
    return params


# ---- breaking a valid input ---------------------------------------------------------------------


def _places(shape: Shape, value: Any, path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], Shape]]:
    """Every (path, shape) in a drawn value: where a mutation can land."""
    found = [(path, shape)]
    kind = shape.type_name
    if kind == "structure" and isinstance(value, dict) and not shape.metadata.get("document"):
        for name, item in value.items():
            if name in shape.members:
                found += _places(shape.members[name], item, (*path, name))
    elif kind == "list" and isinstance(value, list):
        for i, item in enumerate(value):
            found += _places(shape.member, item, (*path, i))
    elif kind == "map" and isinstance(value, dict):
        for key, item in value.items():
            found += _places(shape.value, item, (*path, key))
    return found


def _edge_values(shape: Shape) -> list[Any]:
    """Values of the right kind just past the model's bounds (or far past them)."""
    meta = shape.metadata
    kind = shape.type_name
    out: list[Any] = []
    if kind == "string":
        out += ["", "a" * (meta.get("max", 256) + 1), "a" * 70_000, "\x00", "é" * 5, "../" * 5, "/etc/passwd"]
        if getattr(shape, "enum", None):
            out.append("NotAnEnumValue")
    elif kind in ("integer", "long", "float", "double"):
        out += [-1, 0, 2**31, 2**63, 10**40, -(10**40), 1e308]
        if "min" in meta:
            out.append(meta["min"] - 1)
        if "max" in meta:
            out.append(meta["max"] + 1)
    elif kind in ("list", "map"):
        item = "x" if kind == "list" else None
        if kind == "list":
            out += [[], [item] * (meta.get("max", 100) + 1)]
        else:
            out += [{}, {f"k{i}": "v" for i in range(meta.get("max", 100) + 1)}]
    elif kind == "timestamp":
        out += [-1, 1e20, -1e20, 2**63, "not-a-date", "2024-13-45T99:99:99Z"]
    elif kind == "blob":
        out += ["!!!not base64!!!", ""]
    return out


@st.composite
def invalid_input(draw: st.DrawFn, operation: OperationModel, known: Known | None = None,
                  template: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A valid input broken in one place (or, for an operation with no input, junk members)."""
    shape = operation.input_shape
    if shape is None:
        return draw(st.dictionaries(st.text(max_size=8), st.sampled_from(_WRONG_VALUES), max_size=3))
    params = copy.deepcopy(draw(valid_input(operation, known, template)))
    path, target = draw(st.sampled_from(_places(shape, params)))
    action = draw(st.sampled_from(("drop-required", "wrong-type", "edge", "unknown-member")))
    if action == "drop-required":
        required = [(p + (name,), shape_) for p, shape_ in _places(shape, params)
                    if shape_.type_name == "structure" for name in shape_.required_members]
        present = [p for p, _ in required if _get(params, p[:-1]) is not None]
        if present:
            chosen = draw(st.sampled_from(present))
            container = _get(params, chosen[:-1])
            if isinstance(container, dict):
                container.pop(chosen[-1], None)
            return params
        action = "wrong-type"
    if action == "unknown-member":
        container = _get(params, path)
        if isinstance(container, dict):
            container[draw(st.text(min_size=1, max_size=12))] = draw(st.sampled_from(_WRONG_VALUES))
            return params
        action = "edge"
    candidates = _edge_values(target) if action == "edge" else []
    candidates = candidates or list(_WRONG_VALUES)
    replacement = draw(st.sampled_from(candidates))
    if not path:
        return params if not isinstance(replacement, dict) else replacement
    parent = _get(params, path[:-1])
    parent[path[-1]] = replacement
    return params


def _get(value: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        value = value[step]
    return value


def any_input(operation: OperationModel, known: Known | None = None,
              template: Mapping[str, Any] | None = None) -> st.SearchStrategy[dict[str, Any]]:
    """Mostly valid inputs (the handlers' own paths), and a share of broken ones (the validation's)."""
    valid = valid_input(operation, known, template)
    return st.one_of(valid, valid, invalid_input(operation, known, template))
