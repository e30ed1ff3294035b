"""Who a request is for, as every provider receives it: the region (from the SigV4 scope, else the server's)
and the account in ARNs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RequestContext:
    region: str
    account_id: str
