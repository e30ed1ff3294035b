"""Scripted CreateTrainingJob faults, on any backend: the `smlocal:create-error` tag or a `--simulate-rules`
rule's `create-error` (smlocal.core.simulation) makes CreateTrainingJob meet an error as AWS shapes it, so a
client's retry code can be tried.

- `ThrottlingException`, `InternalFailure`, `ResourceLimitExceeded`: the request is refused with AWS's status
  code, `__type` and message, and no job is created. boto3 retries the first two (botocore's retry handlers:
  ThrottlingException is a throttling code, a 500 a transient error), not the third.
- `CapacityError`: on AWS this is no API error. CreateTrainingJob succeeds and the job fails in Starting with
  the FailureReason below (SageMaker Python SDK's `_check_job_status` raises `sagemaker.exceptions.CapacityError`
  when the reason holds "CapacityError"); so here too: the job is created Failed, and no container is run.

A count (`ThrottlingException:2`) makes the fault happen that many times, then the create goes through; without
one it happens every time. What is counted follows what a client retries: a refused create is sent again under
the same name, so API errors count per job name (and per rule); a job failed for capacity cannot be created
again under its name (names are unique), so a client retries it as a new job, and a rule's CapacityError counts
the jobs that rule matched, whatever their names. Counts live in the server process (a restart forgets them).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from smlocal.core.errors import ApiError
from smlocal.core.jobspec import JobSpec
from smlocal.core.settings import Settings
from smlocal.core.simulation import CREATE_ERROR, CREATE_ERROR_TAG, CreateError, Rules, parse_create_error

CAPACITY_ERROR = "CapacityError"
# SageMaker's FailureReason for a training job it found no instances for (what the SDK's CapacityError matches;
# e.g. aws/deep-learning-containers#1018, sagemaker-python-sdk's tests/unit/test_session.py).
CAPACITY_FAILURE_REASON = ("CapacityError: Unable to provision requested ML compute capacity. "
                           "Please retry using a different ML instance type.")
# AWS's Common Error Types (the SageMaker API Reference): InternalFailure is a 500 and ThrottlingException a 400;
# SageMaker's throttling message is "Rate exceeded" (aws/sagemaker-python-sdk#645: "An error occurred
# (ThrottlingException) when calling the CreateTrainingJob operation (reached max retries: 4): Rate exceeded").
THROTTLING_MESSAGE = "Rate exceeded"
INTERNAL_FAILURE_MESSAGE = "The request processing has failed because of an unknown error, exception or failure."


def api_error(code: str, params: dict[str, Any]) -> ApiError:
    """The error AWS answers CreateTrainingJob with for `code` (not CapacityError: that one fails the job)."""
    if code == "ThrottlingException":
        return ApiError(code, THROTTLING_MESSAGE)
    if code == "InternalFailure":
        return ApiError(code, INTERNAL_FAILURE_MESSAGE, 500)
    if code == "ResourceLimitExceeded":
        # The quota message boto3 users see for an instance type the account has none of (400, modelled in
        # botocore's sagemaker model; gabehollombe-aws/jupyter-notebooks#1).
        group = JobSpec.from_request(params).instance_groups[0]
        return ApiError(code, f"The account-level service limit '{group.instance_type} for training job usage' is "
                        f"0 Instances, with current utilization of 0 Instances and a request delta of "
                        f"{len(group.hosts)} Instances. Please contact AWS support to request an increase for "
                        "this limit.")
    raise ValueError(f"no API error for {code}")


class CreateFaults:
    """The faults asked of this server's CreateTrainingJob calls, and how many of each have happened."""

    def __init__(self, rules: Rules | None = None) -> None:
        self.rules = rules
        self._lock = threading.Lock()
        self._seen: dict[tuple[Any, ...], int] = {}

    @classmethod
    def of(cls, settings: Settings) -> CreateFaults:
        """The faults of `serve`'s settings: the smlocal:create-error tag, and the --simulate-rules file's rules
        (read again here; `serve` has checked it already)."""
        return cls(Rules.load(settings.simulate_rules) if settings.simulate_rules is not None else None)

    def check(self, params: dict[str, Any]) -> str | None:
        """Called once CreateTrainingJob's request is valid, before the job is stored: raises the API error the
        job's fault asks for, or returns the FailureReason the job is to be created Failed with (CapacityError);
        None: create it as usual."""
        name = params["TrainingJobName"]
        tags = {t["Key"]: t.get("Value", "") for t in params.get("Tags", [])}
        found = self._fault(name, (params.get("AlgorithmSpecification") or {}).get("TrainingImage"), tags)
        if found is None:
            return None
        fault, source = found
        # A rule's CapacityError counts the jobs the rule matched; anything else counts per job name.
        key = (source, fault) if fault.code == CAPACITY_ERROR and source != "tag" else (source, name, fault)
        if not self._happens(key, fault.count):
            return None
        if fault.code == CAPACITY_ERROR:
            return CAPACITY_FAILURE_REASON
        raise api_error(fault.code, params)

    def _fault(self, name: str, image: str | None, tags: Mapping[str, str]) -> tuple[CreateError, Any] | None:
        """The job's fault and where it comes from ("tag", or the index of the rule): its own tag overrides the
        first matching rule, as in smlocal.core.simulation.script_for."""
        if CREATE_ERROR_TAG in tags:
            return parse_create_error(tags[CREATE_ERROR_TAG]), "tag"  # checked already (check_tags)
        if self.rules is None:
            return None
        rule = self.rules.match(name, image, tags)
        if rule is None or CREATE_ERROR not in rule.fields:
            return None
        return parse_create_error(rule.fields[CREATE_ERROR]), self.rules.rules.index(rule)

    def _happens(self, key: tuple[Any, ...], count: int | None) -> bool:
        if count is None:
            return True
        with self._lock:
            seen = self._seen.get(key, 0)
            if seen >= count:
                return False
            self._seen[key] = seen + 1
            return True
