"""`serve --backend simulated`: jobs that run through the real runner with no container engine at all.

Every server here has DOCKER_HOST pointing at a tripwire: a loopback listener of this module that answers
nothing and counts who connects. A simulated server must never connect to it. Jobs are scripted by their
smlocal:* tags or a rules file (smlocal.core.simulation); what the runner does around the "containers" is
the real code, and each test looks at it through real clients: boto3 over HTTP, the store's S3 API.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.support.jobs import assert_completed_in_order, job_request, wait_for_status, wait_recording
from tests.support.runner_jobs import INPUT_BUCKET, OUTPUT_BUCKET, log_messages, s3_client, tar_members, wait_until
from tests.support.smlocal import SmlocalServer

IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/team/trainer:1"
FINAL = {"Completed", "Failed", "Stopped"}
NAMESPACE = "/aws/sagemaker/TrainingJobs"
# The default script's lines (smlocal.core.simulation.DEFAULT_LOG): five epochs, loss going down.
DEFAULT_LOSSES = [0.6931, 0.5127, 0.3984, 0.3216, 0.2759]
SIGTERM_LINE = "SIGTERM received: saving the model to /opt/ml/model and exiting"


class Tripwire:
    """A TCP listener standing where a Docker engine would be: it accepts, counts and hangs up."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port = self._sock.getsockname()[1]
        self.connections = 0
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def docker_host(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._closed = True
        self._sock.close()


@pytest.fixture(scope="module")
def tripwire() -> Iterator[Tripwire]:
    wire = Tripwire()
    yield wire
    wire.close()


def _server(data_dir: Path, tripwire: Tripwire, *args: str) -> SmlocalServer:
    """A simulated server on its embedded store (nothing of the test session's S3 server, which asks Docker
    for an address to bind)."""
    return SmlocalServer(data_dir, None, ["--backend", "simulated", *args], {"DOCKER_HOST": tripwire.docker_host})


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory, tripwire: Tripwire) -> Iterator[SmlocalServer]:
    server = _server(tmp_path_factory.mktemp("sim"), tripwire).start()
    yield server
    server.stop()


@pytest.fixture()
def start_sim(tmp_path_factory: pytest.TempPathFactory, tripwire: Tripwire
              ) -> Iterator[Callable[..., SmlocalServer]]:
    """Servers of one test (their own flags), stopped when it ends."""
    started: list[SmlocalServer] = []

    def start(*args: str) -> SmlocalServer:
        server = _server(tmp_path_factory.mktemp("sim"), tripwire, *args)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture()
def sm(sim: SmlocalServer) -> Any:
    return sim.client()


@pytest.fixture()
def s3(sim: SmlocalServer) -> Any:
    return s3_client(sim)


def sim_job(name: str, tags: dict[str, str] | None = None, **overrides: Any) -> dict[str, Any]:
    request = job_request(name, IMAGE, **overrides)
    if tags:
        request["Tags"] = [{"Key": k, "Value": v} for k, v in tags.items()]
    return request


def metric_algorithm(*definitions: tuple[str, str]) -> dict[str, Any]:
    return {"TrainingImage": IMAGE, "TrainingInputMode": "File",
            "MetricDefinitions": [{"Name": n, "Regex": r} for n, r in definitions]}


def model_json(s3: Any, name: str) -> dict[str, Any]:
    members = tar_members(s3, f"models/{name}/output/model.tar.gz")
    assert set(members) == {"model.json"}, members
    return json.loads(members["model.json"])


def secondary_statuses(job: dict[str, Any]) -> list[str]:
    return [t["Status"] for t in job["SecondaryStatusTransitions"]]


def health(server: SmlocalServer) -> dict[str, Any]:
    with urllib.request.urlopen(server.endpoint + "/health", timeout=10) as response:
        return json.load(response)


def _records_of(server: SmlocalServer, name: str) -> list[Path]:
    """The simulated containers the server keeps for one job (runner.simulated_backend's records)."""
    folder = server.data_dir / "simulated" / "containers"
    return [p for p in folder.glob("*.json") if json.loads(p.read_text())["labels"].get("smlocal.job-name") == name]


def wait_for_line(server: SmlocalServer, name: str, count: int = 1) -> None:
    """Until the job's algo-1 stream holds `count` lines of the algorithm (it is running, not just created)."""
    wait_until(lambda: len(log_messages(server, name)) >= count, 30, f"{count} log line(s) of {name}")


# ---- the lifecycle, the inputs, the model ---------------------------------------------------------------------


def test_a_job_walks_every_status_and_leaves_a_real_model_without_an_engine(
        sim: SmlocalServer, sm: Any, s3: Any, tripwire: Tripwire, unique_name: Callable[[str], str]) -> None:
    name = unique_name("walk")
    s3.put_object(Bucket=INPUT_BUCKET, Key=f"{name}/train/rows.csv", Body=b"0.1,0\n0.9,1\n")
    sm.create_training_job(**sim_job(name, InputDataConfig=[{"ChannelName": "train", "DataSource": {"S3DataSource": {
        "S3DataType": "S3Prefix", "S3Uri": f"s3://{INPUT_BUCKET}/{name}/train/"}}}]))

    job, seen = wait_recording(sm, name, FINAL, timeout=60)

    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    assert_completed_in_order(seen)
    assert [(t["Status"], t["StatusMessage"]) for t in job["SecondaryStatusTransitions"]] == [
        ("Starting", "Preparing the instances for training"),
        ("Downloading", "Downloading input data"),
        ("Training", "Training image download completed. Training in progress."),
        ("Uploading", "Uploading generated training model"),
        ("Completed", "Training job completed")]
    assert job["ModelArtifacts"]["S3ModelArtifacts"] == f"s3://{OUTPUT_BUCKET}/models/{name}/output/model.tar.gz"
    model = model_json(s3, name)
    assert model["simulated"] is True and model["job"] == name and model["host"] == "algo-1"
    assert model["image"] == IMAGE and model["saved_because"] == "Completed"
    assert [f"loss={loss:.4f}" in line for line, loss in zip(log_messages(sim, name), DEFAULT_LOSSES,
                                                                strict=True)] == [True] * 5
    # Cleaned up as with Docker: no "container" record, no job folder left.
    wait_until(lambda: not _records_of(sim, name) and not list((sim.data_dir / "jobs").glob(f"{name}.*")), 30,
               "cleanup")
    report = health(sim)["runner"]
    assert report["engine"]["name"] == "simulated" and report["engine"]["reachable"] is True
    assert tripwire.connections == 0  # nothing asked the "engine" DOCKER_HOST names


def test_a_missing_input_prefix_fails_as_on_sagemaker(sm: Any, s3: Any, unique_name: Callable[[str], str]) -> None:
    name = unique_name("noinput")
    uri = f"s3://{INPUT_BUCKET}/{name}/nothing-here/"
    sm.create_training_job(**sim_job(name, InputDataConfig=[{"ChannelName": "train", "DataSource": {"S3DataSource": {
        "S3DataType": "S3Prefix", "S3Uri": uri}}}]))

    job = wait_for_status(sm, name, FINAL, timeout=60)

    assert job["TrainingJobStatus"] == "Failed"
    assert job["FailureReason"].startswith(
        f'ClientError: Data download failed: No S3 objects found under S3 URL "{uri}" given in input data source.')
    assert "Training" not in secondary_statuses(job)


# ---- scripted outcomes -------------------------------------------------------------------------------------


def test_failed_outcome_is_an_algorithm_error_with_the_scripted_reason(
        sim: SmlocalServer, sm: Any, s3: Any, unique_name: Callable[[str], str]) -> None:
    name = unique_name("failed")
    sm.create_training_job(**sim_job(name, {"smlocal:outcome": "Failed:CUDA out of memory"}))

    job = wait_for_status(sm, name, FINAL, timeout=60)

    assert job["TrainingJobStatus"] == "Failed" and job["SecondaryStatus"] == "Failed"
    # runner.failure: the failure file's text, the exit code, then the log's last lines.
    assert job["FailureReason"].startswith("AlgorithmError: CUDA out of memory, exit code: 1\nLast log lines:\n")
    assert job["FailureReason"].endswith("ERROR: CUDA out of memory")
    assert secondary_statuses(job)[-2:] == ["Training", "Failed"]
    assert log_messages(sim, name)[-1] == "ERROR: CUDA out of memory"
    # A failed algorithm saved no model, so none was uploaded.
    assert s3.list_objects_v2(Bucket=OUTPUT_BUCKET, Prefix=f"models/{name}/").get("Contents", []) == []


def test_max_runtime_exceeded_outcome_stops_the_job_as_its_clock_would(
        sm: Any, s3: Any, unique_name: Callable[[str], str]) -> None:
    name = unique_name("maxrt")
    sm.create_training_job(**sim_job(name, {"smlocal:outcome": "MaxRuntimeExceeded",
                                            "smlocal:training-seconds": "1"}))

    job, seen = wait_recording(sm, name, FINAL, timeout=60)

    assert (job["TrainingJobStatus"], job["SecondaryStatus"]) == ("Stopped", "MaxRuntimeExceeded")
    assert seen[-1] == "Stopped/MaxRuntimeExceeded" and "Completed/Completed" not in seen
    assert secondary_statuses(job)[-2:] == ["Stopping", "MaxRuntimeExceeded"]
    # SIGTERM, then the model saved within the grace, uploaded as for any stopped job.
    assert model_json(s3, name)["saved_because"] == "SIGTERM"


def test_the_jobs_own_max_runtime_stops_a_long_simulated_training(
        sm: Any, s3: Any, unique_name: Callable[[str], str]) -> None:
    name = unique_name("realclock")
    sm.create_training_job(**sim_job(name, {"smlocal:training-seconds": "600"},
                                     StoppingCondition={"MaxRuntimeInSeconds": 2}))

    job = wait_for_status(sm, name, FINAL, timeout=60)

    assert (job["TrainingJobStatus"], job["SecondaryStatus"]) == ("Stopped", "MaxRuntimeExceeded")
    assert model_json(s3, name)["saved_because"] == "SIGTERM"


def test_interrupted_outcome_interrupts_a_spot_job_once_and_it_resumes(
        sim: SmlocalServer, sm: Any, s3: Any, unique_name: Callable[[str], str]) -> None:
    name = unique_name("spot")
    sm.create_training_job(**sim_job(
        name, {"smlocal:outcome": "Interrupted", "smlocal:training-seconds": "2"}, EnableManagedSpotTraining=True,
        StoppingCondition={"MaxRuntimeInSeconds": 600, "MaxWaitTimeInSeconds": 1200},
        CheckpointConfig={"S3Uri": f"s3://{OUTPUT_BUCKET}/checkpoints/{name}/"}))

    job = wait_for_status(sm, name, FINAL, timeout=90)

    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    statuses = secondary_statuses(job)
    assert statuses.count("Interrupted") == 1
    after = statuses[statuses.index("Interrupted"):]
    assert after[:2] == ["Interrupted", "Starting"] and after[-3:] == ["Training", "Uploading", "Completed"]
    restart = job["SecondaryStatusTransitions"][statuses.index("Interrupted") + 1]["StatusMessage"]
    assert restart == "Restarting the training job after spot interruption 1"
    assert job["BillableTimeInSeconds"] <= job["TrainingTimeInSeconds"]
    # The interrupted run saved its model on SIGTERM; the second run's completed one is what was uploaded.
    assert model_json(s3, name)["saved_because"] == "Completed"
    # algo-1's two streams (one per run): the first run got SIGTERM, the second printed every epoch.
    messages = log_messages(sim, name)
    assert messages.count(SIGTERM_LINE) == 1 and messages[-1].startswith("epoch 5/5")


def test_a_stop_during_a_long_training_saves_the_model_in_the_grace(
        sim: SmlocalServer, sm: Any, s3: Any, unique_name: Callable[[str], str]) -> None:
    name = unique_name("stop")
    sm.create_training_job(**sim_job(name, {"smlocal:training-seconds": "3600"}))
    wait_for_status(sm, name, {"InProgress"})
    wait_for_line(sim, name)

    sm.stop_training_job(TrainingJobName=name)
    job = wait_for_status(sm, name, FINAL, timeout=60)

    assert (job["TrainingJobStatus"], job["SecondaryStatus"]) == ("Stopped", "Stopped")
    assert log_messages(sim, name)[-1] == SIGTERM_LINE
    model = model_json(s3, name)
    assert model["saved_because"] == "SIGTERM" and model["lines_printed"] >= 1


# ---- metrics ------------------------------------------------------------------------------------------------


def test_metrics_of_scripted_lines_reach_final_metrics_and_cloudwatch(
        sim: SmlocalServer, sm: Any, unique_name: Callable[[str], str]) -> None:
    name = unique_name("metrics")
    lines = "step 1 train_loss=0.9 acc=0.5 // step 2 train_loss=0.5 acc=0.7 // step 3 train_loss=0.25 acc=0.875"
    sm.create_training_job(**sim_job(
        name, {"smlocal:log": lines, "smlocal:training-seconds": "1.5"},
        AlgorithmSpecification=metric_algorithm(("train:loss", r"train_loss=([0-9.]+)"), ("acc", r"acc=([0-9.]+)"))))

    job = wait_for_status(sm, name, FINAL, timeout=60)

    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    assert log_messages(sim, name) == ["step 1 train_loss=0.9 acc=0.5", "step 2 train_loss=0.5 acc=0.7",
                                       "step 3 train_loss=0.25 acc=0.875"]
    assert {m["MetricName"]: m["Value"] for m in job["FinalMetricDataList"]} == {"train:loss": 0.25, "acc": 0.875}
    cloudwatch = sim.client("cloudwatch")
    window = {"StartTime": job["TrainingStartTime"] - dt.timedelta(minutes=1),
              "EndTime": job["TrainingEndTime"] + dt.timedelta(minutes=1)}
    points = cloudwatch.get_metric_statistics(
        Namespace=NAMESPACE, MetricName="train:loss", Dimensions=[{"Name": "TrainingJobName", "Value": name}],
        Period=3600, Statistics=["SampleCount", "Minimum", "Maximum"], **window)["Datapoints"]
    assert sum(p["SampleCount"] for p in points) == 3
    assert min(p["Minimum"] for p in points) == 0.25 and max(p["Maximum"] for p in points) == 0.9
    # The console's job page and its chart feed show them too.
    assert name in _get(sim, f"/console/jobs/{name}")
    feed = json.loads(_get(sim, f"/console/api/jobs/{name}/metrics"))
    loss = next(m for m in feed["metrics"] if m["name"] == "train:loss")
    assert [s["host"] for s in loss["series"]] == ["algo-1"]
    assert loss["series"][0]["points"] and all(0.25 <= v <= 0.9 for _, v in loss["series"][0]["points"])


def _get(server: SmlocalServer, path: str) -> str:
    with urllib.request.urlopen(server.endpoint + path, timeout=10) as response:
        assert response.status == 200
        return response.read().decode()


# ---- a restart ---------------------------------------------------------------------------------------------


def test_a_restart_during_a_long_training_adopts_the_simulated_containers(
        start_sim: Callable[..., SmlocalServer], unique_name: Callable[[str], str]) -> None:
    """One job's Training ends while the server is down, another's goes on after the restart: both are
    adopted, as Docker containers are, and complete with every line logged once."""
    server = start_sim()
    s3, sm = s3_client(server), server.client()
    ended, running = unique_name("ended"), unique_name("running")
    sm.create_training_job(**sim_job(ended, {"smlocal:training-seconds": "3"}))
    sm.create_training_job(**sim_job(running, {"smlocal:training-seconds": "12"}))
    for name in (ended, running):
        wait_for_line(server, name)
    started = {name: sm.describe_training_job(TrainingJobName=name)["TrainingStartTime"] for name in (ended, running)}

    server.stop(kill=True)
    time.sleep(3.5)  # past the first job's end: its "container" exited while nobody watched
    server.start()

    for name in (ended, running):
        job = wait_for_status(sm, name, FINAL, timeout=60)
        assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
        assert job["TrainingStartTime"] == started[name]
        assert "Starting" not in secondary_statuses(job)[1:]  # adopted, never run again
        assert [float(m.split("loss=")[1].split()[0]) for m in log_messages(server, name)] == DEFAULT_LOSSES
        assert model_json(s3, name)["saved_because"] == "Completed"


def test_a_job_whose_simulated_container_vanished_during_a_restart_fails_as_with_docker(
        start_sim: Callable[..., SmlocalServer], unique_name: Callable[[str], str]) -> None:
    server = start_sim()
    sm = server.client()
    s3_client(server)
    name = unique_name("vanished")
    sm.create_training_job(**sim_job(name, {"smlocal:training-seconds": "3600"}))
    wait_for_line(server, name)

    server.stop(kill=True)
    records = list((server.data_dir / "simulated" / "containers").glob("*.json"))
    assert records  # the "engine" kept the container: here it is removed behind smlocal's back
    for record in records:
        record.unlink()
    server.start()

    job = wait_for_status(sm, name, FINAL, timeout=60)
    assert job["TrainingJobStatus"] == "Failed"
    assert job["FailureReason"] == "InternalServerError: the training job was interrupted when smlocal restarted"


# ---- validation and rules ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("tags", "named", "forms"), [
    ({"smlocal:outcome": "Exploded"}, "smlocal:outcome",
     "Completed, Failed:<reason>, MaxRuntimeExceeded or Interrupted"),
    ({"smlocal:outcome": "Interrupted"}, "smlocal:outcome", "EnableManagedSpotTraining"),
    ({"smlocal:training-seconds": "soon"}, "smlocal:training-seconds", "a number of seconds"),
    ({"smlocal:training-seconds": "-1"}, "smlocal:training-seconds", "from 0 to"),
    ({"smlocal:create-error": "Nope:2"}, "smlocal:create-error", "ResourceLimitExceeded | CapacityError"),
    ({"smlocal:create-error": "ThrottlingException:0"}, "smlocal:create-error", "at least 1"),
    ({"smlocal:outcomes": "Completed"}, "smlocal:outcomes", "smlocal:outcome, smlocal:training-seconds"),
])
def test_a_bad_smlocal_tag_is_a_validation_exception_naming_it(
        sm: Any, unique_name: Callable[[str], str], tags: dict[str, str], named: str, forms: str) -> None:
    name = unique_name("badtag")
    with pytest.raises(ClientError) as caught:
        sm.create_training_job(**sim_job(name, tags))
    error = caught.value.response["Error"]
    assert error["Code"] == "ValidationException"
    assert named in error["Message"] and forms in error["Message"], error["Message"]
    with pytest.raises(ClientError) as missing:
        sm.describe_training_job(TrainingJobName=name)
    assert missing.value.response["Error"]["Code"] == "ValidationException"  # never created


RULES_YAML = """\
rules:
  - match: {name: "etl-*"}
    outcome: "Failed:rule for etl jobs"
    training-seconds: 0
  - match: {image: "*/slow-trainer:*"}
    training-seconds: 0.2
    log:
      - "slow epoch 1 loss=1.5"
      - "slow epoch 2 loss=0.5"
  - match: {tags: {team: fraud}}
    outcome: "Failed:fraud team's rule"
"""


@pytest.mark.parametrize("kind", ["yaml", "json"])
def test_a_rules_file_scripts_jobs_by_name_image_and_tag(
        start_sim: Callable[..., SmlocalServer], tmp_path: Path, unique_name: Callable[[str], str],
        kind: str) -> None:
    import yaml

    rules = tmp_path / f"rules.{kind}"
    rules.write_text(RULES_YAML if kind == "yaml" else json.dumps(yaml.safe_load(RULES_YAML)))
    server = start_sim("--simulate-rules", str(rules))
    sm = server.client()
    s3_client(server)
    by_name, overridden = unique_name("etl"), unique_name("etl")
    by_image, by_tag, no_rule = unique_name("img"), unique_name("tag"), unique_name("none")
    sm.create_training_job(**sim_job(by_name))
    sm.create_training_job(**sim_job(overridden, {"smlocal:outcome": "Completed"}))  # a tag beats the rule
    sm.create_training_job(**job_request(by_image, "registry.local/ml/slow-trainer:7"))
    sm.create_training_job(**sim_job(by_tag, {"team": "fraud"}))
    sm.create_training_job(**sim_job(no_rule, {"team": "search"}))

    ends = {name: wait_for_status(sm, name, FINAL, timeout=60)
            for name in (by_name, overridden, by_image, by_tag, no_rule)}

    assert ends[by_name]["FailureReason"].startswith("AlgorithmError: rule for etl jobs, exit code: 1")
    assert ends[overridden]["TrainingJobStatus"] == "Completed"
    assert ends[by_image]["TrainingJobStatus"] == "Completed"
    assert log_messages(server, by_image) == ["slow epoch 1 loss=1.5", "slow epoch 2 loss=0.5"]
    assert ends[by_tag]["FailureReason"].startswith("AlgorithmError: fraud team's rule, exit code: 1")
    assert ends[no_rule]["TrainingJobStatus"] == "Completed"
    assert len(log_messages(server, no_rule)) == len(DEFAULT_LOSSES)


@pytest.mark.parametrize(("content", "says"), [
    ('{"rules": [{"match": {"name": "x-*"}, "outcome": "Sideways"}]}', "rules[0].outcome"),
    ("rules:\n  - training-seconds: forever\n", "rules[0].training-seconds"),
    ('{"rules": [{"colour": "red"}]}', "unknown key(s) colour"),
    ("{not json", "not valid JSON"),
])
def test_a_bad_rules_file_stops_serve_with_a_clear_message(
        tmp_path: Path, tripwire: Tripwire, content: str, says: str) -> None:
    rules = tmp_path / "rules.json"
    rules.write_text(content)
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", "--backend", "simulated", "--simulate-rules", str(rules),
         "--data-dir", str(tmp_path / "data"), "--port", "9"],
        capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[1],
        env={"DOCKER_HOST": tripwire.docker_host, "COLUMNS": "250", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2, done.stdout + done.stderr
    assert "--simulate-rules" in done.stdout and str(rules) in done.stdout and says in done.stdout, done.stdout


def test_a_tuning_job_runs_its_trials_as_scripted_jobs(
        start_sim: Callable[..., SmlocalServer], tmp_path: Path) -> None:
    """Orchestration code that tunes can be tested without an engine: the tuning job's smlocal:* tags go to its
    trials, and a rule can single one trial out by its name."""
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"rules": [{"match": {"name": "sim-tune-002-*"}, "outcome": "Failed:diverged"}]}))
    server = start_sim("--simulate-rules", str(rules))
    sm = server.client()
    s3_client(server)
    definition = {key: value for key, value in job_request("unused", IMAGE).items()
                  if key not in ("TrainingJobName", "AlgorithmSpecification")}
    algorithm = metric_algorithm(("loss", r"loss=(\S+)"))
    sm.create_hyper_parameter_tuning_job(
        HyperParameterTuningJobName="sim-tune",
        HyperParameterTuningJobConfig={
            "Strategy": "Random", "HyperParameterTuningJobObjective": {"Type": "Minimize", "MetricName": "loss"},
            "ResourceLimits": {"MaxNumberOfTrainingJobs": 4, "MaxParallelTrainingJobs": 2},
            "ParameterRanges": {"ContinuousParameterRanges": [{"Name": "lr", "MinValue": "0.001", "MaxValue": "0.1"}]}},
        TrainingJobDefinition={**definition, "AlgorithmSpecification": algorithm},
        Tags=[{"Key": "smlocal:log", "Value": "epoch 1 loss=0.4 // epoch 2 loss=0.25"},
              {"Key": "smlocal:training-seconds", "Value": "0"}])
    job = wait_until(lambda: (d := sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName="sim-tune"))[
        "HyperParameterTuningJobStatus"] != "InProgress" and d, 60, "the tuning job's end")
    assert job["HyperParameterTuningJobStatus"] == "Completed"
    assert job["TrainingJobStatusCounters"] == {"Completed": 3, "InProgress": 0, "RetryableError": 0,
                                                "NonRetryableError": 1, "Stopped": 0}
    summaries = sm.list_training_jobs_for_hyper_parameter_tuning_job(HyperParameterTuningJobName="sim-tune")[
        "TrainingJobSummaries"]
    for summary in summaries:
        if summary["TrainingJobName"].startswith("sim-tune-002-"):
            assert summary["FailureReason"].startswith("AlgorithmError: diverged")
        else:
            assert summary["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] == 0.25
    with pytest.raises(ClientError) as error:  # a bad scripting tag is refused at once, not in each trial
        sm.create_hyper_parameter_tuning_job(
            HyperParameterTuningJobName="sim-bad", HyperParameterTuningJobConfig={
                "Strategy": "Random", "HyperParameterTuningJobObjective": {"Type": "Minimize", "MetricName": "loss"},
                "ResourceLimits": {"MaxNumberOfTrainingJobs": 1, "MaxParallelTrainingJobs": 1},
                "ParameterRanges": {"ContinuousParameterRanges": [{"Name": "lr", "MinValue": "0", "MaxValue": "1"}]}},
            TrainingJobDefinition={**definition, "AlgorithmSpecification": algorithm},
            Tags=[{"Key": "smlocal:outcome", "Value": "Sideways"}])
    assert "smlocal:outcome" in error.value.response["Error"]["Message"]


def test_no_simulated_server_of_this_module_asked_an_engine_anything(tripwire: Tripwire) -> None:
    """Last in the module: every server above (restarts and refused rules files included) ran without once
    connecting to the DOCKER_HOST they were given."""
    assert tripwire.connections == 0
