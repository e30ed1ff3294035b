"""Hyperparameter tuning jobs with boto3 over HTTP: trials are real training jobs in real containers, whose
objective is a known function of their hyperparameters (tests/support/tuning.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import docker
import pytest
from botocore.exceptions import ClientError

from tests.support.runner_jobs import s3_client, settle, wait_until
from tests.support.smlocal import SmlocalServer
from tests.support.tuning import (
    build_tuning_image,
    continuous_x,
    expected_loss,
    trials,
    tuning_request,
    wait_tuning,
)

SERVER = "tuning_server"


@pytest.fixture(scope="module")
def tuning_server(module_smlocal_factory: Callable[..., SmlocalServer], docker_engine: docker.DockerClient
                  ) -> Iterator[SmlocalServer]:
    build_tuning_image(docker_engine)
    server = module_smlocal_factory("--stop-grace-seconds", "1.5", "--max-concurrent-jobs", "4")
    s3_client(server)  # the buckets trials upload their models to
    yield server
    settle(server, docker_engine)


@pytest.fixture()
def sm(tuning_server: SmlocalServer) -> Any:
    return tuning_server.client()


def _overlaps(summaries: list[dict[str, Any]]) -> int:
    """The most trials that were running at one moment, from their training start and end times."""
    events = sorted([(s["TrainingStartTime"], 1) for s in summaries] + [(s["TrainingEndTime"], -1) for s in summaries],
                    key=lambda e: (e[0], e[1]))
    running = peak = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    return peak


def test_random_search_finds_the_best_trial_within_its_limits(sm: Any) -> None:
    name = "random-x"
    sm.create_hyper_parameter_tuning_job(**tuning_request(name, "Random", max_jobs=6, parallel=2, RandomSeed=7))
    job, seen = wait_tuning(sm, name)
    assert job["HyperParameterTuningJobStatus"] == "Completed", [t.get("FailureReason") for t in trials(sm, name)]
    # The way between the ends: InProgress with trials running, never more than two at once.
    assert seen[0]["status"] == "InProgress" and seen[-1]["status"] == "Completed"
    assert all(v["counters"].get("InProgress", 0) <= 2 for v in seen), seen
    assert any(v["counters"].get("InProgress", 0) == 2 for v in seen), seen
    summaries = trials(sm, name)
    assert len(summaries) == 6
    assert job["TrainingJobStatusCounters"] == {"Completed": 6, "InProgress": 0, "RetryableError": 0,
                                                "NonRetryableError": 0, "Stopped": 0}
    assert job["ObjectiveStatusCounters"] == {"Succeeded": 6, "Pending": 0, "Failed": 0}
    for summary in summaries:
        assert summary["TrainingJobName"].startswith(f"{name}-")
        number, suffix = summary["TrainingJobName"][len(name) + 1:].split("-")
        assert len(number) == 3 and len(suffix) == 8
        x = float(summary["TunedHyperParameters"]["x"])
        assert 0 <= x <= 1
        assert summary["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] == pytest.approx(expected_loss(x))
        assert summary["ObjectiveStatus"] == "Succeeded"
    best = min(summaries, key=lambda s: s["FinalHyperParameterTuningJobObjectiveMetric"]["Value"])
    assert job["BestTrainingJob"]["TrainingJobName"] == best["TrainingJobName"]
    assert _overlaps(summaries) <= 2
    # A trial is a training job like any other, that knows its tuning job and objective.
    trial = sm.describe_training_job(TrainingJobName=best["TrainingJobName"])
    assert trial["TuningJobArn"] == job["HyperParameterTuningJobArn"]
    assert trial["HyperParameters"]["_tuning_objective_metric"] == "validation:loss"
    assert trial["HyperParameters"]["epochs"] == "3"
    assert job["TrainingJobDefinition"]["StaticHyperParameters"]["_tuning_objective_metric"] == "validation:loss"
    assert job["ConsumedResources"]["RuntimeInSeconds"] >= 1


def test_bad_requests_are_refused_as_sagemaker_refuses_them(sm: Any) -> None:
    cases = [
        (tuning_request("bad-metric", HyperParameterTuningJobObjective={"Type": "Minimize", "MetricName": "nope"}),
         "A metric is required for this hyperparameter tuning job objective"),
        (tuning_request("bad-range", ranges=continuous_x("2", "1")), "must be less than or equal to"),
        (tuning_request("bad-log", ranges=continuous_x("0", "1", "Logarithmic")), "greater than 0"),
        (tuning_request("bad-rlog", ranges=continuous_x("0.5", "1", "ReverseLogarithmic")), "0 <= x < 1"),
        (tuning_request("bad-grid", "Grid", max_jobs=None), "only categorical"),
        (tuning_request("few", "Random", max_jobs=5, ranges={"CategoricalParameterRanges": [
            {"Name": "optimizer", "Values": ["adam", "sgd"]}]}), "You don't have enough combinations"),
        (tuning_request("hb-auto", "Hyperband", TrainingJobEarlyStoppingType="Auto"), "must be OFF"),
    ]
    for request, message in cases:
        with pytest.raises(ClientError) as error:
            sm.create_hyper_parameter_tuning_job(**request)
        assert error.value.response["Error"]["Code"] == "ValidationException", request
        assert message in error.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as error:
        sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName="never-made")
    assert error.value.response["Error"]["Code"] == "ResourceNotFound"
    assert sm.list_hyper_parameter_tuning_jobs(NameContains="bad")["HyperParameterTuningJobSummaries"] == []


def test_stop_stops_running_trials_and_ends_stopped(sm: Any) -> None:
    name = "stop-me"
    sm.create_hyper_parameter_tuning_job(**tuning_request(
        name, max_jobs=4, parallel=2, definition={"static": {"epochs": "200", "pause": "0.5"}}))
    wait_until(lambda: sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
               ["TrainingJobStatusCounters"].get("InProgress") == 2, 60, "two running trials")
    sm.stop_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
    assert sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)[
        "HyperParameterTuningJobStatus"] in ("Stopping", "Stopped")
    job, _ = wait_tuning(sm, name, timeout=90)
    assert job["HyperParameterTuningJobStatus"] == "Stopped"
    assert job["TrainingJobStatusCounters"]["Stopped"] == 2
    assert len(trials(sm, name)) == 2  # nothing launched after the stop
    with pytest.raises(ClientError) as error:
        sm.stop_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
    assert error.value.response["Error"]["Code"] == "ValidationException"
    sm.delete_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
    with pytest.raises(ClientError):
        sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
    # Its training jobs stay.
    assert sm.list_training_jobs(NameContains=name)["TrainingJobSummaries"]
