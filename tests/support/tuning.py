"""Tuning-job fixtures' helpers: an algorithm whose objective is a known function of its hyperparameters, the
requests that tune it, and waiting on a tuning job while recording what it went through."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import docker

from tests.support.jobs import ROLE
from tests.support.runner_jobs import BUSYBOX_IMAGE, OUTPUT_BUCKET

# ALGORITHM as the image's `train` (a tuning job's AlgorithmSpecification has no ContainerEntrypoint).
TUNING_IMAGE = "smlocal-test/tuning:1"

# A busybox algorithm: reads x (and, if tuned, optimizer) from hyperparameters.json and logs, for epochs
# 1..EPOCHS, "epoch e loss=<(x-0.3)^2 + penalty + 1/e>": its final loss is (x - 0.3)^2 + penalty + 1/EPOCHS.
# `fail_above`: x above it makes the algorithm fail (a ClientError trial). `pause`: seconds between epochs.
# A stop (SIGTERM) ends it after the epoch under way.
ALGORITHM = r"""#!/bin/sh
# As a training script does on SIGTERM (a stop): end after the epoch under way.
trap 'exit 0' TERM
hp=/opt/ml/input/config/hyperparameters.json
value() { tr ',{}' '\n\n\n' < $hp | grep "\"$1\"" | sed 's/.*: *"\(.*\)".*/\1/'; }
x=$(value x); opt=$(value optimizer); epochs=$(value epochs); pause=$(value pause); fail=$(value fail_above)
penalty=0; [ "$opt" = "sgd" ] && penalty=0.5
if [ -n "$fail" ] && awk -v x=$x -v f=$fail 'BEGIN{exit !(x > f)}'; then
  echo "x=$x is above $fail" > /opt/ml/output/failure; exit 3
fi
e=1
while [ $e -le ${epochs:-3} ]; do
  awk -v x=$x -v p=$penalty -v e=$e 'BEGIN{printf "epoch %d loss=%.6f\n", e, (x-0.3)*(x-0.3) + p + 1/e}'
  sleep ${pause:-0.2}
  e=$((e+1))
done
echo "objective done" > /opt/ml/model/done
"""


def build_tuning_image(client: docker.DockerClient) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Path(tmp)
        (ctx / "train").write_text(ALGORITHM)
        (ctx / "train").chmod(0o755)
        (ctx / "Dockerfile").write_text(f"FROM {BUSYBOX_IMAGE}\nCOPY train /usr/bin/train\n")
        client.images.build(path=str(ctx), tag=TUNING_IMAGE, pull=False, rm=True, forcerm=True)
    return TUNING_IMAGE


METRICS = [{"Name": "validation:loss", "Regex": r"loss=([0-9.e+-]+)"}]
OBJECTIVE = {"Type": "Minimize", "MetricName": "validation:loss"}


def expected_loss(x: float, optimizer: str = "adam", epochs: int = 3) -> float:
    return round((x - 0.3) ** 2 + (0.5 if optimizer == "sgd" else 0.0) + 1 / epochs, 6)


def definition(**overrides: Any) -> dict[str, Any]:
    """A TrainingJobDefinition of ALGORITHM (its StaticHyperParameters from `static`)."""
    static = {"epochs": "3", "pause": "0.2", **overrides.pop("static", {})}
    spec = {
        "StaticHyperParameters": static,
        "AlgorithmSpecification": {"TrainingImage": TUNING_IMAGE, "TrainingInputMode": "File",
                                   "MetricDefinitions": METRICS},
        "RoleArn": ROLE,
        "OutputDataConfig": {"S3OutputPath": f"s3://{OUTPUT_BUCKET}/tuning"},
        "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 10},
        "StoppingCondition": {"MaxRuntimeInSeconds": 600},
    }
    spec.update(overrides)
    return spec


def continuous_x(low: str = "0", high: str = "1", scaling: str = "Linear") -> dict[str, Any]:
    return {"ContinuousParameterRanges": [{"Name": "x", "MinValue": low, "MaxValue": high,
                                           "ScalingType": scaling}]}


def tuning_request(name: str, strategy: str = "Random", *, max_jobs: int | None = 4, parallel: int = 2,
                   ranges: dict[str, Any] | None = None, **config: Any) -> dict[str, Any]:
    """A CreateHyperParameterTuningJob request over ALGORITHM (TUNING_IMAGE's `train`)."""
    limits: dict[str, Any] = {"MaxParallelTrainingJobs": parallel}
    if max_jobs is not None:
        limits["MaxNumberOfTrainingJobs"] = max_jobs
    spec = definition(**config.pop("definition", {}))
    request: dict[str, Any] = {
        "HyperParameterTuningJobName": name,
        "HyperParameterTuningJobConfig": {
            "Strategy": strategy,
            "HyperParameterTuningJobObjective": OBJECTIVE,
            "ResourceLimits": limits,
            "ParameterRanges": ranges if ranges is not None else continuous_x(),
            **config,
        },
        "TrainingJobDefinition": spec,
    }
    return request


TUNING_FINAL = {"Completed", "Failed", "Stopped"}


def wait_tuning(sm: Any, name: str, timeout: float = 240.0, poll: float = 0.25,
                statuses: set[str] = TUNING_FINAL) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Polls DescribeHyperParameterTuningJob until a status in `statuses`: the last answer, and every answer whose
    status or counters differed from the one before (the way between the ends)."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while True:
        job = sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
        view = {"status": job["HyperParameterTuningJobStatus"], "counters": job["TrainingJobStatusCounters"],
                "objectives": job["ObjectiveStatusCounters"]}
        if not seen or seen[-1] != view:
            seen.append(view)
        if job["HyperParameterTuningJobStatus"] in statuses:
            return job, seen
        if time.monotonic() > deadline:
            raise AssertionError(f"tuning job {name} still {view} after {timeout}s")
        time.sleep(poll)


def trials(sm: Any, name: str, **params: Any) -> list[dict[str, Any]]:
    """Every HyperParameterTrainingJobSummary of a tuning job, through NextToken pages of 2."""
    found: list[dict[str, Any]] = []
    token = None
    while True:
        page = sm.list_training_jobs_for_hyper_parameter_tuning_job(
            HyperParameterTuningJobName=name, MaxResults=2, **params, **({"NextToken": token} if token else {}))
        found += page["TrainingJobSummaries"]
        token = page.get("NextToken")
        if not token:
            return found


def most_at_once(summaries: list[dict[str, Any]]) -> int:
    """The most trials that were running at one moment, from their training start and end times."""
    events = sorted([(s["TrainingStartTime"], 1) for s in summaries] + [(s["TrainingEndTime"], -1) for s in summaries],
                    key=lambda e: (e[0], e[1]))
    running = peak = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    return peak
