"""How many `smlocal serve` processes and smlocal networks the suite holds at once, for the end-of-run summary.

A fresh engine has about 30 bridge networks in its default pools; the suite once kept 53 servers alive
at the end of a session. Servers register here as they start and stop (tests.support.smlocal), and a
sampler thread counts the engine's smlocal networks twice a second, so the summary shows the peaks that
matter and the module-end check (conftest) can name a server a test left running.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

from runner.backend import LABEL_MANAGED

SAMPLE_SECONDS = 0.5


class ServerCensus:
    """The servers started in this process, and the spans (start, stop) of those started in pytest-xdist's
    workers, which each send theirs to the controller when they finish (`absorb`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: dict[int, Any] = {}  # id(server) -> server
        self._since: dict[int, float] = {}  # id(server) -> when it started
        self._spans: list[tuple[float, float]] = []  # servers that stopped: (started, stopped)

    def add(self, server: Any) -> None:
        with self._lock:
            self._live[id(server)] = server
            self._since[id(server)] = time.time()

    def remove(self, server: Any) -> None:
        with self._lock:
            if self._live.pop(id(server), None) is not None:
                self._spans.append((self._since.pop(id(server)), time.time()))

    def live(self) -> list[Any]:
        with self._lock:
            return list(self._live.values())

    def spans(self) -> list[tuple[float, float]]:
        """Every server's (started, stopped); one still running counts as running for ever."""
        with self._lock:
            return [*self._spans, *((since, math.inf) for since in self._since.values())]

    def absorb(self, spans: list[tuple[float, float]]) -> None:
        with self._lock:
            self._spans.extend((float(a), float(b)) for a, b in spans)

    @property
    def started(self) -> int:
        return len(self.spans())

    @property
    def peak(self) -> int:
        """The most servers alive at the same moment, in whichever processes they ran."""
        spans = self.spans()
        events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])  # a stop first at the same instant
        alive = most = 0
        for _, step in events:
            alive += step
            most = max(most, alive)
        return most


class NetworkSampler:
    """Counts the networks carrying smlocal's label on the engine, from `start()` to `stop()`."""

    def __init__(self) -> None:
        self.peak = 0
        self.samples = 0
        self.bridges_peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="network-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        import docker

        client = None
        while True:  # a first sample at once, then one every SAMPLE_SECONDS
            if self._stop.is_set():
                return
            try:
                client = client or docker.from_env(timeout=5)
                networks = client.api.networks(filters={"driver": "bridge"})
            except Exception:  # noqa: BLE001 - no engine yet (or for a while): nothing to count
                client = None
            else:
                ours = sum(1 for n in networks if (n.get("Labels") or {}).get(LABEL_MANAGED) == "true")
                self.samples += 1
                self.peak = max(self.peak, ours)
                self.bridges_peak = max(self.bridges_peak, len(networks))
            self._stop.wait(SAMPLE_SECONDS)


SERVERS = ServerCensus()
NETWORKS = NetworkSampler()
