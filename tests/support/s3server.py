"""Run moto's standalone S3 (and other AWS APIs) server as a subprocess.

No pytest dependency, so it also works from scripts and a REPL:

    with start_s3_server() as s3:
        boto3.client("s3", endpoint_url=s3.endpoint, ...)

Reachability from containers: a server bound to 127.0.0.1 is NOT reachable
from inside a Docker container (127.0.0.1 there is the container itself). For
a server that training containers must reach, bind on "0.0.0.0" or on the
bridge gateway address (see tests.support.docker_env.host_address_for_containers)
and hand containers ``server.endpoint_for(gateway_ip)``.
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

_WILDCARD_TO_LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _bind_probe(host: str, port: int) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, port))
        return int(sock.getsockname()[1])


class S3Server:
    """A running moto server process. Use `start_s3_server` to create one."""

    def __init__(self, process: subprocess.Popen[bytes], host: str, port: int, log_path: Path) -> None:
        self.process = process
        self.host = host
        self.port = port
        self.log_path = log_path

    @property
    def endpoint(self) -> str:
        """URL for clients on this machine (wildcard binds map to loopback)."""
        return self.endpoint_for(_WILDCARD_TO_LOOPBACK.get(self.host, self.host))

    def endpoint_for(self, address: str) -> str:
        """URL through another address of this host, e.g. the docker bridge gateway."""
        return f"http://{_url_host(address)}:{self.port}"

    def is_running(self) -> bool:
        return self.process.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def client_with_bucket(self, bucket: str) -> Any:
        """A boto3 S3 client for this server, with `bucket` created if it is not there yet."""
        import boto3

        client = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                              aws_access_key_id="test", aws_secret_access_key="test")
        try:
            client.create_bucket(Bucket=bucket)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        return client

    def reset(self) -> None:
        """Drop all state (buckets, objects) so one server can serve many tests."""
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server; safe to call more than once."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout)
        self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> S3Server:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else f"exited({self.process.returncode})"
        return f"S3Server(endpoint={self.endpoint!r}, host={self.host!r}, pid={self.process.pid}, {state})"


def _answers_http(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        # Any HTTP status means the server is up and parsing requests.
        return True
    except (urllib.error.URLError, OSError):
        return False


def _launch(host: str, port: int, timeout: float) -> S3Server:
    log_file = tempfile.NamedTemporaryFile(prefix="smlocal-moto-", suffix=".log", delete=False)
    log_path = Path(log_file.name)
    env = dict(os.environ)
    # moto builds some URLs from MOTO_PORT; an inherited value would point them elsewhere.
    env["MOTO_PORT"] = str(port)
    with log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)],
            stdin=subprocess.DEVNULL,
            # A file, not a pipe: nobody drains a pipe, and a full one would block moto.
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
        )
    server = S3Server(process, host, port, log_path)
    deadline = time.monotonic() + timeout
    probe = f"{server.endpoint}/"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        if _answers_http(probe) and process.poll() is None:
            atexit.register(server.stop)
            return server
        time.sleep(0.1)
    log_text = server.log_text()
    server.stop()
    if process.returncode is not None and process.returncode != 0 and "Address already in use" in log_text:
        raise OSError(f"port {port} on {host} is already in use")
    raise RuntimeError(
        f"moto server on {host}:{port} did not answer within {timeout:.0f}s "
        f"(exit code {process.returncode}); output:\n{log_text[-4000:]}"
    )


def start_s3_server(host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0) -> S3Server:
    """Start `python -m moto.server` and wait until it answers HTTP.

    port=0 picks a free port. host="127.0.0.1" is only reachable from this
    machine's processes; use "0.0.0.0" or the docker bridge gateway IP when
    containers must reach the server.
    """
    if port:
        # Without this, the readiness probe would happily talk to whatever
        # server already holds the port while our process dies on bind.
        _bind_probe(host, port)
        return _launch(host, port, timeout)
    # Picking a port and binding it later is racy; retry with a fresh port if
    # another process took it in between.
    last_error: OSError | None = None
    for _ in range(5):
        try:
            return _launch(host, _bind_probe(host, 0), timeout)
        except OSError as exc:
            last_error = exc
    raise RuntimeError(f"could not start moto server on {host}: {last_error}")
