"""An HTTP proxy in front of the S3 test server that can slow chosen transfers down: phases made long on purpose.

Every request is forwarded to the real S3 server unchanged. While a marker (e.g. a job name) is in
`slow`, a request whose path contains it has its body (PUT: the request's, GET: the response's) moved
at `rate` bytes per second; the test removes the marker to let the transfer finish at full speed. So a
job stays in Downloading (or Uploading) exactly as long as the test wants, with real bytes on the wire.
"""

from __future__ import annotations

import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

CHUNK = 64 * 1024
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}


class SlowS3Proxy:
    def __init__(self, upstream: str, host: str, rate: int = 512 * 1024) -> None:
        self.upstream = urlsplit(upstream)
        self.rate = rate
        self._slow: set[str] = set()
        self._lock = threading.Lock()
        self.slowed: list[str] = []  # paths of the requests that were slowed (for the test to check)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                slow = proxy.is_slow(self.path)
                if slow:
                    with proxy._lock:
                        proxy.slowed.append(f"{self.command} {self.path}")
                length = int(self.headers.get("Content-Length") or 0)
                body = proxy._read(self.rfile, length, lambda: proxy.is_slow(self.path)) if length else None
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=600)
                try:
                    conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                    for key, value in self.headers.items():
                        if key.lower() not in _HOP_BY_HOP:
                            conn.putheader(key, value)
                    conn.endheaders(body)
                    response = conn.getresponse()
                    self.send_response_only(response.status, response.reason)
                    for key, value in response.getheaders():
                        if key.lower() not in _HOP_BY_HOP:
                            self.send_header(key, value)
                    if response.getheader("Content-Length") is None and self.command != "HEAD":
                        # A body without a length ends with the connection.
                        self.send_header("Connection", "close")
                        self.close_connection = True
                    self.end_headers()
                    if self.command != "HEAD":
                        while chunk := response.read(CHUNK):
                            self.wfile.write(chunk)
                            self.wfile.flush()
                            if proxy.is_slow(self.path):
                                time.sleep(len(chunk) / proxy.rate)
                finally:
                    conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward  # noqa: N815

        self._server = ThreadingHTTPServer((host, 0), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://{host}:{self._server.server_address[1]}"

    def _read(self, rfile: object, length: int, slow: object) -> bytes:
        parts, left = [], length
        while left:
            chunk = rfile.read(min(CHUNK, left))  # type: ignore[attr-defined]
            if not chunk:
                break
            parts.append(chunk)
            left -= len(chunk)
            if slow():  # type: ignore[operator]
                time.sleep(len(chunk) / self.rate)
        return b"".join(parts)

    def is_slow(self, path: str) -> bool:
        with self._lock:
            return any(marker in path for marker in self._slow)

    def slow_down(self, marker: str) -> None:
        with self._lock:
            self._slow.add(marker)

    def release(self, marker: str) -> None:
        with self._lock:
            self._slow.discard(marker)

    def start(self) -> SlowS3Proxy:
        threading.Thread(target=self._server.serve_forever, name="slow-s3-proxy", daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
