"""The web console in headless Chromium, as a person uses it: the job list, a running job's live log and
metric chart, the Stop button, and the job ending Stopped. Screenshots go to test-artifacts/console/."""

from __future__ import annotations

import io
import tarfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from tests.support.console import chromium, screenshot
from tests.support.jobs import wait_for_status
from tests.support.runner_jobs import (
    s3_client,
    sh_job,
)
from tests.support.smlocal import SmlocalServer

# A line every half second, each with a loss the MetricDefinition picks up; a model saved at the start so a
# stopped job still has one; a log line that would be a script if the page took it as HTML.
SCRIPT = ("trap 'echo caught SIGTERM; exit 0' TERM; echo w > /opt/ml/model/weights; "
          "echo '<script>window.pwned=1</script><b>bold?</b>'; "
          "i=0; while [ $i -lt 400 ]; do i=$((i+1)); echo \"step $i loss=$((900/i))\"; sleep 0.5; done")
DEFINITIONS = [{"Name": "train:loss", "Regex": r"loss=([0-9.]+)"}]


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with chromium(tmp_path_factory.mktemp("chromium") / "profile") as driver:
        yield driver


def wait(what: str, predicate: Callable[[], Any], timeout: float = 60.0, driver: Any = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except Exception:  # noqa: BLE001 - the page is being swapped under us; look again
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            if driver is not None:
                screenshot(driver, f"timeout-{what.replace(' ', '-')}")
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


def test_watch_a_running_job_live_and_stop_it(runner_server: SmlocalServer, browser: Any,
                                              unique_name: Callable[[str], str],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    name = unique_name("console")
    sm = runner_server.client()
    s3_client(runner_server)
    console = f"{runner_server.endpoint}/console/"

    # 1. The list, open before the job exists: the job appears in it without a reload.
    driver.get(console)
    assert driver.find_element(By.TAG_NAME, "h1").text == "Training jobs"
    sm.create_training_job(**sh_job(name, SCRIPT, AlgorithmSpecification={"MetricDefinitions": DEFINITIONS}))
    row = wait("the job in the list", lambda: driver.find_element(By.CSS_SELECTOR, f'tr[data-job="{name}"]'),
               30, driver)
    cells = [c.text for c in row.find_elements(By.TAG_NAME, "td")]
    assert cells[0] == name and cells[1] == "InProgress" and cells[3] == "1", cells
    wait("the list to show Training", lambda: "Training" in driver.find_element(
        By.CSS_SELECTOR, f'tr[data-job="{name}"]').text, 60, driver)
    screenshot(driver, "01-job-list")

    # 2. The job page: log lines and metric points arrive while it runs.
    driver.find_element(By.LINK_TEXT, name).click()
    wait("the job page", lambda: driver.find_element(By.ID, "job-name").text == name, 30, driver)
    assert driver.find_element(By.ID, "job-status").text == "InProgress"
    pane = wait("algo-1's log", lambda: driver.find_element(By.CSS_SELECTOR, 'pre.log[data-host="algo-1"]'), 60, driver)
    wait("a log line", lambda: "step 2 loss=450" in pane.text, 60, driver)
    lines_before = len(pane.find_elements(By.CSS_SELECTOR, "div.line"))
    chart = wait("the loss chart", lambda: driver.find_element(By.CSS_SELECTOR, 'figure[data-metric="train:loss"]'),
                 30, driver)
    first = wait("a metric point", lambda: int(chart.get_attribute("data-points") or 0), 60, driver)
    wait("another metric point", lambda: int(chart.get_attribute("data-points") or 0) > first, 60, driver)
    assert len(chart.find_elements(By.CSS_SELECTOR, "polyline.line")) == 1
    assert "algo-1: " in chart.find_element(By.CSS_SELECTOR, ".legend").text
    wait("more log lines", lambda: len(pane.find_elements(By.CSS_SELECTOR, "div.line")) > lines_before, 30, driver)
    # The container's markup is text on the page; nothing of it ran.
    assert "<script>window.pwned=1</script><b>bold?</b>" in pane.text
    assert driver.execute_script("return window.pwned === undefined") is True
    assert pane.find_elements(By.TAG_NAME, "script") == [] and pane.find_elements(By.TAG_NAME, "b") == []
    timeline = driver.find_element(By.ID, "timeline").text
    assert "Training" in timeline and "Downloading" in timeline
    screenshot(driver, "02-running-job")

    # 3. Stop, confirmed in the browser's dialog; the page follows the job to Stopped.
    driver.find_element(By.ID, "stop-button").click()
    alert = driver.switch_to.alert
    assert f"Stop training job {name}?" in alert.text
    alert.accept()
    wait("Stopped", lambda: driver.find_element(By.ID, "job-status").text == "Stopped", 60, driver)
    wait("the log's last lines", lambda: driver.find_element(By.ID, "logs-section").get_attribute(
        "data-complete") == "yes", 30, driver)
    pane = driver.find_element(By.CSS_SELECTOR, 'pre.log[data-host="algo-1"]')
    assert "caught SIGTERM" in pane.text
    assert driver.find_elements(By.ID, "stop-button") == []
    statuses = [li.find_element(By.TAG_NAME, "b").text
                for li in driver.find_element(By.ID, "timeline").find_elements(By.TAG_NAME, "li")]
    assert "Stopping" in statuses and statuses[-1] == "Stopped", statuses
    link = wait("the model download link", lambda: driver.find_element(By.LINK_TEXT, "model.tar.gz"), 30, driver)
    screenshot(driver, "03-stopped-job")

    described = wait_for_status(sm, name, {"Stopped"}, timeout=10)
    assert described["SecondaryStatus"] == "Stopped"
    # The page's timeline is the job's SecondaryStatusTransitions, entry for entry.
    assert statuses == [t["Status"] for t in described["SecondaryStatusTransitions"]]
    # The link streams the model the job uploaded, byte for byte.
    downloaded = requests.get(link.get_attribute("href"), timeout=30)
    stored = runner_server.client("s3").get_object(Bucket="smlocal-test-output",
                                                   Key=f"models/{name}/output/model.tar.gz")["Body"].read()
    assert downloaded.content == stored
    with tarfile.open(fileobj=io.BytesIO(downloaded.content)) as tar:
        assert tar.extractfile("weights").read() == b"w\n"

    # 4. Back on the list, filtered by status and name, the job shows as Stopped.
    driver.get(f"{console}?status=Stopped&name={name}")
    row = driver.find_element(By.CSS_SELECTOR, f'tr[data-job="{name}"]')
    assert [c.text for c in row.find_elements(By.TAG_NAME, "td")][1:3] == ["Stopped", "Stopped"]
    shot = screenshot(driver, "04-list-stopped")
    assert shot.stat().st_size > 10_000
    with capsys.disabled():
        print(f"\nconsole screenshots: {shot.parent}")


def test_a_tuning_jobs_page_draws_its_objective_chart_and_marks_the_best(
        runner_server: SmlocalServer, browser: Any, docker_engine: Any) -> None:
    """Opened while its trials run, the tuning page follows the tuning job to Completed by itself: one dot
    per finished trial on the chart, and the best trial marked in the table."""
    from selenium.webdriver.common.by import By

    from tests.support.tuning import build_tuning_image, trials, tuning_request, wait_tuning

    driver = browser
    name = "browser-tuning"
    build_tuning_image(docker_engine)
    sm = runner_server.client()
    s3_client(runner_server)
    sm.create_hyper_parameter_tuning_job(**tuning_request(name, max_jobs=3, parallel=2, RandomSeed=5,
                                                          definition={"static": {"pause": "1"}}))
    driver.get(f"{runner_server.endpoint}/console/tuning-jobs/{name}")
    assert driver.find_element(By.ID, "tuning-name").text == name
    wait("Completed", lambda: driver.find_element(By.ID, "tuning-status").text == "Completed", 120, driver)
    job, _ = wait_tuning(sm, name, timeout=10)
    finished = [t for t in trials(sm, name) if t.get("FinalHyperParameterTuningJobObjectiveMetric")]
    chart = driver.find_element(By.ID, "objective-chart")
    assert chart.is_displayed() and chart.size["height"] > 100
    dots = chart.find_elements(By.CSS_SELECTOR, "svg circle.dot")
    assert sorted(d.get_attribute("data-trial") for d in dots) == sorted(t["TrainingJobName"] for t in finished)
    assert len(chart.find_elements(By.CSS_SELECTOR, "svg polyline.best-so-far")) == 1
    best = job["BestTrainingJob"]["TrainingJobName"]
    assert [d.get_attribute("data-trial") for d in chart.find_elements(By.CSS_SELECTOR, "svg circle.best")] == [best]
    [row] = driver.find_elements(By.CSS_SELECTOR, "#trials tr.best")
    assert row.get_attribute("data-trial") == best
    marker = row.find_element(By.CSS_SELECTOR, ".best-marker")
    assert marker.is_displayed() and "best" in marker.text
    assert driver.find_elements(By.ID, "stop-button") == []
    screenshot(driver, "05-tuning-job")
