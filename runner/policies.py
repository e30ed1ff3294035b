"""The small rules `JobExecution` consults: when to stop or be interrupted, which exit fails the job, the grace period.

Each is told about events (a stop or interrupt request, an exit) and wakes the execution through its
`wake` event; none of them polls the database. The time limits (MaxRuntimeInSeconds and the others) are
the runner's (runner.time_limits): a job in the queue has no execution to arm a timer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

log = logging.getLogger("smlocal.runner")


class Detach(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Let go of the job as it is (server shutdown, engine gone): no status change, no cleanup.

    A restarted server (or the runner, once the engine answers again) takes it up from the database."""


class StopRequested(Exception):  # noqa: N818
    """A stop (StopTrainingJob or the deadline, already persisted as Stopping) came before the containers started."""


class _Request:
    """A request the lifecycle persisted before anyone calls `request()`: set once, it wakes the execution."""

    def __init__(self, wake: threading.Event) -> None:
        self._wake = wake
        self._requested = threading.Event()

    def request(self) -> None:
        self._requested.set()
        self._wake.set()

    @property
    def requested(self) -> bool:
        return self._requested.is_set()


class StopPolicy(_Request):
    """Whether the job must stop (a stop request: it is Stopping) or be let go (a shutdown); set by the runner,
    read by the job."""

    def __init__(self, wake: threading.Event, shutdown: threading.Event) -> None:
        super().__init__(wake)
        self._shutdown = shutdown

    def detaching(self) -> bool:
        """The server is shutting down: let go of the job as it is."""
        return self._shutdown.is_set()

    def cancelled(self) -> bool:
        """What a download or a pull looks at: stop it for a stop request or a shutdown alike."""
        return self.requested or self.detaching()

    def check(self) -> None:
        """Raise Detach or StopRequested if the job must not go on to its next phase."""
        if self.detaching():
            raise Detach()
        if self.requested:
            raise StopRequested()


class InterruptPolicy(_Request):
    """A spot interruption asked for (persisted as interrupt_requested_at): the hosts get SIGTERM and the
    grace, the synced folders their last sync, and the job runs again."""


class HostState(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def exit_code(self) -> int | None: ...


class FailurePolicy:
    """Several hosts: the job completes when every host exited 0; the first host to exit non-zero fails it
    (the others may fail only because it went away) and the others are stopped as for a stop request."""

    def first_failed(self, exits: Sequence[HostState]) -> HostState | None:
        return next((h for h in exits if h.exit_code != 0), None)


class GracePolicy:
    """SIGTERM, then SIGKILL once the grace period is over.

    `record` persists that SIGTERM was sent before it is sent, with the time the grace started, so a
    restarted server neither signals twice nor starts the grace again."""

    def __init__(self, grace_seconds: float, record: Callable[[], float]) -> None:
        self.grace_seconds = grace_seconds
        self._record = record
        self.started_at: float | None = None

    def resume(self, started_at: float) -> None:
        """A previous process sent SIGTERM at `started_at`."""
        self.started_at = started_at

    @property
    def signalled(self) -> bool:
        return self.started_at is not None

    def begin(self) -> None:
        if self.started_at is None:
            self.started_at = self._record()

    def remaining(self) -> float:
        assert self.started_at is not None
        return self.started_at + self.grace_seconds - time.time()
