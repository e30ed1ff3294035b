"""Row 8 of `make bench`: what a tuning job adds per trial, against the same training jobs created by hand.

A Random tuning job of TRIALS trials, one at a time (MaxParallelTrainingJobs 1), of the test algorithm with one
epoch and no pause (tests/support/tuning.py), from CreateHyperParameterTuningJob to the tuning job seen Completed;
baseline: the same TRIALS training jobs (the very requests the tuning job made, by a fresh name) created one after
another by a client that waits for each to complete (DescribeTrainingJob every 20 ms, as the tuning side is
polled). The difference per trial is the tuner's own cost: hearing a trial end, taking its objective, asking the
search, launching the next. Interleaved, RUNS times; medians. Alone: `python -m bench.tuning`.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.docker_env import docker_client, ensure_test_images
from tests.support.smlocal import SmlocalServer
from tests.support.tuning import build_tuning_image, tuning_request

TRIALS = 6
RUNS = 2
Row = tuple[str, str, str, str]


def _tuning_seconds(sm: Any, name: str, bucket: str) -> tuple[float, list[dict[str, Any]]]:
    request = tuning_request(name, "Random", max_jobs=TRIALS, parallel=1,
                             definition={"static": {"epochs": "1", "pause": "0"},
                                         "OutputDataConfig": {"S3OutputPath": f"s3://{bucket}/tuning"}})
    start = time.perf_counter()
    sm.create_hyper_parameter_tuning_job(**request)
    while True:
        job = sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
        if job["HyperParameterTuningJobStatus"] != "InProgress":
            break
        time.sleep(0.02)
    seconds = time.perf_counter() - start
    if job["HyperParameterTuningJobStatus"] != "Completed":
        raise RuntimeError(f"{name}: {job['HyperParameterTuningJobStatus']}: {job.get('FailureReason')}")
    summaries = sm.list_training_jobs_for_hyper_parameter_tuning_job(HyperParameterTuningJobName=name,
                                                                     MaxResults=100)["TrainingJobSummaries"]
    return seconds, [sm.describe_training_job(TrainingJobName=s["TrainingJobName"]) for s in summaries]


def _by_hand_seconds(sm: Any, trials: list[dict[str, Any]], prefix: str, wait_done: Callable[..., Any]) -> float:
    keys = ("RoleArn", "HyperParameters", "OutputDataConfig", "ResourceConfig", "StoppingCondition")
    start = time.perf_counter()
    for i, trial in enumerate(trials):
        algorithm = {k: v for k, v in trial["AlgorithmSpecification"].items()
                     if k in ("TrainingImage", "TrainingInputMode", "MetricDefinitions")}
        sm.create_training_job(TrainingJobName=f"{prefix}-{i}", AlgorithmSpecification=algorithm,
                               **{k: trial[k] for k in keys if k in trial})
        wait_done(sm, f"{prefix}-{i}")
    return time.perf_counter() - start


def rows(sm: Any, bucket: str, wait_done: Callable[..., Any]) -> list[Row]:
    build_tuning_image(docker_client())
    tuned, by_hand = [], []
    for i in range(RUNS):
        seconds, trials = _tuning_seconds(sm, f"bench-tuning-{i}", bucket)
        tuned.append(seconds)
        by_hand.append(_by_hand_seconds(sm, trials, f"bench-by-hand-{i}", wait_done))
    t, h = statistics.median(tuned), statistics.median(by_hand)
    return [(f"Tuning job: {TRIALS} trials one at a time", f"{t:.2f} s create->Completed",
             f"{h:.2f} s the same {TRIALS} jobs created by hand",
             f"+{(t - h) / TRIALS:.2f} s per trial ({t / h:.2f}x)")]


def _wait_done(sm: Any, name: str) -> None:
    while sm.describe_training_job(TrainingJobName=name)["TrainingJobStatus"] not in ("Completed", "Failed",
                                                                                      "Stopped"):
        time.sleep(0.02)


if __name__ == "__main__":
    ensure_test_images()
    with tempfile.TemporaryDirectory() as data_dir:
        server = SmlocalServer(Path(data_dir), None, ["--log-level", "warning"]).start()
        try:
            client = server.client()
            server.client("s3").create_bucket(Bucket="smlocal-bench-tuning")
            for row in rows(client, "smlocal-bench-tuning", _wait_done):
                print("| " + " | ".join(row) + " |")
        finally:
            server.stop()
