"""The fuzz's cases: model-drawn requests for the served operations, and byte-level mutations of valid ones.

Shared by the bounded fuzz in the suite (tests/test_fuzz_api.py) and the longer `make bench` run
(bench/api_fuzz.py): a case is drawn here, sent with tests.support.raw_aws and checked there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2
from hypothesis import strategies as st

from tests.support.model_strategies import any_input, valid_input
from tests.support.raw_aws import RawRequest, encode
from tests.support.served_operations import ServedOperation, served_operations
from tests.support.smlocal import SmlocalServer


@dataclass(frozen=True)
class Case:
    served: ServedOperation
    protocol: str
    request: RawRequest
    params: Any = None
    mutation: str = ""
    sign: bool = True

    def __repr__(self) -> str:
        return (f"Case({self.served!r} over {self.protocol}{' ' + self.mutation if self.mutation else ''}: "
                f"path={self.request.path} headers={self.request.headers} body={self.request.body[:400]!r})")


def operations() -> st.SearchStrategy[ServedOperation]:
    return st.sampled_from(served_operations())


@dataclass(frozen=True)
class Anchors:
    """What the server holds before the fuzz starts, for drawn requests to name: member name -> values
    (tests.support.model_strategies.Known), and operation -> a request known to succeed."""

    known: dict[str, list[Any]] = field(default_factory=dict)
    templates: dict[str, dict[str, Any]] = field(default_factory=dict)


NO_ANCHORS = Anchors()


@st.composite
def model_cases(draw: st.DrawFn, anchors: Anchors = NO_ANCHORS, served: ServedOperation | None = None,
                protocol: str | None = None) -> Case:
    """A request for a served operation (any, or `served`), in one of its service's protocols (or `protocol`),
    mostly valid per the model."""
    served = served or draw(operations())
    protocol = protocol or draw(st.sampled_from(served.protocols))
    params = draw(any_input(served.operation, anchors.known, anchors.templates.get(served.name)))
    return Case(served, protocol, encode(served.model, served.name, protocol, params), params)


# ---- byte-level mutations ----------------------------------------------------------------------

_INVALID_UTF8 = (b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80")
_HUGE_NUMBERS = (b"9" * 5000, b"1e999", b"-1e999", b"NaN", b"Infinity", b"-Infinity", b"1" + b"0" * 400,
                 b"-0", b"1e-400", b"18446744073709551616")
_CONTENT_TYPES = ("text/plain", "application/json", "application/x-www-form-urlencoded", "application/cbor",
                  "", "multipart/form-data; boundary=x", "application/x-amz-json-1.0", "application/xml",
                  "application/x-www-form-urlencoded; charset=latin-1", "*/*")
_TARGETS = ("", ".", "SageMaker.", ".CreateTrainingJob", "SageMaker.createTrainingJob", "SageMaker.__init__",
            "SageMaker.CreateTrainingJob.Extra", "Logs_20140328.GetLogEvents ", "sagemaker.ListTrainingJobs",
            "GraniteServiceVersion20100801.GetMetricData", "SageMaker." + "A" * 5000, "../../..", "SageMaker.%00",
            "AWSSecurityTokenServiceV20110615.GetCallerIdentity")
_ASCII = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)


def _deep(served: ServedOperation, protocol: str, depth: int) -> bytes:
    """A body nested `depth` deep, under the operation's first member (the walk's way in) or under a
    member it does not have."""
    shape = served.operation.input_shape
    member = next(iter(shape.members), "a") if shape is not None else "a"
    if protocol == "smithy-rpc-v2-cbor":
        return cbor2.dumps({member: 0})[:-1] + b"\x81" * depth + b"\x00"  # {member: [[[...0]]]}
    if protocol == "query":
        head = f"Action={served.name}&Version={served.model.metadata['apiVersion']}&{member}"
        return head.encode() + b".member.1" * depth + b"=x"
    return f'{{"{member}":'.encode() + b"[" * depth + b"1" + b"]" * depth + b"}"


@st.composite
def mutated_cases(draw: st.DrawFn, anchors: Anchors = NO_ANCHORS) -> Case:
    """A valid request, then broken on the byte level: its body, its content type or its target."""
    served = draw(operations())
    protocol = draw(st.sampled_from(served.protocols))
    params = draw(valid_input(served.operation, anchors.known, anchors.templates.get(served.name)))
    request = encode(served.model, served.name, protocol, params)
    body, headers = request.body, dict(request.headers)
    kind = draw(st.sampled_from(("truncate", "flip", "utf8", "huge-number", "deep", "content-type", "target",
                                 "empty", "unsigned", "junk")))
    if kind == "truncate" and body:
        body = body[:draw(st.integers(0, len(body) - 1))]
    elif kind == "flip" and body:
        data = bytearray(body)
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= draw(st.integers(1, 255))
        body = bytes(data)
    elif kind == "utf8":
        i = draw(st.integers(0, len(body)))
        body = body[:i] + draw(st.sampled_from(_INVALID_UTF8)) + body[i:]
    elif kind == "huge-number":
        number = draw(st.sampled_from(_HUGE_NUMBERS))
        digits = list(re.finditer(rb"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.])", body)) if protocol != "smithy-rpc-v2-cbor" \
            else []
        if digits:
            found = draw(st.sampled_from(digits))
            body = body[:found.start()] + number + body[found.end():]
        elif protocol == "json":
            body = b'{"MaxResults":' + number + b',"StartTime":' + number + b',"limit":' + number + b"}"
        else:
            body = body + b"&MaxResults=" + number
    elif kind == "deep":
        body = _deep(served, protocol, draw(st.sampled_from((100, 1_000, 10_000, 100_000))))
    elif kind == "content-type":
        headers["Content-Type"] = draw(st.sampled_from(_CONTENT_TYPES))
    elif kind == "target":
        headers["X-Amz-Target"] = draw(st.sampled_from(_TARGETS) | _ASCII)
    elif kind == "empty":
        body = draw(st.sampled_from((b"", b" ", b"null", b"[]", b'""', b"0", b"\x00", b"{}" * 3, b"\xf6")))
    elif kind == "junk":
        body = draw(st.binary(max_size=200))
    return Case(served, protocol, RawRequest(request.path, headers, body), params, kind, sign=kind != "unsigned")


def created_job(case: Case) -> str | None:
    """The training job a successful case asked for, if it was a CreateTrainingJob."""
    if case.served.name == "CreateTrainingJob" and isinstance(case.params, dict):
        name = case.params.get("TrainingJobName")
        return name if isinstance(name, str) else None
    return None


# ---- what the fuzz starts from ------------------------------------------------------------------

ANCHOR_JOBS = ("fuzz-anchor-0", "fuzz-anchor-1", "fuzz-anchor-2")
ANCHOR_TUNING = "fuzz-anchor-tuning"
# Where tests.support.jobs.job_request's jobs put their model: the server's store needs the bucket.
OUTPUT_BUCKET = "smlocal-test-output"


def plant_anchors(sm: Any) -> Anchors:
    """Jobs and a tuning job for drawn requests to name (`sm`: a boto3 SageMaker client of the server)."""
    from tests.support.jobs import job_request
    from tests.support.tuning import tuning_request

    tags = [{"Key": "team", "Value": "fuzz"}]
    arns = [sm.create_training_job(**job_request(name, Tags=tags))["TrainingJobArn"] for name in ANCHOR_JOBS]
    tuning_arn = sm.create_hyper_parameter_tuning_job(**tuning_request(ANCHOR_TUNING))["HyperParameterTuningJobArn"]
    group = "/aws/sagemaker/TrainingJobs"
    known: dict[str, list[Any]] = {
        "TrainingJobName": list(ANCHOR_JOBS), "HyperParameterTuningJobName": [ANCHOR_TUNING],
        "ResourceArn": [*arns, tuning_arn], "NameContains": ["fuzz", "anchor"], "logGroupName": [group],
        "logGroupNamePrefix": ["/aws/sagemaker"], "logStreamNamePrefix": [f"{name}/" for name in ANCHOR_JOBS],
        "Namespace": ["/aws/sagemaker/TrainingJobs"], "RoleName": ["SageMakerRole"],
    }
    templates = {
        "CreateTrainingJob": job_request("fuzz-template", Tags=tags),
        "CreateHyperParameterTuningJob": tuning_request("fuzz-tuning-template"),
        "AddTags": {"ResourceArn": arns[0], "Tags": [{"Key": "k", "Value": "v"}]},
        "UpdateTrainingJob": {"TrainingJobName": ANCHOR_JOBS[1]},
        "GetLogEvents": {"logGroupName": group, "logStreamName": f"{ANCHOR_JOBS[0]}/algo-1", "startFromHead": True},
        "FilterLogEvents": {"logGroupName": group, "logStreamNamePrefix": ANCHOR_JOBS[0]},
        "GetMetricStatistics": {"Namespace": "/aws/sagemaker/TrainingJobs", "MetricName": "train:loss",
                                "Dimensions": [{"Name": "TrainingJobName", "Value": ANCHOR_JOBS[0]}],
                                "StartTime": 0, "EndTime": 4_000_000_000, "Period": 60 * 60 * 24 * 30,
                                "Statistics": ["Average"]},
    }
    return Anchors(known, templates)


# ---- what the store must be after ---------------------------------------------------------------


class Ledger:
    """What the fuzz made the server hold: jobs it created and jobs it deleted."""

    def __init__(self) -> None:
        self.created: set[str] = set()
        self.deleted: set[str] = set()

    def record(self, case: Case, status: int) -> None:
        if status != 200 or not isinstance(case.params, dict):
            return
        name = created_job(case)
        if name is not None:
            self.created.add(name)
        if case.served.name == "DeleteTrainingJob" and isinstance(case.params.get("TrainingJobName"), str):
            self.deleted.add(case.params["TrainingJobName"])


def assert_store_consistent(server: SmlocalServer, ledger: Ledger) -> None:
    """The server still answers, with clients that validate as usual: every page of the job listing reads, no
    job twice, every job the fuzz created (and did not delete) is listed and can be described, as can every
    listed one; the tuning, logs and metrics listings answer; no request was answered with InternalFailure."""
    sm = server.client()
    names: list[str] = []
    for page in sm.get_paginator("list_training_jobs").paginate(PaginationConfig={"PageSize": 100}):
        names += [summary["TrainingJobName"] for summary in page["TrainingJobSummaries"]]
    assert len(names) == len(set(names)), "a job is listed twice"
    for name in sorted(ledger.created - ledger.deleted):
        assert name in names, f"{name} was created but is not listed"
        assert sm.describe_training_job(TrainingJobName=name)["TrainingJobName"] == name
    for name in names:
        sm.describe_training_job(TrainingJobName=name)
    list(sm.get_paginator("list_hyper_parameter_tuning_jobs").paginate())
    server.client("logs").describe_log_groups()
    server.client("cloudwatch").list_metrics(Namespace="/aws/sagemaker/TrainingJobs")
    # The dispatcher logs the traceback of any request it answered InternalFailure to (a job's own failure,
    # logged by the runner, is no finding: a drawn job may well fail).
    assert "smlocal.server: request" not in Path(server.log_path).read_text(errors="replace"), server.log()
