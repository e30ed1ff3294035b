"""Row 10 of `make bench`: a longer, randomised fuzz of the API from the service models (issue 21, item 7).

The same cases as the suite's bounded fuzz (tests/test_fuzz_api.py: requests drawn from botocore's shapes for
every served operation, in each service's wire protocol, and byte-level mutations of valid ones), many more of
them and with a new seed each run (printed; BENCH_FUZZ_SEED replays one). Nothing stops at the first finding:
every answer that breaks the rules (a 5xx, Python text, an error not in AWS's shape or codes) is counted and
the first few of each kind written to bench/results/fuzz-findings.txt, and after the run the store must be
whole (tests.test_fuzz_api.assert_store_consistent).

Measured: cases per second, generation and the server's answer together; baseline: the same raw client
sending one fixed valid DescribeTrainingJob, the server's answer alone. Findings: what the run found (0 is the
goal). Alone: `python -m bench.api_fuzz`.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from bench.table import print_rows
from tests.support.fuzz_cases import (
    OUTPUT_BUCKET,
    Anchors,
    Case,
    Ledger,
    assert_store_consistent,
    model_cases,
    mutated_cases,
    plant_anchors,
)
from tests.support.raw_aws import RawClient, encode, problems
from tests.support.served_operations import served_operations
from tests.support.smlocal import SmlocalServer

MODEL_CASES = int(os.environ.get("BENCH_FUZZ_CASES", "3000"))
MUTATED_CASES = MODEL_CASES // 2
BASELINE_REQUESTS = 1000
SHOWN_PER_KIND = 3
FINDINGS_FILE = Path(__file__).parent / "results" / "fuzz-findings.txt"
Row = tuple[str, str, str, str]


class Findings:
    def __init__(self) -> None:
        self.count = 0
        self.examples: dict[str, list[str]] = {}

    def add(self, case: Case, found: list[str], body: bytes) -> None:
        self.count += 1
        kind = f"{case.served!r} {case.mutation or 'model'}: {found[0][:80]}"
        shown = self.examples.setdefault(kind, [])
        if len(shown) < SHOWN_PER_KIND:
            shown.append(f"{case!r}\n  -> {body[:400]!r}")


def _run(strategy: st.SearchStrategy[Case], cases: int, run_seed: int, client: RawClient, ledger: Ledger,
         findings: Findings) -> float:
    """Send `cases` drawn cases; the seconds it took."""

    @seed(run_seed)
    @settings(max_examples=cases, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def fuzz(case: Case) -> None:
        try:
            response = client.send(case.served.model.signing_name, case.request, case.sign)
        except OSError as e:  # the server closed on us: a finding too, and the next case gets a new connection
            client.close()
            findings.add(case, [f"connection: {type(e).__name__}"], str(e).encode())
            return
        found = problems(response, case.served.model)
        if found:
            findings.add(case, found, response.body)
        ledger.record(case, response.status)

    start = time.perf_counter()
    fuzz()
    return time.perf_counter() - start


def _baseline(client: RawClient, anchors: Anchors) -> float:
    """Plain valid requests per second over the same raw client."""
    served = next(op for op in served_operations() if op.name == "DescribeTrainingJob")
    request = encode(served.model, served.name, "json", {"TrainingJobName": anchors.known["TrainingJobName"][0]})
    start = time.perf_counter()
    for _ in range(BASELINE_REQUESTS):
        client.send(served.model.signing_name, request)
    return BASELINE_REQUESTS / (time.perf_counter() - start)


def _write(findings: Findings, run_seed: int) -> None:
    FINDINGS_FILE.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"seed {run_seed}: {findings.count} findings"]
    for kind, shown in sorted(findings.examples.items()):
        lines += ["", f"== {kind}", *shown]
    FINDINGS_FILE.write_text("\n".join(lines) + "\n")


def rows(log: Callable[[str], None] = print) -> list[Row]:
    run_seed = int(os.environ.get("BENCH_FUZZ_SEED") or random.randrange(2**32))
    log(f"api fuzz: seed {run_seed} (BENCH_FUZZ_SEED={run_seed} replays it)")
    findings, ledger = Findings(), Ledger()
    with tempfile.TemporaryDirectory() as data_dir:
        server = SmlocalServer(Path(data_dir), None, ["--backend", "simulated", "--log-level", "warning"],
                               {"DOCKER_HOST": "tcp://127.0.0.1:9"}).start()
        client = RawClient(server.endpoint)
        try:
            server.client("s3").create_bucket(Bucket=OUTPUT_BUCKET)
            anchors = plant_anchors(server.client())
            ledger.created.update(anchors.known["TrainingJobName"])
            baseline = _baseline(client, anchors)
            model_s = _run(model_cases(anchors), MODEL_CASES, run_seed, client, ledger, findings)
            mutated_s = _run(mutated_cases(anchors), MUTATED_CASES, run_seed, client, ledger, findings)
            try:
                assert_store_consistent(server, ledger)
                store = "store whole after"
            except AssertionError as e:
                store = "STORE NOT WHOLE after"
                findings.examples.setdefault("store after the run", []).append(str(e)[-4000:])
        finally:
            client.close()
            server.stop()
    _write(findings, run_seed)
    total = MODEL_CASES + MUTATED_CASES
    rate = total / (model_s + mutated_s)
    return [(f"API fuzz from the service models: {MODEL_CASES} drawn + {MUTATED_CASES} byte-mutated cases, "
             f"seed {run_seed}",
             f"{rate:.0f} cases/s, {findings.count} findings ({store})",
             f"{baseline:.0f} req/s a fixed valid DescribeTrainingJob, same client",
             f"{rate / baseline * 100:.0f} % of the plain request rate")]


def main() -> None:
    print_rows(rows())
    print(f"findings: {FINDINGS_FILE}")


if __name__ == "__main__":
    main()
