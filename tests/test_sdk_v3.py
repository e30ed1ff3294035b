"""SageMaker Python SDK v3 (`sagemaker>=3`, ModelTrainer, in .venv-sdk3), unmodified, against smlocal.

v3 keeps its SageMaker and CloudWatch Logs clients in process-wide singletons built from plain boto3
sessions, so only the AWS_ENDPOINT_URL_* variables reach them. With the README's settings its IAM calls
(role validation) and its STS call (`Session().default_bucket()`'s account, at an explicit AWS endpoint
that only the README's AWS_DATA_PATH moves) go to smlocal; the guard proves that nothing else was asked
of AWS, and the last tests show what happens without them (the guard refuses IAM's and STS's addresses).
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest

from tests.support.sdk_run import (
    assert_walked_to,
    check_default_bucket,
    check_default_bucket_asks_aws_without_aws_data,
    readme_snippet,
    run_guarded,
    store_only_server,
    upload_quickstart_data,
)
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


def test_without_the_iam_endpoint_v3_would_ask_aws(server: SmlocalServer, tmp_path: Path,
                                                 unique_name: Callable[[str], str]) -> None:
    """Why the README points AWS_ENDPOINT_URL_IAM at smlocal: v3 validates the role with IAM first."""
    bucket = unique_name("sdk3-aws")
    upload_quickstart_data(server, bucket, tmp_path)
    prelude = "import os\nos.environ.pop('AWS_ENDPOINT_URL_IAM')\n"
    run = run_guarded(3, prelude + readme_snippet(3), server, bucket, tmp_path)
    refused = {entry["host"] for entry in run.guard.report()}
    assert "iam.amazonaws.com" in refused, (refused, run.output[-3000:])
    assert run.result.returncode != 0


@pytest.fixture(scope="module", params=["files", "memory"])
def store_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmlocalServer]:
    yield from store_only_server(tmp_path_factory.mktemp(f"smlocal-{request.param}"), request.param)


SDK_IMPORTS = ("from sagemaker.core.helper.session_helper import Session\n"
               "from sagemaker.core.s3 import S3Downloader, S3Uploader\n")


def test_default_bucket_is_the_sdks_own_made_in_smlocals_store(store_server: SmlocalServer, tmp_path: Path) -> None:
    check_default_bucket(3, SDK_IMPORTS, store_server, tmp_path)


@pytest.mark.parametrize("store_server", ["files"], indirect=True)
def test_without_aws_data_path_the_default_bucket_asks_aws(store_server: SmlocalServer, tmp_path: Path) -> None:
    check_default_bucket_asks_aws_without_aws_data(3, SDK_IMPORTS, store_server, tmp_path)
