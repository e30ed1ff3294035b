"""ListTrainingJobs over 260 jobs: every filter, every sort, NextToken pagination."""

from __future__ import annotations

import time

import pytest
from botocore.exceptions import ClientError

from tests.support.jobs import job_request

TOTAL = 260


def next_whole_second() -> int:
    """A mark between two batches; whole seconds because botocore sends timestamps as integers."""
    mark = int(time.time()) + 1
    time.sleep(mark - time.time() + 0.05)
    return mark


@pytest.fixture(scope="module")
def listed(module_smlocal_factory):  # noqa: ANN001, ANN201
    server = module_smlocal_factory("--no-run-jobs")
    sm = server.client()
    names = []
    marks = {}
    for i in range(TOTAL):
        if i == 100:
            marks["after_100"] = next_whole_second()
        # Names are not in creation order, so name sort and time sort differ.
        name = f"{'alpha' if i % 2 else 'beta'}-{(i * 37) % TOTAL:03d}-{i}"
        sm.create_training_job(**job_request(name))
        names.append(name)
    marks["before_stops"] = next_whole_second()
    stopped = names[::10]
    for name in stopped:
        sm.stop_training_job(TrainingJobName=name)
    return sm, names, stopped, marks


def all_pages(sm, **kwargs) -> list[dict]:  # noqa: ANN001
    summaries, token, pages = [], None, 0
    while True:
        response = sm.list_training_jobs(**kwargs, **({"NextToken": token} if token else {}))
        summaries += response["TrainingJobSummaries"]
        pages += 1
        token = response.get("NextToken")
        if not token:
            return summaries
        assert pages < 1000


def test_default_page_and_order(listed):
    sm, names, _, _ = listed
    first = sm.list_training_jobs()
    assert len(first["TrainingJobSummaries"]) == 10
    assert "NextToken" in first
    assert [s["TrainingJobName"] for s in first["TrainingJobSummaries"]] == names[:10]


def test_pagination_visits_every_job_once(listed):
    sm, names, _, _ = listed
    summaries = all_pages(sm, MaxResults=100)
    assert [s["TrainingJobName"] for s in summaries] == names
    summary = summaries[0]
    assert set(summary) >= {"TrainingJobName", "TrainingJobArn", "CreationTime", "LastModifiedTime",
                            "TrainingJobStatus", "SecondaryStatus"}


def test_paginator(listed):
    sm, names, _, _ = listed
    pages = list(sm.get_paginator("list_training_jobs").paginate(PaginationConfig={"PageSize": 37}))
    assert len(pages) == -(-TOTAL // 37)
    assert sum(len(p["TrainingJobSummaries"]) for p in pages) == TOTAL


@pytest.mark.parametrize("sort_by,key", [
    ("Name", lambda s: s["TrainingJobName"]),
    ("CreationTime", lambda s: s["CreationTime"]),
    ("Status", lambda s: s["TrainingJobStatus"]),
])
@pytest.mark.parametrize("order", ["Ascending", "Descending"])
def test_sorting(listed, sort_by, key, order):
    sm, _, _, _ = listed
    summaries = all_pages(sm, SortBy=sort_by, SortOrder=order, MaxResults=100)
    assert len(summaries) == TOTAL
    values = [key(s) for s in summaries]
    assert values == sorted(values, reverse=order == "Descending")


def test_name_contains_is_case_insensitive(listed):
    sm, names, _, _ = listed
    found = all_pages(sm, NameContains="ALPHA", MaxResults=100)
    assert sorted(s["TrainingJobName"] for s in found) == sorted(n for n in names if "alpha" in n)


def test_status_equals(listed):
    sm, names, stopped, _ = listed
    found = all_pages(sm, StatusEquals="Stopped", MaxResults=100)
    assert sorted(s["TrainingJobName"] for s in found) == sorted(stopped)
    assert {s["SecondaryStatus"] for s in found} == {"Stopped"}
    assert len(all_pages(sm, StatusEquals="InProgress", MaxResults=100)) == TOTAL - len(stopped)
    assert all_pages(sm, StatusEquals="Completed") == []


def test_creation_time_window(listed):
    sm, names, _, marks = listed
    after = all_pages(sm, CreationTimeAfter=marks["after_100"], MaxResults=100)
    assert [s["TrainingJobName"] for s in after] == names[100:]
    before = all_pages(sm, CreationTimeBefore=marks["after_100"], MaxResults=100)
    assert [s["TrainingJobName"] for s in before] == names[:100]


def test_last_modified_window(listed):
    sm, _, stopped, marks = listed
    modified = all_pages(sm, LastModifiedTimeAfter=marks["before_stops"], MaxResults=100)
    assert sorted(s["TrainingJobName"] for s in modified) == sorted(stopped)
    untouched = all_pages(sm, LastModifiedTimeBefore=marks["before_stops"], MaxResults=100)
    assert len(untouched) == TOTAL - len(stopped)


def test_combined_filters_paginate(listed):
    sm, names, stopped, _ = listed
    found = all_pages(sm, NameContains="beta", StatusEquals="InProgress", SortBy="Name", MaxResults=7)
    expected = sorted(n for n in names if "beta" in n and n not in stopped)
    assert [s["TrainingJobName"] for s in found] == expected


def test_warm_pool_filter_matches_nothing(listed):
    sm, _, _, _ = listed
    assert all_pages(sm, WarmPoolStatusEquals="Available") == []


def test_bad_next_token(listed):
    sm, _, _, _ = listed
    with pytest.raises(ClientError) as info:
        sm.list_training_jobs(NextToken="garbage")
    assert info.value.response["Error"]["Code"] == "ValidationException"
    # A token from one query is not valid for another.
    token = sm.list_training_jobs(SortBy="Name")["NextToken"]
    with pytest.raises(ClientError):
        sm.list_training_jobs(SortBy="Status", NextToken=token)
