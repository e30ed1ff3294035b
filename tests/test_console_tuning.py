"""The console's hyperparameter tuning pages over plain HTTP, for tuning jobs that really ran (trials are real
training jobs in real containers, tests/support/tuning.py): the list, a tuning job's page with every trial as
ListTrainingJobsForHyperParameterTuningJob gives it, the best one marked, the objective chart, Stop, and the
not-found page."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import docker
import pytest
from botocore.exceptions import ClientError

from tests.support.console import form_token, get, post, text_of
from tests.support.runner_jobs import s3_client, settle, wait_until
from tests.support.smlocal import SmlocalServer
from tests.support.tuning import build_tuning_image, continuous_x, trials, tuning_request, wait_tuning

SERVER = "tuning_server"
FINISHED = "console-done"
FMT = "%Y-%m-%d %H:%M:%S"


@pytest.fixture(scope="module")
def tuning_server(module_smlocal_factory: Callable[..., SmlocalServer], docker_engine: docker.DockerClient
                  ) -> Iterator[SmlocalServer]:
    build_tuning_image(docker_engine)
    server = module_smlocal_factory("--stop-grace-seconds", "1.5", "--max-concurrent-jobs", "4")
    s3_client(server)  # the buckets trials upload their models to
    yield server
    # A tuning job a failed test left running would start new trials behind settle's back: stop it first.
    sm = server.client()
    for summary in sm.list_hyper_parameter_tuning_jobs(StatusEquals="InProgress")["HyperParameterTuningJobSummaries"]:
        sm.stop_hyper_parameter_tuning_job(HyperParameterTuningJobName=summary["HyperParameterTuningJobName"])
        wait_tuning(sm, summary["HyperParameterTuningJobName"], timeout=90)
    settle(server, docker_engine)


@pytest.fixture()
def sm(tuning_server: SmlocalServer) -> Any:
    return tuning_server.client()


@pytest.fixture(scope="module")
def finished(tuning_server: SmlocalServer) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A Random search of three trials, two at a time, run to Completed: its description and its trials."""
    sm = tuning_server.client()
    sm.create_hyper_parameter_tuning_job(**tuning_request(FINISHED, "Random", max_jobs=3, parallel=2, RandomSeed=11))
    job, _ = wait_tuning(sm, FINISHED)
    assert job["HyperParameterTuningJobStatus"] == "Completed", [t.get("FailureReason") for t in trials(sm, FINISHED)]
    return job, trials(sm, FINISHED)


def cells(row_html: str) -> list[str]:
    return [text_of(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row_html, re.S)]


def trial_rows(html: str) -> dict[str, tuple[str, str]]:
    """Trial name -> (the row's attributes, its inner HTML), from the trials table."""
    return {name: (attrs, inner) for name, attrs, inner in
            re.findall(r'<tr data-trial="([^"]+)"([^>]*)>(.*?)</tr>', html, re.S)}


def objective_text(summary: dict[str, Any]) -> str:
    """The objective value as a client reads it: the float boto3 parsed, as Python writes it."""
    metric = summary.get("FinalHyperParameterTuningJobObjectiveMetric")
    return repr(metric["Value"]) if metric else ""


def when(value: Any) -> str:
    return value.astimezone().strftime(FMT) if value else ""


# ---- the list ------------------------------------------------------------------------------------


def test_the_list_shows_counters_strategy_and_best_value(
        tuning_server: SmlocalServer, finished: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    job, _ = finished
    # The console's navigation leads to it, from the training job list as from anywhere.
    assert 'href="/console/tuning-jobs"' in get(tuning_server, "/console/").text
    page = get(tuning_server, "/console/tuning-jobs")
    assert page.status_code == 200
    assert 'id="nav-tuning-jobs" aria-current="page"' in page.text
    row = re.search(rf'<tr data-tuning-job="{FINISHED}">(.*?)</tr>', page.text, re.S)
    assert row, page.text
    # name, status, strategy, completed, in progress, failed, stopped, best objective, created
    assert cells(row.group(1)) == [
        FINISHED, "Completed", "Random", "3", "0", "0", "0",
        repr(job["BestTrainingJob"]["FinalHyperParameterTuningJobObjectiveMetric"]["Value"]),
        when(job["CreationTime"])]
    assert f'href="/console/tuning-jobs/{FINISHED}"' in row.group(1)
    # It refreshes from a fragment, as the training job list does; the fragment has the same rows.
    assert 'data-live="/console/fragments/tuning-jobs"' in page.text
    fragment = get(tuning_server, "/console/fragments/tuning-jobs", params={"name": FINISHED})
    assert re.findall(r'<tr data-tuning-job="([^"]+)">', fragment.text) == [FINISHED]
    empty = get(tuning_server, "/console/tuning-jobs", params={"name": FINISHED, "status": "Failed"})
    assert "No hyperparameter tuning jobs match these filters in us-east-1." in text_of(empty.text)


# ---- a tuning job's page -------------------------------------------------------------------------


def test_the_page_shows_every_trial_as_the_api_lists_it(
        tuning_server: SmlocalServer, finished: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    job, summaries = finished
    page = get(tuning_server, f"/console/tuning-jobs/{FINISHED}")
    assert page.status_code == 200
    text = text_of(page.text)
    for shown in ("strategy Random", "objective Minimize validation:loss", "limits 3 training jobs, 2 at a time",
                  "training jobs 3 completed 0 in progress 0 failed 0 stopped",
                  "objective 3 succeeded 0 pending 0 failed",
                  f"ended {when(job['HyperParameterTuningEndTime'])}",
                  "Training jobs not improving the objective "
                  f"{job['TuningJobCompletionDetails']['NumberOfTrainingJobsObjectiveNotImproving']}"):
        assert shown in text, shown
    assert 'id="stop-button"' not in page.text  # Completed: nothing to stop
    # One column per tuned hyperparameter, then the trial's outcome.
    header = re.search(r'<table class="jobs trials" id="trials">\s*<thead>(.*?)</thead>', page.text, re.S)
    assert header
    assert [text_of(h) for h in re.findall(r"<th[^>]*>(.*?)</th>", header.group(1), re.S)] == [
        "training job", "x", "status", "validation:loss", "objective status", "started", "ended"]
    rows = trial_rows(page.text)
    assert list(rows) == [s["TrainingJobName"] for s in summaries]  # oldest first
    for summary in summaries:
        name = summary["TrainingJobName"]
        _, inner = rows[name]
        assert f'href="/console/jobs/{name}"' in inner
        shown = cells(inner)
        shown[0] = shown[0].removesuffix(" ★ best")
        assert shown == [name, summary["TunedHyperParameters"]["x"], summary["TrainingJobStatus"],
                         objective_text(summary), summary["ObjectiveStatus"], when(summary["TrainingStartTime"]),
                         when(summary["TrainingEndTime"])]
    # The fragment the page refreshes with has the same table; Completed, the page stops refreshing.
    fragment = get(tuning_server, f"/console/fragments/tuning-jobs/{FINISHED}")
    assert list(trial_rows(fragment.text)) == list(rows)
    assert 'data-status="Completed" data-terminal="yes"' in fragment.text


def test_the_best_trial_is_the_one_marked(tuning_server: SmlocalServer,
                                          finished: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    job, summaries = finished
    best = job["BestTrainingJob"]
    # The API's best is the lowest loss (Minimize); the page marks that one and no other.
    assert best["TrainingJobName"] == min(
        summaries, key=lambda s: s["FinalHyperParameterTuningJobObjectiveMetric"]["Value"])["TrainingJobName"]
    html = get(tuning_server, f"/console/tuning-jobs/{FINISHED}").text
    rows = trial_rows(html)
    marked = [name for name, (attrs, _) in rows.items() if 'class="best"' in attrs]
    assert marked == [best["TrainingJobName"]]
    assert [name for name, (_, inner) in rows.items() if "★ best" in text_of(inner)] == marked
    summary = text_of(re.search(r'<p id="best-training-job">(.*?)</p>', html, re.S).group(1))
    assert summary == (f"★ best {best['TrainingJobName']}: validation:loss = {objective_text(best)} "
                       f"(x={best['TunedHyperParameters']['x']})")


def test_the_chart_has_a_point_per_finished_trial_and_the_best_so_far(
        tuning_server: SmlocalServer, finished: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    job, summaries = finished
    html = get(tuning_server, f"/console/tuning-jobs/{FINISHED}").text
    chart = re.search(r'<figure class="chart objective-chart" id="objective-chart" data-points="(\d+)">(.*?)</figure>',
                      html, re.S)
    assert chart
    dots = re.findall(r'<circle cx="([\d.]+)" cy="([\d.]+)" r="[\d.]+" class="dot line-0( best)?"\s+'
                      r'data-trial="([^"]+)" data-value="([^"]+)">', chart.group(2))
    by_end = sorted(summaries, key=lambda s: s["TrainingEndTime"])
    assert int(chart.group(1)) == len(dots) == len(summaries)
    # In end-time order, left to right, each at its final objective value.
    assert [(d[3], d[4]) for d in dots] == [(s["TrainingJobName"], objective_text(s)) for s in by_end]
    xs = [float(d[0]) for d in dots]
    assert xs == sorted(xs)
    assert [d[3] for d in dots if d[2]] == [job["BestTrainingJob"]["TrainingJobName"]]
    # A lower loss is drawn lower: y grows with the value.
    ys = {float(d[4]): float(d[1]) for d in dots}
    assert [ys[v] for v in sorted(ys)] == sorted(ys.values(), reverse=True)
    # The best-so-far line starts at the first trial, never gets worse (never rises on the page), and ends at
    # the best value, at the last trial's end.
    line = re.search(r'<polyline points="([^"]+)" class="line line-1 best-so-far">', chart.group(2))
    assert line
    points = [tuple(map(float, p.split(","))) for p in line.group(1).split()]
    best_y = next(float(d[1]) for d in dots if d[2])
    assert points[0] == (xs[0], float(dots[0][1]))
    assert points[-1] == (xs[-1], best_y)
    assert all(b[1] >= a[1] for a, b in zip(points, points[1:], strict=False))
    assert "best so far: " + objective_text(job["BestTrainingJob"]) in text_of(chart.group(2))


def test_a_trials_page_links_back_to_its_tuning_job(
        tuning_server: SmlocalServer, sm: Any, finished: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    job, summaries = finished
    trial = summaries[0]["TrainingJobName"]
    assert sm.describe_training_job(TrainingJobName=trial)["TuningJobArn"] == job["HyperParameterTuningJobArn"]
    page = get(tuning_server, f"/console/jobs/{trial}").text
    link = re.search(r'<p class="tuning-link" id="tuning-job">(.*?)</p>', page, re.S)
    assert link and f'<a href="/console/tuning-jobs/{FINISHED}">{FINISHED}</a>' in link.group(1)
    assert job["HyperParameterTuningJobArn"] in text_of(link.group(1))


def test_what_a_request_controls_is_escaped(tuning_server: SmlocalServer, sm: Any) -> None:
    name = "console-escape"
    ranges = {**continuous_x(), "CategoricalParameterRanges": [{"Name": "<i>tag</i>", "Values": ["<b>v</b>"]}]}
    sm.create_hyper_parameter_tuning_job(**tuning_request(name, max_jobs=2, parallel=2, ranges=ranges))
    job, _ = wait_tuning(sm, name)
    assert job["HyperParameterTuningJobStatus"] == "Completed"
    html = get(tuning_server, f"/console/tuning-jobs/{name}").text
    assert "<i>tag</i>" not in html and "<b>v</b>" not in html
    assert '<th class="hp">&lt;i&gt;tag&lt;/i&gt;</th>' in html
    assert html.count('data-hp="&lt;i&gt;tag&lt;/i&gt;">&lt;b&gt;v&lt;/b&gt;</td>') == 2
    # No script but the console's own, as on the training job pages.
    assert re.findall(r"<script[^>]*>", html) == ['<script src="/console/static/console.js" defer>']


def test_failed_trials_show_their_failure_reason_and_no_point(tuning_server: SmlocalServer, sm: Any) -> None:
    name = "console-fail"
    sm.create_hyper_parameter_tuning_job(**tuning_request(
        name, max_jobs=2, parallel=2, definition={"static": {"fail_above": "-1"}}))  # every x fails
    job, _ = wait_tuning(sm, name)
    summaries = trials(sm, name)
    assert job["TrainingJobStatusCounters"]["NonRetryableError"] == 2 and "BestTrainingJob" not in job
    html = get(tuning_server, f"/console/tuning-jobs/{name}").text
    text = text_of(html)
    assert "training jobs 0 completed 0 in progress 2 failed (0 retryable, 2 not) 0 stopped" in text
    assert "None: no training job reported validation:loss." in text
    rows = trial_rows(html)
    assert {n: (cells(inner)[2], cells(inner)[4], cells(inner)[-1]) for n, (_, inner) in rows.items()} == {
        s["TrainingJobName"]: ("Failed", "Failed", " ".join(s["FailureReason"].split())) for s in summaries}
    assert not any('class="best"' in attrs for attrs, _ in rows.values())
    assert 'data-points="0"' in html and "no training job reported a final value" in text
    row = re.search(rf'<tr data-tuning-job="{name}">(.*?)</tr>', get(tuning_server, "/console/tuning-jobs").text, re.S)
    assert row and cells(row.group(1))[3:8] == ["0", "0", "2", "0", ""]


# ---- Stop ----------------------------------------------------------------------------------------


def test_stop_from_the_console_stops_the_tuning_job(tuning_server: SmlocalServer, sm: Any) -> None:
    name = "console-stop"
    sm.create_hyper_parameter_tuning_job(**tuning_request(
        name, max_jobs=4, parallel=2, definition={"static": {"epochs": "200", "pause": "0.5"}}))
    wait_until(lambda: sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
               ["TrainingJobStatusCounters"].get("InProgress") == 2, 60, "two running trials")
    page = get(tuning_server, f"/console/tuning-jobs/{name}").text
    assert 'data-status="InProgress" data-terminal="no"' in page
    assert f'data-live="/console/fragments/tuning-jobs/{name}"' in page
    assert re.search(rf'<form class="stop" method="post" action="/console/tuning-jobs/{name}/stop"\s+'
                     rf'data-confirm="Stop hyperparameter tuning job {name}\?', page)
    # The newest tuning job is listed first.
    listed = re.findall(r'<tr data-tuning-job="([^"]+)">', get(tuning_server, "/console/tuning-jobs").text)
    assert listed[0] == name

    token = form_token(page)
    path = f"/console/tuning-jobs/{name}/stop"
    assert post(tuning_server, path, data={}).status_code == 403  # no token: the console's own pages only
    assert post(tuning_server, path, data={"token": token},
                headers={"Origin": "http://evil.example"}).status_code == 403
    stopped = post(tuning_server, path, data={"token": token}, headers={"Origin": tuning_server.endpoint})
    assert stopped.status_code == 303
    assert stopped.headers["location"] == f"/console/tuning-jobs/{name}"
    job, _ = wait_tuning(sm, name, timeout=90)
    assert job["HyperParameterTuningJobStatus"] == "Stopped"
    assert job["TrainingJobStatusCounters"]["Stopped"] == 2

    page = get(tuning_server, f"/console/tuning-jobs/{name}").text
    assert 'id="stop-button"' not in page
    assert "training jobs 0 completed 0 in progress 0 failed 2 stopped" in text_of(page)
    assert [cells(inner)[2] for _, inner in trial_rows(page).values()] == ["Stopped", "Stopped"]
    # A second Stop shows StopHyperParameterTuningJob's own refusal.
    again = post(tuning_server, path, data={"token": token}, headers={"Origin": tuning_server.endpoint})
    with pytest.raises(ClientError) as info:
        sm.stop_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
    error = info.value.response["Error"]
    assert again.status_code == 400
    assert f"StopHyperParameterTuningJob failed: {error['Code']}: {error['Message']}" in text_of(again.text)
    # With a good token, a name that is not there is the not-found page.
    unknown = post(tuning_server, "/console/tuning-jobs/never-made/stop", data={"token": token},
                   headers={"Origin": tuning_server.endpoint})
    assert unknown.status_code == 404
    assert "can't find a tuning job with name never-made" in text_of(unknown.text)


# ---- names that are not there --------------------------------------------------------------------


def test_unknown_and_bad_names_get_the_not_found_page(tuning_server: SmlocalServer, sm: Any) -> None:
    with pytest.raises(ClientError) as info:
        sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName="never-made")
    error = info.value.response["Error"]
    for path in ("/console/tuning-jobs/never-made", "/console/fragments/tuning-jobs/never-made"):
        missing = get(tuning_server, path)
        assert missing.status_code == 404, path
        assert missing.headers["content-type"].startswith("text/html")
        assert f"{error['Code']} {error['Message']}" in text_of(missing.text)
    # Names no tuning job can have, and addresses no page has: the same page, never a 500.
    for path in ("/console/tuning-jobs/no_underscores", "/console/tuning-jobs/" + "a" * 40,
                 "/console/tuning-jobs/a%20b", "/console/tuning-jobs/a/b", "/console/tuning-jobs/a%2Fb"):
        missing = get(tuning_server, path)
        assert missing.status_code == 404, path
        assert missing.headers["content-type"].startswith("text/html"), path
        assert "smlocal console" in missing.text
