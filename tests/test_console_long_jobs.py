"""The console's job page for long jobs, over plain HTTP with real containers and the server's real S3:
the folders a running job syncs to S3 (DescribeTrainingJobProgress), the Interrupt button of a managed spot
job (InterruptTrainingJob, behind the same token and origin checks as Stop), the job resuming from its
checkpoint, and the attempt of a job with a RetryStrategy."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from tests.support.console import form_token, get, post, text_of
from tests.support.jobs import wait_for_status
from tests.support.long_jobs import CKPT, resumable
from tests.support.runner_jobs import FINAL, OUTPUT_BUCKET, model_files, sh_job, wait_until
from tests.support.smlocal import SmlocalServer

SERVER = "runner_server"
# The first run leaves its piece of work in the checkpoint folder and trains on until it is interrupted;
# the second finds it there (copied back in from S3), adds its own and trains a few seconds more.
RESUMABLE = resumable("sleep 4")


def _fragment(server: SmlocalServer, name: str) -> str:
    """The job summary the page refreshes itself with."""
    answer = get(server, f"/console/fragments/jobs/{name}")
    assert answer.status_code == 200, answer.text
    return answer.text


def _state(html: str) -> str:
    status = re.search(r'id="job-status">([^<]+)<', html)
    secondary = re.search(r'id="job-secondary">([^<]*)<', html)
    assert status and secondary, html
    return f"{status.group(1)}/{secondary.group(1)}"


def _interruptions(html: str) -> str:
    found = re.search(r'<dd id="job-interruptions">(.*?)</dd>', html, re.S)
    assert found, "no spot interruptions on the page"
    return text_of(found.group(1))


def _synced(html: str) -> dict[tuple[str, str], list[str]]:
    """The synced-folder table: (host, kind) -> its cells' text."""
    rows = re.findall(r'<tr data-host="([^"]+)" data-kind="([^"]+)">(.*?)</tr>', html, re.S)
    return {(host, kind): [text_of(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
            for host, kind, row in rows}


def _timeline(html: str) -> list[tuple[str, str]]:
    return re.findall(r"<li[^>]*>\s*<span class=\"swatch[^>]*></span>\s*<b>([^<]+)</b>.*?<div class=\"message\">"
                      r"([^<]*)</div>", html, re.S)


def test_a_spot_job_shows_its_synced_checkpoints_and_resumes_after_interrupt_is_pressed(
        runner_server: SmlocalServer, s3: Any, unique_name: Callable[[str], str]) -> None:
    sm = runner_server.client()
    name = unique_name("console-spot")
    uri = f"s3://{OUTPUT_BUCKET}/ckpt/{name}"
    sm.create_training_job(**sh_job(name, RESUMABLE, s3=s3, CheckpointConfig={"S3Uri": uri},
                                    EnableManagedSpotTraining=True,
                                    StoppingCondition={"MaxRuntimeInSeconds": 600, "MaxWaitTimeInSeconds": 900}))

    # While it trains: the checkpoint folder in the table, run-1 in S3, and an Interrupt button.
    def synced_once() -> dict[tuple[str, str], list[str]] | None:
        html = _fragment(runner_server, name)
        rows = _synced(html)
        row = rows.get(("algo-1", "checkpoints"))
        return rows if _state(html) == "InProgress/Training" and row and row[3] == "1" else None

    rows = wait_until(synced_once, 60, "the synced checkpoint in the table")
    # host, folder, S3 URI, files, bytes, pending, last sync, mode, last error
    host, folder, s3_uri, files, size, pending, last_sync, mode, error = rows[("algo-1", "checkpoints")]
    assert (host, folder, s3_uri, files, size, pending) == ("algo-1", f"checkpoints {CKPT}", uri, "1",
                                                           str(len("work of run 1\n")), "0")
    assert re.fullmatch(r"just now|\d+ s ago|\d+ min \d\d s ago", last_sync), last_sync
    assert (mode, error) == ("watch", "")
    assert s3.get_object(Bucket=OUTPUT_BUCKET, Key=f"ckpt/{name}/run-1")["Body"].read() == b"work of run 1\n"
    page = get(runner_server, f"/console/jobs/{name}").text
    assert re.search(r'<time datetime="\d{4}-\d\d-\d\dT[\d:.]+\+00:00" title="[^"]+">', page)
    assert 'id="interrupt-button"' in page and 'id="stop-button"' in page
    assert _interruptions(page) == "0"
    assert 'id="job-attempt"' not in page  # no RetryStrategy: one attempt, nothing to count
    text = text_of(page)
    assert "Managed spot yes" in text and "Max wait 15 min 00 s" in text

    # Interrupt, as the page's form sends it: the token, from the console's own origin.
    token = form_token(page)
    pressed = post(runner_server, f"/console/jobs/{name}/interrupt", data={"token": token},
                   headers={"Origin": runner_server.endpoint})
    assert pressed.status_code == 303, text_of(pressed.text)
    assert pressed.headers["location"] == f"/console/jobs/{name}"

    # The second run: Training again, with one interruption counted and run-2 synced beside run-1.
    seen: list[str] = []

    def second_run() -> str | None:
        html = _fragment(runner_server, name)
        state = _state(html)
        if not seen or seen[-1] != state:
            seen.append(state)
        rows = _synced(html).get(("algo-1", "checkpoints"))
        if state == "InProgress/Training" and _interruptions(html) == "1" and rows and rows[3] == "2":
            return html
        assert state.split("/")[0] not in FINAL, seen
        return None

    html = wait_until(second_run, 60, "the second run training")
    assert 'id="interrupt-button"' in html  # a new run on spot capacity can be interrupted again
    # The live summary's timeline: Interrupted, then the restart from the checkpoints.
    assert [s for s, _ in _timeline(html)] == ["Starting", "Downloading", "Training", "Interrupted", "Starting",
                                               "Downloading", "Training"]
    # What the page showed on the way (a poll may miss a short status, never show one out of order).
    path = ["InProgress/Training", "InProgress/Interrupted", "InProgress/Pending", "InProgress/Starting",
            "InProgress/Downloading", "InProgress/Training"]
    walk = iter(path)
    assert all(state in walk for state in seen) and seen[-1] == "InProgress/Training", seen

    job = wait_for_status(sm, name, FINAL, timeout=60)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    assert model_files(s3, name) == {"work.txt": b"work of run 1\nwork of run 2\n"}
    page = get(runner_server, f"/console/jobs/{name}").text
    steps = _timeline(page)
    assert steps == [(t["Status"], t["StatusMessage"]) for t in job["SecondaryStatusTransitions"]]
    assert [s for s, _ in steps] == ["Starting", "Downloading", "Training", "Interrupted", "Starting",
                                     "Downloading", "Training", "Uploading", "Completed"]
    assert "after spot interruption 1" in steps[4][1]
    assert _interruptions(page) == "1"
    # Ended: no buttons, and no table (the folders are synced once more at the end, then no longer watched).
    for gone in ('id="interrupt-button"', 'id="stop-button"', 'id="synced-folders"'):
        assert gone not in page

    # Interrupt on an ended job (the page it was pressed on, out of date): InterruptTrainingJob's own error,
    # shown as Stop's are.
    again = post(runner_server, f"/console/jobs/{name}/interrupt", data={"token": token},
                 headers={"Origin": runner_server.endpoint})
    assert again.status_code == 400
    assert (f"InterruptTrainingJob failed: ValidationException: Training job {name} can be interrupted only while "
            "it is Training; it is Completed (Completed).") in text_of(again.text)


def test_an_on_demand_job_with_retries_shows_its_attempt_and_no_interrupt_button(
        runner_server: SmlocalServer, unique_name: Callable[[str], str]) -> None:
    sm = runner_server.client()
    name = unique_name("console-ondemand")
    sm.create_training_job(**sh_job(name, "trap 'exit 0' TERM; i=0; while [ $i -lt 600 ]; do sleep 0.1; "
                                    "i=$((i+1)); done", RetryStrategy={"MaximumRetryAttempts": 2}))
    wait_until(lambda: _state(_fragment(runner_server, name)) == "InProgress/Training", 60, "Training")
    page = get(runner_server, f"/console/jobs/{name}").text
    assert 'id="stop-button"' in page and 'id="interrupt-button"' not in page
    assert text_of(re.search(r'<dd id="job-attempt">(.*?)</dd>', page, re.S).group(1)) == "1 of 3"
    assert 'id="job-interruptions"' not in page  # not spot: nothing to count
    assert 'id="synced-folders"' not in page  # no CheckpointConfig, TensorBoard or Debugger: nothing synced
    assert "Retry strategy MaximumRetryAttempts 2" in text_of(page)

    # A forged POST is refused before anything is asked of the API, as Stop's is.
    path = f"/console/jobs/{name}/interrupt"
    token = form_token(page)
    forged = {
        "no token": post(runner_server, path, data={}),
        "wrong token": post(runner_server, path, data={"token": "guessed"}),
        "other origin": post(runner_server, path, data={"token": token}, headers={"Origin": "http://evil.example"}),
        "cross-site fetch": post(runner_server, path, data={"token": token}, headers={"Sec-Fetch-Site": "cross-site"}),
        "a GET": get(runner_server, path),
    }
    assert {k: r.status_code for k, r in forged.items()} == {
        "no token": 403, "wrong token": 403, "other origin": 403, "cross-site fetch": 403, "a GET": 405}
    assert "reload the page" in text_of(forged["no token"].text)
    # With the token the API answers, and its refusal is the page's error.
    refused = post(runner_server, path, data={"token": token}, headers={"Origin": runner_server.endpoint})
    assert refused.status_code == 400
    assert f"InterruptTrainingJob failed: ValidationException: Training job {name} is not a managed spot" in text_of(
        refused.text)
    assert _state(_fragment(runner_server, name)) == "InProgress/Training"
    assert 'id="interrupt-button"' not in refused.text
    sm.stop_training_job(TrainingJobName=name)
    assert wait_for_status(sm, name, FINAL, timeout=60)["TrainingJobStatus"] == "Stopped"
    assert "attempt 1 of 3" in text_of(get(runner_server, f"/console/jobs/{name}").text)
