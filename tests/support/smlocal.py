"""Start the real `smlocal serve` in a subprocess on a free port, for tests that talk HTTP to it."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from server.services.smlocal.model import smlocal_session
from smlocal.testing import free_port
from tests.support.census import SERVERS

# One session for every test client: a client made from it is ~10 ms of CPU, one made from a new session ~120 ms
# (the session loads the service model again), and the suite makes thousands. smlocal's own service
# (InterruptTrainingJob) has its model beside the AWS ones.
_CLIENTS = boto3.session.Session(botocore_session=smlocal_session())
_CLIENTS_LOCK = threading.Lock()

# The embedded store's default keys (`--s3-access-key/--s3-secret-key`); the API accepts any signature.
STORE_KEY = "minioadmin"


class SmlocalServer:
    """One `smlocal serve` process; `restart()` keeps the ports, data dir and database.

    With no `s3_endpoint` the server starts its embedded store (`--s3-store`, files by default) on a free
    port of its own, and `s3_endpoint` is that store's loopback address.
    """

    def __init__(self, data_dir: Path, s3_endpoint: str | None, args: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.embedded_s3_port = None if s3_endpoint else free_port()
        self.s3_endpoint = s3_endpoint or f"http://127.0.0.1:{self.embedded_s3_port}"
        self.args = list(args or [])
        self.env = dict(env or {})
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir / "server.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> SmlocalServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # A wide console: the banner's lines are not wrapped in the log.
        env = {**os.environ, "SMLOCAL_LOG_LEVEL": "info", "COLUMNS": "250", **self.env}
        s3 = (["--embedded-s3-port", str(self.embedded_s3_port)] if self.embedded_s3_port
              else ["--s3-endpoint", self.s3_endpoint])
        cmd = [sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--data-dir", str(self.data_dir), *s3, *self.args]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            stdin=subprocess.DEVNULL)
        SERVERS.add(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                SERVERS.remove(self)
                raise RuntimeError(f"smlocal exited with {self.process.returncode}:\n{self.log()}")
            try:
                urllib.request.urlopen(urllib.request.Request(self.endpoint + "/", data=b"{}"), timeout=1)
            except urllib.error.HTTPError:
                return self  # an AWS error body means the app is up
            except OSError:
                time.sleep(0.1)
                continue
            return self
        self.stop(kill=True)  # not left running behind the failure
        raise RuntimeError(f"smlocal did not answer within {timeout}s:\n{self.log()}")

    def stop(self, kill: bool = False) -> None:
        if self.process is None or self.process.poll() is not None:
            SERVERS.remove(self)
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        SERVERS.remove(self)

    def restart(self, kill: bool = False) -> SmlocalServer:
        self.stop(kill=kill)
        return self.start()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def client(self, service: str = "sagemaker", region: str = "us-east-1",
               access_key: str = STORE_KEY, secret_key: str = STORE_KEY, **config: Any) -> Any:
        # SageMaker, CloudWatch Logs and CloudWatch share smlocal's port; S3 is the store's.
        endpoint = self.s3_endpoint if service == "s3" else self.endpoint
        with _CLIENTS_LOCK:  # a botocore session is not thread-safe; its clients are
            return _CLIENTS.client(
                service, endpoint_url=endpoint, region_name=region, aws_access_key_id=access_key,
                aws_secret_access_key=secret_key,
                config=Config(retries={"max_attempts": 1}, **config),
            )

    def cli_env(self, region: str = "us-east-1") -> dict[str, str]:
        """Environment for the aws CLI pointed at this server."""
        return {**os.environ, "AWS_ACCESS_KEY_ID": STORE_KEY, "AWS_SECRET_ACCESS_KEY": STORE_KEY,
                "AWS_DEFAULT_REGION": region, "AWS_PAGER": "", "AWS_ENDPOINT_URL_S3": self.s3_endpoint}


# The server a test module's `sm` and `s3` fixtures are clients of: the fixture it names in a module
# constant, SERVER = "<fixture name>", else the session's API-only server.
DEFAULT_SERVER = "api_server"


def module_server(request: Any) -> SmlocalServer:
    """The server fixture named by the requesting test module's SERVER (a pytest FixtureRequest's)."""
    return request.getfixturevalue(getattr(request.module, "SERVER", DEFAULT_SERVER))
