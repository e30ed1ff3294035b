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
    most_at_once,
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
    assert most_at_once(summaries) <= 2
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


def test_grid_runs_every_combination_once(sm: Any) -> None:
    name = "grid-xo"
    ranges = {"CategoricalParameterRanges": [{"Name": "optimizer", "Values": ["adam", "sgd"]},
                                             {"Name": "x", "Values": ["0.1", "0.3", "0.5"]}]}
    sm.create_hyper_parameter_tuning_job(**tuning_request(name, "Grid", max_jobs=None, parallel=3, ranges=ranges))
    job, _ = wait_tuning(sm, name)
    assert job["HyperParameterTuningJobStatus"] == "Completed"
    # SageMaker computes MaxNumberOfTrainingJobs from the grid when it is left out.
    assert job["HyperParameterTuningJobConfig"]["ResourceLimits"]["MaxNumberOfTrainingJobs"] == 6
    runs = [(t["TunedHyperParameters"]["optimizer"], t["TunedHyperParameters"]["x"]) for t in trials(sm, name)]
    assert sorted(runs) == sorted((o, x) for o in ("adam", "sgd") for x in ("0.1", "0.3", "0.5"))
    assert job["BestTrainingJob"]["TunedHyperParameters"] == {"optimizer": "adam", "x": "0.3"}
    assert job["BestTrainingJob"]["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] == pytest.approx(
        expected_loss(0.3))
    with pytest.raises(ClientError) as error:
        sm.create_hyper_parameter_tuning_job(**tuning_request("grid-count", "Grid", max_jobs=5, ranges=ranges))
    assert "must equal the number of distinct combinations" in error.value.response["Error"]["Message"]


def test_failing_trials_count_as_non_retryable_and_fail_the_tuning_job(sm: Any) -> None:
    name = "half-fails"
    sm.create_hyper_parameter_tuning_job(**tuning_request(
        name, max_jobs=6, parallel=2, RandomSeed=3, definition={"static": {"fail_above": "0.5"}}))
    job, _ = wait_tuning(sm, name)
    summaries = trials(sm, name)
    failed = [t for t in summaries if float(t["TunedHyperParameters"]["x"]) > 0.5]
    assert failed and len(failed) < 6, summaries  # the seed gives both kinds
    assert job["HyperParameterTuningJobStatus"] == "Completed"
    assert job["TrainingJobStatusCounters"]["NonRetryableError"] == len(failed)
    assert job["ObjectiveStatusCounters"]["Failed"] == len(failed)
    for trial in failed:
        assert trial["TrainingJobStatus"] == "Failed" and trial["ObjectiveStatus"] == "Failed"
        assert "is above 0.5" in trial["FailureReason"]
        assert "FinalHyperParameterTuningJobObjectiveMetric" not in trial
    assert float(job["BestTrainingJob"]["TunedHyperParameters"]["x"]) <= 0.5
    # Sorting by the objective leaves out the trials without one, as SageMaker does.
    by_objective = trials(sm, name, SortBy="FinalObjectiveMetricValue", SortOrder="Ascending")
    assert len(by_objective) == 6 - len(failed)
    assert by_objective[0]["TrainingJobName"] == job["BestTrainingJob"]["TrainingJobName"]
    assert trials(sm, name, StatusEquals="Failed") == sorted(failed, key=lambda t: t["TrainingJobName"])

    name = "all-fail"
    sm.create_hyper_parameter_tuning_job(**tuning_request(
        name, max_jobs=8, parallel=2, definition={"static": {"fail_above": "-1"}}))
    job, _ = wait_tuning(sm, name)
    assert job["HyperParameterTuningJobStatus"] == "Failed"
    assert job["FailureReason"].startswith("No training job succeeded after 5 attempts.")
    assert job["TrainingJobStatusCounters"]["NonRetryableError"] >= 5
    assert len(trials(sm, name)) < 8
    assert "BestTrainingJob" not in job


def test_target_objective_and_not_improving_end_the_tuning_job_early(sm: Any) -> None:
    name = "to-target"
    sm.create_hyper_parameter_tuning_job(**tuning_request(
        name, max_jobs=30, parallel=1, RandomSeed=11,
        TuningJobCompletionCriteria={"TargetObjectiveMetricValue": 0.36}))
    job, _ = wait_tuning(sm, name)
    assert job["HyperParameterTuningJobStatus"] == "Completed"
    summaries = trials(sm, name)
    assert len(summaries) < 30
    values = [t["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] for t in
              sorted(summaries, key=lambda t: t["TrainingJobName"])]
    # It ended with the first trial at the target, not before and not later.
    assert values[-1] <= 0.36 and all(v > 0.36 for v in values[:-1]), values

    name = "no-better"
    sm.create_hyper_parameter_tuning_job(**tuning_request(
        name, max_jobs=30, parallel=1, RandomSeed=5,
        TuningJobCompletionCriteria={"BestObjectiveNotImproving": {"MaxNumberOfTrainingJobsNotImproving": 3}}))
    job, _ = wait_tuning(sm, name)
    assert job["HyperParameterTuningJobStatus"] == "Completed"
    assert job["TuningJobCompletionDetails"]["NumberOfTrainingJobsObjectiveNotImproving"] == 3
    summaries = sorted(trials(sm, name), key=lambda t: t["TrainingJobName"])
    assert len(summaries) < 30
    values = [t["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] for t in summaries]
    best_before = min(values[:-3])
    assert all(v >= best_before * 0.99 for v in values[-3:]), values


def test_auto_early_stopping_stops_trials_worse_than_the_median(sm: Any) -> None:
    name = "early-stop"
    ranges = {**continuous_x(), "CategoricalParameterRanges": [{"Name": "optimizer", "Values": ["adam", "sgd"]}]}
    sm.create_hyper_parameter_tuning_job(**tuning_request(
        name, max_jobs=10, parallel=2, RandomSeed=1, ranges=ranges, TrainingJobEarlyStoppingType="Auto",
        definition={"static": {"epochs": "12", "pause": "0.5"}}))
    job, _ = wait_tuning(sm, name)
    assert job["HyperParameterTuningJobStatus"] == "Completed"
    summaries = trials(sm, name)
    stopped = [t for t in summaries if t["TrainingJobStatus"] == "Stopped"]
    assert job["TrainingJobStatusCounters"]["Stopped"] == len(stopped)
    # Stopped before their last epoch, with the objective they had reached (a trial judged right at its end may
    # have logged its last epoch before the stop landed).
    early = [t for t in stopped if t["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] > expected_loss(
        float(t["TunedHyperParameters"]["x"]), t["TunedHyperParameters"]["optimizer"], epochs=12)]
    assert early, summaries
    assert all(t["ObjectiveStatus"] == "Succeeded" for t in stopped)
    # Each was worse than the trials that ran to the end, at the end.
    finished = [t["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] for t in summaries
                if t["TrainingJobStatus"] == "Completed"]
    assert finished and all(t["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] > min(finished) for t in early)
    assert job["BestTrainingJob"]["TrainingJobStatus"] == "Completed"


def test_hyperband_stops_trials_at_its_rungs_and_at_max_resource(sm: Any) -> None:
    name = "hyperband"
    sm.create_hyper_parameter_tuning_job(**tuning_request(
        name, "Hyperband", max_jobs=9, parallel=3, RandomSeed=2,
        StrategyConfig={"HyperbandStrategyConfig": {"MinResource": 1, "MaxResource": 6}},
        definition={"static": {"epochs": "40", "pause": "1"}}))
    job, _ = wait_tuning(sm, name, timeout=300)
    assert job["HyperParameterTuningJobStatus"] == "Completed"
    summaries = trials(sm, name)
    assert len(summaries) == 9
    # No trial runs its 40 epochs: MaxResource (6) stops the best, the rungs stop the others sooner.
    epochs = {t["TrainingJobName"]: t["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] for t in summaries}
    x = {t["TrainingJobName"]: float(t["TunedHyperParameters"]["x"]) for t in summaries}
    reached = {n: round(1 / (v - (x[n] - 0.3) ** 2)) for n, v in epochs.items()}  # loss = (x-0.3)^2 + 1/epoch
    assert all(t["TrainingJobStatus"] == "Stopped" for t in summaries), summaries
    # MaxResource, plus what is logged while the decision is made (metric values reach the tuner within ~2 s).
    assert max(reached.values()) <= 9, reached
    assert min(reached.values()) < 6, reached  # some stopped at a lower rung


def test_tags_go_to_the_trials_and_several_definitions_share_the_search(sm: Any) -> None:
    name = "two-defs"
    request = tuning_request(name, max_jobs=6, parallel=2, RandomSeed=4)
    config = request["HyperParameterTuningJobConfig"]
    objective, ranges = config.pop("HyperParameterTuningJobObjective"), config.pop("ParameterRanges")
    base = request.pop("TrainingJobDefinition")
    low = {**base, "DefinitionName": "low", "TuningObjective": objective,
           "HyperParameterRanges": continuous_x("0", "0.5")}
    high = {**base, "DefinitionName": "high", "TuningObjective": objective,
            "HyperParameterRanges": continuous_x("0.5", "1")}
    assert ranges
    sm.create_hyper_parameter_tuning_job(**request, TrainingJobDefinitions=[low, high],
                                         Tags=[{"Key": "team", "Value": "search"}])
    job, _ = wait_tuning(sm, name)
    assert job["HyperParameterTuningJobStatus"] == "Completed"
    summaries = trials(sm, name)
    for trial in summaries:
        x = float(trial["TunedHyperParameters"]["x"])
        assert (0 <= x <= 0.5) if trial["TrainingJobDefinitionName"] == "low" else (0.5 <= x <= 1), trial
        tags = sm.list_tags(ResourceArn=trial["TrainingJobArn"])["Tags"]
        assert {"Key": "team", "Value": "search"} in tags
    assert sm.list_tags(ResourceArn=job["HyperParameterTuningJobArn"])["Tags"] == [{"Key": "team", "Value": "search"}]
    listed = sm.list_hyper_parameter_tuning_jobs(NameContains="two-", StatusEquals="Completed")
    assert [s["HyperParameterTuningJobName"] for s in listed["HyperParameterTuningJobSummaries"]] == [name]
    assert listed["HyperParameterTuningJobSummaries"][0]["TrainingJobStatusCounters"]["Completed"] == 6


def test_warm_start_seeds_the_search_and_reports_the_overall_best(sm: Any) -> None:
    parent = "warm-parent"
    sm.create_hyper_parameter_tuning_job(**tuning_request(parent, max_jobs=3, parallel=3, RandomSeed=8))
    parent_job, _ = wait_tuning(sm, parent)
    child = "warm-child"
    request = tuning_request(child, "Bayesian", max_jobs=2, parallel=1, RandomSeed=9)
    warm = {"ParentHyperParameterTuningJobs": [{"HyperParameterTuningJobName": parent}],
            "WarmStartType": "IdenticalDataAndAlgorithm"}
    sm.create_hyper_parameter_tuning_job(**request, WarmStartConfig=warm)
    job, _ = wait_tuning(sm, child)
    assert job["HyperParameterTuningJobStatus"] == "Completed"
    values = {t["TrainingJobName"]: t["FinalHyperParameterTuningJobObjectiveMetric"]["Value"]
              for name in (parent, child) for t in trials(sm, name)}
    best = min(values, key=values.get)
    assert job["OverallBestTrainingJob"]["TrainingJobName"] == best
    assert job["WarmStartConfig"] == warm
    # A parent still running, another objective, or other hyperparameter names are refused.
    bad = tuning_request("warm-bad", definition={"static": {"epochs": "3", "other": "1"}})
    with pytest.raises(ClientError) as error:
        sm.create_hyper_parameter_tuning_job(**bad, WarmStartConfig=warm)
    assert "The set of tunable plus static HyperParameter names is not the same" in error.value.response[
        "Error"]["Message"]


def test_a_killed_server_resumes_its_tuning_job_and_max_runtime_ends_it(
        tuning_server: SmlocalServer, sm: Any) -> None:
    name = "survives"
    # Trials far longer than the tuning job's MaxRuntimeInSeconds (the model's least, 120 s).
    sm.create_hyper_parameter_tuning_job(**tuning_request(
        name, max_jobs=4, parallel=2, RandomSeed=6, ResourceLimits={"MaxNumberOfTrainingJobs": 4,
                                                                   "MaxParallelTrainingJobs": 2,
                                                                   "MaxRuntimeInSeconds": 120},
        definition={"static": {"epochs": "1000", "pause": "1"}}))
    wait_until(lambda: sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
               ["TrainingJobStatusCounters"].get("InProgress") == 2, 60, "two running trials")
    before = {t["TrainingJobName"]: t["TunedHyperParameters"] for t in trials(sm, name)}
    assert len(before) == 2
    tuning_server.stop(kill=True)
    tuning_server.start()
    sm = tuning_server.client()
    # The same two trials, adopted and still running; none launched again, none lost.
    job = sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
    assert job["HyperParameterTuningJobStatus"] == "InProgress"
    after = {t["TrainingJobName"]: t["TunedHyperParameters"] for t in trials(sm, name)}
    assert after == before
    for trial in after:
        assert sm.describe_training_job(TrainingJobName=trial)["TrainingJobStatus"] == "InProgress"
    job, seen = wait_tuning(sm, name, timeout=180, poll=1)
    assert job["HyperParameterTuningJobStatus"] == "Completed"
    assert job["ConsumedResources"]["RuntimeInSeconds"] >= 120
    assert {t["TrainingJobName"] for t in trials(sm, name)} == set(before)
    assert job["TrainingJobStatusCounters"]["Stopped"] == 2
    assert all(v["counters"]["InProgress"] <= 2 for v in seen)


def test_convergence_ends_the_tuning_job_and_is_reported(sm: Any) -> None:
    name = "converges"
    sm.create_hyper_parameter_tuning_job(**tuning_request(
        name, max_jobs=60, parallel=4, RandomSeed=12, definition={"static": {"epochs": "1", "pause": "0"}},
        TuningJobCompletionCriteria={"ConvergenceDetected": {"CompleteOnConvergence": "Enabled"}}))
    job, _ = wait_tuning(sm, name)
    assert job["HyperParameterTuningJobStatus"] == "Completed"
    details = job["TuningJobCompletionDetails"]
    assert details["ConvergenceDetectedTime"] <= job["HyperParameterTuningEndTime"]
    assert details["NumberOfTrainingJobsObjectiveNotImproving"] >= 10
    assert len(trials(sm, name)) < 60


def test_trials_lost_to_the_platform_are_retryable_and_replaced(
        tuning_server: SmlocalServer, sm: Any, docker_engine: docker.DockerClient) -> None:
    name = "replaced"
    # 20 s of training: both trials must still be running when the server is killed, on a busy machine too.
    sm.create_hyper_parameter_tuning_job(**tuning_request(
        name, max_jobs=2, parallel=2, RandomSeed=13, definition={"static": {"epochs": "20", "pause": "1"}}))
    wait_until(lambda: sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
               ["TrainingJobStatusCounters"].get("InProgress") == 2, 60, "two running trials")
    lost = [t["TrainingJobName"] for t in trials(sm, name)]
    wait_until(lambda: all(sm.describe_training_job(TrainingJobName=t)["SecondaryStatus"] == "Training"
                           and docker_engine.containers.list(filters={"label": f"smlocal.job-name={t}"})
                           for t in lost), 60, "both trials' containers running")
    # The machine misbehaves: the server dies and the trials' containers go with it.
    tuning_server.stop(kill=True)
    for trial in lost:
        for container in docker_engine.containers.list(all=True, filters={"label": f"smlocal.job-name={trial}"}):
            container.remove(force=True)
    tuning_server.start()
    sm = tuning_server.client()
    job, _ = wait_tuning(sm, name)
    assert job["HyperParameterTuningJobStatus"] == "Completed"
    summaries = {t["TrainingJobName"]: t for t in trials(sm, name)}
    for trial in lost:
        assert summaries[trial]["FailureReason"].startswith("InternalServerError"), summaries[trial]
    # A platform failure does not spend the budget: two more trials ran in their place.
    assert len(summaries) == 4
    assert job["TrainingJobStatusCounters"] == {"Completed": 2, "InProgress": 0, "RetryableError": 2,
                                                "NonRetryableError": 0, "Stopped": 0}
    assert job["ObjectiveStatusCounters"] == {"Succeeded": 2, "Pending": 0, "Failed": 2}
