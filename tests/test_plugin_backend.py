"""The pytest plugin's backend (`--smlocal-backend docker|simulated`), used the way a user uses it: a tiny suite run
by a separate pytest that loads the plugin through smlocal's `pytest11` entry point, with DOCKER_HOST pointing at
a port nothing listens on, so no engine answers.

Asked for Docker (the default) and finding no engine, the plugin runs the jobs on the simulated backend and says
so, in a pytest warning and in the terminal summary, instead of failing the session; asked for `simulated` it
needs no engine and says nothing; `--smlocal-jobs docker` still insists on one.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.support.readme import REPO

NO_ENGINE = "tcp://127.0.0.1:9"  # the discard port: nothing listens there, a connection is refused at once
SUITE = '''
import boto3


def test_a_job_runs_to_completed_without_an_engine(smlocal, smlocal_s3):
    smlocal_s3.create_bucket(Bucket="models")
    # The code under test: plain boto3, pointed at smlocal by the fixture's AWS_ENDPOINT_URL_* variables.
    boto3.client("sagemaker").create_training_job(
        TrainingJobName="quick", RoleArn="arn:aws:iam::123456789012:role/SageMakerRole",
        AlgorithmSpecification={"TrainingImage": "my-team/trainer:1", "TrainingInputMode": "File"},
        OutputDataConfig={"S3OutputPath": "s3://models/out"},
        ResourceConfig={"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 1},
        StoppingCondition={"MaxRuntimeInSeconds": 60},
        Tags=[{"Key": "smlocal:training-seconds", "Value": "0"}])
    job = smlocal.wait_for_job("quick", timeout=60, poll=0.1)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    smlocal_s3.head_object(Bucket="models", Key="out/quick/output/model.tar.gz")
    assert smlocal.backend == "simulated"


def test_a_test_that_needs_containers_is_skipped(smlocal):
    smlocal.require_docker()
'''


def run_suite(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    project = tmp_path / "project"
    project.mkdir()
    (project / "test_orchestration.py").write_text(SUITE)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "AWS_", "SMLOCAL_", "DOCKER_"))}
    # This checkout's code before any other install of smlocal (the plugin and the `smlocal serve` it starts).
    env.update({"DOCKER_HOST": NO_ENGINE, "TMPDIR": str(scratch), "PYTHONPATH": str(REPO)})
    return subprocess.run([sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-rs", *args],
                          cwd=project, env=env, capture_output=True, text=True, timeout=300)


def outcomes(output: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in re.finditer(r"::(\w+) (PASSED|FAILED|SKIPPED|ERROR)", output)}


EXPECTED = {"test_a_job_runs_to_completed_without_an_engine": "PASSED",
            "test_a_test_that_needs_containers_is_skipped": "SKIPPED"}


def test_without_an_engine_the_plugin_falls_back_to_simulated_and_warns(tmp_path: Path) -> None:
    result = run_suite(tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert outcomes(result.stdout) == EXPECTED, output
    # In the warnings summary, with its class (so `-W error::smlocal.testing.SmlocalBackendWarning` can refuse it),
    # and again in the terminal summary's own section.
    assert "SmlocalBackendWarning: no Docker engine answers" in result.stdout, output
    summary = result.stdout[result.stdout.index("warnings summary"):]
    assert re.search(r"^-+ smlocal -+$", summary, re.M), summary
    assert re.search(r"^smlocal: no Docker engine answers \(.*\): smlocal runs the jobs on the simulated backend",
                     summary, re.M), summary
    assert "tests calling smlocal.require_docker() are skipped" in summary
    assert "runs jobs on the simulated backend here, not in Docker" in output  # the skip's reason (-rs)
    assert list((tmp_path / "tmp").iterdir()) == []  # the fixture's data dir is gone


def test_asked_for_simulated_it_needs_no_engine_and_says_nothing(tmp_path: Path) -> None:
    result = run_suite(tmp_path, "--smlocal-backend", "simulated")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert outcomes(result.stdout) == EXPECTED, output
    assert "no Docker engine answers" not in output


def test_the_warning_can_be_made_an_error(tmp_path: Path) -> None:
    result = run_suite(tmp_path, "-W", "error::smlocal.testing.SmlocalBackendWarning")
    assert result.returncode == 1, result.stdout + result.stderr
    assert set(outcomes(result.stdout).values()) == {"ERROR"}, result.stdout


def test_jobs_docker_still_insists_on_an_engine(tmp_path: Path) -> None:
    result = run_suite(tmp_path, "--smlocal-jobs", "docker")
    assert result.returncode != 0
    assert "--smlocal-jobs docker: no Docker engine answers" in result.stdout + result.stderr
