"""An S3-only front for a store smlocal does not run (`--s3-endpoint`): the address training containers get.

The embedded stores serve nothing but the S3 API on the address containers reach (server/s3/embedded.py).
A store the operator runs may serve much more on its port: MinIO its admin API under `/minio/`, a moto
server `/moto-api/` (reset, state) and every other AWS service it mocks. So with `--s3-endpoint`, smlocal
listens on the Docker bridge gateway and forwards to the store only requests shaped like the S3 API:

- a path-style S3 target: `/` (list buckets; GET/HEAD), or `/<bucket>[/<key>]` with a bucket name S3
  accepts, and none of the stores' reserved prefixes or dot segments (checked after percent-decoding,
  as the store decodes it);
- signed for S3: SigV4 with `s3` in the credential scope (header or presigned query), or SigV2 (S3's
  only); no `X-Amz-Target`, no form-encoded body without a header signature (moto routes both to
  other services), no protocol upgrade;
- with the Host the container was given (the signature covers it, and it reaches the store as sent).

Each request gets a connection of its own to the store (`Connection: close`), and only the body its
Content-Length announces is forwarded, so a second request hidden behind the first never reaches the
store. The store still checks every signature: the front only narrows what reaches it.
"""

from __future__ import annotations

import logging
import re
import socket
import socketserver
import ssl
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

log = logging.getLogger("smlocal.s3")

MAX_HEAD = 64 * 1024
HEAD_TIMEOUT = 60.0
IDLE_TIMEOUT = 600.0
MAX_CONNECTIONS = 256
CHUNK = 256 * 1024
METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "DELETE"})
# Bucket names as S3 accepts them (legacy upper case included; no underscore, which moto reads as
# `/<service>_<region>/`).
_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{1,61}[A-Za-z0-9]")
# First path segments the stores keep for themselves (moto's control API and its favicon, MinIO's admin,
# health and metrics routes, S3 Control's path prefix in moto); `latest/` only with what follows it in
# the EC2 instance-metadata paths moto serves.
_RESERVED = frozenset({"moto-api", "minio", "favicon.ico", "v20180820"})
_METADATA = ("latest/meta-data", "latest/api", "latest/dynamic", "latest/user-data")
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "upgrade", "proxy-authorization"})


_REASONS = {400: "Bad Request", 403: "Forbidden", 405: "Method Not Allowed", 502: "Bad Gateway"}


class Refused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    @property
    def status_line(self) -> str:
        """`403 Forbidden`: the status and its reason phrase."""
        return f"{self.status} {_REASONS.get(self.status, 'Error')}"


@dataclass(frozen=True)
class Head:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name]

    def one(self, name: str) -> str | None:
        values = self.all(name)
        if len(values) > 1:
            raise Refused(400, "InvalidRequest", f"more than one {name} header")
        return values[0] if values else None


def parse_head(raw: bytes) -> Head:
    try:
        text = raw.decode("latin-1")
        request_line, *lines = text.split("\r\n")
        method, target, version = request_line.split(" ")
    except ValueError:
        raise Refused(400, "InvalidRequest", "malformed request line") from None
    headers = []
    for line in lines:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or any(c in name for c in " \t"):
            raise Refused(400, "InvalidRequest", "malformed header line")
        headers.append((name, value.strip()))
    return Head(method, target, version, headers)


def _scope_service(credential: str) -> str | None:
    parts = credential.split("/")
    return parts[3] if len(parts) == 5 else None


def check(head: Head, allowed_hosts: frozenset[str]) -> None:
    """Refused unless the request is an S3 API request for the address the container was given."""
    if head.version not in ("HTTP/1.1", "HTTP/1.0"):
        raise Refused(400, "InvalidRequest", "HTTP/1.0 or HTTP/1.1 only")
    if head.method not in METHODS:
        raise Refused(405, "MethodNotAllowed", f"{head.method} is not an S3 method")
    host = head.one("host")
    if host is None or host.lower() not in allowed_hosts:
        raise Refused(403, "AccessDenied", "address the store by the endpoint smlocal gave this container")
    lengths = head.all("content-length")
    codings = [c.strip().lower() for v in head.all("transfer-encoding") for c in v.split(",")]
    if len(lengths) > 1 or (lengths and codings) or codings not in ([], ["chunked"]) or (
            lengths and not lengths[0].isdigit()):
        raise Refused(400, "InvalidRequest", "ambiguous message length")

    if not head.target.startswith("/"):
        raise Refused(400, "InvalidRequest", "origin-form request targets only")
    parts = urlsplit(head.target)
    path = unquote(parts.path)
    if any(ord(c) < 0x20 or c == "\\" for c in path):
        raise Refused(400, "InvalidURI", "control characters in the path")
    segments = path[1:].split("/")
    if path == "/":
        if head.method not in ("GET", "HEAD"):
            raise Refused(405, "MethodNotAllowed", "only ListBuckets is served at /")
    elif not _BUCKET.fullmatch(segments[0]) or segments[0].lower() in _RESERVED:
        raise Refused(403, "AccessDenied", "not an S3 bucket path")
    if any(s in (".", "..") for s in segments) or path[1:].lower().startswith(_METADATA):
        raise Refused(403, "AccessDenied", "not an S3 object path")

    check_signed_for_s3(head)


def check_signed_for_s3(head: Head) -> None:
    """Refused unless the request is signed for S3 (SigV4 with `s3` in its scope, or SigV2) and carries
    nothing that makes a store read it as another service's (moto serves them all on one port)."""
    if head.all("upgrade") or head.all("x-amz-target"):
        raise Refused(403, "AccessDenied", "only the S3 API is served here")
    query = {k.lower(): v for k, v in parse_qsl(urlsplit(head.target).query, keep_blank_values=True)}
    authorization = head.one("authorization")
    if authorization is not None:
        scheme, _, rest = authorization.partition(" ")
        if scheme == "AWS4-HMAC-SHA256":
            credential = rest.split(",")[0].strip().removeprefix("Credential=")
            if _scope_service(credential) != "s3":
                raise Refused(403, "AccessDenied", "only requests signed for s3 are served here")
        elif scheme != "AWS":  # SigV2: S3's own
            raise Refused(403, "AccessDenied", "unknown signature scheme")
        return
    if "x-amz-credential" in query:
        if query.get("x-amz-algorithm") != "AWS4-HMAC-SHA256" or _scope_service(query["x-amz-credential"]) != "s3":
            raise Refused(403, "AccessDenied", "only requests signed for s3 are served here")
    elif not {"awsaccesskeyid", "signature"} <= query.keys():
        raise Refused(403, "AccessDenied", "anonymous requests are not served here")
    content_type = (head.one("content-type") or "").lower()
    if content_type.startswith("application/x-www-form-urlencoded"):
        raise Refused(403, "AccessDenied", "only the S3 API is served here")


def error_body(refusal: Refused) -> bytes:
    """S3's XML error document for a refusal."""
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{refusal.code}</Code>'
            f"<Message>smlocal's S3 front: {refusal.message}</Message></Error>").encode()


def _error_response(refusal: Refused) -> bytes:
    body = error_body(refusal)
    return (f"HTTP/1.1 {refusal.status_line}\r\n"
            f"Content-Type: application/xml\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode() + body


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """(the head without its blank line, what followed it) or ConnectionError."""
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > MAX_HEAD:
            raise Refused(400, "InvalidRequest", "request head too large")
        chunk = sock.recv(CHUNK)
        if not chunk:
            raise ConnectionError("closed before a whole request head")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


class _Handler(socketserver.BaseRequestHandler):
    server: _FrontServer

    def handle(self) -> None:
        # A container that opens connections without end gets them closed, not a thread each. The slot
        # goes back to the semaphore it came from, even if the server's is replaced meanwhile.
        slots = self.server.slots
        if not slots.acquire(blocking=False):
            log.warning("S3 front: more than %d connections at once; closing one from %s",
                        MAX_CONNECTIONS, self.client_address[0])
            return
        try:
            self._handle()
        finally:
            slots.release()

    def _handle(self) -> None:
        client: socket.socket = self.request
        client.settimeout(HEAD_TIMEOUT)
        try:
            raw, rest = _read_head(client)
            head = parse_head(raw)
            check(head, self.server.allowed_hosts)
            upstream = self.server.connect_upstream()
        except Refused as refusal:
            log.info("S3 front refused %s: %s", self.client_address[0], refusal.message)
            self._send(client, _error_response(refusal))
            return
        except (OSError, ConnectionError) as e:
            log.debug("S3 front: %s", e)
            return
        with upstream:
            self._forward(client, upstream, head, rest)

    @staticmethod
    def _send(sock: socket.socket, data: bytes) -> None:
        try:
            sock.sendall(data)
        except OSError:
            pass

    def _forward(self, client: socket.socket, upstream: socket.socket, head: Head, rest: bytes) -> None:
        lines = [f"{head.method} {head.target} {head.version}"]
        lines += [f"{k}: {v}" for k, v in head.headers if k.lower() not in _HOP_BY_HOP]
        lines.append("Connection: close")
        length = head.one("content-length")
        chunked = bool(head.all("transfer-encoding"))
        # Without a length a request has no body (RFC 9112 6.3); a chunked one is sent as it comes.
        remaining = int(length) if length is not None else None if chunked else 0
        if remaining is not None:
            rest = rest[:remaining]
            remaining -= len(rest)
        client.settimeout(IDLE_TIMEOUT)
        upstream.settimeout(IDLE_TIMEOUT)
        try:
            upstream.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + rest)
        except OSError:
            return
        # The body goes up in another thread: with `Expect: 100-continue` the client waits for the
        # store's interim answer before it sends it.
        threading.Thread(target=self._body_up, args=(client, upstream, remaining), daemon=True).start()
        try:
            while data := upstream.recv(CHUNK):
                client.sendall(data)
        except OSError:
            pass
        finally:
            try:
                client.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    @staticmethod
    def _body_up(client: socket.socket, upstream: socket.socket, remaining: int | None) -> None:
        try:
            while remaining is None or remaining > 0:
                data = client.recv(CHUNK if remaining is None else min(CHUNK, remaining))
                if not data:
                    break
                upstream.sendall(data)
                if remaining is not None:
                    remaining -= len(data)
        except OSError:
            pass


class _FrontServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], upstream: str, allowed_hosts: frozenset[str]) -> None:
        super().__init__(address, _Handler)
        parts = urlsplit(upstream if "://" in upstream else f"http://{upstream}")
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.tls = parts.scheme == "https"
        self.upstream_port = parts.port or (443 if self.tls else 80)
        self.allowed_hosts = allowed_hosts
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def connect_upstream(self) -> socket.socket:
        try:
            sock = socket.create_connection((self.upstream_host, self.upstream_port), timeout=10)
        except OSError as e:
            raise Refused(502, "ServiceUnavailable", f"the S3 store does not answer: {e}") from None
        if self.tls:
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self.upstream_host)
        return sock


class S3Front:
    """The front on `address`; containers reach it as `http://<name>:<port>` for each of `names`."""

    def __init__(self, upstream: str, address: str, port: int = 0, names: Iterable[str] = ()) -> None:
        self.upstream = upstream
        self.address = address
        self.port = port
        self.names = [address, *names]
        self._server: _FrontServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        probe = _FrontServer((self.address, self.port), self.upstream, frozenset())
        self.port = probe.server_address[1]
        probe.allowed_hosts = frozenset(f"{n}:{self.port}".lower() for n in self.names)
        self._server = probe
        self._thread = threading.Thread(target=probe.serve_forever, name=f"s3-front-{self.address}:{self.port}",
                                        daemon=True)
        self._thread.start()

    def endpoint_for(self, name: str) -> str:
        return f"http://{name}:{self.port}"

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()


def start_front(upstream: str, gateway: str, names: Iterable[str], ports: Iterable[int],
                port_file: Path | None = None) -> S3Front:
    """Start a front on the first of `ports` that is free on the gateway (else any port), and remember it.

    The port is remembered in `port_file` and tried first next time: containers a restarted server adopts
    keep the endpoint they were started with."""
    tried = []
    if port_file is not None:
        try:
            tried.append(int(port_file.read_text().strip()))
        except (OSError, ValueError):
            pass
    tried += [p for p in ports if p not in tried] + [0]
    for port in tried:
        front = S3Front(upstream, gateway, port, names)
        try:
            front.start()
        except OSError:
            continue
        if port_file is not None:
            try:
                port_file.write_text(f"{front.port}\n")
            except OSError as e:
                log.warning("could not remember the S3 front's port in %s: %s", port_file, e)
        return front
    raise OSError(f"no port for the S3 front on {gateway}")
