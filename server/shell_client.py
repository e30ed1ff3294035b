"""The client end of an interactive `smlocal shell`: the stream a StartSession answered, opened as a
WebSocket (server/shell.py is the other end), and this terminal relayed over it.

When stdin is a terminal it goes raw, as `ssh` and `aws ssm start-session` put it, so keys such as Ctrl-C
and the arrows reach the remote shell, and its size follows the window; otherwise bytes go through as they
are, and the end of stdin is sent on as the end of the process's input.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import termios
import threading
import tty as tty_modes
from collections.abc import Iterator
from typing import Any
from urllib.parse import urljoin

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from server.services.smlocal.host_access import TOKEN_HEADER
from server.services.smlocal.model import SERVICE_NAME

STDERR_MARK = 2
OPEN_TIMEOUT_SECONDS = 30.0


class StreamRefused(Exception):  # noqa: N818
    """The server refused to open the stream: its AWS error code and message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def open_stream(endpoint: str, stream_url: str, token: str, region: str,
                credentials: ReadOnlyCredentials) -> ClientConnection:
    """The session's WebSocket, its upgrade request signed as an API call to service smlocal."""
    url = urljoin(endpoint if endpoint.endswith("/") else endpoint + "/", stream_url.lstrip("/"))
    request = AWSRequest(method="GET", url=url, headers={TOKEN_HEADER: token})
    SigV4Auth(credentials, SERVICE_NAME, region).add_auth(request)
    # The Host header is the WebSocket client's own, the same as the one signed (both from the URL).
    headers = {name: value for name, value in request.headers.items() if name.lower() != "host"}
    try:
        return connect("ws" + url[len("http"):], additional_headers=headers, open_timeout=OPEN_TIMEOUT_SECONDS,
                       compression=None)
    except InvalidStatus as e:
        raise _refusal(e.response.status_code, e.response.body or b"") from None


def _refusal(status: int, body: bytes) -> StreamRefused:
    try:
        error = json.loads(body)
        return StreamRefused(str(error["__type"]), str(error["Message"]))
    except (ValueError, KeyError, TypeError):
        return StreamRefused(f"HTTP {status}", body.decode(errors="replace") or "the stream was refused")


@contextlib.contextmanager
def _raw_terminal(fd: int) -> Iterator[None]:
    saved = termios.tcgetattr(fd)
    tty_modes.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _send_size(ws: ClientConnection) -> None:
    size = os.get_terminal_size(sys.stdout.fileno())
    ws.send(json.dumps({"resize": [size.lines, size.columns]}))


def relay(ws: ClientConnection, tty: bool) -> int | None:
    """This process's stdin to the remote process and its output back, until it ends: its exit code (None
    if the connection ended without one)."""
    stdin = sys.stdin.fileno()

    def send_input() -> None:
        try:
            while True:
                data = os.read(stdin, 65536)
                if not data:
                    ws.send(json.dumps({"eof": True}))
                    return
                ws.send(data)
        except (OSError, ConnectionClosed):
            return

    previous_winch: Any = None
    with _raw_terminal(stdin) if tty else contextlib.nullcontext():
        if tty:
            _send_size(ws)
            previous_winch = signal.signal(signal.SIGWINCH, lambda _sig, _frame: _quietly_send_size(ws))
        threading.Thread(target=send_input, name="smlocal-shell-input", daemon=True).start()
        code = None
        try:
            for message in ws:
                if isinstance(message, bytes):
                    out = sys.stderr.buffer if message[:1] == bytes([STDERR_MARK]) else sys.stdout.buffer
                    out.write(message[1:])
                    out.flush()
                else:
                    control = json.loads(message)
                    if isinstance(control, dict) and "exit" in control:
                        code = control["exit"]
        except ConnectionClosed:
            pass
        finally:
            if tty:
                signal.signal(signal.SIGWINCH, previous_winch)
    return code


def _quietly_send_size(ws: ClientConnection) -> None:
    with contextlib.suppress(OSError, ConnectionClosed):
        _send_size(ws)
