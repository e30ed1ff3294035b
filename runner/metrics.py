"""FinalMetricDataList: the last value each MetricDefinitions regex found in the training log."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger("smlocal.runner")


class MetricCollector:
    """Fed every log line; keeps the latest value per metric, as SageMaker reports final metrics."""

    def __init__(self, definitions: list[dict[str, Any]] | None,
                 sink: Callable[[str, int, float], None] | None = None) -> None:
        self._patterns: list[tuple[str, re.Pattern[str]]] = []
        for d in definitions or []:
            try:
                self._patterns.append((d["Name"], re.compile(d["Regex"])))
            except (KeyError, re.error) as e:
                log.warning("ignoring metric definition %r: %s", d, e)
        self._latest: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        # Receives every value (name, epoch ms, value): the metric's series over time.
        self._sink = sink

    def feed(self, timestamp_ms: int, line: str) -> None:
        for name, pattern in self._patterns:
            m = pattern.search(line)
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
            return [self._latest[name] for name, _ in self._patterns if name in self._latest]


def final_of_all(collectors: Sequence[MetricCollector]) -> list[dict[str, Any]]:
    """FinalMetricDataList over several hosts' logs: each metric's latest value (the first host's on a tie)."""
    latest: dict[str, dict[str, Any]] = {}
    for collector in collectors:
        for metric in collector.final():
            best = latest.get(metric["MetricName"])
            if best is None or metric["Timestamp"] > best["Timestamp"]:
                latest[metric["MetricName"]] = metric
    order = [name for name, _ in collectors[0]._patterns] if collectors else []
    return [latest[name] for name in order if name in latest]
