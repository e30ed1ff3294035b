"""FinalMetricDataList: the last value each MetricDefinitions regex found in the training log.

The patterns come from the client, so they run with the `regex` module: with a timeout (a pattern
that backtracks catastrophically is dropped, with a warning, instead of hanging the log follower) and
`concurrent=True` (the GIL is released while matching, so no pattern slows the API's threads).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import regex

from smlocal.core.jobspec import MetricDefinition

log = logging.getLogger("smlocal.runner")

# A log line is at most 256 KiB; an honest pattern scans that in milliseconds.
MATCH_TIMEOUT_SECONDS = 0.25


class MetricCollector:
    """Fed every log line; keeps the latest value per metric, as SageMaker reports final metrics."""

    def __init__(self, definitions: Sequence[MetricDefinition] | None,
                 sink: Callable[[str, int, float], None] | None = None) -> None:
        self.names: list[str] = []
        self._patterns: list[tuple[str, regex.Pattern[str]]] = []
        for d in definitions or []:
            try:
                self._patterns.append((d.name, regex.compile(d.regex)))
                self.names.append(d.name)
            except (regex.error, TypeError) as e:
                log.warning("ignoring metric definition %r: %s", d, e)
        self._latest: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        # Receives every value (name, epoch ms, value): the metric's series over time.
        self._sink = sink

    def feed(self, timestamp_ms: int, line: str) -> None:
        for entry in list(self._patterns):
            name, pattern = entry
            try:
                m = pattern.search(line, timeout=MATCH_TIMEOUT_SECONDS, concurrent=True)
            except TimeoutError:
                log.warning("metric %r: its regex took over %s s on one log line; it is no longer evaluated",
                            name, MATCH_TIMEOUT_SECONDS)
                self._patterns.remove(entry)
                continue
            if not m:
                continue
            # SageMaker takes the first capture group (the whole match when there is none).
            raw = m.group(1) if pattern.groups else m.group(0)
            try:
                value = float(raw)
            except (TypeError, ValueError):
                continue
            with self._lock:
                self._latest[name] = {"MetricName": name, "Value": value, "Timestamp": timestamp_ms / 1000}
            if self._sink is not None:
                self._sink(name, timestamp_ms, value)

    def final(self) -> list[dict[str, Any]]:
        with self._lock:
            return [self._latest[name] for name in self.names if name in self._latest]


def final_of_all(collectors: Sequence[MetricCollector]) -> list[dict[str, Any]]:
    """FinalMetricDataList over several hosts' logs: each metric's latest value (the first host's on a tie)."""
    latest: dict[str, dict[str, Any]] = {}
    for collector in collectors:
        for metric in collector.final():
            best = latest.get(metric["MetricName"])
            if best is None or metric["Timestamp"] > best["Timestamp"]:
                latest[metric["MetricName"]] = metric
    order = collectors[0].names if collectors else []
    return [latest[name] for name in order if name in latest]
