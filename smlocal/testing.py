"""A pytest plugin for your own integration tests: a running smlocal, its S3 store, ready boto3 clients.

pytest loads it through the `pytest11` entry point once smlocal is installed; nothing to import.
Fixtures (one smlocal per test session, started on first use):

- `smlocal`: the running service (`Smlocal` below): endpoints, keys, `backend`, `client(service)`,
  `wait_for_job(name)`, `require_docker()`;
- `smlocal_sagemaker`, `smlocal_s3`, `smlocal_logs`: boto3 clients bound to it.

While it runs, `AWS_ENDPOINT_URL_SAGEMAKER`, `_S3`, `_CLOUDWATCH_LOGS`, `_CLOUDWATCH` and `_IAM` point at it,
with its keys and region in `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_DEFAULT_REGION`, so
the code under test reaches it with a plain `boto3.client("sagemaker")`. At the end of the session the
service stops, the containers and networks of its jobs are removed, and its data dir (store included)
is deleted; the variables are restored.

Options (command line, or the ini key in brackets):
  --smlocal-backend docker|simulated  [smlocal_backend]   what runs the jobs (default docker; with no engine
                                                          answering, simulated, and a warning says so)
  --smlocal-jobs auto|docker|none     [smlocal_jobs]      auto: run jobs; docker: in Docker or not at all (no
                                                          engine: a usage error); none: API only
  --smlocal-s3-store memory|files     [smlocal_s3_store]  the embedded S3 store (default memory)
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runner.backend import LABEL_DATA_DIR
from runner.mounts import remove_tree
from smlocal.core.rclone import die_with_parent

ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_SAGEMAKER", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_CLOUDWATCH_LOGS",
                      "AWS_ENDPOINT_URL_CLOUDWATCH", "AWS_ENDPOINT_URL_IAM", "AWS_ENDPOINT_URL_STS")
# These would take the code under test elsewhere (a profile may not exist here; a session token
# belongs to other keys).
_CLEARED_VARIABLES = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
KEYS = "minioadmin"
FINAL_STATUSES = ("Completed", "Failed", "Stopped")


_handed_out: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A port free on every address, outside the kernel's ephemeral range.

    smlocal binds its embedded store on loopback *and* the Docker bridge gateway, and an S3 front for an
    external store takes an ephemeral port on the gateway: a port probed on loopback alone, or drawn
    from the ephemeral range, can be taken there by the time a server binds it.
    """
    low, high = _ephemeral_range()
    candidates = [p for p in range(20000, 65535) if not low <= p <= high and p not in _handed_out]
    for port in random.sample(candidates, min(200, len(candidates))):
        with socket.socket() as sock:
            try:
                sock.bind(("0.0.0.0", port))  # the wildcard conflicts with a bind on any one address
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free TCP port outside the ephemeral range")


def engine_problem() -> str | None:
    """None when a Docker engine answers (DOCKER_HOST, or the local socket), else where and why not."""
    try:
        import docker

        docker.from_env(timeout=5).ping()
    except Exception as e:  # noqa: BLE001 - any failure means: no engine to run jobs in
        return f"{os.environ.get('DOCKER_HOST') or 'the local socket'}: {_root_cause(e)}"
    return None


def _root_cause(error: BaseException) -> str:
    """The socket's own error when there is one ("Connection refused"), not the HTTP client's layers around it."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        seen = seen.__cause__ or seen.__context__
    return (str(error) or type(error).__name__)[:300]


def docker_available() -> bool:
    return engine_problem() is None


class SmlocalBackendWarning(pytest.PytestWarning):
    """The test smlocal runs its jobs on another backend than the one asked for (no Docker engine answered).
    `-W error::smlocal.testing.SmlocalBackendWarning` makes that an error instead."""


class Smlocal:
    """One `smlocal serve` process for a test session."""

    def __init__(self, data_dir: Path, *, run_jobs: bool, s3_store: str = "memory", region: str = "us-east-1",
                 extra_args: tuple[str, ...] = (), backend: str = "docker") -> None:
        self.data_dir = Path(data_dir).resolve()
        self.runs_jobs = run_jobs
        # What runs its jobs (`serve --backend`): docker, or simulated (no engine; docs/testing.md).
        self.backend = backend
        self.s3_store = s3_store
        self.region = region
        self.access_key = self.secret_key = KEYS
        self.extra_args = extra_args
        self.port = 0
        self.s3_port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """The SageMaker API (and CloudWatch Logs / metrics, served by the same app)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "smlocal.log"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def environment(self) -> dict[str, str]:
        """The variables that point unmodified AWS code at this smlocal."""
        return {
            "AWS_ENDPOINT_URL_SAGEMAKER": self.endpoint,
            "AWS_ENDPOINT_URL_S3": self.s3_endpoint,
            "AWS_ENDPOINT_URL_CLOUDWATCH_LOGS": self.endpoint,
            "AWS_ENDPOINT_URL_CLOUDWATCH": self.endpoint,
            "AWS_ENDPOINT_URL_IAM": self.endpoint,
            "AWS_ENDPOINT_URL_STS": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
        }

    def start(self, timeout: float = 60.0) -> Smlocal:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # a port picked free may be taken before smlocal binds it
            self.port, self.s3_port = free_port(), free_port()
            cmd = [sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                   "--data-dir", str(self.data_dir), "--embedded-s3-port", str(self.s3_port),
                   "--s3-store", self.s3_store, "--s3-access-key", self.access_key,
                   "--s3-secret-key", self.secret_key, "--region", self.region,
                   "--stop-grace-seconds", "2", "--backend", self.backend,
                   *([] if self.runs_jobs else ["--no-run-jobs"]), *self.extra_args]
            # The store is ours: an SMLOCAL_S3_ENDPOINT from the caller's environment must not replace it.
            env = {k: v for k, v in os.environ.items() if not k.startswith("SMLOCAL_")}
            with open(self.log_path, "ab") as log:
                # If pytest itself is killed, smlocal (and so its store) goes too.
                self.process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                                env={**env, "COLUMNS": "200"},
                                                preexec_fn=die_with_parent(os.getpid()))
            if self._wait_ready(timeout):
                return self
            tail = self.log()[-2000:]
            if "is taken" not in tail and "address already in use" not in tail:
                break
            self.stop()
        self.stop()
        raise RuntimeError(f"smlocal did not start; its log ({self.log_path}):\n{self.log()[-4000:]}")

    def _wait_ready(self, timeout: float) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                urllib.request.urlopen(urllib.request.Request(self.endpoint + "/", data=b"{}"), timeout=2).close()
            except urllib.error.HTTPError:
                return True  # an AWS error body: the API is up (and the store started before it)
            except OSError:
                time.sleep(0.1)
                continue
            return True
        return False

    def client(self, service: str, **kwargs: Any) -> Any:
        """A boto3 client for `service` bound to this smlocal (s3 to its store)."""
        import boto3

        endpoint = self.s3_endpoint if service == "s3" else self.endpoint
        return boto3.client(service, endpoint_url=endpoint, region_name=self.region,
                            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key, **kwargs)

    def require_docker(self) -> None:
        """Skip the calling test when this smlocal runs no jobs in Docker (no engine, --smlocal-jobs none, or
        --smlocal-backend simulated)."""
        if not self.runs_jobs:
            pytest.skip("smlocal runs no jobs here (--smlocal-jobs none)")
        if self.backend != "docker":
            pytest.skip(f"smlocal runs jobs on the {self.backend} backend here, not in Docker")

    def wait_for_job(self, name: str, timeout: float = 300.0, poll: float = 0.5) -> dict[str, Any]:
        """DescribeTrainingJob once the job is Completed, Failed or Stopped.

        (boto3's `training_job_completed_or_stopped` waiter polls every 120 s, as against AWS.)
        """
        sm = self.client("sagemaker")
        deadline = time.monotonic() + timeout
        while True:
            job = sm.describe_training_job(TrainingJobName=name)
            if job["TrainingJobStatus"] in FINAL_STATUSES:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"training job {name} still {job['TrainingJobStatus']} after {timeout:.0f} s")
            time.sleep(poll)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(30)

    def cleanup(self) -> None:
        """Stop the service, remove its jobs' containers and networks, delete its data dir and store."""
        self.stop()
        if self.runs_jobs and self.backend == "docker":
            remove_job_resources(self.data_dir)
        # Unmounting first what its jobs mounted below it (their volumes, FastFile's FUSE views).
        remove_tree(self.data_dir)


def remove_job_resources(data_dir: Path) -> None:
    """Every container and network smlocal created for jobs of this data dir (and only those)."""
    import docker

    client = docker.from_env(timeout=30)
    label = f"{LABEL_DATA_DIR}={Path(data_dir).resolve()}"
    for container in client.containers.list(all=True, filters={"label": label}):
        container.remove(force=True, v=True)
    for network in client.networks.list(filters={"label": label}):
        network.remove()


# ---- pytest hooks and fixtures ---------------------------------------------------------------


BACKENDS = ("docker", "simulated")
# Why the session's smlocal runs on another backend than the one asked for (pytest_terminal_summary says it again).
_FALLBACK = pytest.StashKey[str]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("smlocal", "smlocal: a local SageMaker for your tests")
    group.addoption("--smlocal-backend", choices=BACKENDS, default=None,
                    help="what runs the training jobs: docker (default; when no engine answers, simulated, with "
                         "a warning) or simulated (no engine: each job plays a script, docs/testing.md)")
    group.addoption("--smlocal-jobs", choices=("auto", "docker", "none"), default=None,
                    help="auto: run jobs (default); docker: in Docker only (no engine: a usage error); "
                         "none: API only, jobs stay InProgress")
    group.addoption("--smlocal-s3-store", choices=("memory", "files"), default=None,
                    help="the embedded S3 store of the test smlocal (default: memory)")
    parser.addini("smlocal_backend", "docker | simulated (see --smlocal-backend)", default="docker")
    parser.addini("smlocal_jobs", "auto | docker | none (see --smlocal-jobs)", default="auto")
    parser.addini("smlocal_s3_store", "memory | files (see --smlocal-s3-store)", default="memory")


def _option(config: pytest.Config, name: str) -> str:
    return config.getoption(f"--smlocal-{name.replace('_', '-')}") or config.getini(f"smlocal_{name}")


def _backend(config: pytest.Config) -> tuple[bool, str]:
    """(run jobs?, the backend) the options ask for, once the engine was asked when it matters. With the docker
    backend and no engine answering, the jobs run simulated, and a warning says so (a test needing real
    containers calls `require_docker()` and is skipped), rather than failing the session."""
    backend, jobs = _option(config, "backend"), _option(config, "jobs")
    if backend not in BACKENDS:
        raise pytest.UsageError(f"smlocal_backend must be docker or simulated, not {backend!r}")
    if jobs not in ("auto", "docker", "none"):
        raise pytest.UsageError(f"smlocal_jobs must be auto, docker or none, not {jobs!r}")
    if jobs == "none":
        return False, backend
    if backend == "simulated":
        if jobs == "docker":
            raise pytest.UsageError("--smlocal-jobs docker asks for Docker, --smlocal-backend simulated for none")
        return True, backend
    problem = engine_problem()
    if problem is None:
        return True, "docker"
    if jobs == "docker":
        raise pytest.UsageError(f"--smlocal-jobs docker: no Docker engine answers ({problem})")
    why = (f"no Docker engine answers ({problem}): smlocal runs the jobs on the simulated backend instead (no "
           "containers; tests calling smlocal.require_docker() are skipped). Start an engine, or pass "
           "--smlocal-backend simulated to ask for it.")
    config.stash[_FALLBACK] = why
    warnings.warn(SmlocalBackendWarning(why), stacklevel=2)
    return True, "simulated"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    why = config.stash.get(_FALLBACK, None)
    if why is not None:
        terminalreporter.write_sep("-", "smlocal", yellow=True)
        terminalreporter.write_line(f"smlocal: {why}", yellow=True)


@pytest.fixture(scope="session")
def smlocal(pytestconfig: pytest.Config) -> Iterator[Smlocal]:
    """A running smlocal for this test session, with the AWS_* variables pointing at it."""
    run_jobs, backend = _backend(pytestconfig)
    service = Smlocal(Path(tempfile.mkdtemp(prefix="smlocal-pytest-")), run_jobs=run_jobs, backend=backend,
                      s3_store=_option(pytestconfig, "s3_store"))
    saved = {name: os.environ.get(name) for name in (*service.environment(), *_CLEARED_VARIABLES)}
    try:
        service.start()
        for name in _CLEARED_VARIABLES:
            os.environ.pop(name, None)
        os.environ.update(service.environment())
        yield service
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        service.cleanup()


@pytest.fixture(scope="session")
def smlocal_sagemaker(smlocal: Smlocal) -> Any:
    return smlocal.client("sagemaker")


@pytest.fixture(scope="session")
def smlocal_s3(smlocal: Smlocal) -> Any:
    return smlocal.client("s3")


@pytest.fixture(scope="session")
def smlocal_logs(smlocal: Smlocal) -> Any:
    return smlocal.client("logs")
