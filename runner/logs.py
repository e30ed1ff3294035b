"""Training log streams on disk: `<data_dir>/logs/<job>/<host>-<epoch seconds>`, one JSON line per event.

Each line is `{"timestamp": <epoch ms>, "message": "<text>"}`, the shape CloudWatch Logs returns, so the
log API only has to page through these files. The stream's CloudWatch name is `<job>/<file name>`.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

_STREAM_RE = re.compile(r"^(?P<host>algo-\d+)-(?P<epoch>\d+)$")
# Docker prefixes each line with RFC 3339 nano time when asked for timestamps.
_DOCKER_TS_RE = re.compile(rb"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d) ?")


def logs_dir(data_dir: Path | str, job_name: str) -> Path:
    return Path(data_dir) / "logs" / job_name


def stream_name(host: str, epoch_seconds: float) -> str:
    return f"{host}-{int(epoch_seconds)}"


@dataclass(frozen=True)
class LogStream:
    job_name: str
    name: str  # the file name, e.g. "algo-1-1700000000"
    path: Path

    @property
    def log_stream_name(self) -> str:
        """The CloudWatch stream name: `<job>/algo-1-<epoch seconds>`."""
        return f"{self.job_name}/{self.name}"

    @property
    def creation_time_ms(self) -> int:
        return int(self.name.rsplit("-", 1)[1]) * 1000


def list_streams(data_dir: Path | str, job_name: str) -> list[LogStream]:
    folder = logs_dir(data_dir, job_name)
    if not folder.is_dir():
        return []
    return sorted(
        (LogStream(job_name, p.name, p) for p in folder.iterdir() if _STREAM_RE.match(p.name)),
        key=lambda s: s.name,
    )


def list_jobs_with_logs(data_dir: Path | str) -> list[str]:
    folder = Path(data_dir) / "logs"
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def read_events(path: Path | str) -> Iterator[dict[str, Any]]:
    """Events of one stream in order; a half-written last line (a writer mid-flush) is skipped."""
    try:
        f = open(path, encoding="utf-8")
    except FileNotFoundError:
        return
    with f:
        for line in f:
            if not line.endswith("\n"):
                break
            try:
                event = json.loads(line)
            except ValueError:
                continue
            yield {"timestamp": int(event["timestamp"]), "message": str(event["message"])}


def last_timestamp(path: Path | str) -> int | None:
    last = None
    for event in read_events(path):
        last = event["timestamp"]
    return last


class LogStreamWriter:
    """Appends events to one stream file; every event is flushed so readers see it live."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._file = open(path, "a", encoding="utf-8")

    def write(self, timestamp_ms: int, message: str) -> None:
        line = json.dumps({"timestamp": int(timestamp_ms), "message": message}, ensure_ascii=False)
        with self._lock:
            if not self._file.closed:
                self._file.write(line + "\n")
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()


def split_docker_timestamp(frame: bytes) -> tuple[int | None, bytes]:
    """Split a `docker logs --timestamps` frame into (epoch ms, payload)."""
    m = _DOCKER_TS_RE.match(frame)
    if not m:
        return None, frame
    base, fraction, zone = m.group(1).decode(), (m.group(2) or b"").decode(), m.group(3).decode()
    # datetime keeps microseconds; docker sends nanoseconds.
    iso = f"{base}.{fraction[:6].ljust(6, '0')}{'+00:00' if zone == 'Z' else zone}"
    return int(datetime.fromisoformat(iso).timestamp() * 1000), frame[m.end():]
