"""Follows one container's stdout/stderr into its log stream file while the job runs.

A log event is at most 256 KiB (CloudWatch's limit): a longer line is cut there and the rest of it is
read and dropped, so a container printing 10 MiB without a newline costs the server 256 KiB, not 10 MiB.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque

from runner.backend import Backend, ContainerRef, LogChunk
from runner.failure import disk_full
from runner.metrics import MetricCollector
from smlocal.core.logstore import LogStreamWriter, is_cut_line, read_events

log = logging.getLogger("smlocal.runner")

TAIL_LINES = 20
# CloudWatch counts a message's UTF-8 bytes plus 26 against its 256 KiB event limit.
MAX_EVENT_BYTES = 256 * 1024 - 26


class LineAssembler:
    """Turns log chunks into whole lines of at most `limit` UTF-8 bytes.

    Engines split long lines into parts (Docker: 16 KiB frames without a newline, each with its own
    timestamp); they are joined and stamped with the first part's time. What a line has beyond the
    limit is dropped as it arrives.
    """

    def __init__(self, limit: int = MAX_EVENT_BYTES) -> None:
        self.limit = limit
        self._parts: list[bytes] = []
        self._size = 0
        self._cut = False
        self._ts: int | None = None

    @property
    def pending_bytes(self) -> int:
        return self._size

    def feed(self, chunk: LogChunk, now_ms: int) -> list[tuple[int, str]]:
        lines = []
        data = chunk.data
        while data:
            if self._ts is None:
                self._ts = chunk.timestamp_ms if chunk.timestamp_ms is not None else now_ms
            newline = data.find(b"\n")
            piece = data if newline < 0 else data[:newline]
            room = self.limit - self._size
            if len(piece) > room:
                self._cut = True
                piece = piece[:room]
            if piece:
                self._parts.append(piece)
                self._size += len(piece)
            if newline < 0:
                break
            lines.append(self._take())
            data = data[newline + 1:]
        return lines

    def flush(self) -> list[tuple[int, str]]:
        return [self._take()] if self._ts is not None else []

    def _take(self) -> tuple[int, str]:
        raw = b"".join(self._parts).rstrip(b"\r")
        text = raw.decode("utf-8", errors="replace")
        if self._cut:
            # A cut in the middle of a character decodes to a replacement character, which may be longer.
            while len(text.encode("utf-8")) > self.limit:
                text = text[:-1]
        line = (self._ts or 0, text)
        self._parts, self._size, self._cut, self._ts = [], 0, False, None
        return line


class LogFollower:
    def __init__(self, backend: Backend, container: ContainerRef, writer: LogStreamWriter,
                 metrics: MetricCollector, notices: tuple[str, ...] = ()) -> None:
        self._backend = backend
        self._container = container
        self._writer = writer
        self._metrics = metrics
        # The platform's own lines at the head of the stream (runner.notices): not the algorithm's output,
        # so never fed to metrics or FailureReason's tail.
        self._notices = notices
        self.last_lines: deque[str] = deque(maxlen=TAIL_LINES)
        self._since_ms: int | None = None
        # Lines already in the file at the resume instant; the engine's `since` is inclusive.
        self._already_written: Counter[str] = Counter()
        self._seen_ts: int | None = None
        self._seen_at: Counter[str] = Counter()
        self._stream = None
        self._closed = False
        self._lines_lost = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"smlocal-logs-{container.name}", daemon=True)

    def write_notices(self) -> None:
        """Start a new stream with the platform's lines, as old as the container's start."""
        started_ms = int((self._container.started_at or time.time()) * 1000)
        for notice in self._notices:
            self._writer.write(started_ms, notice)

    def resume_from_file(self) -> None:
        """Continue a stream a previous server process wrote: replay it into metrics, skip what it has."""
        last = None
        head = list(self._notices)
        for event in read_events(self._writer.path):
            if head and event["message"] == head[0]:
                head.pop(0)
            elif is_cut_line(event["message"]):
                pass  # the platform's line where --max-log-bytes-per-host cut the stream, not the algorithm's
            else:
                head = []
                self._metrics.feed(event["timestamp"], event["message"])
                self.last_lines.append(event["message"])
            if event["timestamp"] != last:
                last, self._already_written = event["timestamp"], Counter()
            self._already_written[event["message"]] += 1
        self._since_ms = last

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            self._read(self._since_ms, flush=False)
            if not self._closed:
                # Docker (20.10) ends a followed output when the container exits, dropping what its reader had not
                # got to yet: a container that printed megabytes just before lost its last lines, metrics and
                # FailureReason's tail with them. Read once more from the last line seen (the output of an
                # exited container is read to its end), skipping the lines already seen at that instant.
                if self._seen_ts is not None:
                    self._since_ms, self._already_written = self._seen_ts, Counter(self._seen_at)
                self._read(self._since_ms, flush=True)
        except Exception as e:  # the container vanished or the engine went away: keep what we have
            if not self._closed:
                log.warning("log stream of %s ended: %s", self._container.name, e)
        finally:
            self._writer.close()

    def _read(self, since_ms: int | None, *, flush: bool) -> None:
        """Emit the container's lines from `since_ms` on, following them until the engine ends the output. Without
        `flush` an unfinished last line is left out: the next read, from an instant before it, gives it again."""
        assembler = LineAssembler()
        stream = self._backend.logs(self._container, since_ms)
        with self._lock:
            if self._closed:
                stream.close()
                return
            self._stream = stream
        for chunk in stream:
            for ts, line in assembler.feed(chunk, int(time.time() * 1000)):
                self._emit(ts, line)
        if flush:
            for ts, line in assembler.flush():
                self._emit(ts, line)

    def _emit(self, ts: int, line: str) -> None:
        # The newest instant seen and its lines: where a second read of the output starts.
        if self._seen_ts is None or ts > self._seen_ts:
            self._seen_ts, self._seen_at = ts, Counter()
        if ts == self._seen_ts:
            self._seen_at[line] += 1
        if self._since_ms is not None and ts <= self._since_ms:
            if ts < self._since_ms or self._already_written[line] > 0:
                self._already_written[line] -= 1
                return
        try:
            # Past --max-log-bytes-per-host the writer drops the line; it still counts below.
            self._writer.write(ts, line)
        except OSError as e:
            # A full disk loses the stream's lines for a while, not the job's end: they still feed the
            # metrics and FailureReason's tail (which usually says why the disk filled).
            if not disk_full(e):
                raise
            if not self._lines_lost:
                log.warning("%s: log lines are not kept while the data dir's file system is full", self._container.name)
            self._lines_lost = True
        self.last_lines.append(line)
        self._metrics.feed(ts, line)

    def join(self, timeout: float) -> None:
        """Wait for the rest of the output of an exited container."""
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._thread.is_alive():
            self.stop()

    def stop(self) -> None:
        """Stop following now (server shutdown): the container keeps running."""
        with self._lock:
            self._closed = True
            if self._stream is not None:
                try:
                    self._stream.close()
                except Exception:  # closing a half-dead socket can fail; we are done with it anyway
                    pass
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(2)
        if not self._thread.is_alive():
            self._writer.close()
