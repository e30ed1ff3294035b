"""Script mode through the SageMaker Python SDK, unmodified, end to end: SDK v2's entry_point/source_dir
(sourcedir.tar.gz + the training toolkit in the image) and SDK v3's SourceCode (`code` and `sm_drivers`
channels, its own sm_train.sh), each from docs/sdk-and-script-mode.md as written and from the notebook-style
examples.

Real SDKs in their venvs under the no-egress guard (tests/support/sdk.py), real `smlocal serve` with the
embedded stores `make run` starts (the files store for the docs' snippets, the memory store for the notebooks),
real containers of `smlocal/training-toolkit:1`. The README's exports reach IAM (v3's role and staging
checks, v2's role-name lookup) and STS (the account in the SDK's default bucket, `sagemaker-<region>-<account>`,
where the code and the models go) on smlocal, so nothing asks AWS; every status the jobs show while the SDK
runs is recorded.
"""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.support.sdk_run import (
    DEFAULT_BUCKET,
    NOTEBOOKS,
    assert_walked_to,
    run_guarded,
    script_mode_snippet,
    upload_quickstart_data,
)
from tests.support.smlocal import SmlocalServer

TOOLKIT_IMAGE = "smlocal/training-toolkit:1"


def _server(folder: Path, *args: str) -> Iterator[SmlocalServer]:
    server = SmlocalServer(folder, None, ["--stop-grace-seconds", "2", *args]).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def files_server(test_images: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[SmlocalServer]:
    """What `make run` starts: the embedded files store (rclone) with its default keys."""
    yield from _server(tmp_path_factory.mktemp("smlocal-files"))


@pytest.fixture(scope="module")
def memory_server(test_images: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[SmlocalServer]:
    """The embedded memory store (moto in the smlocal process)."""
    yield from _server(tmp_path_factory.mktemp("smlocal-memory"), "--s3-store", "memory")


def model_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name.removeprefix("./"): tar.extractfile(m).read()  # type: ignore[union-attr]
                for m in tar.getmembers() if m.isfile()}


def s3_get(server: SmlocalServer, uri: str) -> bytes:
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    return server.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()


def test_readme_v2_script_mode_ships_the_source_dir_and_prints_the_scripts_output(
        files_server: SmlocalServer, tmp_path: Path, unique_name: Callable[[str], str]) -> None:
    bucket = unique_name("script2")
    upload_quickstart_data(files_server, bucket, tmp_path)
    run = run_guarded(2, script_mode_snippet(2), files_server, bucket, tmp_path)
    assert run.result.returncode == 0, run.output[-6000:] + files_server.log()
    assert run.guard.report() == []
    job, seen = run.only_job()
    assert_walked_to(seen, "Completed/Completed")

    # fit(logs="All") printed what the toolkit and the script printed in the container, then the seconds.
    out = run.result.stdout
    for line in ("Invoking script with the following command:",
                 "/opt/sagemaker-training/bin/python3 -- train.py --alpha 0.5 --max_iter 200",
                 "read 500 rows from 1 file(s) in /opt/ml/input/data/train", "train_accuracy="):
        assert line in out, (line, out[-4000:])
    assert out.index("train_accuracy=") < out.index("Training seconds:") < out.index("Billable seconds:")

    described = files_server.client().describe_training_job(TrainingJobName=job)
    source = f"s3://{DEFAULT_BUCKET}/{job}/source/sourcedir.tar.gz"
    hyperparameters = described["HyperParameters"]
    assert (hyperparameters["sagemaker_program"], hyperparameters["sagemaker_submit_directory"]) == (
        '"train.py"', f'"{source}"')
    assert (hyperparameters["alpha"], hyperparameters["max_iter"]) == ("0.5", "200")
    assert described["AlgorithmSpecification"]["TrainingImage"] == TOOLKIT_IMAGE
    # The SDK's sourcedir.tar.gz is in the store, in the SDK's default bucket: the folder's files.
    shipped = tmp_path / "sourcedir.tar.gz"
    shipped.write_bytes(s3_get(files_server, source))
    assert model_members(shipped)["train.py"] == Path("examples/script-mode/train.py").read_bytes()

    printed = float(out.split("train_accuracy=", 1)[1].split()[0])
    [metric] = described["FinalMetricDataList"]
    assert (metric["MetricName"], metric["Value"]) == ("train:accuracy", pytest.approx(printed))
    # The model, where SageMaker puts it for the default output path, downloaded as the snippet does.
    assert described["ModelArtifacts"]["S3ModelArtifacts"] == f"s3://{DEFAULT_BUCKET}/{job}/output/model.tar.gz"
    members = model_members(tmp_path / "script-v2-model" / "model.tar.gz")
    assert set(members) == {"model.joblib", "metadata.json"}
    metadata = json.loads(members["metadata.json"])
    assert (metadata["alpha"], metadata["max_iter"], metadata["training_job_name"]) == (0.5, 200, job)


def test_readme_v3_script_mode_ships_code_and_drivers_as_channels_and_validates_the_role(
        files_server: SmlocalServer, tmp_path: Path, unique_name: Callable[[str], str]) -> None:
    bucket = unique_name("script3")
    upload_quickstart_data(files_server, bucket, tmp_path)
    # The snippet as written, with v3's debug lines on for the role validation and the staging check.
    debug = "".join(f"logging.getLogger({name!r}).setLevel(logging.DEBUG)\n"
                    for name in ("sagemaker.core.helper.iam_role_resolver", "sagemaker.core.utils.utils"))
    run = run_guarded(3, "import logging\n" + debug + script_mode_snippet(3), files_server, bucket, tmp_path)
    assert run.result.returncode == 0, run.output[-6000:] + files_server.log()
    # No connection left the machine: the role validation and the staging checks went to smlocal's IAM,
    # the default bucket's account came from smlocal's STS.
    assert run.guard.report() == []
    # v3 validated the role (SimulatePrincipalPolicy and GetRole's trust policy), and its staging check
    # for each uploaded folder got an answer (a failed one is logged and falls back).
    assert "Role 'arn:aws:iam::123456789012:role/SageMakerRole' validated for training. Using it." in run.output
    assert "Skipping IAM role validation" not in run.output
    assert "Could not verify role access to default bucket" not in run.output
    job, seen = run.only_job()
    assert_walked_to(seen, "Completed/Completed")
    # train(logs=True) printed v3's driver and the script's own lines.
    for line in ("Running Basic Script driver", "train.py --alpha 0.5 --max_iter 200",
                 "read 500 rows from 1 file(s) in /opt/ml/input/data/train", "train_accuracy="):
        assert line in run.output, (line, run.output[-4000:])

    described = files_server.client().describe_training_job(TrainingJobName=job)
    algorithm = described["AlgorithmSpecification"]
    assert algorithm["ContainerEntrypoint"] == ["/bin/bash"]
    assert algorithm["ContainerArguments"][-1].endswith("/opt/ml/input/data/sm_drivers/sm_train.sh")
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in described["InputDataConfig"]}
    assert set(channels) == {"train", "code", "sm_drivers"}
    base = job.rsplit("-", 1)[0]
    assert channels["code"] == f"s3://{DEFAULT_BUCKET}/{base}/{job}/input/code"
    code = files_server.client("s3").list_objects_v2(Bucket=DEFAULT_BUCKET, Prefix=f"{base}/{job}/input/code/")
    assert f"{base}/{job}/input/code/train.py" in {o["Key"] for o in code["Contents"]}
    assert s3_get(files_server, f"{channels['sm_drivers']}/sm_train.sh").lstrip().startswith(b"#!/bin/bash")
    assert described["HyperParameters"] == {"alpha": "0.5", "max_iter": "200"}
    assert (described["ModelArtifacts"]["S3ModelArtifacts"]
            == f"s3://{DEFAULT_BUCKET}/{base}/{job}/output/model.tar.gz")
    members = model_members(tmp_path / "script-v3-model" / "model.tar.gz")
    assert set(members) == {"model.joblib", "metadata.json"}
    assert json.loads(members["metadata.json"])["training_job_name"] == job


FAILING_V2 = """
from sagemaker.estimator import Estimator

estimator = Estimator(
    image_uri="smlocal/training-toolkit:1",
    entry_point="train.py",
    source_dir="examples/script-mode",
    role="SageMakerRole",  # a role name: the SDK asks IAM (GetRole) for its ARN
    instance_count=1,
    instance_type="ml.m5.large",
    hyperparameters={"alpha": -1, "max_iter": 200},  # train.py refuses alpha <= 0
)
try:
    estimator.fit({"train": "s3://workshop/data/train/"}, logs="All")
except Exception as error:
    print(f"RAISED {type(error).__module__}.{type(error).__name__}")
    print(f"MESSAGE {error}")
else:
    print("fit() returned")
"""


def test_v2_failing_script_raises_the_sdks_error_with_the_toolkits_reason(
        files_server: SmlocalServer, tmp_path: Path, unique_name: Callable[[str], str]) -> None:
    bucket = unique_name("script2-fail")
    upload_quickstart_data(files_server, bucket, tmp_path)
    run = run_guarded(2, FAILING_V2, files_server, bucket, tmp_path)
    assert run.result.returncode == 0, run.output[-6000:] + files_server.log()
    assert run.guard.report() == []
    job, seen = run.only_job()
    assert_walked_to(seen, "Failed/Failed")

    described = files_server.client().describe_training_job(TrainingJobName=job)
    assert described["RoleArn"] == "arn:aws:iam::123456789012:role/SageMakerRole"
    # The toolkit's failure file (its ErrorMessage is empty unless the image asks it to capture stderr).
    reason = described["FailureReason"]
    command = 'Command "/opt/sagemaker-training/bin/python3 -- train.py --alpha -1 --max_iter 200"'
    assert reason.startswith("AlgorithmError: ExecuteUserScriptError:\nExitCode 1\n") and command in reason, reason
    out = run.result.stdout
    assert "fit() returned" not in out
    assert "RAISED sagemaker.exceptions.UnexpectedStatusException" in out, out[-4000:]
    message = out.split("MESSAGE ", 1)[1]
    expected = f"Error for Training job {job}: Failed. Reason: AlgorithmError: ExecuteUserScriptError:"
    assert message.startswith(expected), message
    assert "ExitCode 1" in message and command in message
    # The script's traceback came through the log before fit() raised.
    assert out.index("ValueError: alpha must be > 0, got -1.0") < out.index("RAISED ")


@pytest.mark.parametrize("version", [2, 3])
def test_notebook_example_trains_from_a_fresh_default_bucket(
        memory_server: SmlocalServer, tmp_path: Path, unique_name: Callable[[str], str], version: int) -> None:
    # Nothing is prepared: the notebook makes its data, and the SDK creates its default bucket (the first run).
    run = run_guarded(version, NOTEBOOKS[version].read_text(), memory_server, unique_name("unused"), tmp_path)
    assert run.result.returncode == 0, run.output[-6000:] + memory_server.log()
    assert run.guard.report() == []
    job, seen = run.only_job()
    assert job.startswith(f"notebook-v{version}-")
    assert_walked_to(seen, "Completed/Completed")

    out = run.result.stdout
    assert f"default bucket: {DEFAULT_BUCKET};" in out
    assert re.search(rf"^600 rows \(\d+% positive\) uploaded to s3://{DEFAULT_BUCKET}/notebook-v{version}/data/train/"
                     r"train\.csv$", out, re.M), out[:3000]
    assert "read 600 rows from 1 file(s) in /opt/ml/input/data/train" in run.output  # the job's log
    assert "model.tar.gz holds: ['metadata.json', 'model.joblib']" in out
    assert (f"trained LogisticRegression on 600 rows x 4 features (alpha=0.5, max_iter=200) in job {job}"
            in out)
    described = memory_server.client().describe_training_job(TrainingJobName=job)
    [metric] = described["FinalMetricDataList"]
    assert f"final metric train:accuracy = {metric['Value']:.4f}" in out
    assert 0.8 < metric["Value"] <= 1.0
    if version == 2:
        # TrainingJobAnalytics' frame: the one value, from CloudWatch.
        assert "train:accuracy" in out.split("billed", 1)[1]


@pytest.mark.parametrize("store", ["files", "memory"])
def test_embedded_stores_accept_the_sdks_kms_encrypted_upload(
        store: str, request: pytest.FixtureRequest, unique_name: Callable[[str], str], tmp_path: Path) -> None:
    """SDK v2 uploads sourcedir.tar.gz with ExtraArgs {"ServerSideEncryption": "aws:kms"} (by default)."""
    server: SmlocalServer = request.getfixturevalue(f"{store}_server")
    s3: Any = server.client("s3")
    bucket = unique_name("sse")
    s3.create_bucket(Bucket=bucket)
    archive = tmp_path / "sourcedir.tar.gz"
    archive.write_bytes(b"\x1f\x8b" + bytes(range(256)) * 64)
    s3.upload_file(str(archive), bucket, "job/source/sourcedir.tar.gz", ExtraArgs={"ServerSideEncryption": "aws:kms"})
    s3.put_object(Bucket=bucket, Key="small", Body=b"x", ServerSideEncryption="aws:kms")
    assert s3.get_object(Bucket=bucket, Key="job/source/sourcedir.tar.gz")["Body"].read() == archive.read_bytes()
    assert s3.get_object(Bucket=bucket, Key="small")["Body"].read() == b"x"
    if store == "files":  # a plain file in the store's folder, as everything it keeps
        assert (server.data_dir / "s3" / bucket / "job/source/sourcedir.tar.gz").read_bytes() == archive.read_bytes()
