"""Training log streams on disk, owned by one incarnation of one job.

The runner writes them and the CloudWatch Logs provider reads them, so this module sits on the state
side (next to `store`): it imports neither the runner nor the wire layer.

Layout: `<data_dir>/logs/<account>/<region>/<job>.<creation ms>/<host>-<epoch seconds>`. The creation
time in the folder name ties the lines to one incarnation of the job: a deleted and re-created job of
the same name gets a new folder and never shows the old job's lines (the job's integer row id is no
good for that, SQLite may hand it out again).

Each stream file holds one JSON line per event: `{"timestamp": <epoch ms>, "ingestionTime": <epoch ms>,
"message": "<text>"}`, the shape CloudWatch Logs returns. The stream's CloudWatch name is
`<job>/<file name>`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOG_GROUP = "/aws/sagemaker/TrainingJobs"
# The last line of a stream cut at `--max-log-bytes-per-host`; what follows the cap is dropped.
CUT_PREFIX = "smlocal: this log stream was cut at "
# The smallest cap that leaves room for a few lines and the cut line.
MIN_LOG_BYTES_PER_HOST = 4096
log = logging.getLogger("smlocal.logs")
_STREAM_RE = re.compile(r"^(?P<host>algo-\d+)-(?P<epoch>\d+)$")


@dataclass(frozen=True)
class JobLogKey:
    """Whose logs these are: an account, a region and one incarnation of a job name."""

    account_id: str
    region: str
    job_name: str
    created_ms: int

    @classmethod
    def of(cls, account_id: str, region: str, job_name: str, creation_time: float) -> JobLogKey:
        return cls(account_id, region, job_name, round(creation_time * 1000))

    def folder(self, data_dir: Path | str) -> Path:
        return Path(data_dir) / "logs" / self.account_id / self.region / f"{self.job_name}.{self.created_ms}"


def stream_name(host: str, epoch_seconds: float) -> str:
    return f"{host}-{int(epoch_seconds)}"


def stream_path(data_dir: Path | str, key: JobLogKey, host: str, epoch_seconds: float) -> Path:
    return key.folder(data_dir) / stream_name(host, epoch_seconds)


@dataclass(frozen=True)
class LogStream:
    key: JobLogKey
    name: str  # the file name, e.g. "algo-1-1700000000"
    path: Path

    @property
    def log_stream_name(self) -> str:
        """The CloudWatch stream name: `<job>/algo-1-<epoch seconds>`."""
        return f"{self.key.job_name}/{self.name}"

    @property
    def host(self) -> str:
        return self.name.rsplit("-", 1)[0]

    @property
    def creation_time_ms(self) -> int:
        return int(self.name.rsplit("-", 1)[1]) * 1000

    def first_event(self) -> dict[str, Any] | None:
        return next(read_events(self.path), None)

    def last_event(self) -> dict[str, Any] | None:
        return last_event(self.path)

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0


def list_streams(data_dir: Path | str, key: JobLogKey) -> list[LogStream]:
    try:
        found = [LogStream(key, p.name, p) for p in key.folder(data_dir).iterdir()
                 if _STREAM_RE.match(p.name) and p.is_file()]
    except (FileNotFoundError, NotADirectoryError):  # no logs yet, or the job was just deleted
        return []
    return sorted(found, key=lambda s: s.name)


def remove_job_logs(data_dir: Path | str, key: JobLogKey) -> None:
    shutil.rmtree(key.folder(data_dir), ignore_errors=True)


def _event(raw: dict[str, Any]) -> dict[str, Any]:
    timestamp = int(raw["timestamp"])
    return {"timestamp": timestamp, "message": str(raw["message"]),
            "ingestionTime": int(raw.get("ingestionTime", timestamp))}


def read_events(path: Path | str) -> Iterator[dict[str, Any]]:
    """Events of one stream in order."""
    for event, _ in iter_events(path):
        yield event


def iter_events(path: Path | str, offset: int = 0) -> Iterator[tuple[dict[str, Any], int]]:
    """(event, byte offset just past it) for each event from `offset` on.

    A half-written last line (a writer mid-flush) is not an event yet.
    """
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return
    with f:
        f.seek(offset)
        position = offset
        for line in f:
            if not line.endswith(b"\n"):
                break
            position += len(line)
            try:
                yield _event(json.loads(line)), position
            except (ValueError, KeyError, TypeError):
                continue


def is_event_boundary(path: Path | str, offset: int) -> bool:
    """Whether `offset` is where an event starts or the file ends (tokens carry offsets)."""
    if offset == 0:
        return True
    try:
        with open(path, "rb") as f:
            if offset > os.fstat(f.fileno()).st_size:
                return False
            f.seek(offset - 1)
            return f.read(1) == b"\n"
    except (FileNotFoundError, ValueError, OSError):
        return False


def last_event(path: Path | str) -> dict[str, Any] | None:
    """The last whole event, read from the end of the file."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return None
    with f:
        end = f.seek(0, os.SEEK_END)
        chunk = 1 << 16
        tail = b""
        position = end
        while position > 0:
            step = min(chunk, position)
            position -= step
            f.seek(position)
            tail = f.read(step) + tail
            lines = tail.split(b"\n")
            # lines[-1] is the unfinished remainder (b"" when the file ends with a newline).
            complete = lines[:-1] if position == 0 else lines[1:-1]
            for line in reversed(complete):
                try:
                    return _event(json.loads(line))
                except (ValueError, KeyError, TypeError):
                    continue
        return None


def cut_line(max_bytes: int) -> str:
    return (f"{CUT_PREFIX}{max_bytes} bytes (--max-log-bytes-per-host); the rest of the output was dropped "
            "(it still counts for metrics and FailureReason)")


def is_cut_line(message: str) -> bool:
    return message.startswith(CUT_PREFIX)


def _record(timestamp_ms: int, message: str) -> str:
    return json.dumps({"timestamp": int(timestamp_ms), "ingestionTime": int(time.time() * 1000),
                       "message": message}, ensure_ascii=False) + "\n"


class LogStreamWriter:
    """Appends events to one stream file; every event is flushed so readers see it live.

    With `max_bytes` the file never grows past it: the event that would take it (with room kept for the cut
    line) over the cap is replaced by the cut line, and every later one is dropped. A writer opened on a file
    a previous server process wrote carries on from its size, and one that finds the cut line at its end
    writes nothing more.
    """

    def __init__(self, path: Path, max_bytes: int | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._file = open(path, "a", encoding="utf-8")
        self._size = os.fstat(self._file.fileno()).st_size
        self.cut = False
        if max_bytes is not None:
            # 13-digit timestamps until the year 2286: the cut line's size is known now.
            self._reserve = len(_record(int(time.time() * 1000), cut_line(max_bytes)).encode("utf-8"))
            last = last_event(path) if self._size else None
            self.cut = last is not None and is_cut_line(last["message"])

    def write(self, timestamp_ms: int, message: str) -> None:
        line = _record(timestamp_ms, message)
        with self._lock:
            if self._file.closed or self.cut:
                return
            size = len(line.encode("utf-8"))
            if self.max_bytes is not None and self._size + size + self._reserve > self.max_bytes:
                # Set first: a line that does not fit (a full disk) is not tried again and again.
                self.cut = True
                log.warning("%s: the log stream reached %d bytes (--max-log-bytes-per-host): the rest is dropped",
                            self.path.name, self.max_bytes)
                line = _record(timestamp_ms, cut_line(self.max_bytes))
                size = len(line.encode("utf-8"))
            self._file.write(line)
            self._file.flush()
            self._size += size

    def close(self) -> None:
        with self._lock:
            try:
                self._file.close()
            except OSError:
                pass  # the last lines did not fit (a full disk); the file is closed all the same
