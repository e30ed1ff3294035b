"""Who may use the console, and how its write actions (Stop, Interrupt) are kept from other sites.

- With `--access-key`/`--secret-key` the API takes only requests signed with those keys, so the console
  takes only HTTP Basic credentials made of them (user name: the access key, password: the secret key).
  Basic sends the secret itself, readable by anyone on the way, so it is accepted from this machine only
  (a loopback client); from elsewhere the console refuses and says how to reach it (an SSH tunnel).
- Served on loopback, the console answers only to a loopback Host (`localhost`, `127.0.0.1`, `[::1]`):
  a web page whose own name was re-pointed at 127.0.0.1 (DNS rebinding) gets nothing.
- Stop and Interrupt are POSTs that must carry the console's token (in the page, which other sites cannot
  read) and, when the browser says where the request comes from (Origin, Sec-Fetch-Site), come from the
  console itself (`write_refusal`, the one check both go through).
- Every answer forbids framing (no clickjacking of the buttons) and any script but the console's
  own files.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from starlette.responses import HTMLResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

SECURITY_HEADERS = {
    "content-security-policy": ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
                                "frame-ancestors 'none'"),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}
REALM = "smlocal console"


def is_loopback_address(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host.strip("[]").split("%")[0]).is_loopback
    except ValueError:
        return False


def is_loopback_name(host: str) -> bool:
    """`localhost`, `*.localhost` (RFC 6761 keeps them on this machine) or a loopback address."""
    name = host.lower().rstrip(".")
    return name == "localhost" or name.endswith(".localhost") or is_loopback_address(name)


def host_name(host_header: str) -> str:
    """The name in a Host header, without its port (`[::1]:8080` -> `::1`)."""
    return urlsplit(f"//{host_header}").hostname or ""


class ConsoleAccess:
    """The console's rules, from the server's settings."""

    def __init__(self, *, bind_host: str, access_key: str | None, secret_key: str | None) -> None:
        self.keys = (access_key, secret_key) if access_key and secret_key else None
        self.loopback_only = is_loopback_name(bind_host)
        self.bind_host = bind_host
        # For the Stop and Interrupt forms; new on every start, so a page from before a restart must be reloaded.
        self.token = secrets.token_urlsafe(32)

    def refusal(self, headers: dict[str, str], client_host: str | None) -> Response | None:
        """None when the request may go on, else the answer to give instead."""
        host = host_name(headers.get("host", ""))
        if self.loopback_only and not (is_loopback_name(host) or host == self.bind_host.lower()):
            return _page(403, "Not this name", "smlocal is served on this machine only, and its console answers "
                         "to localhost, 127.0.0.1 or [::1]; open it under one of those names.")
        if self.keys is None:
            return None
        if not is_loopback_address(client_host):
            return _page(403, "Console available from this machine only",
                         "smlocal requires keys (--access-key), and the console would take them as HTTP Basic "
                         "credentials, which cross the network in clear text. Open the console on the machine "
                         "that runs smlocal, or through an SSH tunnel: ssh -L 8080:localhost:8080 <that machine>, "
                         "then http://localhost:8080/console/.")
        if not self._basic_ok(headers.get("authorization", "")):
            response = _page(401, "Sign in with the API keys",
                             "smlocal requires keys (--access-key): sign in with the access key as the user name "
                             "and the secret key as the password.")
            response.headers["www-authenticate"] = f'Basic realm="{REALM}", charset="UTF-8"'
            return response
        return None

    def _basic_ok(self, authorization: str) -> bool:
        assert self.keys is not None
        scheme, _, encoded = authorization.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, sep, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        # Both compared, always, so the time taken says nothing about which one was wrong.
        user_ok = hmac.compare_digest(user.encode(), self.keys[0].encode())
        password_ok = hmac.compare_digest(password.encode(), self.keys[1].encode())
        return bool(sep) and user_ok and password_ok

    def write_refusal(self, headers: dict[str, str], scheme: str, token: str | None) -> str | None:
        """Why a POST may not act (a reason for the page), or None: token and same origin."""
        if token is None or not hmac.compare_digest(token.encode(), self.token.encode()):
            return ("The form's console token is missing or out of date (smlocal was restarted?): reload the "
                    "page and try again.")
        origin = headers.get("origin")
        if origin is not None and origin != f"{scheme}://{headers.get('host', '')}":
            return f"The request comes from another site ({origin}); the console acts on its own pages only."
        fetch_site = headers.get("sec-fetch-site")
        if fetch_site is not None and fetch_site not in ("same-origin", "none"):
            return f"The request comes from another site (Sec-Fetch-Site: {fetch_site})."
        return None


def _page(status: int, title: str, text: str) -> HTMLResponse:
    # Fixed texts only: nothing from the request is echoed here.
    return HTMLResponse(
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f'<link rel="stylesheet" href="/console/static/console.css"></head>'
        f'<body><main class="narrow"><h1>{title}</h1><p>{text}</p></main></body></html>',
        status_code=status)


class ConsoleGuard:
    """ASGI middleware: the access rules before anything else, the security headers on every answer."""

    def __init__(self, app: ASGIApp, access: ConsoleAccess) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        client = scope.get("client")
        send = _with_headers(send)
        refusal = self.access.refusal(headers, client[0] if client else None)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _with_headers(send: Send) -> Callable[[MutableMapping[str, Any]], Awaitable[None]]:
    async def wrapped(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            present = {k.lower() for k, _ in message.get("headers", [])}
            extra = [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items() if k.encode() not in present]
            message["headers"] = [*message.get("headers", []), *extra]
        await send(message)

    return wrapped
