"""Row 10 of `make bench`: the API under load from a light client, against moto's server on the same load.

Two servers side by side: smlocal API-only (`--no-run-jobs`, so nothing but the API and SQLite works) and
`python -m moto.server`. Each gets JOBS training jobs, then three loads, one after the other:

- CreateTrainingJob: the JOBS jobs themselves, from CLIENTS processes (the store grows from 0 to JOBS);
- DescribeTrainingJob of a job picked at random among the JOBS, SECONDS long;
- ListTrainingJobs(MaxResults=100), each process walking every page by NextToken and starting again, SECONDS
  long: the deep pages are part of the load, as a paginator over all jobs asks for them.

The client is deliberately light: a request is signed with botocore's SigV4 signer and sent on one persistent
http.client connection per process (boto3's own per-call cost, about a millisecond, would hide the server's).
Creates and describes are signed before the clock starts (a signature holds 15 minutes); a page's request
depends on the page before, so list requests are signed as they go (~0.1 ms, against pages of tens of ms).
Each process sends its next request when the last answer is read (a closed loop, CLIENTS requests in
flight); requests/s is all answers over the phase's wall time, p50/p99 over every request's round trip, and the
server process's CPU time per request (from /proc): on a shared machine the rate follows the CPU the server was
given, its CPU per request much less so.
Targets on 2 cores (issue 21): Describe >= 1,000 req/s, List p99 under 100 ms.

No container engine is asked for anything. Alone: `python -m bench.api_load` (BENCH_LOAD_JOBS,
BENCH_LOAD_SECONDS and BENCH_LOAD_CLIENTS make it smaller or longer).
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import os
import random
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from bench.table import print_rows
from tests.support.jobs import job_request
from tests.support.s3server import start_s3_server
from tests.support.smlocal import SmlocalServer

JOBS = int(os.environ.get("BENCH_LOAD_JOBS", "10000"))
SECONDS = float(os.environ.get("BENCH_LOAD_SECONDS", "10"))
CLIENTS = int(os.environ.get("BENCH_LOAD_CLIENTS", "4"))
PAGE = 100
DESCRIBE_TARGET = 1000.0  # req/s
LIST_P99_TARGET = 0.100  # seconds
REGION = "us-east-1"
# Any keys: neither server is given keys to check them against; the scope (region, service) is checked.
CREDENTIALS = Credentials("test", "test")
SERVE = ["--no-run-jobs", "--log-level", "warning", "--s3-store", "memory"]
NO_ENGINE = {"DOCKER_HOST": "tcp://127.0.0.1:9"}
Row = tuple[str, str, str, str]


@dataclass(frozen=True)
class Signed:
    body: bytes
    headers: dict[str, str]


def sign(endpoint: str, operation: str, params: dict[str, Any]) -> Signed:
    """One SageMaker request in AWS JSON 1.1, signed as an SDK signs it (Host is the endpoint's, as http.client
    sends it)."""
    body = json.dumps(params).encode()
    request = AWSRequest(method="POST", url=endpoint + "/", data=body, headers={
        "Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": f"SageMaker.{operation}"})
    SigV4Auth(CREDENTIALS, "sagemaker", REGION).add_auth(request)
    return Signed(body, dict(request.headers.items()))


class Connection:
    """One persistent HTTP/1.1 connection; reopened when the server closes it (moto's server answers
    HTTP/1.0 and closes after each response, a cost that is its own)."""

    def __init__(self, endpoint: str) -> None:
        url = urlparse(endpoint)
        self._http = http.client.HTTPConnection(url.hostname, url.port, timeout=60)

    def send(self, request: Signed) -> tuple[float, dict[str, Any]]:
        """(seconds from sending to the whole answer read, the parsed answer); raises unless 200."""
        start = time.perf_counter()
        self._http.request("POST", "/", request.body, request.headers)
        response = self._http.getresponse()
        data = response.read()
        seconds = time.perf_counter() - start
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {data[:300]!r}")
        return seconds, json.loads(data) if data else {}

    def close(self) -> None:
        self._http.close()


@dataclass(frozen=True)
class Work:
    """What one client process does: `kind` create (every name once), describe or list (until `seconds` pass)."""

    endpoint: str
    kind: str
    names: list[str]
    seconds: float


def _prepared(work: Work) -> list[Signed]:
    if work.kind == "create":
        return [sign(work.endpoint, "CreateTrainingJob", _create_params(name)) for name in work.names]
    if work.kind == "describe":
        # More than a phase sends at most rates; cycled if a fast server asks for more.
        picks = random.Random(os.getpid()).choices(work.names, k=min(len(work.names), 4000))
        return [sign(work.endpoint, "DescribeTrainingJob", {"TrainingJobName": n}) for n in picks]
    return []


def _create_params(name: str) -> dict[str, Any]:
    return job_request(name, "bench/api-load:1", OutputDataConfig={"S3OutputPath": "s3://smlocal-bench-load/out"})


def _run(work: Work, prepared: list[Signed], connection: Connection) -> list[float]:
    latencies: list[float] = []
    if work.kind == "create":
        for request in prepared:
            latencies.append(connection.send(request)[0])
        return latencies
    deadline = time.monotonic() + work.seconds
    if work.kind == "describe":
        while time.monotonic() < deadline:
            latencies.append(connection.send(prepared[len(latencies) % len(prepared)])[0])
        return latencies
    token: str | None = None
    while time.monotonic() < deadline:
        params: dict[str, Any] = {"MaxResults": PAGE}
        if token:
            params["NextToken"] = token
        seconds, page = connection.send(sign(work.endpoint, "ListTrainingJobs", params))
        latencies.append(seconds)
        if len(page["TrainingJobSummaries"]) < PAGE and page.get("NextToken"):
            raise RuntimeError(f"a short page with a NextToken: {len(page['TrainingJobSummaries'])} jobs")
        token = page.get("NextToken")  # none after the last page: the walk starts again
    return latencies


def _client(work: Work, ready: Any, results: Any) -> None:
    """A client process: prepare, wait for the others at `ready`, run, put (start, end, latencies or error)."""
    try:
        prepared = _prepared(work)
        connection = Connection(work.endpoint)
    except Exception as error:  # noqa: BLE001 - reported by the parent, which would otherwise wait at `ready`
        ready.abort()
        results.put((0.0, 0.0, f"{type(error).__name__}: {error}"))
        return
    ready.wait()
    start = time.monotonic()
    try:
        latencies: list[float] | str = _run(work, prepared, connection)
    except Exception as error:  # noqa: BLE001 - the parent raises it with the phase's name
        latencies = f"{type(error).__name__}: {error}"
    finally:
        connection.close()
    results.put((start, time.monotonic(), latencies))


def cpu_seconds(pid: int) -> float:
    """The CPU time process `pid` has used so far (user + system)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Load:
    requests: int
    seconds: float
    latencies: list[float]
    # The server process's CPU time over the phase: on a shared machine the rate follows the CPU the server was
    # given, its CPU per request does not.
    server_cpu: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    def summary(self) -> str:
        return (f"{self.rate:.0f} req/s, p50 {self.percentile(50) * 1000:.1f} ms, "
                f"p99 {self.percentile(99) * 1000:.1f} ms, "
                f"server CPU {self.server_cpu / self.requests * 1e6:.0f} µs/req")


def load(endpoint: str, pid: int, kind: str, names: list[str], seconds: float = SECONDS) -> Load:
    """CLIENTS processes doing `kind` at once against the server process `pid`: creates split `names` between
    them, the others pick from it."""
    # Spawned, not forked: the parent may hold threads (minio's pool in `make bench`) that a fork would copy
    # mid-flight.
    context = multiprocessing.get_context("spawn")
    ready, results = context.Barrier(CLIENTS), context.Queue()
    parts = [names[i::CLIENTS] for i in range(CLIENTS)] if kind == "create" else [names] * CLIENTS
    processes = [context.Process(target=_client, args=(Work(endpoint, kind, part, seconds), ready, results))
                 for part in parts]
    for process in processes:
        process.start()
    cpu_before = cpu_seconds(pid)  # the clients' preparing costs the server nothing
    answers = [results.get(timeout=600 + seconds) for _ in processes]
    cpu = cpu_seconds(pid) - cpu_before
    for process in processes:
        process.join()
    errors = [latencies for _, _, latencies in answers if isinstance(latencies, str)]
    if errors:
        raise RuntimeError(f"{kind} on {endpoint}: {errors[0]}")
    latencies = [seconds for _, _, found in answers for seconds in found]
    wall = max(end for _, end, _ in answers) - min(start for start, _, _ in answers)
    return Load(len(latencies), wall, latencies, cpu)


@contextmanager
def servers() -> Iterator[dict[str, tuple[str, int]]]:
    """{"smlocal"|"moto": (endpoint, process id)}, both on loopback, both stopped after."""
    with tempfile.TemporaryDirectory() as data_dir, start_s3_server() as moto:
        smlocal = SmlocalServer(Path(data_dir), None, SERVE, NO_ENGINE).start()
        assert smlocal.process is not None
        try:
            yield {"smlocal": (smlocal.endpoint, smlocal.process.pid), "moto": (moto.endpoint, moto.process.pid)}
        finally:
            smlocal.stop()


def measure() -> dict[str, dict[str, Load]]:
    """{"smlocal"|"moto": {"create"|"describe"|"list": Load}}, the two servers' phases interleaved so that
    load from elsewhere on a shared machine falls on both alike."""
    names = [f"load-{i:05d}" for i in range(JOBS)]
    found: dict[str, dict[str, Load]] = {"smlocal": {}, "moto": {}}
    with servers() as running:
        for kind in ("create", "describe", "list"):
            for server, (endpoint, pid) in running.items():
                found[server][kind] = load(endpoint, pid, kind, names)
    return found


def rows(found: dict[str, dict[str, Load]] | None = None) -> list[Row]:
    found = found or measure()
    ours, moto = found["smlocal"], found["moto"]
    describe_met = "met" if ours["describe"].rate >= DESCRIBE_TARGET else "missed"
    list_met = "met" if ours["list"].percentile(99) < LIST_P99_TARGET else "missed"
    targets = {"create": "", "describe": f"; target >= {DESCRIBE_TARGET:.0f} req/s: {describe_met}",
               "list": f"; target p99 < {LIST_P99_TARGET * 1000:.0f} ms: {list_met}"}
    labels = {"create": f"API load: CreateTrainingJob, {JOBS} jobs into an empty store",
              "describe": f"API load: DescribeTrainingJob at {JOBS} jobs",
              "list": f"API load: ListTrainingJobs(MaxResults={PAGE}) walking all pages at {JOBS} jobs"}
    return [(f"{labels[kind]}, {CLIENTS} client processes", ours[kind].summary(),
             f"moto server: {moto[kind].summary()}",
             f"{ours[kind].rate / moto[kind].rate:.1f}x moto's rate{targets[kind]}")
            for kind in ("create", "describe", "list")]


def main() -> None:
    print_rows(rows())


if __name__ == "__main__":
    main()
