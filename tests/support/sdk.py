"""Run code with the SageMaker Python SDK (v2 or v3) in its own venv, pointed at smlocal by environment alone.

The venvs are made by `make test` (Makefile targets `.venv-sdk2/.installed`, `.venv-sdk3/.installed`);
`ensure_sdk` makes a missing one the same way, so running one test module by hand works too.

Nothing may leave the machine: every SDK process runs with a `sitecustomize` guard that refuses (and
records) any name lookup or connection to an address that is not loopback or one of the endpoints
the test handed it. A test reads `guard_report()` afterwards and requires it to be empty, so a
telemetry call, an STS or IAM request to AWS, or anything else that would have gone out fails the test.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.docker_env import REPO_ROOT

VENVS = {2: REPO_ROOT / ".venv-sdk2", 3: REPO_ROOT / ".venv-sdk3"}

_GUARD = r'''
"""smlocal test guard: only loopback and the allowed hosts may be resolved or connected to."""
import ipaddress
import json
import os
import socket

_ALLOWED = {h for h in os.environ.get("SMLOCAL_GUARD_ALLOW", "").split(",") if h}
_LOG = os.environ["SMLOCAL_GUARD_LOG"]


def _local(host):
    if host is None or host in _ALLOWED or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _refuse(kind, host):
    with open(_LOG, "a") as log:
        log.write(json.dumps({"kind": kind, "host": str(host)}) + "\n")
    return OSError(f"smlocal test guard: {kind} of {host} refused: it is not on this machine")


_getaddrinfo = socket.getaddrinfo


def getaddrinfo(host, *args, **kwargs):
    name = host.decode() if isinstance(host, bytes) else host
    if not _local(name):
        raise socket.gaierror(socket.EAI_NONAME, str(_refuse("lookup", name)))
    return _getaddrinfo(host, *args, **kwargs)


_connect, _connect_ex = socket.socket.connect, socket.socket.connect_ex


def _check(sock, address):
    if sock.family in (socket.AF_INET, socket.AF_INET6) and not _local(address[0]):
        raise _refuse("connection", address[0])


def connect(self, address):
    _check(self, address)
    return _connect(self, address)


def connect_ex(self, address):
    _check(self, address)
    return _connect_ex(self, address)


socket.getaddrinfo = getaddrinfo
socket.socket.connect = connect
socket.socket.connect_ex = connect_ex
'''


def sdk_python(version: int) -> Path:
    return VENVS[version] / "bin" / "python"


def ensure_sdk(version: int) -> Path:
    """The venv's python, made with the Makefile's target when missing (takes minutes once)."""
    marker = VENVS[version] / ".installed"
    if not marker.exists():
        subprocess.run(["make", f".venv-sdk{version}/.installed"], cwd=REPO_ROOT, check=True)
    return sdk_python(version)


@dataclass
class Guard:
    folder: Path

    @property
    def log(self) -> Path:
        return self.folder / "refused.jsonl"

    def report(self) -> list[dict[str, str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


def make_guard(folder: Path, allowed_hosts: list[str]) -> tuple[Guard, dict[str, str]]:
    """The guard's folder (on PYTHONPATH) and the environment that turns it on."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(_GUARD)
    guard = Guard(folder)
    return guard, {"PYTHONPATH": str(folder), "SMLOCAL_GUARD_LOG": str(guard.log),
                   "SMLOCAL_GUARD_ALLOW": ",".join(allowed_hosts)}


def clean_environment(home: Path) -> dict[str, str]:
    """This process's environment without anything that would point an SDK elsewhere."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "SAGEMAKER_", "SMLOCAL_", "PYTHON", "VIRTUAL_ENV", "BOTO"))}
    # A home of its own: no ~/.aws credentials or config, no ~/.config/sagemaker defaults. And a temp folder
    # of its own, inside the test's: what a script leaves there (the notebooks' mkdtemp) goes with the test's.
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    env.update({"HOME": str(home), "TMPDIR": str(home / "tmp"), "NO_COLOR": "1", "TERM": "dumb"})
    return env
