"""SageMaker Python SDK v3 (`sagemaker>=3`, ModelTrainer, in .venv-sdk3), unmodified, against smlocal.

v3 keeps its SageMaker and CloudWatch Logs clients in process-wide singletons built from plain boto3
sessions, so only the AWS_ENDPOINT_URL_* variables reach them. With the README's settings its IAM calls
(role validation) go to smlocal and it needs no STS call; the guard proves that nothing else was asked
of AWS, and the last tests show what happens without them (the guard refuses IAM's and STS's addresses).
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable
from pathlib import Path

import docker
import pytest

from tests.support.sdk_run import assert_walked_to, readme_snippet, run_guarded, upload_quickstart_data
from tests.support.smlocal import SmlocalServer


@pytest.fixture(scope="module")
def server(module_smlocal_factory: Callable[..., SmlocalServer], test_images: docker.DockerClient) -> SmlocalServer:
    return module_smlocal_factory("--stop-grace-seconds", "2")


def test_readme_v3_snippet_trains_streams_logs_and_downloads_the_model(
        server: SmlocalServer, tmp_path: Path, unique_name: Callable[[str], str]) -> None:
    bucket = unique_name("sdk3")
    upload_quickstart_data(server, bucket, tmp_path)
    run = run_guarded(3, readme_snippet(3), server, bucket, tmp_path)
    assert run.result.returncode == 0, run.output[-6000:] + server.log()
    assert run.guard.report() == []

    job, seen = run.only_job()
    assert_walked_to(seen, "Completed/Completed")
    # train(logs=True) printed the container's lines.
    assert "[train] fitting LogisticRegression" in run.output
    assert "train_accuracy=" in run.output
    model = tmp_path / "sdk3-model" / "model.tar.gz"
    with tarfile.open(model) as tar:
        assert "model.joblib" in [n.removeprefix("./") for n in tar.getnames()]
    described = server.client().describe_training_job(TrainingJobName=job)
    assert described["ModelArtifacts"]["S3ModelArtifacts"] == f"s3://{bucket}/output/{job}/output/model.tar.gz"
    assert described["HyperParameters"]["alpha"] in ("0.5", '"0.5"')


# The SDK config without the default bucket (telemetry stays off).
TELEMETRY_ONLY_CONFIG = """SchemaVersion: '1.0'
SageMaker:
  PythonSDK:
    Modules:
      TelemetryOptOut: true
"""


@pytest.mark.parametrize(("setting", "asked"), [
    # Why the README points AWS_ENDPOINT_URL_IAM at smlocal: v3 validates the role with IAM first.
    ("iam-endpoint", "iam.amazonaws.com"),
    # Why the SDK config names a default bucket: without it (and without output_data_config) the bucket's
    # name comes from STS, at an explicit regional endpoint that AWS_ENDPOINT_URL_STS does not move.
    ("default-bucket", "sts.us-east-1.amazonaws.com"),
])
def test_without_the_readme_settings_v3_would_ask_aws(server: SmlocalServer, tmp_path: Path,
                                                      unique_name: Callable[[str], str], setting: str,
                                                      asked: str) -> None:
    bucket = unique_name("sdk3-aws")
    upload_quickstart_data(server, bucket, tmp_path)
    script = readme_snippet(3)
    # Even with STS's endpoint variable pointing here, the default bucket's lookup goes to AWS.
    prelude = "import os\nos.environ['AWS_ENDPOINT_URL_STS'] = os.environ['AWS_ENDPOINT_URL_SAGEMAKER']\n"
    if setting == "iam-endpoint":
        prelude += "os.environ.pop('AWS_ENDPOINT_URL_IAM')\n"
    else:
        # Beside the config the README's exports name (paths in the script are rewritten, so no literal).
        (tmp_path / "telemetry-only.yaml").write_text(TELEMETRY_ONLY_CONFIG)
        prelude += ("os.environ['SAGEMAKER_USER_CONFIG_OVERRIDE'] = os.environ['SAGEMAKER_USER_CONFIG_OVERRIDE']"
                    ".replace('sagemaker-config.yaml', 'telemetry-only.yaml')\n")
        script = script.replace('output_data_config=OutputDataConfig(s3_output_path="s3://workshop/output"),', "")
        assert "OutputDataConfig(" not in script.split("ModelTrainer(", 1)[1].split("trainer.train(", 1)[0]
    run = run_guarded(3, prelude + script, server, bucket, tmp_path)
    refused = {entry["host"] for entry in run.guard.report()}
    assert asked in refused, (refused, run.output[-3000:])
    assert run.result.returncode != 0
