"""CloudWatch Logs filter patterns for unstructured log events.

Supported, as CloudWatch documents them: plain terms (every one must appear, case-sensitive), quoted
phrases (`"loss: 0.5"`), `?term` alternatives (each `?` starts a group of terms, any group may match),
`-term` exclusions, and `%regex%` patterns. JSON (`{ $.x = 1 }`) and space-delimited
(`[ip, user, ...]`) patterns are refused rather than matched wrongly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import regex

from smlocal.core.errors import ApiError

_TOKEN = regex.compile(r'\s*(?P<op>[?-]?)(?:"(?P<quoted>(?:[^"\\]|\\.)*)"|(?P<bare>[^\s"]+))')


@dataclass
class _TermGroup:
    required: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)

    def matches(self, message: str) -> bool:
        return all(t in message for t in self.required) and not any(t in message for t in self.excluded)


def _invalid(pattern: str, why: str) -> ApiError:
    return ApiError("InvalidParameterException", f"Invalid filter pattern {pattern!r}: {why}")


def compile_filter(pattern: str | None) -> Callable[[str], bool]:
    """A predicate over event messages; raises InvalidParameterException for what it cannot match."""
    text = (pattern or "").strip()
    if not text or text == '""':
        return lambda _message: True
    if text.startswith("{"):
        raise _invalid(pattern or "", "JSON filter patterns are not supported by smlocal")
    if text.startswith("["):
        raise _invalid(pattern or "", "space-delimited filter patterns are not supported by smlocal")
    if len(text) >= 2 and text.startswith("%") and text.endswith("%"):
        try:
            compiled = regex.compile(text[1:-1])
        except regex.error as e:
            raise _invalid(pattern or "", f"bad regular expression: {e}") from None

        def matches(message: str) -> bool:
            try:
                return compiled.search(message, timeout=1.0) is not None
            except TimeoutError:  # a catastrophic pattern must not hang the request
                return False

        return matches

    # `?` starts a new group of terms; the terms after it join that group (AND), groups are alternatives
    # (OR): `?ERROR MainThread ?WARN Deadlock` is (ERROR and MainThread) or (WARN and Deadlock).
    groups: list[_TermGroup] = []
    position = 0
    while position < len(text):
        found = _TOKEN.match(text, position)
        if found is None or found.end() == position:
            raise _invalid(pattern or "", f"cannot read it from position {position}")
        position = found.end()
        quoted = found["quoted"] is not None
        term = regex.sub(r"\\(.)", r"\1", found["quoted"]) if quoted else found["bare"]
        if found["op"] == "?" or not groups:
            groups.append(_TermGroup())
        if term:
            (groups[-1].excluded if found["op"] == "-" else groups[-1].required).append(term)
    return lambda message: any(group.matches(message) for group in groups)
