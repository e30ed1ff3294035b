"""Follows one container's stdout/stderr into its log stream file while the job runs."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from typing import Any

from docker.models.containers import Container

from runner.logs import DockerLogAssembler, LogStreamWriter, read_events
from runner.metrics import MetricCollector

log = logging.getLogger("smlocal.runner")

TAIL_LINES = 20


class LogFollower:
    def __init__(self, container: Container, writer: LogStreamWriter, metrics: MetricCollector) -> None:
        self._container = container
        self._writer = writer
        self._metrics = metrics
        self.last_lines: deque[str] = deque(maxlen=TAIL_LINES)
        self._since_ms: int | None = None
        # Lines already in the file at the resume instant; docker's `since` is inclusive.
        self._already_written: Counter[str] = Counter()
        self._stream: Any = None
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"smlocal-logs-{container.name}", daemon=True)

    def resume_from_file(self) -> None:
        """Continue a stream a previous server process wrote: replay it into metrics, skip what it has."""
        last = None
        for event in read_events(self._writer.path):
            self._metrics.feed(event["timestamp"], event["message"])
            self.last_lines.append(event["message"])
            if event["timestamp"] != last:
                last, self._already_written = event["timestamp"], Counter()
            self._already_written[event["message"]] += 1
        self._since_ms = last

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        kwargs: dict[str, Any] = {"stream": True, "follow": True, "timestamps": True}
        if self._since_ms is not None:
            kwargs["since"] = self._since_ms / 1000
        assembler = DockerLogAssembler()
        try:
            stream = self._container.logs(**kwargs)
            with self._lock:
                if self._closed:
                    stream.close()
                    return
                self._stream = stream
            for frame in stream:
                for ts, line in assembler.feed(frame, int(time.time() * 1000)):
                    self._emit(ts, line)
            for ts, line in assembler.flush():
                self._emit(ts, line)
        except Exception as e:  # the container vanished or Docker went away: keep what we have
            if not self._closed:
                log.warning("log stream of %s ended: %s", self._container.name, e)
        finally:
            self._writer.close()

    def _emit(self, ts: int, line: str) -> None:
        if self._since_ms is not None and ts <= self._since_ms:
            if ts < self._since_ms or self._already_written[line] > 0:
                self._already_written[line] -= 1
                return
        self._writer.write(ts, line)
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
