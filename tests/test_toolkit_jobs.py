"""The real SageMaker training toolkit runs unmodified under smlocal.

Images are built FROM `smlocal/training-toolkit:1` (`pip install sagemaker-training`, by
scripts/build-images.sh) the way the toolkit's README says: the script in /opt/ml/code and
`ENV SAGEMAKER_PROGRAM`. Real `smlocal serve`, real containers, a real S3 server, boto3 clients; each
test records every status it sees while polling.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import pytest

from runner.layout import HostLayout, container_mounts
from smlocal.core.jobspec import JobSpec
from tests.support.docker_env import BUSYBOX_IMAGE, SCRIPT_EXAMPLE_IMAGE, TOOLKIT_IMAGE
from tests.support.jobs import job_request, wait_recording
from tests.support.logs import stream_files
from tests.support.runner_jobs import (
    FINAL,
    INPUT_BUCKET,
    log_messages,
    model_files,
    s3_channel,
    sh_job,
    tar_members,
)
from tests.support.smlocal import SmlocalServer

SERVER = "runner_server"  # `sm` and `s3` are clients of the runner plugin's server (tests/conftest.py)

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT_MODE_DIR = REPO_ROOT / "examples" / "script-mode"
PROBE_IMAGE = "smlocal-test/toolkit-probe:1"
BAKED_OPT_ML_IMAGE = "smlocal-test/opt-ml-baked:1"
TWO_HOSTS = {"InstanceType": "ml.m5.large", "InstanceCount": 2, "VolumeSizeInGB": 10}

# The toolkit runs it as `python3 probe.py <hyperparameters as --key value>`. It dumps what it was
# given into the model (one folder per host), proves the rest of the image's /opt/ml is there and
# writable, prints metric lines, and fails on request.
PROBE = r'''
import json, os, socket, sys
from pathlib import Path

import helper  # a module next to the script in the image's /opt/ml/code

me = os.environ["SM_CURRENT_HOST"]
out = Path(os.environ["SM_MODEL_DIR"]) / me
out.mkdir(parents=True)
written = {}
for folder in ("/opt/ml/code", "/opt/ml/extra"):
    path = Path(folder) / f"written-by-{me}.txt"
    path.write_text("ok")
    written[folder] = path.read_text()
channels = {}
for name, path in json.loads(os.environ["SM_TRAINING_ENV"])["channel_input_dirs"].items():
    channels[name] = {str(p.relative_to(path)): p.read_text() for p in sorted(Path(path).rglob("*")) if p.is_file()}
seen = {
    "argv": sys.argv[1:],
    "env": {k: v for k, v in os.environ.items() if k.startswith("SM_")},
    "executable": sys.executable,
    "cwd": os.getcwd(),
    "helper": helper.VALUE,
    "baked": Path("/opt/ml/extra/baked.txt").read_text(),
    "code_listing": sorted(os.listdir("/opt/ml/code")),
    "written": written,
    "channels": channels,
    "peers": {h: socket.gethostbyname(h) for h in json.loads(os.environ["SM_HOSTS"])},
}
(out / "seen.json").write_text(json.dumps(seen, indent=1, sort_keys=True))
print("epoch 1: loss=0.50")
print("epoch 2: loss=0.25")
print(f"{me} validation accuracy=0.875", flush=True)
hps = json.loads(os.environ["SM_HPS"])
if hps.get("fail_with"):
    print(f"probe failing on purpose: {hps['fail_with']}", file=sys.stderr, flush=True)
    sys.exit(int(hps.get("exit_code", 1)))
'''


def build_image(client: docker.DockerClient, tag: str, files: dict[str, str], dockerfile: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Path(tmp)
        for name, text in files.items():
            (ctx / name).write_text(text)
        (ctx / "Dockerfile").write_text(dockerfile)
        client.images.build(path=str(ctx), tag=tag, pull=False, rm=True, forcerm=True)


@pytest.fixture(scope="module")
def toolkit_images(docker_engine: docker.DockerClient) -> None:
    """The probe (toolkit + baked script + an /opt/ml/extra folder) and a plain image with its own /opt/ml."""
    build_image(docker_engine, PROBE_IMAGE, {"probe.py": PROBE, "helper.py": "VALUE = 'baked helper'\n",
                                             "baked.txt": "baked into the image\n"}, f"""
FROM {TOOLKIT_IMAGE}
COPY probe.py helper.py /opt/ml/code/
COPY baked.txt /opt/ml/extra/baked.txt
ENV SAGEMAKER_PROGRAM=probe.py
""")
    build_image(docker_engine, BAKED_OPT_ML_IMAGE, {"run.sh": "echo run\n", "weights.bin": "pretrained\n"}, f"""
FROM {BUSYBOX_IMAGE}
COPY run.sh /opt/ml/code/run.sh
COPY weights.bin /opt/ml/pretrained/weights.bin
""")


def run_and_watch(sm: Any, request: dict[str, Any], timeout: float = 180.0) -> tuple[dict[str, Any], list[str]]:
    """Create the job and poll it to the end; also every (status/secondary status) seen on the way."""
    sm.create_training_job(**request)
    return wait_recording(sm, request["TrainingJobName"], FINAL, timeout=timeout)


def assert_way(seen: list[str], transitions: list[dict[str, Any]], expected: list[str]) -> None:
    """The job went through exactly `expected` (secondary statuses), and polling saw nothing else, in order."""
    assert [t["Status"] for t in transitions] == expected
    secondary = [s.split("/")[1] for s in seen]
    assert secondary == [s for s in expected if s in secondary], seen
    assert secondary[-1] == expected[-1]
    for state in seen:
        status, second = state.split("/")
        assert status == {"Completed": "Completed", "Failed": "Failed"}.get(second, "InProgress"), seen


def probe_job(name: str, **overrides: Any) -> dict[str, Any]:
    algorithm = {"TrainingImage": PROBE_IMAGE, "TrainingInputMode": "File",
                 **overrides.pop("AlgorithmSpecification", {})}
    return job_request(name, PROBE_IMAGE, AlgorithmSpecification=algorithm, **overrides)


def host_events(server: SmlocalServer, name: str, host: str) -> list[dict[str, Any]]:
    """One host's log events (the layout tests.support.runner_jobs.log_events reads for algo-1)."""
    return [json.loads(line) for stream in stream_files(server.data_dir, name, f"{host}-")
            for line in stream.read_text().splitlines()]


def seen_by(s3: Any, name: str, host: str = "algo-1") -> dict[str, Any]:
    return json.loads(model_files(s3, name)[f"{host}/seen.json"])


SUCCESS_WAY = ["Starting", "Downloading", "Training", "Uploading", "Completed"]


# ---- what the toolkit derives ----------------------------------------------------------------


@pytest.mark.usefixtures("toolkit_images")
def test_baked_script_sees_the_environment_the_toolkit_derives(
        runner_server: SmlocalServer, sm: Any, s3: Any, unique_name: Callable[[str], str]) -> None:
    name = unique_name("probe")
    s3.put_object(Bucket=INPUT_BUCKET, Key=f"{name}/train/part-1.csv", Body=b"1,2\n")
    s3.put_object(Bucket=INPUT_BUCKET, Key=f"{name}/train/sub/part-2.csv", Body=b"3,4\n")
    s3.put_object(Bucket=INPUT_BUCKET, Key=f"{name}/validation/v.csv", Body=b"5,6\n")
    # Values as the SageMaker SDK sends them: every one a string, JSON-encoded when not a plain word.
    hyperparameters = {"epochs": "3", "lr": "0.1", "layers": "[1, 2]", "optimizer": '"adam"',
                       "nesterov": "true", "schedule": '{"warmup": 2}', "note": "plain words"}
    request = probe_job(
        name, HyperParameters=hyperparameters,
        InputDataConfig=[s3_channel("train", f"s3://{INPUT_BUCKET}/{name}/train/", ContentType="text/csv"),
                         s3_channel("validation", f"s3://{INPUT_BUCKET}/{name}/validation/")],
        AlgorithmSpecification={"MetricDefinitions": [
            {"Name": "train:loss", "Regex": r"loss=([0-9.]+)"},
            {"Name": "validation:accuracy", "Regex": r"validation accuracy=([0-9.]+)"}]},
    )
    job, seen = run_and_watch(sm, request)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    assert_way(seen, job["SecondaryStatusTransitions"], SUCCESS_WAY)

    probe = seen_by(s3, name)
    env = probe["env"]
    typed = {"epochs": 3, "lr": 0.1, "layers": [1, 2], "optimizer": "adam", "nesterov": True,
             "schedule": {"warmup": 2}, "note": "plain words"}
    assert json.loads(env["SM_HPS"]) == typed
    assert env["SM_HP_EPOCHS"] == "3" and env["SM_HP_OPTIMIZER"] == "adam" and env["SM_HP_LAYERS"] == "[1,2]"
    assert json.loads(env["SM_CHANNELS"]) == ["train", "validation"]
    assert env["SM_CHANNEL_TRAIN"] == "/opt/ml/input/data/train"
    assert env["SM_CHANNEL_VALIDATION"] == "/opt/ml/input/data/validation"
    assert json.loads(env["SM_HOSTS"]) == ["algo-1"]
    assert env["SM_CURRENT_HOST"] == "algo-1"
    assert env["SM_MODEL_DIR"] == "/opt/ml/model"
    assert env["SM_OUTPUT_DATA_DIR"] == "/opt/ml/output/data"
    assert env["SM_INPUT_CONFIG_DIR"] == "/opt/ml/input/config"
    assert env["SM_NUM_GPUS"] == "0"
    # No CPU limit on the container: it sees the host's CPUs, as an instance sees its own.
    assert env["SM_NUM_CPUS"] == str(os.cpu_count())
    assert env["SM_MODULE_DIR"] == "/opt/ml/code" and env["SM_USER_ENTRY_POINT"] == "probe.py"
    assert json.loads(env["SM_USER_ARGS"]) == probe["argv"]

    training_env = json.loads(env["SM_TRAINING_ENV"])
    assert training_env["job_name"] == name
    assert training_env["hyperparameters"] == typed
    assert training_env["hosts"] == ["algo-1"] and training_env["current_host"] == "algo-1"
    assert training_env["current_instance_type"] == "ml.m5.large"
    assert training_env["channel_input_dirs"] == {"train": "/opt/ml/input/data/train",
                                                  "validation": "/opt/ml/input/data/validation"}
    assert training_env["input_data_config"] == {
        "train": {"ContentType": "text/csv", "TrainingInputMode": "File",
                  "S3DistributionType": "FullyReplicated", "RecordWrapperType": "None"},
        "validation": {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated",
                       "RecordWrapperType": "None"}}
    assert training_env["resource_config"]["current_group_name"] == "homogeneousCluster"
    assert training_env["model_dir"] == "/opt/ml/model" and training_env["num_gpus"] == 0

    # Hyperparameters as arguments (sorted by name), the script run by the toolkit's interpreter.
    assert probe["argv"] == ["--epochs", "3", "--layers", "[1, 2]", "--lr", "0.1", "--nesterov", "True",
                             "--note", "plain words", "--optimizer", "adam", "--schedule", "warmup=2"]
    assert probe["executable"].startswith("/opt/sagemaker-training/bin/python")
    assert probe["channels"] == {"train": {"part-1.csv": "1,2\n", "sub/part-2.csv": "3,4\n"},
                                 "validation": {"v.csv": "5,6\n"}}

    # The image's /opt/ml/code and /opt/ml/extra: there, importable, writable.
    assert probe["helper"] == "baked helper" and probe["baked"] == "baked into the image\n"
    assert {"probe.py", "helper.py"} <= set(probe["code_listing"])
    assert probe["written"] == {"/opt/ml/code": "ok", "/opt/ml/extra": "ok"}

    metrics = {m["MetricName"]: m["Value"] for m in job["FinalMetricDataList"]}
    assert metrics == {"train:loss": 0.25, "validation:accuracy": 0.875}
    assert "epoch 2: loss=0.25" in log_messages(runner_server, name)


@pytest.mark.usefixtures("toolkit_images")
def test_failing_script_reports_the_toolkits_error_as_failure_reason(
        runner_server: SmlocalServer, sm: Any, s3: Any, unique_name: Callable[[str], str]) -> None:
    name = unique_name("probefail")
    request = probe_job(name, HyperParameters={"fail_with": '"the data is bad"', "exit_code": "3"})
    job, seen = run_and_watch(sm, request)
    assert job["TrainingJobStatus"] == "Failed"
    transitions = [t["Status"] for t in job["SecondaryStatusTransitions"]]
    assert transitions[:3] == ["Starting", "Downloading", "Training"] and transitions[-1] == "Failed"
    assert_way(seen, job["SecondaryStatusTransitions"], transitions)
    # The toolkit wrote /opt/ml/output/failure; its text is the reason (whatever prefix smlocal adds).
    reason = job["FailureReason"]
    assert "ExecuteUserScriptError:\nExitCode 3\n" in reason
    command = "/opt/sagemaker-training/bin/python3 -- probe.py --exit_code 3 --fail_with the data is bad"
    assert f'Command "{command}"' in reason
    assert len(reason) <= 1024
    # The toolkit does not capture the script's stderr into the reason; it is in the log.
    assert "probe failing on purpose: the data is bad" in log_messages(runner_server, name)
    # What the script saved before failing is still uploaded.
    assert "algo-1/seen.json" in model_files(s3, name)


@pytest.mark.usefixtures("toolkit_images")
def test_two_host_toolkit_job_completes_with_each_host_knowing_the_cluster(
        runner_server: SmlocalServer, sm: Any, s3: Any, unique_name: Callable[[str], str]) -> None:
    name = unique_name("probe2")
    s3.put_object(Bucket=INPUT_BUCKET, Key=f"{name}/train/a.csv", Body=b"1\n")
    # algo-2's toolkit starts late, when algo-1 has long finished: its name must still resolve (on
    # SageMaker the instance stays up until the job ends), or the toolkit waits 15 minutes for it.
    late_start = ['sh', '-c', '[ "$(cat /etc/hostname)" = algo-2 ] && sleep 4; exec train']
    request = probe_job(name, ResourceConfig=TWO_HOSTS, HyperParameters={"epochs": "1"},
                        InputDataConfig=[s3_channel("train", f"s3://{INPUT_BUCKET}/{name}/train/")],
                        AlgorithmSpecification={"ContainerEntrypoint": late_start})
    job, seen = run_and_watch(sm, request)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    assert_way(seen, job["SecondaryStatusTransitions"], SUCCESS_WAY)
    addresses = {}
    for host in ("algo-1", "algo-2"):
        probe = seen_by(s3, name, host)
        env = probe["env"]
        assert env["SM_CURRENT_HOST"] == host
        assert json.loads(env["SM_HOSTS"]) == ["algo-1", "algo-2"]
        training_env = json.loads(env["SM_TRAINING_ENV"])
        assert training_env["current_host"] == host and training_env["hosts"] == ["algo-1", "algo-2"]
        assert training_env["resource_config"]["current_host"] == host
        assert probe["channels"] == {"train": {"a.csv": "1\n"}}
        assert sorted(probe["peers"]) == ["algo-1", "algo-2"]
        addresses[host] = probe["peers"]
    # Both hosts agree on where each host is, and the two are different machines.
    assert addresses["algo-1"] == addresses["algo-2"]
    assert addresses["algo-1"]["algo-1"] != addresses["algo-1"]["algo-2"]
    # And the case above did happen: algo-1's algorithm had exited before algo-2's said anything.
    algo_1, algo_2 = host_events(runner_server, name, "algo-1"), host_events(runner_server, name, "algo-2")
    # (stdout and stderr are separate pipes: the toolkit's last lines may reach the log in either order)
    algo_1_done = [e["timestamp"] for e in algo_1 if "Reporting training SUCCESS" in e["message"]]
    assert algo_1_done and any("Reporting training SUCCESS" in e["message"] for e in algo_2)
    assert algo_1_done[0] < algo_2[0]["timestamp"]


# ---- script mode: code from the store, as the SDK ships it -----------------------------------


def sourcedir_tar(files: dict[str, bytes]) -> bytes:
    """A sourcedir.tar.gz as the SageMaker SDK packs a source_dir (members at the top level)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def training_csv(rows: int = 200) -> bytes:
    """The workshop's synthetic data (examples/sklearn/make_data.py), as CSV bytes."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_data", REPO_ROOT / "examples" / "sklearn" / "make_data.py")
    assert spec is not None and spec.loader is not None
    make_data = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_data)
    lines = [",".join(f"{v:.6f}" for v in x) + f",{y}" for x, y in make_data.make_dataset(rows, 4, 0)]
    return ("\n".join(lines) + "\n").encode()


ACCURACY_METRIC = [{"Name": "train:accuracy", "Regex": r"train_accuracy=([0-9.]+)"}]


def test_toolkit_downloads_the_submit_directory_from_the_store_and_runs_it(
        runner_server: SmlocalServer, sm: Any, s3: Any, unique_name: Callable[[str], str]) -> None:
    """What SDK v2's `Estimator(entry_point=..., source_dir=...)` sends, made by hand with boto3."""
    name = unique_name("sourcedir")
    code_uri = f"s3://{INPUT_BUCKET}/{name}/source/sourcedir.tar.gz"
    s3.put_object(Bucket=INPUT_BUCKET, Key=f"{name}/source/sourcedir.tar.gz", Body=sourcedir_tar({
        "train.py": (SCRIPT_MODE_DIR / "train.py").read_bytes(),
        "README.txt": b"shipped with the code\n"}))
    s3.put_object(Bucket=INPUT_BUCKET, Key=f"{name}/train/train.csv", Body=training_csv())
    # The SDK JSON-encodes every value; sagemaker_* are the toolkit's own and never reach the script.
    hyperparameters = {"alpha": "0.5", "max_iter": "200",
                       "sagemaker_program": '"train.py"', "sagemaker_submit_directory": json.dumps(code_uri),
                       "sagemaker_container_log_level": "20", "sagemaker_region": '"us-east-1"',
                       "sagemaker_job_name": json.dumps(name)}
    request = job_request(
        name, TOOLKIT_IMAGE, HyperParameters=hyperparameters,
        AlgorithmSpecification={"TrainingImage": TOOLKIT_IMAGE, "TrainingInputMode": "File",
                                "MetricDefinitions": ACCURACY_METRIC},
        InputDataConfig=[s3_channel("train", f"s3://{INPUT_BUCKET}/{name}/train/")])
    job, seen = run_and_watch(sm, request)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    assert_way(seen, job["SecondaryStatusTransitions"], SUCCESS_WAY)

    files = model_files(s3, name)
    assert sorted(files) == ["metadata.json", "model.joblib"]
    metadata = json.loads(files["metadata.json"])
    assert (metadata["alpha"], metadata["max_iter"], metadata["n_samples"]) == (0.5, 200, 200)
    assert metadata["training_job_name"] == name
    [metric] = job["FinalMetricDataList"]
    assert metric["MetricName"] == "train:accuracy" and metric["Value"] == metadata["train_accuracy"] > 0.8
    messages = log_messages(runner_server, name)
    # The image has no /opt/ml/code of its own: the toolkit fetched the code through S3_ENDPOINT_URL.
    assert any("/opt/ml/code  is empty, unzipping" in m for m in messages), messages
    assert any(m.startswith("read 200 rows from 1 file(s)") for m in messages)


@pytest.mark.usefixtures("toolkit_images")
def test_missing_submit_directory_fails_with_the_toolkits_reason(
        runner_server: SmlocalServer, sm: Any, s3: Any, unique_name: Callable[[str], str]) -> None:
    name = unique_name("nosource")
    missing = f"s3://{INPUT_BUCKET}/{name}/source/sourcedir.tar.gz"
    request = job_request(name, TOOLKIT_IMAGE, HyperParameters={
        "sagemaker_program": '"train.py"', "sagemaker_submit_directory": json.dumps(missing)})
    job, seen = run_and_watch(sm, request)
    assert job["TrainingJobStatus"] == "Failed"
    assert seen[-1] == "Failed/Failed"
    # The toolkit's own report (its traceback of the failed download), not just an exit code.
    reason = job["FailureReason"]
    assert reason.startswith("Framework Error") or "\nFramework Error" in reason or ": Framework Error" in reason
    assert "in s3_download" in reason, reason
    assert any("Not Found" in m or "404" in m for m in log_messages(runner_server, name))


def test_baked_workshop_example_trains_and_reports_its_metric(
        sm: Any, s3: Any, unique_name: Callable[[str], str]) -> None:
    name = unique_name("sklearnscript")
    s3.put_object(Bucket=INPUT_BUCKET, Key=f"{name}/train/train.csv", Body=training_csv())
    request = job_request(
        name, SCRIPT_EXAMPLE_IMAGE, HyperParameters={"alpha": "0.5", "max_iter": "200"},
        AlgorithmSpecification={"TrainingImage": SCRIPT_EXAMPLE_IMAGE, "TrainingInputMode": "File",
                                "MetricDefinitions": ACCURACY_METRIC},
        InputDataConfig=[s3_channel("train", f"s3://{INPUT_BUCKET}/{name}/train/")])
    job, seen = run_and_watch(sm, request)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    assert_way(seen, job["SecondaryStatusTransitions"], SUCCESS_WAY)
    files = model_files(s3, name)
    assert sorted(files) == ["metadata.json", "model.joblib"]
    metadata = json.loads(files["metadata.json"])
    assert (metadata["model"], metadata["alpha"], metadata["max_iter"]) == ("LogisticRegression", 0.5, 200)
    assert job["FinalMetricDataList"][0]["Value"] == metadata["train_accuracy"]
    output = tar_members(s3, f"models/{name}/output/output.tar.gz")
    assert json.loads(output["metrics.json"]) == {"train_accuracy": metadata["train_accuracy"]}


# ---- the image's own /opt/ml ----------------------------------------------------------------


def test_container_mounts_are_what_sagemaker_provides(tmp_path: Path) -> None:
    layout = HostLayout(tmp_path / "job", "algo-2")
    tree = tmp_path / "job" / "algo-2" / "opt" / "ml"
    platform = {str(tree / "input"): "/opt/ml/input", str(tree / "model"): "/opt/ml/model",
                str(tree / "output"): "/opt/ml/output"}
    assert container_mounts(layout, JobSpec.from_request({})) == platform
    assert container_mounts(layout, JobSpec.from_request({"CheckpointConfig": {"S3Uri": "s3://b/c"}})) == {
        **platform, str(tree / "checkpoints"): "/opt/ml/checkpoints"}
    assert container_mounts(layout, JobSpec.from_request(
        {"CheckpointConfig": {"S3Uri": "s3://b/c", "LocalPath": "/data/ckpt//run-1/"}})) == {
        **platform, str(tree / "checkpoints"): "/data/ckpt/run-1"}

BAKED_SCRIPT = r"""
set -e
cd /opt/ml
cat code/run.sh pretrained/weights.bin > model/seen.txt
echo new > code/new.txt && echo more >> pretrained/weights.bin && mkdir -p scratch && echo s > scratch/s
cat code/new.txt pretrained/weights.bin scratch/s >> model/seen.txt
ls /opt/ml | sort > model/opt-ml.txt
"""


@pytest.mark.usefixtures("toolkit_images")
def test_image_files_under_opt_ml_stay_visible_and_writable(
        sm: Any, s3: Any, unique_name: Callable[[str], str]) -> None:
    name = unique_name("baked")
    request = sh_job(name, BAKED_SCRIPT, BAKED_OPT_ML_IMAGE, s3=s3)
    job, seen = run_and_watch(sm, request)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    assert_way(seen, job["SecondaryStatusTransitions"], SUCCESS_WAY)
    files = model_files(s3, name)
    assert files["seen.txt"] == b"echo run\npretrained\nnew\npretrained\nmore\ns\n"
    # The platform's three folders next to the image's own; no checkpoints folder without CheckpointConfig.
    assert files["opt-ml.txt"].decode().split() == ["code", "input", "model", "output", "pretrained", "scratch"]


HOSTILE_SCRIPT = r"""
cd /opt/ml
# The platform's folders are mount points: they can be neither removed nor swapped for links.
for d in input model output; do
  if rm -rf "$d" 2>/dev/null && ln -s / "$d" 2>/dev/null; then echo "swapped $d"; fi
done
ls -ld /opt/ml/model /opt/ml/output > /dev/stderr
echo kept > model/kept.txt
ln -s {secret} model/link
ln -s {secret} output/failure
exit 5
"""


def test_hostile_container_cannot_swap_the_mounted_folders_or_read_host_files(
        runner_server: SmlocalServer, sm: Any, s3: Any, unique_name: Callable[[str], str]) -> None:
    name = unique_name("hostile")
    secret = runner_server.data_dir / f"host-secret-{name}"
    secret.write_text("host only")
    request = sh_job(name, HOSTILE_SCRIPT.format(secret=secret), s3=s3,
                     CheckpointConfig={"S3Uri": f"s3://{INPUT_BUCKET}/{name}/ckpt", "LocalPath": "/opt/ml/ckpt/"})
    job, seen = run_and_watch(sm, request)
    assert job["TrainingJobStatus"] == "Failed"
    assert seen[-1] == "Failed/Failed"
    # The failure file is a link to a host file: not followed, so the exit code speaks.
    assert "exit code: 5" in job["FailureReason"] and "host only" not in job["FailureReason"]
    messages = log_messages(runner_server, name)
    assert not [m for m in messages if m.startswith("swapped")], messages
    body = s3.get_object(Bucket="smlocal-test-output", Key=f"models/{name}/output/model.tar.gz")["Body"].read()
    assert b"host only" not in body
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        assert tar.extractfile("kept.txt").read() == b"kept\n"
        assert tar.getmember("link").issym()
