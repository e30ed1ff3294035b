"""Opaque NextToken values: an offset bound to the query that produced it."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from smlocal.core.errors import ApiError


def _fingerprint(query: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(query, sort_keys=True, default=str).encode()).hexdigest()[:16]


def encode_token(offset: int, query: dict[str, Any]) -> str:
    raw = json.dumps({"o": offset, "q": _fingerprint(query)}).encode()
    return base64.urlsafe_b64encode(raw).decode()


def decode_token(token: str | None, query: dict[str, Any]) -> int:
    """The offset a NextToken stands for; a token from another query or a forged one is rejected."""
    if not token:
        return 0
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        offset = int(data["o"])
        same_query = data["q"] == _fingerprint(query)
    except (ValueError, KeyError, TypeError):
        raise ApiError("ValidationException", "Invalid pagination token.") from None
    if not same_query or not 0 <= offset < 2**63:  # a forged offset must not reach SQLite's OFFSET
        raise ApiError("ValidationException", "Invalid pagination token.")
    return offset
