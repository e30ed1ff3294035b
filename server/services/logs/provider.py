"""The CloudWatch Logs provider: the training jobs' log streams, read the way CloudWatch serves them.

One log group, `/aws/sagemaker/TrainingJobs`, which exists in an account and region once a job there has
a stream (as on AWS, where SageMaker creates it with the first job's logs). Streams are
`<job>/algo-<n>-<epoch seconds>`; only the current incarnation of each job shows, so a deleted and
re-created job never shows the old job's lines. Timestamps are epoch milliseconds.

GetLogEvents tokens carry the byte offset in the stream file (`f/<offset>/<stream fingerprint>`), so
paging and live tailing read only what is new.
"""

from __future__ import annotations

import base64
import hashlib
import json
import zlib
from collections import deque
from collections.abc import Callable, Iterator
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
        cursor = _decode_cursor_token(params.get("nextToken"), query)

        streams = self._streams(ctx, prefix or "")
        if names is not None:
            streams = [s for s in streams if s.log_stream_name in set(names)]

        def events() -> Iterator[tuple[tuple[int, str, int], dict[str, Any]]]:
            for stream in streams:
                for event, after in iter_events(stream.path):
                    ts = event["timestamp"]
                    if (start is not None and ts < start) or (end is not None and ts >= end):
                        continue
                    key = (ts, stream.log_stream_name, after)
                    if cursor is not None and key <= cursor:
                        continue
                    if matches(event["message"]):
                        yield key, {**event, "logStreamName": stream.log_stream_name}

        found = sorted(events(), key=lambda item: item[0])
        page, size = [], 0
        for key, event in found:
            if len(page) >= limit or (page and size + _event_bytes(event) > MAX_PAGE_BYTES):
                break
            page.append((key, event))
            size += _event_bytes(event)
        result: dict[str, Any] = {
            "events": [{
                "logStreamName": e["logStreamName"], "timestamp": e["timestamp"], "message": e["message"],
                "ingestionTime": e["ingestionTime"],
                "eventId": f"{key[0]:013d}{zlib.crc32(key[1].encode()):010d}{key[2]:012d}",
            } for key, e in page],
            "searchedLogStreams": [{"logStreamName": s.log_stream_name, "searchedCompletely": True}
                                   for s in streams],
        }
        if len(page) < len(found):
            result["nextToken"] = _encode_cursor_token(page[-1][0], query)
        return result


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


def _encode_cursor_token(cursor: tuple[int, str, int], query: list[Any]) -> str:
    return _encode({"c": list(cursor), "q": _fingerprint(*query)})


def _decode_cursor_token(token: str | None, query: list[Any]) -> tuple[int, str, int] | None:
    if token is None:
        return None
    data = _decode(token)
    cursor = data.get("c")
    if data.get("q") != _fingerprint(*query) or not isinstance(cursor, list) or len(cursor) != 3:
        raise _invalid(_BAD_TOKEN)
    ts, name, offset = cursor
    if not isinstance(ts, int) or not isinstance(name, str) or not isinstance(offset, int):
        raise _invalid(_BAD_TOKEN)
    return ts, name, offset
