"""The CloudWatch Logs provider: the training jobs' log streams, read the way CloudWatch serves them.

One log group, `/aws/sagemaker/TrainingJobs`, which exists in an account and region once a job there has
a stream (as on AWS, where SageMaker creates it with the first job's logs). Streams are
`<job>/algo-<n>-<epoch seconds>`; only the current incarnation of each job shows, so a deleted and
re-created job never shows the old job's lines. Timestamps are epoch milliseconds.

GetLogEvents tokens carry the byte offset in the stream file (`f/<offset>/<stream fingerprint>`), so
paging and live tailing read only what is new. FilterLogEvents merges the streams as it reads them (one
pending event per stream on a heap) and stops when its page is full; its token carries where each stream's
next page starts, so no page reads what an earlier one returned or sorts more than one event per stream.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import json
import zlib
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select

from server.aws.context import RequestContext
from server.services.logs.filter import compile_filter
from smlocal.core.errors import ApiError
from smlocal.core.logstore import LOG_GROUP, JobLogKey, LogStream, is_event_boundary, iter_events, list_streams
from smlocal.core.store import JobRow, Store

MAX_EVENTS = 10_000
MAX_PAGE_BYTES = 1_048_576
EVENT_OVERHEAD_BYTES = 26  # what CloudWatch counts per event on top of the message
DEFAULT_STREAMS_LIMIT = 50
DEFAULT_GROUPS_LIMIT = 50

_NO_GROUP = "The specified log group does not exist."
_NO_STREAM = "The specified log stream does not exist."
_BAD_TOKEN = "The specified nextToken is invalid."


def _invalid(message: str) -> ApiError:
    return ApiError("InvalidParameterException", message)


def _event_bytes(event: dict[str, Any]) -> int:
    return len(event["message"].encode("utf-8")) + EVENT_OVERHEAD_BYTES


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:12]


class CloudWatchLogs:
    validation_error = "InvalidParameterException"

    def __init__(self, store: Store, data_dir: Path) -> None:
        self.store = store
        self.data_dir = Path(data_dir)

    def handlers(self) -> dict[str, Callable[[RequestContext, dict[str, Any]], dict[str, Any]]]:
        return {
            "DescribeLogGroups": self.describe_log_groups,
            "DescribeLogStreams": self.describe_log_streams,
            "GetLogEvents": self.get_log_events,
            "FilterLogEvents": self.filter_log_events,
        }

    # ---- where the streams are ---------------------------------------------------------------

    def _job_keys(self, ctx: RequestContext, job_name: str | None = None) -> list[JobLogKey]:
        stmt = select(JobRow.name, JobRow.creation_time).where(
            JobRow.account_id == ctx.account_id, JobRow.region == ctx.region)
        if job_name is not None:
            stmt = stmt.where(JobRow.name == job_name)
        with self.store.read() as s:
            rows = s.execute(stmt.order_by(JobRow.name)).all()
        return [JobLogKey.of(ctx.account_id, ctx.region, name, created) for name, created in rows]

    def _streams(self, ctx: RequestContext, prefix: str = "") -> list[LogStream]:
        # A prefix that names a whole job (`<job>/...`) looks in that job's folder only.
        job_name = prefix.split("/", 1)[0] if "/" in prefix else None
        streams = [s for key in self._job_keys(ctx, job_name) for s in list_streams(self.data_dir, key)]
        return [s for s in streams if s.log_stream_name.startswith(prefix)]

    def _group_exists(self, ctx: RequestContext) -> bool:
        return any(list_streams(self.data_dir, key) for key in self._job_keys(ctx))

    def _group_arn(self, ctx: RequestContext) -> str:
        return f"arn:aws:logs:{ctx.region}:{ctx.account_id}:log-group:{LOG_GROUP}"

    def _require_group(self, ctx: RequestContext, params: dict[str, Any]) -> None:
        name, identifier = params.get("logGroupName"), params.get("logGroupIdentifier")
        if name is not None and identifier is not None:
            raise _invalid("LogGroup name and LogGroup ARN are mutually exclusive parameters.")
        if name is None and identifier is None:
            raise _invalid("Either logGroupName or logGroupIdentifier must be specified.")
        if identifier is not None:
            if identifier.startswith("arn:"):
                if not identifier.removesuffix(":*").startswith(self._group_arn(ctx)):
                    raise ApiError("ResourceNotFoundException", _NO_GROUP)
                name = identifier.removesuffix(":*").split(":log-group:", 1)[1]
            else:
                name = identifier
        if name != LOG_GROUP or not self._group_exists(ctx):
            raise ApiError("ResourceNotFoundException", _NO_GROUP)

    def _stream(self, ctx: RequestContext, stream_name: str) -> LogStream:
        job_name, slash, _ = stream_name.partition("/")
        if slash:
            for stream in self._streams(ctx, job_name + "/"):
                if stream.log_stream_name == stream_name:
                    return stream
        raise ApiError("ResourceNotFoundException", _NO_STREAM)

    # ---- DescribeLogGroups -------------------------------------------------------------------

    def describe_log_groups(self, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
        prefix, pattern = params.get("logGroupNamePrefix"), params.get("logGroupNamePattern")
        if prefix is not None and pattern is not None:
            raise _invalid("LogGroup name prefix and LogGroup name pattern are mutually exclusive parameters.")
        identifiers = params.get("logGroupIdentifiers")
        if identifiers is not None and (prefix is not None or pattern is not None):
            raise _invalid("logGroupIdentifiers cannot be used with logGroupNamePrefix or logGroupNamePattern.")
        if params.get("logGroupClass") not in (None, "STANDARD"):
            return {"logGroups": []}
        wanted = (prefix is None or LOG_GROUP.startswith(prefix)) and \
            (pattern is None or pattern.lower() in LOG_GROUP.lower()) and \
            (identifiers is None or any(i in (LOG_GROUP, self._group_arn(ctx), self._group_arn(ctx) + ":*")
                                        for i in identifiers))
        streams = self._streams(ctx) if wanted else []
        if not streams:
            return {"logGroups": []}
        arn = self._group_arn(ctx)
        return {"logGroups": [{
            "logGroupName": LOG_GROUP,
            "creationTime": min(s.creation_time_ms for s in streams),
            "metricFilterCount": 0,
            "arn": arn + ":*",
            "logGroupArn": arn,
            "storedBytes": sum(s.size() for s in streams),
            "logGroupClass": "STANDARD",
        }]}

    # ---- DescribeLogStreams ------------------------------------------------------------------

    def describe_log_streams(self, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
        self._require_group(ctx, params)
        prefix = params.get("logStreamNamePrefix") or ""
        order_by = params.get("orderBy", "LogStreamName")
        if order_by == "LastEventTime" and params.get("logStreamNamePrefix") is not None:
            raise _invalid("Cannot order by LastEventTime with a logStreamNamePrefix.")
        descending = bool(params.get("descending", False))
        limit = params.get("limit") or DEFAULT_STREAMS_LIMIT
        query = ["streams", ctx.account_id, ctx.region, prefix, order_by, descending]
        offset = _decode_offset_token(params.get("nextToken"), query)

        described = [self._describe_stream(ctx, s) for s in self._streams(ctx, prefix)]
        if order_by == "LastEventTime":
            described.sort(key=lambda d: (d.get("lastEventTimestamp", 0), d["logStreamName"]), reverse=descending)
        else:
            described.sort(key=lambda d: d["logStreamName"], reverse=descending)
        page = described[offset:offset + limit]
        result: dict[str, Any] = {"logStreams": page}
        # Only when more streams remain: SDK v2's fit() loops while a nextToken comes back.
        if offset + limit < len(described):
            result["nextToken"] = _encode_offset_token(offset + limit, query)
        return result

    def _describe_stream(self, ctx: RequestContext, stream: LogStream) -> dict[str, Any]:
        out: dict[str, Any] = {
            "logStreamName": stream.log_stream_name,
            "creationTime": stream.creation_time_ms,
            "arn": f"{self._group_arn(ctx)}:log-stream:{stream.log_stream_name}",
            "storedBytes": 0,  # deprecated in CloudWatch, which always reports 0
        }
        first, last = stream.first_event(), stream.last_event()
        if first is not None and last is not None:
            out["firstEventTimestamp"] = first["timestamp"]
            out["lastEventTimestamp"] = last["timestamp"]
            out["lastIngestionTime"] = last["ingestionTime"]
        return out

    # ---- GetLogEvents ------------------------------------------------------------------------

    def get_log_events(self, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
        self._require_group(ctx, params)
        stream = self._stream(ctx, params["logStreamName"])
        limit = min(params.get("limit") or MAX_EVENTS, MAX_EVENTS)
        start, end = params.get("startTime"), params.get("endTime")

        def wanted(event: dict[str, Any]) -> bool:
            ts = event["timestamp"]
            return (start is None or ts >= start) and (end is None or ts < end)

        token = params.get("nextToken")
        if token is not None:
            direction, offset = _decode_stream_token(token, stream)
        else:
            direction, offset = ("f", 0) if params.get("startFromHead") else ("tail", None)

        if direction == "f":
            page, first_offset, next_offset = _read_forward(stream, offset, limit, wanted)
        else:
            page, first_offset, next_offset = _read_backward(stream, offset, limit, wanted)
        return {
            "events": [{"timestamp": e["timestamp"], "message": e["message"], "ingestionTime": e["ingestionTime"]}
                       for e in page],
            "nextForwardToken": _stream_token("f", next_offset, stream),
            "nextBackwardToken": _stream_token("b", first_offset, stream),
        }

    # ---- FilterLogEvents ---------------------------------------------------------------------

    def filter_log_events(self, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
        self._require_group(ctx, params)
        names, prefix = params.get("logStreamNames"), params.get("logStreamNamePrefix")
        if names is not None and prefix is not None:
            raise _invalid("Cannot use both logStreamNames and logStreamNamePrefix.")
        matches = compile_filter(params.get("filterPattern"))
        limit = min(params.get("limit") or MAX_EVENTS, MAX_EVENTS)
        start, end = params.get("startTime"), params.get("endTime")
        if start is not None and end is not None and end < start:
            raise _invalid("endTime must be greater than or equal to startTime.")
        query = ["filter", ctx.account_id, ctx.region, names, prefix, start, end, params.get("filterPattern")]

        streams = self._streams(ctx, prefix or "")
        if names is not None:
            streams = [s for s in streams if s.log_stream_name in set(names)]
        offsets = _decode_offsets_token(params.get("nextToken"), query, streams)

        def keep(event: dict[str, Any]) -> bool:
            ts = event["timestamp"]
            return (start is None or ts >= start) and (end is None or ts < end) and matches(event["message"])

        page, readers = _merge_page([_StreamReader(s, offsets.get(s.log_stream_name, 0), keep) for s in streams],
                                    limit)
        result: dict[str, Any] = {
            "events": [{
                "logStreamName": name, "timestamp": e["timestamp"], "message": e["message"],
                "ingestionTime": e["ingestionTime"],
                "eventId": f"{e['timestamp']:013d}{zlib.crc32(name.encode()):010d}{after:012d}",
            } for e, name, after in page],
            "searchedLogStreams": [{"logStreamName": s.log_stream_name, "searchedCompletely": True}
                                   for s in streams],
        }
        if any(r.head is not None for r in readers):
            result["nextToken"] = _encode_offsets_token(
                {r.name: r.resume_offset for r in readers if r.resume_offset}, query)
        return result


# ---- FilterLogEvents: a streaming merge of the streams ---------------------------------------------

# Each stream is read forward a batch at a time: a page holds its events plus one batch per stream, however
# long the streams are, and no file stays open between batches (a group of thousands of streams would run out
# of file descriptors).
READ_BATCH_BYTES = 64 * 1024
# A FilterLogEvents token inflated: room for the offsets of about 50,000 streams.
MAX_TOKEN_BYTES = 4 * 1024 * 1024


class _StreamReader:
    """One stream's events that `keep` accepts, in file order from a byte offset; `head` is the next one."""

    def __init__(self, stream: LogStream, offset: int, keep: Callable[[dict[str, Any]], bool]) -> None:
        self.name = stream.log_stream_name
        self._path = stream.path
        self._keep = keep
        self._position = offset  # just past what was read from the file
        self._batch: deque[tuple[dict[str, Any], int, int]] = deque()
        # (event, offset where it starts, offset just past it)
        self.head: tuple[dict[str, Any], int, int] | None = None
        self.events_read = 0

    @property
    def resume_offset(self) -> int:
        """Where the next page reads this stream from: its pending event, else past everything read."""
        return self.head[1] if self.head is not None else self._position

    def key(self) -> tuple[int, str, int]:
        """The merge order: timestamp, then stream name, then position in the stream (the eventId's parts)."""
        assert self.head is not None
        return self.head[0]["timestamp"], self.name, self.head[2]

    def advance(self) -> bool:
        """Move `head` to the next accepted event; False (and no head) at the end of the stream."""
        while True:
            if not self._batch and not self._read_batch():
                self.head = None
                return False
            item = self._batch.popleft()
            if self._keep(item[0]):
                self.head = item
                return True

    def _read_batch(self) -> bool:
        begin = start = self._position
        events = iter_events(self._path, start)
        try:
            for event, after in events:
                self._batch.append((event, start, after))
                self.events_read += 1
                start = after
                if after - begin >= READ_BATCH_BYTES:
                    break
        finally:
            events.close()  # the file is closed now, not when the generator is collected
        self._position = start
        return bool(self._batch)


def _merge_page(readers: list[_StreamReader], limit: int
                ) -> tuple[list[tuple[dict[str, Any], str, int]], list[_StreamReader]]:
    """The first page of the readers' events merged in order (a heap of one head per stream), as (event,
    stream name, offset past it); the readers are left on the first event the page had no room for."""
    heap = [(r.key(), i) for i, r in enumerate(readers) if r.advance()]
    heapq.heapify(heap)
    page: list[tuple[dict[str, Any], str, int]] = []
    size = 0
    while heap:
        _, i = heap[0]
        reader = readers[i]
        assert reader.head is not None
        event, _, after = reader.head
        if len(page) >= limit or (page and size + _event_bytes(event) > MAX_PAGE_BYTES):
            break
        heapq.heappop(heap)
        page.append((event, reader.name, after))
        size += _event_bytes(event)
        if reader.advance():
            heapq.heappush(heap, (reader.key(), i))
    return page, readers


# ---- reading a stream ---------------------------------------------------------------------------


def _read_forward(stream: LogStream, offset: int, limit: int, wanted: Callable[[dict[str, Any]], bool]
                  ) -> tuple[list[dict[str, Any]], int, int]:
    """Events from `offset` on: (page, offset of the page's start, offset just past what was read)."""
    page: list[dict[str, Any]] = []
    size = 0
    position = offset
    for event, after in iter_events(stream.path, offset):
        if wanted(event):
            if len(page) >= limit or (page and size + _event_bytes(event) > MAX_PAGE_BYTES):
                break
            page.append(event)
            size += _event_bytes(event)
        position = after
    return page, offset, position


def _read_backward(stream: LogStream, before: int | None, limit: int, wanted: Callable[[dict[str, Any]], bool]
                   ) -> tuple[list[dict[str, Any]], int, int]:
    """The last events before offset `before` (the end of the stream when None)."""
    window: deque[tuple[int, dict[str, Any], int]] = deque(maxlen=limit)
    position = 0
    end = 0
    for event, after in iter_events(stream.path):
        if before is not None and after > before:
            break
        if wanted(event):
            window.append((position, event, after))
        position = end = after
    while window and sum(_event_bytes(e) for _, e, _ in window) > MAX_PAGE_BYTES and len(window) > 1:
        window.popleft()
    if not window:
        start = before if before is not None else end
        return [], start, start
    return [e for _, e, _ in window], window[0][0], (before if before is not None else end)


# ---- tokens -------------------------------------------------------------------------------------


def _stream_fingerprint(stream: LogStream) -> str:
    return _fingerprint(stream.key, stream.name)


def _stream_token(direction: str, offset: int, stream: LogStream) -> str:
    return f"{direction}/{offset:020d}/{_stream_fingerprint(stream)}"


def _decode_stream_token(token: str, stream: LogStream) -> tuple[str, int]:
    parts = token.split("/")
    if len(parts) != 3 or parts[0] not in ("f", "b") or not parts[1].isdigit() \
            or parts[2] != _stream_fingerprint(stream):
        raise _invalid(_BAD_TOKEN)
    offset = int(parts[1])
    if not is_event_boundary(stream.path, offset):
        raise _invalid(_BAD_TOKEN)
    return parts[0], offset


def _encode(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).decode()


def _decode(token: str) -> dict[str, Any]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, TypeError):
        raise _invalid(_BAD_TOKEN) from None
    if not isinstance(data, dict):
        raise _invalid(_BAD_TOKEN)
    return data


def _encode_offset_token(offset: int, query: list[Any]) -> str:
    return _encode({"o": offset, "q": _fingerprint(*query)})


def _decode_offset_token(token: str | None, query: list[Any]) -> int:
    if token is None:
        return 0
    data = _decode(token)
    offset = data.get("o")
    if data.get("q") != _fingerprint(*query) or not isinstance(offset, int) or offset < 0:
        raise _invalid(_BAD_TOKEN)
    return offset


def _encode_offsets_token(offsets: dict[str, int], query: list[Any]) -> str:
    """Where each stream's next page starts (streams at 0 left out), compressed: stream names share prefixes."""
    data = json.dumps({"s": offsets, "q": _fingerprint(*query)}, separators=(",", ":")).encode()
    return "z" + base64.urlsafe_b64encode(zlib.compress(data)).decode()


def _decode_offsets_token(token: str | None, query: list[Any], streams: list[LogStream]) -> dict[str, int]:
    if token is None:
        return {}
    try:
        if not token.startswith("z"):
            raise ValueError(token)
        # Inflated no further than a real token gets: a crafted one must not make the server hold gigabytes.
        inflate = zlib.decompressobj()
        raw = inflate.decompress(base64.urlsafe_b64decode(token[1:].encode()), MAX_TOKEN_BYTES)
        if inflate.unconsumed_tail:
            raise ValueError("token too large")
        data = json.loads(raw)
    except (ValueError, TypeError, zlib.error):
        raise _invalid(_BAD_TOKEN) from None
    offsets = data.get("s") if isinstance(data, dict) else None
    if not isinstance(offsets, dict) or data.get("q") != _fingerprint(*query) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in offsets.values()):
        raise _invalid(_BAD_TOKEN)
    # A stream gone since (its job deleted) is not searched; an offset must be where an event starts.
    paths = {s.log_stream_name: s.path for s in streams}
    if any(name in paths and not is_event_boundary(paths[name], offset) for name, offset in offsets.items()):
        raise _invalid(_BAD_TOKEN)
    return offsets
