"""Training jobs end to end: a real `smlocal serve`, real containers, a real S3 server, boto3 clients.

Its fixtures and helpers, shared with the other runner test modules, are in tests/support/runner_jobs.py.
"""

from __future__ import annotations

import io
import json
import tarfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import docker
import docker.errors
import pytest

from tests.support.docker_env import PYTHON_BASE_IMAGE
from tests.support.jobs import job_request, wait_for_status
from tests.support.logs import stream_files
from tests.support.runner_jobs import (
    ENTRYPOINT_IMAGE,
    FINAL,
    INPUT_BUCKET,
    OUTPUT_BUCKET,
    TRAIN_IMAGE,
    code_channel,
    leftovers,
    log_events,
    log_messages,
    model_files,
    run_job,
    s3_channel,
    s3_client,
    settle,
    sh_job,
    tar_members,
    wait_until,
)
from tests.support.smlocal import SmlocalServer

SERVER = "runner_server"  # `sm` and `s3` are clients of the runner plugin's server (tests/conftest.py)


# ---- training --------------------------------------------------------------------------------

TRAIN_SCRIPT = r"""
set -e
cd /opt/ml
epochs=$(sed -n 's/.*"epochs": "\([^"]*\)".*/\1/p' input/config/hyperparameters.json)
total=0
for f in $(find input/data/train -type f | sort); do for n in $(cat "$f"); do total=$((total + n)); done; done
files=$(find input/data/train -type f | sort | tr '\n' ' ')
echo "epochs=$epochs total=$total files=$files" > model/model.txt
mkdir -p model/nested && echo deep > model/nested/weights
echo report > output/data/report.txt
echo "epoch 1: loss=0.5"
sleep 0.2  # stdout and stderr are separate pipes: lines written together may swap
echo "epoch 2: loss=0.125" >&2
"""


def test_training_reads_hyperparameters_and_channel_and_uploads_model(
        runner_server: SmlocalServer, sm: Any, s3: Any, unique_name: Callable[[str], str],
        docker_engine: docker.DockerClient) -> None:
    name = unique_name("train")
    s3.put_object(Bucket=INPUT_BUCKET, Key=f"{name}/train/part-1.csv", Body=b"1\n2\n")
    s3.put_object(Bucket=INPUT_BUCKET, Key=f"{name}/train/sub/part-2.csv", Body=b"3\n")
    s3.put_object(Bucket=INPUT_BUCKET, Key=f"{name}/train/empty-folder/", Body=b"")
    request = sh_job(
        name, TRAIN_SCRIPT, s3=s3, HyperParameters={"epochs": "5"},
        InputDataConfig=[s3_channel("train", f"s3://{INPUT_BUCKET}/{name}/train/")],
        AlgorithmSpecification={"MetricDefinitions": [{"Name": "train:loss", "Regex": r"loss=([0-9.]+)"}]},
    )
    job = run_job(sm, request)

    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    transitions = job["SecondaryStatusTransitions"]
    assert [(t["Status"], t["StatusMessage"]) for t in transitions] == [
        ("Starting", "Preparing the instances for training"),
        ("Downloading", "Downloading input data"),
        ("Training", "Training image download completed. Training in progress."),
        ("Uploading", "Uploading generated training model"),
        ("Completed", "Training job completed"),
    ]
    # Each phase ends where the next begins.
    for before, after in zip(transitions, transitions[1:], strict=False):
        assert before["EndTime"] == after["StartTime"]
    assert job["SecondaryStatus"] == "Completed"
    assert job["CreationTime"] <= job["TrainingStartTime"] < job["TrainingEndTime"] <= job["LastModifiedTime"]
    assert job["TrainingStartTime"] == transitions[1]["StartTime"]
    assert job["TrainingTimeInSeconds"] == job["BillableTimeInSeconds"] >= 1
    assert job["ModelArtifacts"]["S3ModelArtifacts"] == f"s3://{OUTPUT_BUCKET}/models/{name}/output/model.tar.gz"
    assert model_files(s3, name) == {
        "model.txt": b"epochs=5 total=6 files=input/data/train/part-1.csv input/data/train/sub/part-2.csv \n",
        "nested/weights": b"deep\n",
    }
    assert tar_members(s3, f"models/{name}/output/output.tar.gz") == {"report.txt": b"report\n"}
    [metric] = job["FinalMetricDataList"]
    assert (metric["MetricName"], metric["Value"]) == ("train:loss", 0.125)
    # stdout and stderr both land in the stream, as CloudWatch-style events.
    events = log_events(runner_server, name)
    assert [e["message"] for e in events] == ["epoch 1: loss=0.5", "epoch 2: loss=0.125"]
    assert all(isinstance(e["timestamp"], int) and e["timestamp"] > 1_600_000_000_000 for e in events)
    [stream] = stream_files(runner_server.data_dir, name)
    assert stream.name.startswith("algo-1-") and stream.name[len("algo-1-"):].isdigit()
    # The terminal status is written first, then the job is cleaned up.
    assert wait_until(lambda: leftovers(docker_engine, runner_server, name) == [], 30, "cleanup")


def test_config_files_environment_and_network_as_sagemaker_sets_them(
        runner_server: SmlocalServer, sm: Any, s3: Any, unique_name: Callable[[str], str]) -> None:
    name = unique_name("contract")
    s3.put_object(Bucket=INPUT_BUCKET, Key=f"{name}/a/x.csv", Body=b"x")
    s3.put_object(Bucket=INPUT_BUCKET, Key=f"{name}/b/y.csv", Body=b"y")
    script = ("cd /opt/ml/model && cp ../input/config/*.json . && env > env.txt && hostname > hostname && "
              "cat /etc/hosts > hosts")
    request = sh_job(
        name, script, HyperParameters={"lr": "0.1", "layers": "[1, 2]"}, Environment={"MY_FLAG": "on"},
        InputDataConfig=[
            s3_channel("train", f"s3://{INPUT_BUCKET}/{name}/a/", ContentType="text/csv"),
            # A Pipe channel the algorithm never opens: its inputdataconfig entry is what counts here.
            s3_channel("validation", f"s3://{INPUT_BUCKET}/{name}/b/", InputMode="Pipe",
                       RecordWrapperType="RecordIO"),
        ],
        ResourceConfig={"InstanceType": "ml.c5.2xlarge", "InstanceCount": 1, "VolumeSizeInGB": 5},
        CheckpointConfig={"S3Uri": f"s3://{OUTPUT_BUCKET}/ckpt/{name}"},
    )
    job = run_job(sm, request)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    files = model_files(s3, name)

    assert json.loads(files["hyperparameters.json"]) == {"lr": "0.1", "layers": "[1, 2]"}
    assert json.loads(files["inputdataconfig.json"]) == {
        "train": {"ContentType": "text/csv", "TrainingInputMode": "File",
                  "S3DistributionType": "FullyReplicated", "RecordWrapperType": "None"},
        "validation": {"TrainingInputMode": "Pipe", "S3DistributionType": "FullyReplicated",
                       "RecordWrapperType": "RecordIO"},
    }
    assert json.loads(files["resourceconfig.json"]) == {
        "current_host": "algo-1", "current_instance_type": "ml.c5.2xlarge",
        "current_group_name": "homogeneousCluster", "hosts": ["algo-1"],
        "instance_groups": [{"instance_group_name": "homogeneousCluster", "instance_type": "ml.c5.2xlarge",
                             "hosts": ["algo-1"]}],
        "network_interface_name": "eth0",
    }
    assert json.loads(files["checkpointconfig.json"]) == {
        "LocalPath": "/opt/ml/checkpoints", "S3Uri": f"s3://{OUTPUT_BUCKET}/ckpt/{name}"}
    env = dict(line.split("=", 1) for line in files["env.txt"].decode().splitlines() if "=" in line)
    assert env["TRAINING_JOB_NAME"] == name
    assert env["TRAINING_JOB_ARN"] == job["TrainingJobArn"]
    assert env["AWS_REGION"] == env["AWS_DEFAULT_REGION"] == "us-east-1"
    assert env["MY_FLAG"] == "on"
    # A store smlocal does not run (the test's moto, with all its admin routes) is reached through smlocal's
    # S3-only front on the bridge gateway, on the port it remembers in the data dir (server/s3/front.py).
    front_port = int((runner_server.data_dir / "s3-front.port").read_text())
    assert env["AWS_ENDPOINT_URL_S3"] == env["S3_ENDPOINT_URL"] == f"http://host.docker.internal:{front_port}"
    assert env["AWS_ACCESS_KEY_ID"] and env["AWS_SECRET_ACCESS_KEY"]
    assert files["hostname"] == b"algo-1\n"
    assert "host.docker.internal" in files["hosts"].decode()


@pytest.mark.parametrize(("image", "algorithm", "argv"), [
    (TRAIN_IMAGE, {}, ["train"]),
    (TRAIN_IMAGE, {"ContainerArguments": ["recorder", "--epochs", "2"]}, ["recorder", "--epochs", "2"]),
    (TRAIN_IMAGE, {"ContainerEntrypoint": ["recorder", "custom"]}, ["recorder", "custom"]),
    (TRAIN_IMAGE, {"ContainerEntrypoint": ["recorder"], "ContainerArguments": ["a", "b c"]},
     ["recorder", "a", "b c"]),
    # An image with its own ENTRYPOINT receives `train` (or the arguments) as its arguments.
    (ENTRYPOINT_IMAGE, {}, ["recorder", "image-entrypoint", "train"]),
    (ENTRYPOINT_IMAGE, {"ContainerArguments": ["x"]}, ["recorder", "image-entrypoint", "x"]),
    (ENTRYPOINT_IMAGE, {"ContainerEntrypoint": ["/usr/bin/train"]}, ["train"]),
], ids=["train", "arguments", "entrypoint", "both", "image-entrypoint", "image-entrypoint-args",
        "replaced-entrypoint"])
def test_invocation_matches_sagemaker(sm: Any, s3: Any, unique_name: Callable[[str], str], image: str,
                                      algorithm: dict[str, Any], argv: list[str]) -> None:
    name = unique_name(f"argv-{len(argv)}-{len(algorithm)}-{image.split('/')[1][:12]}")
    request = job_request(name, image, AlgorithmSpecification={
        "TrainingImage": image, "TrainingInputMode": "File", **algorithm})
    job = run_job(sm, request)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    assert model_files(s3, name)["argv"].decode().splitlines() == argv


def test_python_algorithm_reaches_smlocal_s3_with_boto3(
        sm: Any, s3: Any, unique_name: Callable[[str], str]) -> None:
    name = unique_name("py")
    s3.put_object(Bucket=INPUT_BUCKET, Key=f"{name}/data.csv", Body=b"1,2\n3,4\n5,6\n")
    script = f"""
import json, os, boto3, numpy as np
hp = json.load(open("/opt/ml/input/config/hyperparameters.json"))
data = np.loadtxt("/opt/ml/input/data/train/data.csv", delimiter=",")
model = {{"scale": float(hp["scale"]), "column_means": (data.mean(axis=0) * float(hp["scale"])).tolist()}}
json.dump(model, open("/opt/ml/model/model.json", "w"))
# The endpoint comes from the platform's environment (this image's boto3 predates AWS_ENDPOINT_URL_S3;
# credentials and region come from the environment as well).
s3 = boto3.client("s3", endpoint_url=os.environ["S3_ENDPOINT_URL"])
s3.put_object(Bucket="{OUTPUT_BUCKET}", Key="from-container/{name}", Body=b"hello")
print("saved", model)
"""
    request = job_request(
        name, PYTHON_BASE_IMAGE, HyperParameters={"scale": "10"},
        AlgorithmSpecification={"TrainingImage": PYTHON_BASE_IMAGE, "TrainingInputMode": "File",
                                "ContainerEntrypoint": ["python3", "/opt/ml/input/data/code/train.py"]},
        InputDataConfig=[s3_channel("train", f"s3://{INPUT_BUCKET}/{name}/data.csv"),
                         code_channel(s3, name, "train.py", script)],
    )
    job = run_job(sm, request, timeout=180)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    assert json.loads(model_files(s3, name)["model.json"]) == {"scale": 10.0, "column_means": [30.0, 40.0]}
    assert s3.get_object(Bucket=OUTPUT_BUCKET, Key=f"from-container/{name}")["Body"].read() == b"hello"


# ---- data channels ---------------------------------------------------------------------------


def test_manifest_channel_downloads_exactly_the_listed_keys(
        sm: Any, s3: Any, unique_name: Callable[[str], str]) -> None:
    name = unique_name("manifest")
    for key in ("a.csv", "deep/b.csv", "not-listed.csv"):
        s3.put_object(Bucket=INPUT_BUCKET, Key=f"{name}/data/{key}", Body=key.encode())
    manifest = [{"prefix": f"s3://{INPUT_BUCKET}/{name}/data/"}, "a.csv", "deep/b.csv"]
    s3.put_object(Bucket=INPUT_BUCKET, Key=f"{name}/train.manifest", Body=json.dumps(manifest).encode())
    request = sh_job(
        name, "cd /opt/ml/input/data/train && find . -type f | sort > /opt/ml/model/files && cat deep/b.csv",
        InputDataConfig=[s3_channel("train", f"s3://{INPUT_BUCKET}/{name}/train.manifest",
                                    S3DataType="ManifestFile")])
    job = run_job(sm, request)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    assert model_files(s3, name)["files"] == b"./a.csv\n./deep/b.csv\n"


def test_many_objects_are_all_staged(sm: Any, s3: Any, unique_name: Callable[[str], str]) -> None:
    name = unique_name("many")
    for i in range(40):
        s3.put_object(Bucket=INPUT_BUCKET, Key=f"{name}/d{i % 4}/obj-{i:03d}", Body=str(i).encode())
    script = ("find /opt/ml/input/data/train -type f | wc -l > /opt/ml/model/count && "
              "cat /opt/ml/input/data/train/d3/obj-039 > /opt/ml/model/last")
    request = sh_job(name, script, InputDataConfig=[s3_channel("train", f"s3://{INPUT_BUCKET}/{name}/")])
    job = run_job(sm, request)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    files = model_files(s3, name)
    assert (files["count"].strip(), files["last"]) == (b"40", b"39")


def test_key_that_climbs_out_of_the_channel_fails_the_job_and_writes_nothing(
        runner_server: SmlocalServer, sm: Any, s3: Any, unique_name: Callable[[str], str]) -> None:
    name = unique_name("escape")
    s3.put_object(Bucket=INPUT_BUCKET, Key=f"{name}/ok.csv", Body=b"ok")
    s3.put_object(Bucket=INPUT_BUCKET, Key=f"{name}/../../../../escaped-{name}", Body=b"evil")
    request = sh_job(name, "true", InputDataConfig=[s3_channel("train", f"s3://{INPUT_BUCKET}/{name}/")])
    job = run_job(sm, request)
    assert job["TrainingJobStatus"] == "Failed"
    assert job["FailureReason"].startswith("ClientError: Data download failed:")
    assert "not inside the channel folder" in job["FailureReason"]
    assert not list(runner_server.data_dir.parent.rglob(f"escaped-{name}*"))


def test_key_with_leading_slash_stays_inside_the_channel(
        sm: Any, s3: Any, unique_name: Callable[[str], str]) -> None:
    name = unique_name("slash")
    s3.put_object(Bucket=INPUT_BUCKET, Key=f"{name}//etc/absolute.txt", Body=b"inside")
    request = sh_job(name, "cp /opt/ml/input/data/train/etc/absolute.txt /opt/ml/model/",
                     InputDataConfig=[s3_channel("train", f"s3://{INPUT_BUCKET}/{name}/")])
    job = run_job(sm, request)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    assert model_files(s3, name) == {"absolute.txt": b"inside"}


@pytest.mark.parametrize("where", ["empty-prefix", "missing-bucket"])
def test_missing_input_data_fails_with_sagemakers_message(
        sm: Any, s3: Any, unique_name: Callable[[str], str], where: str) -> None:
    name = unique_name(f"nodata-{where}")
    bucket = INPUT_BUCKET if where == "empty-prefix" else f"no-such-bucket-{name}"[:63]
    uri = f"s3://{bucket}/{name}/nothing-here/"
    request = sh_job(name, "true", InputDataConfig=[s3_channel("train", uri)])
    job = run_job(sm, request)
    assert job["TrainingJobStatus"] == "Failed"
    assert job["FailureReason"] == (
        f'ClientError: Data download failed: No S3 objects found under S3 URL "{uri}" given in input data '
        "source. Please ensure that the bucket exists in the selected region (us-east-1), that objects exist "
        f'under that S3 prefix, and that the role "{request["RoleArn"]}" has "s3:ListBucket" permissions on '
        f'bucket "{bucket}".'
    )
    assert [t["Status"] for t in job["SecondaryStatusTransitions"]] == ["Starting", "Downloading", "Failed"]


# ---- outputs ---------------------------------------------------------------------------------


def test_uncompressed_output_puts_files_under_prefixes(
        sm: Any, s3: Any, unique_name: Callable[[str], str]) -> None:
    name = unique_name("nocompress")
    script = ("cd /opt/ml && mkdir -p model/sub && echo w > model/sub/w.bin && echo m > model/m.txt "
              "&& echo o > output/data/o.txt")
    request = sh_job(name, script, OutputDataConfig={"S3OutputPath": f"s3://{OUTPUT_BUCKET}/models",
                                                     "CompressionType": "NONE"})
    job = run_job(sm, request)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    listed = s3.list_objects_v2(Bucket=OUTPUT_BUCKET, Prefix=f"models/{name}/")["Contents"]
    assert sorted(o["Key"] for o in listed) == [
        f"models/{name}/output/data/o.txt", f"models/{name}/output/model/m.txt",
        f"models/{name}/output/model/sub/w.bin"]
    assert job["ModelArtifacts"]["S3ModelArtifacts"] == f"s3://{OUTPUT_BUCKET}/models/{name}/output/model/"


def test_checkpoints_are_restored_at_start_and_saved_at_the_end(
        sm: Any, s3: Any, unique_name: Callable[[str], str]) -> None:
    name = unique_name("ckpt")
    s3.put_object(Bucket=OUTPUT_BUCKET, Key=f"ckpt/{name}/epoch-1.ckpt", Body=b"one")
    script = ("cat /ckpt/epoch-1.ckpt > /opt/ml/model/restored && echo two > /ckpt/epoch-2.ckpt && "
              "mkdir -p /ckpt/sub && echo three > /ckpt/sub/epoch-3.ckpt")
    request = sh_job(name, script, CheckpointConfig={"S3Uri": f"s3://{OUTPUT_BUCKET}/ckpt/{name}",
                                                     "LocalPath": "/ckpt"})
    job = run_job(sm, request)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    assert model_files(s3, name) == {"restored": b"one"}
    listed = s3.list_objects_v2(Bucket=OUTPUT_BUCKET, Prefix=f"ckpt/{name}/")["Contents"]
    assert sorted(o["Key"] for o in listed) == [
        f"ckpt/{name}/epoch-1.ckpt", f"ckpt/{name}/epoch-2.ckpt", f"ckpt/{name}/sub/epoch-3.ckpt"]


def test_symlinks_in_the_model_folder_never_pull_in_host_files(
        runner_server: SmlocalServer, sm: Any, s3: Any, unique_name: Callable[[str], str]) -> None:
    name = unique_name("symlink")
    secret = runner_server.data_dir / f"host-secret-{name}"
    secret.write_text("host only")
    # Inside the container the absolute host path does not exist, but on the host it would.
    script = f"ln -s {secret} /opt/ml/model/link && echo real > /opt/ml/model/real"
    job = run_job(sm, sh_job(name, script))
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    body = s3.get_object(Bucket=OUTPUT_BUCKET, Key=f"models/{name}/output/model.tar.gz")["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        link = tar.getmember("link")
        assert link.issym() and link.linkname == str(secret)
        assert tar.extractfile("real").read() == b"real\n"
    assert b"host only" not in body


# ---- failures --------------------------------------------------------------------------------


def test_missing_output_bucket_fails_the_job_at_upload(sm: Any, unique_name: Callable[[str], str]) -> None:
    name = unique_name("nooutput")
    bucket = f"no-such-output-{name}"[:63].rstrip("-")
    request = sh_job(name, "echo m > /opt/ml/model/m", OutputDataConfig={"S3OutputPath": f"s3://{bucket}/x"})
    job = run_job(sm, request)
    assert job["TrainingJobStatus"] == "Failed"
    assert job["FailureReason"].startswith(
        f"ClientError: Artifact upload to s3://{bucket}/x/{name}/output/model.tar.gz failed: NoSuchBucket")
    assert [t["Status"] for t in job["SecondaryStatusTransitions"]][-2:] == ["Uploading", "Failed"]


def test_failure_file_becomes_the_failure_reason_and_partial_model_is_kept(
        sm: Any, s3: Any, unique_name: Callable[[str], str]) -> None:
    name = unique_name("failfile")
    script = ("echo partial > /opt/ml/model/partial.txt; "
              "printf 'ValueError: learning rate must be positive' > /opt/ml/output/failure; exit 2")
    job = run_job(sm, sh_job(name, script))
    assert job["TrainingJobStatus"] == job["SecondaryStatus"] == "Failed"
    # SageMaker's shape: the failure file's text, then the exit code.
    assert job["FailureReason"] == "AlgorithmError: ValueError: learning rate must be positive, exit code: 2"
    assert model_files(s3, name) == {"partial.txt": b"partial\n"}


def test_non_zero_exit_reports_exit_code_and_last_log_lines(
        sm: Any, s3: Any, unique_name: Callable[[str], str]) -> None:
    name = unique_name("exitcode")
    script = "for i in $(seq 1 30); do echo progress $i; done; sleep 0.2; echo 'Traceback: boom' >&2; exit 42"
    job = run_job(sm, sh_job(name, script))
    assert job["TrainingJobStatus"] == "Failed"
    reason = job["FailureReason"]
    assert reason.startswith("AlgorithmError:") and "exit code: 42" in reason
    assert reason.rstrip().endswith("Traceback: boom") and "progress 30" in reason
    assert len(reason) <= 1024
    # Nothing was saved, so nothing was uploaded.
    assert "Contents" not in s3.list_objects_v2(Bucket=OUTPUT_BUCKET, Prefix=f"models/{name}/")


def test_missing_image_fails_with_a_clear_reason(sm: Any, unique_name: Callable[[str], str]) -> None:
    name = unique_name("noimage")
    image = "123456789012.dkr.ecr.us-east-1.amazonaws.com/smlocal-no-such-image:7"
    job = run_job(sm, job_request(name, image))
    assert job["TrainingJobStatus"] == "Failed"
    expected = f"ClientError: Image {image} could not be found locally or pulled: "
    assert job["FailureReason"].startswith(expected)
    # The image is pulled in the Training phase, as SageMaker shows it.
    assert [(t["Status"], t["StatusMessage"]) for t in job["SecondaryStatusTransitions"]] == [
        ("Starting", "Preparing the instances for training"), ("Downloading", "Downloading input data"),
        ("Training", "Downloading the training image..."), ("Failed", "Training job failed")]


# ---- stopping --------------------------------------------------------------------------------


def test_max_runtime_sends_sigterm_and_uploads_the_model_saved_in_the_grace_period(
        runner_server: SmlocalServer, sm: Any, s3: Any, unique_name: Callable[[str], str]) -> None:
    name = unique_name("maxrt")
    script = ("trap 'echo caught SIGTERM; echo saved > /opt/ml/model/final.txt; exit 0' TERM; "
              "echo training; while true; do sleep 0.1; done")
    started = time.monotonic()
    job = run_job(sm, sh_job(name, script, StoppingCondition={"MaxRuntimeInSeconds": 2}))
    assert (job["TrainingJobStatus"], job["SecondaryStatus"]) == ("Stopped", "MaxRuntimeExceeded")
    assert time.monotonic() - started < 30
    statuses = [t["Status"] for t in job["SecondaryStatusTransitions"]]
    assert statuses[:3] == ["Starting", "Downloading", "Training"]
    assert statuses[-1] == "MaxRuntimeExceeded" and "Stopping" in statuses
    assert model_files(s3, name) == {"final.txt": b"saved\n"}
    assert log_messages(runner_server, name) == ["training", "caught SIGTERM"]


def test_stop_training_job_kills_an_algorithm_that_ignores_sigterm(
        runner_server: SmlocalServer, sm: Any, s3: Any, unique_name: Callable[[str], str],
        docker_engine: docker.DockerClient) -> None:
    name = unique_name("stop")
    script = ("trap 'echo ignoring SIGTERM; echo partial > /opt/ml/model/p.txt' TERM; echo up; "
              "while true; do sleep 0.1; done")
    sm.create_training_job(**sh_job(name, script))
    wait_until(lambda: "up" in log_messages(runner_server, name), 60, "the algorithm to start")
    sm.stop_training_job(TrainingJobName=name)
    assert sm.describe_training_job(TrainingJobName=name)["TrainingJobStatus"] in ("Stopping", "Stopped")
    job = wait_for_status(sm, name, FINAL, timeout=30)
    assert (job["TrainingJobStatus"], job["SecondaryStatus"]) == ("Stopped", "Stopped")
    assert "ignoring SIGTERM" in log_messages(runner_server, name)
    # Saved during the grace period, before SIGKILL.
    assert model_files(s3, name) == {"p.txt": b"partial\n"}
    # The terminal status is written first, then the job is cleaned up.
    assert wait_until(lambda: leftovers(docker_engine, runner_server, name) == [], 30, "cleanup")


# ---- concurrency -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def capped_server(module_smlocal_factory: Callable[..., SmlocalServer], docker_engine: docker.DockerClient
                  ) -> Iterator[SmlocalServer]:
    server = module_smlocal_factory("--stop-grace-seconds", "1", "--max-concurrent-jobs", "2")
    yield server
    settle(server, docker_engine)


def test_jobs_run_concurrently_up_to_the_cap_and_the_rest_wait(
        capped_server: SmlocalServer, unique_name: Callable[[str], str],
        docker_engine: docker.DockerClient) -> None:
    sm = capped_server.client()
    s3_client(capped_server)  # the output bucket
    names = [unique_name(f"cap{i}") for i in range(3)]
    for name in names:
        # Each job runs for ~3 s: long enough to watch them side by side.
        sm.create_training_job(**sh_job(name, "echo started; sleep 3; echo m > /opt/ml/model/m"))

    def secondary() -> list[str]:
        return [sm.describe_training_job(TrainingJobName=n)["SecondaryStatus"] for n in names]

    wait_until(lambda: secondary()[:2] == ["Training", "Training"], 60, "two jobs training together")
    # The cap holds the third back: Pending, SageMaker's "waiting for compute capacity".
    wait_until(lambda: secondary()[2] == "Pending", 10, "the third job Pending")

    # While running: labelled container on its own network, named after the job, host algo-1.
    # (Training starts just before the containers do.)
    [container] = wait_until(lambda: docker_engine.containers.list(filters={"label": f"smlocal.job-name={names[0]}"}),
                             30, "the first job's container to run")
    labels = container.labels
    assert labels["smlocal.job-arn"].endswith(f"training-job/{names[0]}")
    assert (labels["smlocal.managed"], labels["smlocal.host"]) == ("true", "algo-1")
    assert container.attrs["Config"]["Hostname"] == "algo-1"
    assert "host.docker.internal:host-gateway" in container.attrs["HostConfig"]["ExtraHosts"]
    [network_name] = container.attrs["NetworkSettings"]["Networks"]
    assert labels["smlocal.network"] == network_name  # a network of the job's own, taken from the pool
    network = docker_engine.networks.get(network_name)
    assert network.attrs["Labels"]["smlocal.data-dir"] == str(capped_server.data_dir.resolve())
    assert [c.name for c in network.containers] == [container.name]
    # What SageMaker provides under /opt/ml, and no more (the image's /opt/ml/code stays visible).
    assert sorted(m["Destination"] for m in container.attrs["Mounts"]) == [
        "/opt/ml/input", "/opt/ml/model", "/opt/ml/output"]

    jobs = [wait_for_status(sm, n, FINAL, timeout=60) for n in names]
    assert [j["TrainingJobStatus"] for j in jobs] == ["Completed"] * 3
    first_end = min(j["TrainingEndTime"] for j in jobs[:2])
    assert jobs[2]["TrainingStartTime"] >= first_end
