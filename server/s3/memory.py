"""The in-memory store: moto's S3 in this process (for tests; contents are gone on exit)."""

from __future__ import annotations

import logging
import threading
from typing import Any
from urllib.parse import quote

from server.s3.base import StoreStartError, check_ports_free
from server.s3.front import Head, Refused, check_signed_for_s3, error_body


def _head_of(environ: dict[str, Any]) -> Head:
    headers = [(key[5:].replace("_", "-").lower(), value) for key, value in environ.items() if key.startswith("HTTP_")]
    headers += [(key.replace("_", "-").lower(), environ[key]) for key in ("CONTENT_TYPE", "CONTENT_LENGTH")
                if environ.get(key)]
    query = environ.get("QUERY_STRING", "")
    target = quote(environ.get("PATH_INFO", "/")) + (f"?{query}" if query else "")
    return Head(environ.get("REQUEST_METHOD", ""), target, environ.get("SERVER_PROTOCOL", ""), headers)


def s3_only_app() -> Any:
    """moto's S3 backend alone, as a WSGI app, serving only requests signed for S3.

    moto's usual front (DomainDispatcherApplication) also routes `/moto-api/` (reset, state, seeding),
    the EC2 instance-metadata paths and every other AWS service moto mocks on the same port. The
    address training containers reach gets this app instead: a path there is always an S3 bucket/key,
    and a request signed for another service (which moto's S3 backend would misread as ListBuckets) is
    refused as the S3 front refuses it.
    """
    from moto.moto_server.werkzeug_app import create_backend_app

    backend = create_backend_app("s3")

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        try:
            check_signed_for_s3(_head_of(environ))
        except Refused as refusal:
            body = error_body(refusal)
            start_response(refusal.status_line,
                           [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
            return [body]
        return backend(environ, start_response)

    return app


class _WsgiListener:
    """One threaded werkzeug server for `app` on host:port, in a daemon thread."""

    def __init__(self, host: str, port: int, app: Any) -> None:
        from moto.moto_server.werkzeug_app import MotoRequestHandler
        from werkzeug.serving import make_server

        self._server = make_server(host, port, app, threaded=True, request_handler=MotoRequestHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"s3-{host}:{port}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


class MemoryStore:
    """moto's S3 on loopback (moto's full front, so host tools can still reset it) and, S3 only, on the
    bridge gateway. moto keeps its state per process, so both listeners serve the same buckets."""

    kind = "memory"

    def __init__(self, host: str = "127.0.0.1", port: int = 9000, gateway: str | None = None) -> None:
        self.host = host
        self.port = port
        self.gateway = gateway if gateway != host else None
        self._listeners: list[_WsgiListener] = []

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def describe(self) -> str:
        return f"{self.endpoint} (embedded, IN MEMORY: contents are lost on exit; any keys accepted)"

    def start(self) -> None:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

        addresses = [self.host] + ([self.gateway] if self.gateway else [])
        check_ports_free(addresses, self.port)
        # werkzeug logs every request at INFO, which would drown smlocal's own log.
        if not logging.getLogger("smlocal").isEnabledFor(logging.DEBUG):
            logging.getLogger("werkzeug").setLevel(logging.WARNING)
        try:
            self._listeners.append(_WsgiListener(self.host, self.port, DomainDispatcherApplication(create_backend_app)))
            if self.gateway:
                self._listeners.append(_WsgiListener(self.gateway, self.port, s3_only_app()))
        except OSError as exc:
            self.stop()
            raise StoreStartError(f"the embedded S3 store could not listen on port {self.port} of "
                                  f"{', '.join(addresses)}: {exc}; choose another with --embedded-s3-port") from exc

    def stop(self) -> None:
        for listener in self._listeners:
            listener.stop()
        self._listeners.clear()

