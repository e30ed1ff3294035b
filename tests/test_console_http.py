"""The web console over plain HTTP: what it shows, what it escapes, what it refuses, and that it acts
only through the API's own operations (the same answers, the same errors, the same account and region)."""

from __future__ import annotations

import base64
import io
import re
import tarfile
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests
from botocore.exceptions import ClientError

from tests.support.console import form_token, get, post, text_of
from tests.support.jobs import job_request, wait_for_status
from tests.support.smlocal import SmlocalServer

HOSTILE = "<script>window.pwned=1</script>"


def job_page(server: SmlocalServer, name: str, **params: str) -> requests.Response:
    return get(server, f"/console/jobs/{name}", params=params)


# ---- the job list ------------------------------------------------------------------------------


def test_console_is_served_at_console_with_a_redirect_from_the_bare_path(api_server: SmlocalServer) -> None:
    bare = get(api_server, "/console", params={"status": "Stopped"})
    assert bare.status_code == 307
    assert bare.headers["location"] == "/console/?status=Stopped"
    page = get(api_server, "/console/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    text = text_of(page.text)
    assert "account 123456789012 · region us-east-1 (the server's default region, --region)" in text
    # The API on the same port is untouched by the console's routes.
    assert api_server.client().list_training_jobs()["ResponseMetadata"]["HTTPStatusCode"] == 200


def test_list_shows_status_instances_times_and_duration_with_filters(
        api_server: SmlocalServer, sm: Any, unique_name: Callable[[str], str]) -> None:
    prefix = unique_name("listed")
    three = f"{prefix}-three"
    stopped = f"{prefix}-stopped"
    sm.create_training_job(**job_request(three, ResourceConfig={
        "InstanceType": "ml.m5.large", "InstanceCount": 3, "VolumeSizeInGB": 5}))
    sm.create_training_job(**job_request(stopped))
    sm.stop_training_job(TrainingJobName=stopped)  # queued, so Stopped at once

    table = get(api_server, "/console/fragments/jobs", params={"name": prefix})
    assert table.status_code == 200
    rows = dict(re.findall(r'<tr data-job="([^"]+)">(.*?)</tr>', table.text, re.S))
    assert set(rows) == {three, stopped}
    cells = {name: [text_of(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)] for name, row in rows.items()}
    described = sm.describe_training_job(TrainingJobName=stopped)
    created = described["CreationTime"].astimezone().strftime("%Y-%m-%d %H:%M:%S")
    # name, status, secondary status, instances, created, ended, duration
    assert cells[three][:4] == [three, "InProgress", "Starting", "3"]
    assert cells[three][5] == ""  # not ended
    assert cells[stopped][:5] == [stopped, "Stopped", "Stopped", "1", created]
    assert cells[stopped][5] and cells[stopped][6].endswith(" s")
    # Newest first, as ListTrainingJobs SortOrder=Descending gives them.
    assert list(rows) == [stopped, three]

    only_stopped = get(api_server, "/console/fragments/jobs", params={"name": prefix, "status": "Stopped"})
    assert re.findall(r'<tr data-job="([^"]+)">', only_stopped.text) == [stopped]
    # The full page carries the same table and tells its script where to refresh it from.
    page = get(api_server, "/console/", params={"name": prefix, "status": "InProgress"})
    assert re.findall(r'<tr data-job="([^"]+)">', page.text) == [three]
    assert f'data-live="/console/fragments/jobs?status=InProgress&amp;name={prefix}"' in page.text
    sm.stop_training_job(TrainingJobName=three)


def test_a_filter_the_api_refuses_shows_the_apis_own_error(api_server: SmlocalServer, sm: Any) -> None:
    with pytest.raises(ClientError) as info:
        sm.list_training_jobs(NameContains="no_underscores")
    page = get(api_server, "/console/", params={"name": "no_underscores"})
    assert page.status_code == 400
    assert f"ValidationException: {info.value.response['Error']['Message']}" in text_of(page.text)
    # The page still refreshes from the same (refused) filter, not from anything else.
    assert 'data-live="/console/fragments/jobs?name=no_underscores"' in page.text


def test_region_picker_shows_that_regions_jobs_only(api_server: SmlocalServer,
                                                   unique_name: Callable[[str], str]) -> None:
    name = unique_name("ireland")
    api_server.client(region="eu-west-1").create_training_job(**job_request(name))
    default = get(api_server, "/console/fragments/jobs", params={"name": name})
    assert f'data-job="{name}"' not in default.text
    ireland = get(api_server, "/console/", params={"name": name, "region": "eu-west-1"})
    assert f'data-job="{name}"' in ireland.text
    assert "account 123456789012 · region eu-west-1" in text_of(ireland.text)
    assert "the server's default region" not in text_of(ireland.text)
    # Links keep the region, and the job page reads the job in it.
    assert f'href="/console/jobs/{name}?region=eu-west-1"' in ireland.text
    assert job_page(api_server, name, region="eu-west-1").status_code == 200
    assert job_page(api_server, name).status_code == 404
    bad = get(api_server, "/console/", params={"region": "moon-1"})
    assert bad.status_code == 400
    assert "'moon-1' is not an AWS region name" in text_of(bad.text)
    api_server.client(region="eu-west-1").stop_training_job(TrainingJobName=name)


# ---- the job page ------------------------------------------------------------------------------


def test_job_page_shows_configuration_and_transitions(api_server: SmlocalServer, sm: Any,
                                                      unique_name: Callable[[str], str]) -> None:
    name = unique_name("page")
    sm.create_training_job(**job_request(name, HyperParameters={"epochs": "3"}, InputDataConfig=[{
        "ChannelName": "train", "DataSource": {"S3DataSource": {
            "S3DataType": "S3Prefix", "S3Uri": "s3://bucket/train/", "S3DataDistributionType": "ShardedByS3Key"}}}]))
    sm.stop_training_job(TrainingJobName=name)
    described = sm.describe_training_job(TrainingJobName=name)
    text = text_of(job_page(api_server, name).text)
    assert f"ARN {described['TrainingJobArn']}" in text
    assert "Image smlocal-test/busybox:1" in text
    assert "Instances 1 × ml.m5.large" in text
    assert "train s3://bucket/train/ S3Prefix ShardedByS3Key" in text
    assert "epochs 3" in text
    # Every SecondaryStatusTransitions entry, in order, with its message.
    shown = re.findall(r"<li[^>]*>\s*<span class=\"swatch[^>]*></span>\s*<b>([^<]+)</b>.*?<div class=\"message\">"
                       r"([^<]*)</div>", job_page(api_server, name).text, re.S)
    assert shown == [(t["Status"], t["StatusMessage"]) for t in described["SecondaryStatusTransitions"]]
    assert [s for s, _ in shown] == ["Starting", "Stopping", "Stopped"]
    missing = job_page(api_server, "no-such-job-here")
    assert missing.status_code == 404
    assert "ValidationException Requested resource not found." in text_of(missing.text)


def test_everything_a_job_request_controls_is_escaped(api_server: SmlocalServer, sm: Any,
                                                      unique_name: Callable[[str], str]) -> None:
    name = unique_name("escape")
    request = job_request(name, HyperParameters={"<b>k</b>": HOSTILE}, Environment={"HTML": "<img src=x onerror=1>"},
                          InputDataConfig=[{"ChannelName": "train", "DataSource": {"S3DataSource": {
                              "S3DataType": "S3Prefix", "S3Uri": "s3://bucket/<svg onload=1>"}}}])
    request["AlgorithmSpecification"]["MetricDefinitions"] = [{"Name": "</td><script>x</script>", "Regex": "<(.+)>"}]
    sm.create_training_job(**request)
    html = job_page(api_server, name).text
    for raw in (HOSTILE, "<b>k</b>", "<img src=x", "<svg onload", "</td><script>x</script>"):
        assert raw not in html
    for escaped in ("&lt;script&gt;window.pwned=1&lt;/script&gt;", "&lt;b&gt;k&lt;/b&gt;",
                    "&lt;img src=x onerror=1&gt;", "s3://bucket/&lt;svg onload=1&gt;",
                    "&lt;/td&gt;&lt;script&gt;x&lt;/script&gt;"):
        assert escaped in html
    # The only scripts are the console's own files, and the browser is told to run no other.
    assert re.findall(r"<script[^>]*>", html) == [
        '<script src="/console/static/console.js" defer>', '<script src="/console/static/chart.js" defer>',
        '<script src="/console/static/job.js" defer>']
    policy = get(api_server, f"/console/jobs/{name}").headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    sm.stop_training_job(TrainingJobName=name)


def test_metric_feed_has_every_definition_per_host(api_server: SmlocalServer, sm: Any,
                                                   unique_name: Callable[[str], str]) -> None:
    name = unique_name("feed")
    request = job_request(name, ResourceConfig={"InstanceType": "ml.m5.large", "InstanceCount": 2,
                                                "VolumeSizeInGB": 5})
    request["AlgorithmSpecification"]["MetricDefinitions"] = [{"Name": "train:loss", "Regex": "loss=(.+)"},
                                                              {"Name": "<acc>", "Regex": "acc=(.+)"}]
    sm.create_training_job(**request)
    feed = get(api_server, f"/console/api/jobs/{name}/metrics").json()
    assert feed["period"] == 1
    assert [(m["name"], [s["host"] for s in m["series"]]) for m in feed["metrics"]] == [
        ("train:loss", ["algo-1", "algo-2"]), ("<acc>", ["algo-1", "algo-2"])]
    assert all(s["points"] == [] for m in feed["metrics"] for s in m["series"])  # nothing ran
    assert get(api_server, f"/console/api/jobs/{name}/streams").json() == {"streams": []}
    sm.stop_training_job(TrainingJobName=name)


def test_log_feed_reads_only_the_jobs_own_streams(api_server: SmlocalServer, sm: Any,
                                                  unique_name: Callable[[str], str]) -> None:
    name = unique_name("own")
    sm.create_training_job(**job_request(name))
    other = get(api_server, f"/console/api/jobs/{name}/logs", params={"stream": "another-job/algo-1-1"})
    assert other.status_code == 400
    assert other.json()["error"]["code"] == "InvalidParameterException"
    # Its own name but no such stream: CloudWatch Logs' own answer.
    none = get(api_server, f"/console/api/jobs/{name}/logs", params={"stream": f"{name}/algo-1-1"})
    assert none.status_code == 400
    assert none.json()["error"]["code"] == "ResourceNotFoundException"
    sm.stop_training_job(TrainingJobName=name)


# ---- Stop: the lifecycle's rules, and only from the console's own pages -------------------------


def test_stop_goes_through_stop_training_job_and_a_second_stop_shows_its_error(
        api_server: SmlocalServer, sm: Any, unique_name: Callable[[str], str]) -> None:
    name = unique_name("stop")
    sm.create_training_job(**job_request(name))
    token = form_token(job_page(api_server, name).text)
    origin = api_server.endpoint
    stopped = post(api_server, f"/console/jobs/{name}/stop", data={"token": token}, headers={"Origin": origin})
    assert stopped.status_code == 303
    assert stopped.headers["location"] == f"/console/jobs/{name}"
    described = sm.describe_training_job(TrainingJobName=name)
    assert (described["TrainingJobStatus"], described["SecondaryStatus"]) == ("Stopped", "Stopped")
    assert [t["Status"] for t in described["SecondaryStatusTransitions"]] == ["Starting", "Stopping", "Stopped"]
    # The page no longer offers Stop.
    assert 'id="stop-button"' not in job_page(api_server, name).text

    again = post(api_server, f"/console/jobs/{name}/stop", data={"token": token}, headers={"Origin": origin})
    with pytest.raises(ClientError) as info:
        sm.stop_training_job(TrainingJobName=name)
    error = info.value.response["Error"]
    assert (error["Code"], error["Message"]) == (
        "ValidationException", "The request was rejected because the training job is in status Stopped.")
    assert again.status_code == 400
    assert f"StopTrainingJob failed: {error['Code']}: {error['Message']}" in text_of(again.text)

    unknown = post(api_server, "/console/jobs/not-a-job-at-all/stop", data={"token": token})
    assert unknown.status_code == 404
    assert "Requested resource not found." in text_of(unknown.text)


def test_stop_from_another_site_or_without_the_token_is_refused(api_server: SmlocalServer, sm: Any,
                                                                 unique_name: Callable[[str], str]) -> None:
    name = unique_name("csrf")
    sm.create_training_job(**job_request(name))
    token = form_token(job_page(api_server, name).text)
    path = f"/console/jobs/{name}/stop"
    attempts = {
        "no token": post(api_server, path, data={}),
        "wrong token": post(api_server, path, data={"token": "guessed"}),
        "other origin": post(api_server, path, data={"token": token}, headers={"Origin": "http://evil.example"}),
        "cross-site fetch": post(api_server, path, data={"token": token}, headers={"Sec-Fetch-Site": "cross-site"}),
        "a GET": get(api_server, path),
    }
    assert {k: r.status_code for k, r in attempts.items()} == {
        "no token": 403, "wrong token": 403, "other origin": 403, "cross-site fetch": 403, "a GET": 405}
    assert "reload the page" in text_of(attempts["wrong token"].text)
    assert "another site (http://evil.example)" in text_of(attempts["other origin"].text)
    assert sm.describe_training_job(TrainingJobName=name)["TrainingJobStatus"] == "InProgress"
    sm.stop_training_job(TrainingJobName=name)


def test_a_spot_job_shows_its_interruptions_and_interrupt_answers_with_the_apis_error(
        api_server: SmlocalServer, sm: Any, unique_name: Callable[[str], str]) -> None:
    """On a server that runs no jobs a spot job waits in Starting: no Interrupt button yet, and a POST with
    the page's token gets InterruptTrainingJob's own refusal (the running case: tests/test_console_long_jobs.py)."""
    name = unique_name("spot")
    sm.create_training_job(**job_request(name, EnableManagedSpotTraining=True,
                                         StoppingCondition={"MaxRuntimeInSeconds": 600, "MaxWaitTimeInSeconds": 1200},
                                         RetryStrategy={"MaximumRetryAttempts": 3}))
    page = job_page(api_server, name).text
    text = text_of(page)
    assert "spot interruptions 0" in text and "attempt 1 of 4" in text
    for row in ("Managed spot yes", "Max wait 20 min 00 s", "Retry strategy MaximumRetryAttempts 3"):
        assert row in text
    assert 'id="stop-button"' in page and 'id="interrupt-button"' not in page
    assert 'id="synced-folders"' not in page  # this server runs nothing, so nothing is synced
    path = f"/console/jobs/{name}/interrupt"
    assert post(api_server, path, data={}).status_code == 403
    refused = post(api_server, path, data={"token": form_token(page)}, headers={"Origin": api_server.endpoint})
    with pytest.raises(ClientError) as info:
        api_server.client("smlocal").interrupt_training_job(TrainingJobName=name)
    error = info.value.response["Error"]
    assert error["Message"] == (f"Training job {name} can be interrupted only while it is Training; it is "
                                "InProgress (Starting).")
    assert refused.status_code == 400
    assert f"InterruptTrainingJob failed: {error['Code']}: {error['Message']}" in text_of(refused.text)
    # The summary fragment the page refreshes itself with carries the same.
    assert "spot interruptions 0" in text_of(get(api_server, f"/console/fragments/jobs/{name}").text)
    sm.stop_training_job(TrainingJobName=name)


def test_console_answers_to_loopback_names_only(api_server: SmlocalServer) -> None:
    """A page whose name was re-pointed at 127.0.0.1 (DNS rebinding) gets neither pages nor feeds."""
    for path in ("/console/", "/console/api/jobs/x/streams", "/console/static/console.js"):
        refused = get(api_server, path, headers={"Host": f"rebound.example:{api_server.port}"})
        assert refused.status_code == 403, path
        assert "answers to localhost" in text_of(refused.text)
    for host in ("localhost", "127.0.0.1", "[::1]", "app.localhost"):
        assert get(api_server, "/console/", headers={"Host": f"{host}:{api_server.port}"}).status_code == 200, host
    assert get(api_server, "/console/").headers["x-frame-options"] == "DENY"


# ---- artifacts ---------------------------------------------------------------------------------


def _put(s3: Any, bucket: str, key: str, body: bytes) -> None:
    try:
        s3.create_bucket(Bucket=bucket)
    except (s3.exceptions.BucketAlreadyOwnedByYou, s3.exceptions.BucketAlreadyExists):
        pass
    s3.put_object(Bucket=bucket, Key=key, Body=body)


def _tarball(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_downloads_only_the_jobs_own_artifacts_written_for_this_job(
        api_server: SmlocalServer, sm: Any, unique_name: Callable[[str], str]) -> None:
    name = unique_name("artifacts")
    bucket = "console-artifacts"
    s3 = api_server.client("s3")
    model_key = f"models/{name}/output/model.tar.gz"
    # Left by an earlier job of the same name: not this job's.
    _put(s3, bucket, model_key, _tarball({"old.txt": b"an earlier job's"}))
    _put(s3, bucket, "models/secret.tar.gz", b"another object")
    time.sleep(2.2)  # Last-Modified has whole seconds
    sm.create_training_job(**job_request(name, OutputDataConfig={"S3OutputPath": f"s3://{bucket}/models"}))
    download = f"/console/jobs/{name}/artifacts/model.tar.gz"
    assert get(api_server, download).status_code == 404  # not ended
    sm.stop_training_job(TrainingJobName=name)
    assert get(api_server, download).status_code == 404  # ended, but the object predates the job
    assert "artifacts/model.tar.gz" not in job_page(api_server, name).text

    model = _tarball({"model.txt": b"weights"})
    _put(s3, bucket, model_key, model)
    page = job_page(api_server, name).text
    assert f'href="/console/jobs/{name}/artifacts/model.tar.gz"' in page
    assert "artifacts/output.tar.gz" not in page  # the job has none
    got = get(api_server, download)
    assert got.status_code == 200
    assert got.content == model
    assert got.headers["content-disposition"] == f'attachment; filename="{name}-model.tar.gz"'
    assert int(got.headers["content-length"]) == len(model)
    assert get(api_server, f"/console/jobs/{name}/artifacts/output.tar.gz").status_code == 404

    # Nothing the browser sends names another object or a file: only the two names, of this job.
    for path in (f"/console/jobs/{name}/artifacts/secret.tar.gz",
                 f"/console/jobs/{name}/artifacts/..%2F..%2Fsecret.tar.gz",
                 f"/console/jobs/{name}/artifacts/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
                 f"/console/jobs/{name}/artifacts/model.tar.gz/../../secret.tar.gz",
                 "/console/jobs/..%2F..%2Fetc/artifacts/model.tar.gz",
                 f"/console/jobs/{name}/artifacts/model.tar.gz?key=models/secret.tar.gz&bucket=other"):
        answer = requests.get(api_server.endpoint + path, timeout=30, allow_redirects=False)
        assert answer.content not in (b"another object",) and b"root:" not in answer.content, path
        if "?" not in path:
            assert answer.status_code in (400, 404), path
    with_query = get(api_server, f"/console/jobs/{name}/artifacts/model.tar.gz",
                     params={"key": "models/secret.tar.gz", "bucket": "other"})
    assert with_query.content == model


# ---- with API keys: the same keys, as HTTP Basic, from this machine only --------------------------


@pytest.fixture(scope="module")
def keyed(module_smlocal_factory: Callable[..., SmlocalServer]) -> SmlocalServer:
    return module_smlocal_factory("--no-run-jobs", env={"SMLOCAL_ACCESS_KEY": "AKIDCONSOLE",
                                                 "SMLOCAL_SECRET_KEY": "console/secret+key"})


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_with_keys_the_console_takes_the_same_keys_as_basic_auth(keyed: SmlocalServer) -> None:
    sm = keyed.client(access_key="AKIDCONSOLE", secret_key="console/secret+key")
    sm.create_training_job(**job_request("keyed-job"))
    for path in ("/console/", "/console/jobs/keyed-job", "/console/api/jobs/keyed-job/metrics",
                 "/console/static/job.js"):
        anonymous = get(keyed, path)
        assert anonymous.status_code == 401, path
        assert anonymous.headers["www-authenticate"] == 'Basic realm="smlocal console", charset="UTF-8"'
        assert "keyed-job" not in anonymous.text
    for user, password in (("AKIDCONSOLE", "wrong"), ("other", "console/secret+key"), ("AKIDCONSOLE", "")):
        assert get(keyed, "/console/", headers=_basic(user, password)).status_code == 401
    good = _basic("AKIDCONSOLE", "console/secret+key")
    page = get(keyed, "/console/jobs/keyed-job", headers=good)
    assert page.status_code == 200
    assert "Signed in with the API keys" in text_of(page.text)
    # Stop needs the keys as well as the token.
    token = form_token(page.text)
    assert post(keyed, "/console/jobs/keyed-job/stop", data={"token": token}).status_code == 401
    assert post(keyed, "/console/jobs/keyed-job/stop", data={"token": token}, headers=good).status_code == 303
    assert sm.describe_training_job(TrainingJobName="keyed-job")["TrainingJobStatus"] == "Stopped"
    # Basic credentials open the console, not the API: it still wants SigV4.
    api = requests.post(keyed.endpoint + "/", data="{}", timeout=10, headers={
        **good, "X-Amz-Target": "SageMaker.ListTrainingJobs", "Content-Type": "application/x-amz-json-1.1"})
    assert api.status_code != 200
    assert api.json()["__type"] == "IncompleteSignatureException"


def test_with_keys_the_console_refuses_clients_on_other_machines(keyed: SmlocalServer) -> None:
    # uvicorn takes the client's address from X-Forwarded-For when a loopback proxy sends it: this is how a
    # reverse proxy on this machine would hand on a remote browser's request.
    remote = {**_basic("AKIDCONSOLE", "console/secret+key"), "X-Forwarded-For": "203.0.113.7"}
    refused = get(keyed, "/console/", headers=remote)
    assert refused.status_code == 403
    assert "ssh -L 8080:localhost:8080" in text_of(refused.text)
    assert get(keyed, "/console/", headers={**remote, "X-Forwarded-For": "127.0.0.1"}).status_code == 200


def test_without_keys_the_banner_and_the_console_say_where_it_is(api_server: SmlocalServer,
                                                                 keyed: SmlocalServer) -> None:
    assert f"web console    http://localhost:{api_server.port}/console/" in api_server.log()
    assert (f"web console    http://localhost:{keyed.port}/console/ (sign in with the access key / secret key; "
            "from this machine only)") in keyed.log()
    assert "Signed in" not in get(api_server, "/console/").text


def test_stopping_a_job_from_the_console_is_seen_by_waiters(api_server: SmlocalServer, sm: Any,
                                                            unique_name: Callable[[str], str]) -> None:
    name = unique_name("waiter")
    sm.create_training_job(**job_request(name))
    token = form_token(job_page(api_server, name).text)
    assert post(api_server, f"/console/jobs/{name}/stop", data={"token": token}).status_code == 303
    assert wait_for_status(sm, name, {"Stopped"}, timeout=10)["SecondaryStatus"] == "Stopped"
