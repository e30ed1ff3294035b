"""The embedded store's process watched: restarted when it dies, and what happened kept for /health.

rclone is a process of its own (server.s3.files). Killed by an OOM killer, a stray `pkill`, or a crash, it
would leave every later download and upload failing until smlocal itself restarted. The runner retries a
store that does not answer for a while (runner.s3), so a store back within a second or two costs a job
nothing. The in-memory store runs inside smlocal's process and needs no watching.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Protocol

from server.s3.base import StoreStartError

log = logging.getLogger("smlocal.s3")

POLL_SECONDS = 0.25
# A store that will not stay up (its folder gone, its port taken by another program) is not restarted in a
# tight loop: each failed restart waits longer, up to this.
MAX_BACKOFF_SECONDS = 30.0


class WatchedStore(Protocol):
    def start(self) -> None: ...

    def exit_code(self) -> int | None:
        """None while its process runs; its exit code once it has died."""
        ...


class StoreWatchdog:
    def __init__(self, store: WatchedStore) -> None:
        self._store = store
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self.restarts = 0
        self.last_exit: int | None = None
        self.last_restart: float | None = None  # epoch seconds
        self.problem: str | None = None  # why it is down now, if it is
        self._thread = threading.Thread(target=self._run, name="smlocal-s3-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Before the store is stopped on purpose (its exit must not look like a death)."""
        self._stopped.set()
        self._thread.join(5)

    def health(self) -> dict[str, Any]:
        with self._lock:
            return {"up": self.problem is None, "restarts": self.restarts, "lastExitCode": self.last_exit,
                    "lastRestart": self.last_restart, **({"problem": self.problem} if self.problem else {})}

    def _run(self) -> None:
        backoff = 1.0
        while not self._stopped.wait(POLL_SECONDS if self.problem is None else backoff):
            if self.problem is None:
                code = self._store.exit_code()
                if code is None:
                    continue
                with self._lock:
                    self.last_exit = code
                log.warning("the embedded S3 store died (exit code %s): restarting it", code)
            try:
                self._store.start()
            except (StoreStartError, OSError) as e:
                # A start that failed leaves no process: the store is down until a start succeeds.
                with self._lock:
                    self.problem = (f"the embedded S3 store died (exit code {self.last_exit}) and does not "
                                    f"restart: {e}")
                log.error("%s; trying again in %.0fs", self.problem, backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
                continue
            backoff = 1.0
            with self._lock:
                self.problem = None
                self.restarts += 1
                self.last_restart = time.time()
            log.warning("the embedded S3 store is serving again (restart %d)", self.restarts)
