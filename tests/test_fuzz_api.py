"""A bounded, seeded fuzz of every operation smlocal serves, over real HTTP, in each service's wire protocol.

Requests are drawn from botocore's shapes (tests/support/model_strategies.py), mostly valid and some broken
on purpose, then sent raw (tests/support/raw_aws.py) so that nothing a client library would refuse is
kept from the server; a second run breaks valid requests on the byte level. Whatever was sent, the answer
is never a 5xx, never Python's own words, and an error is in AWS's shape with a code AWS would use. After
both runs the store must still be whole: the server answers, every page of the job listing reads, and every
job the fuzz created can be described. About 430 cases, in under half a minute on 2 cores.

The server runs jobs on the simulated backend, so what the fuzz creates goes through the real runner
(staging, logs, metrics) with no container engine. `derandomize=True`: the same kind of cases every run (which
exactly also follows the constants hypothesis finds in the modules loaded, so the operations are parametrized
rather than drawn); the longer, randomised run is `make bench` (bench/api_fuzz.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

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
from tests.support.raw_aws import RawClient, check_response
from tests.support.served_operations import ServedOperation, served_operations
from tests.support.smlocal import SmlocalServer

# Per operation and wire protocol (so every one is reached whatever hypothesis favours), more for the two
# requests with the most members and rules; 150 byte-level mutations over all of them.
CASES_PER_OPERATION = 6
CASES_FOR = {"CreateTrainingJob": 30, "CreateHyperParameterTuningJob": 30}
MUTATED_CASES = 150
# Each served operation in each protocol its service speaks (CloudWatch: AWS JSON, RPC v2 CBOR and query).
OPERATIONS = [pytest.param(op, protocol, id=f"{op!r}-{protocol}")
              for op in served_operations() for protocol in op.protocols]


def fuzz_settings(max_examples: int) -> settings:
    # Every health check off: drawing a whole CreateTrainingJob is slow by hypothesis's measure, and that is
    # the point; deadline None: a request's time is the server's, not the strategy's.
    return settings(derandomize=True, database=None, deadline=None, print_blob=False, max_examples=max_examples,
                    suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmlocalServer]:
    """Its own server (what the fuzz creates stays out of the session's), on its embedded store, with a
    DOCKER_HOST nobody listens on: the simulated backend must not need one."""
    data_dir = tmp_path_factory.mktemp("fuzz") / "data"  # alone in its folder: see nothing_written_beside
    server = SmlocalServer(data_dir, None, ["--backend", "simulated"],
                           {"DOCKER_HOST": f"unix://{data_dir}/no-docker.sock"}).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def anchors(fuzz_server: SmlocalServer) -> Anchors:
    fuzz_server.client("s3").create_bucket(Bucket=OUTPUT_BUCKET)  # the anchors' jobs complete
    return plant_anchors(fuzz_server.client())


def nothing_written_beside(server: SmlocalServer) -> None:
    """Whatever names the fuzz sent (`../../x` is among the drawn values), nothing appeared beside the data dir."""
    assert [p.name for p in server.data_dir.parent.iterdir()] == ["data"]


def send_and_check(client: RawClient, case: Case, ledger: Ledger) -> None:
    response = client.send(case.served.model.signing_name, case.request, case.sign)
    check_response(response, case.served.model, repr(case))
    ledger.record(case, response.status)


@pytest.fixture(scope="module")
def ledger(anchors: Anchors) -> Ledger:
    """What the whole module's fuzz created and deleted, for the store check at its end."""
    found = Ledger()
    found.created.update(anchors.known["TrainingJobName"])
    return found


@pytest.mark.parametrize(("served", "protocol"), OPERATIONS)
def test_model_drawn_requests_never_break_the_server(fuzz_server: SmlocalServer, anchors: Anchors, ledger: Ledger,
                                                     served: ServedOperation, protocol: str) -> None:
    client = RawClient(fuzz_server.endpoint)

    @fuzz_settings(CASES_FOR.get(served.name, CASES_PER_OPERATION))
    @given(case=model_cases(anchors, served, protocol))
    def fuzz(case: Case) -> None:
        send_and_check(client, case, ledger)

    try:
        fuzz()
    finally:
        client.close()


def test_byte_level_mutations_never_break_the_server(fuzz_server: SmlocalServer, anchors: Anchors,
                                                     ledger: Ledger) -> None:
    client = RawClient(fuzz_server.endpoint)

    @fuzz_settings(MUTATED_CASES)
    @given(case=mutated_cases(anchors))
    def fuzz(case: Case) -> None:
        send_and_check(client, case, ledger)

    try:
        fuzz()
    finally:
        client.close()


def test_the_store_is_whole_after_the_fuzz(fuzz_server: SmlocalServer, ledger: Ledger) -> None:
    """After every case above (pytest runs a module in order): the server answers, its listings read, every job the
    fuzz created can be described, and nothing was written beside the data dir."""
    assert_store_consistent(fuzz_server, ledger)
    nothing_written_beside(fuzz_server)


def test_the_served_operations_come_from_the_registry() -> None:
    """The list the fuzz draws from is the app's registry's: it holds at least what smlocal is known to serve."""
    served: dict[str, set[str]] = {}
    for op in served_operations():
        served.setdefault(op.service, set()).add(op.name)
    expected: dict[str, Any] = {
        "sagemaker": {"CreateTrainingJob", "DescribeTrainingJob", "ListTrainingJobs", "StopTrainingJob",
                      "CreateHyperParameterTuningJob", "AddTags"},
        "logs": {"GetLogEvents", "FilterLogEvents", "DescribeLogStreams", "DescribeLogGroups"},
        "cloudwatch": {"GetMetricStatistics", "GetMetricData", "ListMetrics"},
        "iam": {"GetRole"}, "sts": {"GetCallerIdentity"},
    }
    for service, names in expected.items():
        assert names <= served.get(service, set()), service
