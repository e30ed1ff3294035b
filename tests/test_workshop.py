"""examples/workshop/README.md, run as written: the teacher's set-up (the data set copied into the store's
folder, then listed through S3), and the attendees' steps (four jobs trained from the shipped script with
the real training toolkit, watched, stopped and failed), checked through the API and the web console."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.console import get, text_of
from tests.support.smlocal import SmlocalServer

REPO = Path(__file__).resolve().parents[1]
WORKSHOP = REPO / "examples" / "workshop" / "README.md"
# Done by `make test` already (and `make install` is what runs these tests); the test starts the server.
NOT_RUN = ("make install", "make images")


def section(title: str) -> str:
    return WORKSHOP.read_text().split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def sh_blocks(text: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", text, re.S)


def teacher_blocks() -> tuple[str, str, str]:
    """(set-up, `make run`, the check through S3), as the teacher's section has them."""
    setup, run, check = sh_blocks(section("Before the workshop (the teacher)"))
    return setup, run, check


def server_env(run_block: str) -> dict[str, str]:
    """The SMLOCAL_* settings the `make run` line sets, for the server the test starts in its place."""
    [line] = [line for line in run_block.splitlines() if "make run" in line]
    return dict(re.findall(r"(SMLOCAL_\w+)=(\S+)", line.split("make run")[0]))


def as_written(script: str, data_dir: Path, tmp: Path) -> str:
    lines = [line for line in script.splitlines() if line.split("#")[0].strip() not in NOT_RUN]
    # /tmp/ first: the test's own folders lie under /tmp.
    return "\n".join(lines).replace("/tmp/", f"{tmp}/").replace(".smlocal/", f"{data_dir}/")


def run(script: str, server: SmlocalServer, tmp: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    script = script.replace("http://localhost:8080", server.endpoint).replace("http://localhost:9000",
                                                                               server.s3_endpoint)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "AWS_PAGER": "",
           # `smlocal logs` / `smlocal stop` talk to http://127.0.0.1:8080 unless told otherwise.
           "SMLOCAL_ENDPOINT_URL": server.endpoint}
    for var in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        env.pop(var, None)
    return subprocess.run(["bash", "-eu", "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture()
def workshop(tmp_path: Path, test_images: object) -> Iterator[tuple[SmlocalServer, Path]]:
    """The teacher's set-up as written (before smlocal starts), then smlocal as `make run` starts it."""
    setup, run_block, _ = teacher_blocks()
    data_dir = tmp_path / "smlocal"
    done = subprocess.run(["bash", "-eu", "-c", as_written(setup, data_dir, tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    # `make run`: no S3 endpoint, so the embedded files store over <data-dir>/s3.
    server = SmlocalServer(data_dir, None, env=server_env(run_block)).start()
    try:
        yield server, tmp_path
    finally:
        server.stop()


def test_teacher_setup_copies_the_data_set_into_the_store_folder_and_s3_lists_it(
        workshop: tuple[SmlocalServer, Path]) -> None:
    server, tmp = workshop
    data = tmp / "workshop-data"
    made = sorted(p.relative_to(data).as_posix() for p in data.rglob("*.csv"))
    assert made == ["train/part-0000.csv", "train/part-0001.csv", "train/part-0002.csv", "train/part-0003.csv",
                    "validation/part-0000.csv"]
    _, _, check = teacher_blocks()
    listed = run(as_written(check, server.data_dir, tmp), server, tmp, timeout=120)
    assert listed.returncode == 0, f"{listed.stdout}\n{listed.stderr}"
    # `aws s3 ls --recursive`: date, time, size, key.
    shown = {key: int(size) for size, key in re.findall(r"^\S+ \S+\s+(\d+) (\S+)$", listed.stdout, re.M)}
    assert shown == {f"data/{name}": (data / name).stat().st_size for name in made}
    # The copies are plain files in the store's folder, the same bytes.
    for name in made:
        assert (server.data_dir / "s3" / "workshop" / "data" / name).read_bytes() == (data / name).read_bytes()
    assert server_env(teacher_blocks()[1]) == {"SMLOCAL_STOP_GRACE_SECONDS": "10"}


def test_the_attendee_steps_train_stop_and_fail_jobs_as_the_walkthrough_says(
        workshop: tuple[SmlocalServer, Path]) -> None:
    server, tmp = workshop
    _, _, check = teacher_blocks()
    steps = [check] + [block for title in ("1. The first job", "2. Two learning rates, side by side",
                                           "3. Stopping a job", "4. A job that fails")
                       for block in sh_blocks(section(title))]
    done = run(as_written("\n".join(steps), server.data_dir, tmp), server, tmp)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{server.log()}"

    sm = server.client()
    jobs = {n: sm.describe_training_job(TrainingJobName=f"workshop-{n}") for n in (1, 2, 3, 4)}
    assert {n: j["TrainingJobStatus"] for n, j in jobs.items()} == {
        1: "Completed", 2: "Completed", 3: "Stopped", 4: "Failed"}
    final = {n: {m["MetricName"]: m["Value"] for m in jobs[n]["FinalMetricDataList"]} for n in (1, 2)}
    assert set(final[1]) == {"train:loss", "validation:accuracy"}
    # The smaller learning rate learns more slowly, as step 2 says.
    assert final[2]["train:loss"] > final[1]["train:loss"]
    assert final[1]["validation:accuracy"] > 0.8
    # Step 3: the model of the last finished epoch, through the console's download link.
    [metadata] = [json.loads(block) for block in re.findall(r"^\{\n.*?^\}$", done.stdout, re.S | re.M)
                  if "epochs_done" in block]
    assert metadata["training_job_name"] == "workshop-3" and metadata["epochs_done"] >= 5
    # The toolkit (the container's first process) does not pass SIGTERM on: the job waits out the grace
    # period the `make run` line sets (10 s), as step 3 says.
    started = {t["Status"]: t["StartTime"] for t in jobs[3]["SecondaryStatusTransitions"]}
    assert (started["Stopped"] - started["Stopping"]).total_seconds() >= 9.5
    # Step 4: the toolkit's failure file is the FailureReason; the script's error is in the log.
    assert "ExecuteUserScriptError" in jobs[4]["FailureReason"]
    assert jobs[4]["FailureReason"] in done.stdout
    feed = get(server, "/console/api/jobs/workshop-4/streams").json()["streams"]
    events = get(server, "/console/api/jobs/workshop-4/logs", params={"stream": feed[0]["name"]}).json()["events"]
    assert any("learning_rate must be > 0" in e["message"] for e in events)

    # What the walk-through tells attendees to look at in the console.
    listed = get(server, "/console/fragments/jobs", params={"name": "workshop"}).text
    assert re.findall(r'<tr data-job="([^"]+)">', listed) == ["workshop-4", "workshop-3", "workshop-2", "workshop-1"]
    page = text_of(get(server, "/console/jobs/workshop-1").text)
    for shown in ("Downloading input data", "Training image download completed. Training in progress.",
                  "model.tar.gz", "s3://workshop/output/workshop-1/output/model.tar.gz", "train:loss",
                  "validation:accuracy", "sagemaker_submit_directory"):
        assert shown in page, shown
    [stream] = get(server, "/console/api/jobs/workshop-1/streams").json()["streams"]
    lines = [e["message"] for e in get(server, "/console/api/jobs/workshop-1/logs",
                                       params={"stream": stream["name"]}).json()["events"]]
    assert any("Invoking script with the following command" in line for line in lines)
    assert [line for line in lines if line.startswith("epoch=")][-1].startswith("epoch=20 train_loss=")
    loss = get(server, "/console/api/jobs/workshop-1/metrics").json()["metrics"][0]
    assert loss["name"] == "train:loss"
    assert len(loss["series"][0]["points"]) == 20  # an epoch a second, each point in its own second
    failed_page = text_of(get(server, "/console/jobs/workshop-4").text)
    assert "FailureReason AlgorithmError: ExecuteUserScriptError" in failed_page

    # Step 6: after a restart the jobs and their models are all still there.
    server.restart()
    assert re.findall(r'<tr data-job="([^"]+)">', get(server, "/console/fragments/jobs",
                                                     params={"name": "workshop"}).text) == [
        "workshop-4", "workshop-3", "workshop-2", "workshop-1"]
    model = get(server, "/console/jobs/workshop-1/artifacts/model.tar.gz")
    assert model.status_code == 200 and model.content == server.client("s3").get_object(
        Bucket="workshop", Key="output/workshop-1/output/model.tar.gz")["Body"].read()
