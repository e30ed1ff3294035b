"""`serve --spot-interruptions RATE`: spot capacity reclaimed at random, for drills and workshops.

Each managed spot job that is Training is interrupted RATE times per hour on average (a Poisson process,
checked every second), exactly as `smlocal interrupt` would: through the lifecycle, which persists the
request before the runner carries it out.
"""

from __future__ import annotations

import logging
import math
import random
import threading
from collections.abc import Callable

from smlocal.core.errors import ApiError
from smlocal.core.lifecycle import Lifecycle

log = logging.getLogger("smlocal.runner")

TICK_SECONDS = 1.0


class SpotDrill:
    def __init__(self, rate_per_hour: float, lifecycle: Lifecycle, spot_jobs: Callable[[], list[str]],
                 shutdown: threading.Event, rng: random.Random | None = None) -> None:
        self._lifecycle = lifecycle
        self._spot_jobs = spot_jobs
        self._shutdown = shutdown
        self._rng = rng or random.Random()
        # The chance that a job is reclaimed within one tick.
        self.chance_per_tick = 1.0 - math.exp(-rate_per_hour * TICK_SECONDS / 3600.0)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None and self.chance_per_tick > 0:
            self._thread = threading.Thread(target=self._loop, name="smlocal-spot-drill", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._shutdown.wait(TICK_SECONDS):
            for arn in self._spot_jobs():
                if self._rng.random() >= self.chance_per_tick:
                    continue
                try:
                    self._lifecycle.request_interrupt(arn)
                    log.info("spot drill: training job %s is interrupted", arn.rsplit("/", 1)[-1])
                except ApiError:
                    pass  # not Training right now (starting, uploading, already interrupted)
                except Exception:
                    log.exception("spot drill: could not interrupt %s", arn)
