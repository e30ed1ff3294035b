"""Hyperparameter tuning through unmodified clients against smlocal, end to end: SDK v2's HyperparameterTuner (the
README's block), SDK v3's HyperparameterTuner in script mode (docs/tuning.md's block) and the aws CLI's steps
(docs/tuning.md), each run as written.

The SDKs run in their venvs under the no-egress guard, with the README's exports and nothing else telling them
about smlocal (tests/support/sdk.py). A short epilogue after each SDK block prints, as JSON, what the SDK itself
answers (the tuner's best trial, its analytics dataframe, an attached tuner), and the test holds it against
what the API says of the tuning job and its trials, which are real training jobs in real containers.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.support.awscli import aws
from tests.support.jobs import assert_completed_in_order
from tests.support.readme import code_blocks, localize, section
from tests.support.sdk_run import (
    DEFAULT_BUCKET,
    TUNING_DOC,
    SdkRun,
    run_guarded,
    tuning_snippet,
    upload_quickstart_data,
)
from tests.support.smlocal import SmlocalServer
from tests.support.tuning import most_at_once, trials

OBJECTIVE = "train:accuracy"
# What the blocks ask for: four trials, two at a time.
MAX_JOBS, PARALLEL = 4, 2
TUNED = "_tuning_objective_metric"

# After the README's v2 block: what the SDK answers, from the objects the block made.
V2_EPILOGUE = """
import json as _json
print("RESULT " + _json.dumps({
    "tuning_job": tuner.latest_tuning_job.name,
    "best": tuner.best_training_job(),
    "frame": _json.loads(tuner.analytics().dataframe().to_json(orient="records", double_precision=15)),
    "attached": {"best": earlier.best_training_job(), "image": earlier.estimator.image_uri,
                 "hyperparameters": earlier.estimator.hyperparameters(), "strategy": earlier.strategy,
                 "objective": [earlier.objective_metric_name, earlier.objective_type],
                 "limits": [earlier.max_jobs, earlier.max_parallel_jobs], "ranges": earlier.hyperparameter_ranges()},
}))
"""

# After docs/tuning.md's v3 block.
V3_EPILOGUE = """
import json as _json
print("RESULT " + _json.dumps({
    "tuning_job": tuner.latest_tuning_job.hyper_parameter_tuning_job_name,
    "best": tuner.best_training_job(),
    "frame": _json.loads(tuner.analytics().dataframe().to_json(orient="records", double_precision=15)),
}))
"""


@pytest.fixture(scope="module")
def server(module_smlocal_factory: Callable[..., SmlocalServer], test_images: docker.DockerClient) -> SmlocalServer:
    return module_smlocal_factory("--stop-grace-seconds", "2")


def sdk_result(run: SdkRun) -> dict[str, Any]:
    line = next(line for line in run.result.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def check_tuning_job(server: SmlocalServer, name: str, strategy: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The tuning job ended Completed with every trial it was asked for, at most PARALLEL at once, each trial a
    training job scored by the last value of its objective metric; its description and its trials."""
    sm = server.client()
    job = sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
    assert job["HyperParameterTuningJobStatus"] == "Completed", job.get("FailureReason")
    config = job["HyperParameterTuningJobConfig"]
    assert config["Strategy"] == strategy
    assert config["ResourceLimits"]["MaxNumberOfTrainingJobs"] == MAX_JOBS
    assert config["ResourceLimits"]["MaxParallelTrainingJobs"] == PARALLEL
    assert job["TrainingJobStatusCounters"]["Completed"] == MAX_JOBS
    assert job["ObjectiveStatusCounters"]["Succeeded"] == MAX_JOBS
    summaries = trials(sm, name)
    assert len(summaries) == MAX_JOBS
    assert most_at_once(summaries) <= PARALLEL
    for summary in summaries:
        assert summary["TrainingJobStatus"] == "Completed" and summary["ObjectiveStatus"] == "Succeeded"
        trial = sm.describe_training_job(TrainingJobName=summary["TrainingJobName"])
        assert trial["TuningJobArn"] == job["HyperParameterTuningJobArn"]
        assert trial["HyperParameters"][TUNED] == OBJECTIVE
        final = {m["MetricName"]: m["Value"] for m in trial["FinalMetricDataList"]}
        assert summary["FinalHyperParameterTuningJobObjectiveMetric"] == {
            "Type": "Maximize", "MetricName": OBJECTIVE, "Value": final[OBJECTIVE]}
    # The best trial is the one with the highest accuracy (several may share it).
    best = job["BestTrainingJob"]
    top = max(s["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] for s in summaries)
    assert best["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] == top
    return job, summaries


def check_walks(run: SdkRun, summaries: list[dict[str, Any]]) -> None:
    """Every trial the test saw while the SDK ran walked forward along the completed path to Completed."""
    names = {s["TrainingJobName"] for s in summaries}
    assert {name for name, _ in run.statuses} == names
    for name in names:
        assert_completed_in_order(run.statuses_of(name))


def check_frame(frame: list[dict[str, Any]], summaries: list[dict[str, Any]]) -> None:
    """analytics().dataframe(): one row per trial, its tuned values and objective as the API lists them."""
    rows = {row["TrainingJobName"]: row for row in frame}
    assert len(frame) == len(rows) == len(summaries)
    for summary in summaries:
        row = rows[summary["TrainingJobName"]]
        assert row["FinalObjectiveValue"] == summary["FinalHyperParameterTuningJobObjectiveMetric"]["Value"]
        assert row["TrainingJobStatus"] == "Completed"
        for name, value in summary["TunedHyperParameters"].items():
            # The dataframe holds numbers as numbers (the SDK converts what it can).
            assert row[name] == (value if isinstance(row[name], str) else pytest.approx(float(value))), name
        assert row["TrainingElapsedTimeSeconds"] > 0


def test_readme_v2_tuner_tunes_reports_the_best_trial_and_attaches(
        server: SmlocalServer, tmp_path: Path, unique_name: Callable[[str], str]) -> None:
    bucket = unique_name("tune2")
    upload_quickstart_data(server, bucket, tmp_path)
    run = run_guarded(2, tuning_snippet(2) + V2_EPILOGUE, server, bucket, tmp_path)
    assert run.result.returncode == 0, run.output[-6000:] + server.log()
    assert run.guard.report() == []

    result = sdk_result(run)
    job, summaries = check_tuning_job(server, result["tuning_job"], "Bayesian")
    check_walks(run, summaries)
    for summary in summaries:
        tuned = summary["TunedHyperParameters"]
        assert set(tuned) == {"alpha", "model"}
        assert 0.01 <= float(tuned["alpha"]) <= 100 and tuned["model"] in ("logistic", "ridge")
        assert summary["TrainingJobName"] in run.result.stdout  # the block printed the dataframe
    # best_training_job() is the API's BestTrainingJob.
    assert result["best"] == job["BestTrainingJob"]["TrainingJobName"]
    assert f"best: {result['best']}" in run.result.stdout
    check_frame(result["frame"], summaries)

    # v2 sends the instance as HyperParameterTuningResourceConfig; the description shows it as ResourceConfig
    # too, which attach() rebuilds the estimator from.
    definition = job["TrainingJobDefinition"]
    assert definition["ResourceConfig"] == definition["HyperParameterTuningResourceConfig"] == {
        "InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 30}
    attached = result["attached"]
    assert attached["best"] == result["best"]
    assert attached["image"] == "smlocal-example/sklearn:1"
    assert attached["strategy"] == "Bayesian" and attached["limits"] == [MAX_JOBS, PARALLEL]
    assert attached["objective"] == [OBJECTIVE, "Maximize"]
    assert attached["hyperparameters"] == {"max_iter": "200"}  # attach() drops _tuning_objective_metric
    assert [r["Name"] for r in attached["ranges"]["ContinuousParameterRanges"]] == ["alpha"]
    assert attached["ranges"]["CategoricalParameterRanges"][0]["Values"] == ["logistic", "ridge"]
    # best_estimator().model_data: the best trial's model, where SageMaker puts it.
    best = result["best"]
    model = f"s3://{bucket}/output/{best}/output/model.tar.gz"
    assert model in run.result.stdout.splitlines()
    assert server.client().describe_training_job(TrainingJobName=best)["ModelArtifacts"]["S3ModelArtifacts"] == model
    server.client("s3").head_object(Bucket=bucket, Key=f"output/{best}/output/model.tar.gz")


def test_docs_v3_tuner_tunes_a_script_mode_trainer(
        server: SmlocalServer, tmp_path: Path, unique_name: Callable[[str], str]) -> None:
    bucket = unique_name("tune3")
    upload_quickstart_data(server, bucket, tmp_path)
    run = run_guarded(3, tuning_snippet(3) + V3_EPILOGUE, server, bucket, tmp_path)
    assert run.result.returncode == 0, run.output[-6000:] + server.log()
    assert run.guard.report() == []

    result = sdk_result(run)
    job, summaries = check_tuning_job(server, result["tuning_job"], "Random")
    check_walks(run, summaries)
    assert result["best"] == job["BestTrainingJob"]["TrainingJobName"]
    assert f"best: {result['best']}" in run.result.stdout
    check_frame(result["frame"], summaries)

    # Script mode without an entrypoint: v3 names the packed source_dir in the hyperparameters and sends its
    # sm_drivers channel along; the training toolkit in the image downloads train.py and runs it.
    sm = server.client()
    s3 = server.client("s3")
    for summary in summaries:
        assert summary["TunedHyperParameters"]["max_iter"] in ("20", "200")
        trial = sm.describe_training_job(TrainingJobName=summary["TrainingJobName"])
        hyperparameters = trial["HyperParameters"]
        assert hyperparameters["sagemaker_program"] == "train.py"
        # The source goes to the SDK's default bucket (`sagemaker-<region>-<account>`, from smlocal's STS).
        source = hyperparameters["sagemaker_submit_directory"]
        assert source.startswith(f"s3://{DEFAULT_BUCKET}/") and source.endswith("/sourcedir.tar.gz")
        s3.head_object(Bucket=DEFAULT_BUCKET, Key=source.removeprefix(f"s3://{DEFAULT_BUCKET}/"))
        assert [c["ChannelName"] for c in trial["InputDataConfig"]] == ["train", "sm_drivers"]
        assert trial["ModelArtifacts"]["S3ModelArtifacts"].startswith(f"s3://{DEFAULT_BUCKET}/")
    events = server.client("logs").filter_log_events(
        logGroupName="/aws/sagemaker/TrainingJobs", logStreamNamePrefix=f"{result['best']}/",
        filterPattern='"train_accuracy="')["events"]
    best_value = job["BestTrainingJob"]["FinalHyperParameterTuningJobObjectiveMetric"]["Value"]
    assert [e["message"].strip() for e in events] == [f"train_accuracy={best_value:.4f}"]


def cli_script(tmp: Path, server: SmlocalServer, bucket: str) -> str:
    """The quick-start's exports, then docs/tuning.md's aws CLI block, pointed at this test's server and bucket."""
    quick_start = max(code_blocks(section("Quick-start (workshop)"), "sh"), key=len)
    exports = [line for line in quick_start.splitlines() if line.startswith("export ")]
    [steps] = code_blocks(section("From the aws CLI", doc=TUNING_DOC), "sh")
    script = "\n".join([*exports, steps])
    return localize(script, api=server.endpoint, s3=server.s3_endpoint, bucket=bucket, tmp=tmp)


def test_docs_aws_cli_steps_create_describe_and_list_the_trials(
        server: SmlocalServer, tmp_path: Path, unique_name: Callable[[str], str]) -> None:
    bucket = unique_name("tune-cli")
    upload_quickstart_data(server, bucket, tmp_path)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "AWS_PAGER": ""}
    for var in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        env.pop(var, None)
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", cli_script(tmp_path, server, bucket)],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{server.log()}"

    # The aws CLI's answers, as JSON: CreateHyperParameterTuningJob's, the describe's summary, the trials.
    created, summary, listed = (json.loads(m) for m in re.findall(r"^[{\[]\n.*?^[}\]]$", result.stdout,
                                                                   re.S | re.M))
    name = "sklearn-tuning-1"
    assert created["HyperParameterTuningJobArn"].endswith(f":hyper-parameter-tuning-job/{name}")
    job, summaries = check_tuning_job(server, name, "Random")
    assert summary["status"] == "Completed"
    assert summary["trials"] == job["TrainingJobStatusCounters"]
    assert summary["best"] == job["BestTrainingJob"]["TrainingJobName"]
    accuracies = [row["accuracy"] for row in listed]
    assert len(listed) == MAX_JOBS and accuracies == sorted(accuracies, reverse=True)
    assert summary["accuracy"] == accuracies[0]
    by_name = {s["TrainingJobName"]: s for s in summaries}
    for row in listed:
        assert row["alpha"] == by_name[row["job"]]["TunedHyperParameters"]["alpha"]
        assert row["model"] in ("logistic", "ridge")
    # The CLI pages the trials with NextToken when asked for one at a time.
    paged = json.loads(aws(server, "sagemaker", "list-training-jobs-for-hyper-parameter-tuning-job",
                           "--hyper-parameter-tuning-job-name", name, "--page-size", "1").stdout)
    assert sorted(s["TrainingJobName"] for s in paged["TrainingJobSummaries"]) == sorted(by_name)
    # The trials are in the training job list too.
    listed_jobs = json.loads(aws(server, "sagemaker", "list-training-jobs", "--name-contains", name).stdout)
    assert sorted(s["TrainingJobName"] for s in listed_jobs["TrainingJobSummaries"]) == sorted(by_name)
