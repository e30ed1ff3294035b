"""The pure pieces behind the Logs and CloudWatch providers: stream files, filter patterns, statistics,
and the metric writer against a real SQLite store."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from server.services.cloudwatch.provider import buckets, statistic
from server.services.logs.filter import compile_filter
from smlocal.core.errors import ApiError
from smlocal.core.lifecycle import Lifecycle
from smlocal.core.logstore import (
    JobLogKey,
    LogStreamWriter,
    is_cut_line,
    is_event_boundary,
    iter_events,
    last_event,
    read_events,
    stream_path,
)
from smlocal.core.metric_series import MetricPoint, MetricSeriesWriter, points
from smlocal.core.store import Store


def test_offsets_tail_and_boundaries(tmp_path: Path) -> None:
    key = JobLogKey.of("123456789012", "us-east-1", "job", 1.0)
    path = stream_path(tmp_path, key, "algo-1", 1)
    writer = LogStreamWriter(path)
    for i in range(3):
        writer.write(1000 + i, "x" * (70_000 if i == 1 else 3) + f" {i}")
    writer.close()
    read = list(iter_events(path))
    assert [e["timestamp"] for e, _ in read] == [1000, 1001, 1002]
    # Resuming at the offset after an event reads on from the next one.
    assert [e["timestamp"] for e, _ in iter_events(path, read[0][1])] == [1001, 1002]
    assert all(is_event_boundary(path, after) for _, after in read) and is_event_boundary(path, 0)
    assert not is_event_boundary(path, read[0][1] + 1) and not is_event_boundary(path, read[-1][1] + 1)
    # The last event is found from the end, across a line longer than the read chunk.
    assert last_event(path)["message"] == "xxx 2"
    with open(path, "a") as f:
        f.write('{"timestamp": 5, "message": "half')
    assert last_event(path)["message"] == "xxx 2"
    assert last_event(tmp_path / "missing") is None


def test_a_capped_stream_taken_up_again_keeps_to_its_cap(tmp_path: Path) -> None:
    """A stream a restarted server writes on (a new writer on the same file) counts what is there: it is cut
    at the cap once, and a writer that finds the cut line at the end adds nothing."""
    cap = 8192
    path = stream_path(tmp_path, JobLogKey.of("123456789012", "us-east-1", "job", 1.0), "algo-1", 1)
    first = LogStreamWriter(path, cap)
    for i in range(40):
        first.write(1000 + i, f"before the restart {i:03d}")
    first.close()
    kept = path.stat().st_size
    assert 0 < kept < cap // 2  # not cut yet
    second = LogStreamWriter(path, cap)
    for i in range(400):
        second.write(2000 + i, f"after the restart {i:03d}")
    second.close()
    messages = [e["message"] for e in read_events(path)]
    assert path.stat().st_size <= cap
    assert [m for m in messages if is_cut_line(m)] == [messages[-1]]
    assert messages[:40] == [f"before the restart {i:03d}" for i in range(40)]
    written_after = messages[40:-1]
    assert written_after == [f"after the restart {i:03d}" for i in range(len(written_after))]
    # Stopped near the cap, not far before it: one more line would not have fitted with the cut line.
    assert path.stat().st_size > cap - 2 * len(last_event(path)["message"]) - 200
    cut_size = path.stat().st_size
    third = LogStreamWriter(path, cap)
    third.write(3000, "after a second restart")
    third.close()
    assert path.stat().st_size == cut_size


@pytest.mark.parametrize(("pattern", "matching"), [
    ("", ["ERROR disk full", "WARN slow", "INFO ok", "ERROR Exiting"]),
    ("ERROR", ["ERROR disk full", "ERROR Exiting"]),
    ("ERROR disk", ["ERROR disk full"]),
    ("error", []),  # terms are case-sensitive
    ("?ERROR ?WARN", ["ERROR disk full", "WARN slow", "ERROR Exiting"]),
    ("ERROR -Exiting", ["ERROR disk full"]),
    ('"disk full"', ["ERROR disk full"]),
    ("?WARN ?ERROR disk", ["ERROR disk full", "WARN slow"]),
    ("%^(WARN|INFO)%", ["WARN slow", "INFO ok"]),
])
def test_filter_patterns(pattern: str, matching: list[str]) -> None:
    messages = ["ERROR disk full", "WARN slow", "INFO ok", "ERROR Exiting"]
    matches = compile_filter(pattern)
    assert [m for m in messages if matches(m)] == matching


@pytest.mark.parametrize("pattern", ['{ $.level = "ERROR" }', "[ip, user]", "%(%"])
def test_unsupported_or_broken_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(ApiError) as info:
        compile_filter(pattern)
    assert info.value.code == "InvalidParameterException"


def test_statistics_and_periods() -> None:
    found = [MetricPoint("algo-1", "loss", ms, v) for ms, v in
             [(60_500, 4.0), (61_200, 2.0), (119_999, 6.0), (120_000, 1.0)]]
    assert buckets(found, 60.7, 180, 60) == [(60, [4.0, 2.0, 6.0]), (120, [1.0])]
    assert buckets(found, 60, 120, 1) == [(60, [4.0]), (61, [2.0]), (119, [6.0])]
    values = [4.0, 2.0, 6.0]
    assert [statistic(s, values) for s in ("SampleCount", "Average", "Sum", "Minimum", "Maximum")] == [
        3.0, 4.0, 12.0, 2.0, 6.0]
    assert (statistic("p50", values), statistic("p100", values), statistic("p0.5", values)) == (4.0, 6.0, 2.0)


def test_metric_writer_batches_and_belongs_to_one_incarnation(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    lifecycle = Lifecycle(store)
    job = lifecycle.create(account_id="123456789012", region="us-east-1", name="m", request={}, tags=[])
    # Batched: nothing is written until the interval is over (an hour here) or the writer closes.
    held = MetricSeriesWriter(store, job.arn, job.creation_time, "algo-1", interval=3600)
    for i in range(50):
        held.add("loss", 1000 + i, i / 10)
    held.add("loss", 2000, float("nan"))  # CloudWatch takes no NaN
    assert points(store, "123456789012", "us-east-1", "m") == []
    held.close()
    assert len(points(store, "123456789012", "us-east-1", "m")) == 50
    # With a short interval the timer writes them without a close.
    timed = MetricSeriesWriter(store, job.arn, job.creation_time, "algo-2", interval=0.1)
    timed.add("acc", 1000, 0.5)
    deadline = time.monotonic() + 30
    while not points(store, "123456789012", "us-east-1", "m", metric_name="acc") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert points(store, "123456789012", "us-east-1", "m", metric_name="acc") == [
        MetricPoint("algo-2", "acc", 1000, 0.5)]
    timed.close()
    again_writer = MetricSeriesWriter(store, job.arn, job.creation_time, "algo-1")
    again_writer.add("loss", 1000, 0.0)  # the same point again (a replayed stream): stored once
    again_writer.close()
    assert len(points(store, "123456789012", "us-east-1", "m", metric_name="loss")) == 50

    # A writer of a deleted job (same name re-created, perhaps with the same row id) writes nothing.
    lifecycle.advance(job.arn, "Failed")
    stale = MetricSeriesWriter(store, job.arn, job.creation_time, "algo-1")
    lifecycle.delete(job.arn)
    again = lifecycle.create(account_id="123456789012", region="us-east-1", name="m", request={}, tags=[])
    stale.add("loss", 5000, 9.0)
    stale.close()
    assert points(store, "123456789012", "us-east-1", "m") == []
    fresh = MetricSeriesWriter(store, again.arn, again.creation_time, "algo-2")
    fresh.add("loss", 6000, 1.5)
    fresh.close()
    assert points(store, "123456789012", "us-east-1", "m") == [MetricPoint("algo-2", "loss", 6000, 1.5)]
    store.close()


def _big_group(data_dir: Path, streams: int, events: int) -> tuple[Store, list[tuple[int, str, str]]]:
    """A store with one job of `streams` hosts whose streams hold `events` events each, written as the runner
    writes them, timestamps interleaved across streams with ties; and every (timestamp, stream, message) in
    the order FilterLogEvents returns them."""
    import json

    store = Store(str(data_dir / "smlocal.db"))
    job = Lifecycle(store).create(account_id="123456789012", region="us-east-1", name="big", request={}, tags=[])
    key = JobLogKey.of("123456789012", "us-east-1", "big", job.creation_time)
    expected = []
    for s in range(streams):
        path = stream_path(data_dir, key, f"algo-{s + 1}", 1_700_000_000)
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(events):
            ts = 1_700_000_000_000 + (i * streams + s * 7) // 3  # several events per millisecond
            message = f"algo-{s + 1} step {i} loss={1 / (i + 1):.6f}"
            rows.append(json.dumps({"timestamp": ts, "ingestionTime": ts, "message": message}) + "\n")
            expected.append((ts, f"big/algo-{s + 1}-1700000000", i, message))
        path.write_text("".join(rows))
    expected.sort()
    return store, [(ts, name, message) for ts, name, _, message in expected]


def test_filter_log_events_pages_read_a_bounded_part_of_the_streams(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A FilterLogEvents page merges the streams as it reads them: it reads about a batch per stream, not every
    event, and holds about that much in memory; the next page starts where it stopped."""
    import tracemalloc

    import server.services.logs.provider as provider
    from server.aws.context import RequestContext

    streams, events = 16, 25_000
    store, expected = _big_group(tmp_path, streams, events)
    total_bytes = sum(p.stat().st_size for p in (tmp_path / "logs").rglob("algo-*"))
    read = []
    real_iter_events = provider.iter_events

    def counting(path: Path, offset: int = 0):  # noqa: ANN202 - iter_events' own generator
        for item in real_iter_events(path, offset):
            read.append(1)
            yield item

    monkeypatch.setattr(provider, "iter_events", counting)
    logs = provider.CloudWatchLogs(store, tmp_path)
    ctx = RequestContext(region="us-east-1", account_id="123456789012")
    params: dict = {"logGroupName": "/aws/sagemaker/TrainingJobs", "limit": 500}
    got: list[tuple[int, str, str]] = []
    for page_number in range(4):
        read.clear()
        tracemalloc.start()
        page = logs.filter_log_events(ctx, params)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert len(page["events"]) == 500
        got += [(e["timestamp"], e["logStreamName"], e["message"]) for e in page["events"]]
        # A batch of each stream at most (64 KiB of ~100-byte lines), a few percent of the 400,000 events.
        per_batch = provider.READ_BATCH_BYTES // 90 + 1
        assert len(read) <= streams * per_batch + 500, (page_number, len(read))
        assert len(read) < streams * events / 20
        assert peak < total_bytes / 4, (peak, total_bytes)
        params["nextToken"] = page["nextToken"]
    # The pages are the start of the one order, with no event twice or missing.
    assert got == expected[:len(got)]
    store.close()
