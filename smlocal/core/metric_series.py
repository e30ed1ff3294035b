"""Training metrics over time: every value the MetricDefinitions find, per metric and host, in SQLite.

The runner writes through `MetricSeriesWriter` (batched: one transaction per second at most, and one at
the end); the CloudWatch provider reads with `points`. State side: imports neither runner nor wire.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.dialects.sqlite import insert

from smlocal.core.store import JobRow, MetricPointRow, Store

# The CloudWatch namespace of SageMaker training jobs' metrics.
METRIC_NAMESPACE = "/aws/sagemaker/TrainingJobs"

log = logging.getLogger("smlocal.metrics")

FLUSH_SECONDS = 1.0


class MetricSeriesWriter:
    """Buffers one host's metric points and writes them at most once per `interval`, and on close.

    The points belong to the job row with this ARN *and* creation time: a flush that comes after the
    job was deleted (or deleted and re-created) writes nothing.
    """

    def __init__(self, store: Store, job_arn: str, job_creation_time: float, host: str,
                 interval: float = FLUSH_SECONDS) -> None:
        self._store = store
        self._arn = job_arn
        self._creation_time = job_creation_time
        self._host = host
        self._interval = interval
        self._pending: list[dict[str, object]] = []
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._closed = False

    def add(self, metric_name: str, timestamp_ms: int, value: float) -> None:
        if not math.isfinite(value):
            return  # CloudWatch takes no NaN or infinity, and SQLite would store NaN as NULL
        with self._lock:
            if self._closed:
                return
            self._pending.append({"host": self._host, "metric_name": metric_name,
                                  "timestamp_ms": int(timestamp_ms), "value": float(value)})
            if self._timer is None:
                self._timer = threading.Timer(self._interval, self.flush)
                self._timer.daemon = True
                self._timer.start()

    def flush(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
            self._timer = None
        if not batch:
            return
        try:
            with self._store.transaction() as s:
                job_id = s.scalars(select(JobRow.id).where(
                    JobRow.arn == self._arn, JobRow.creation_time == self._creation_time)).first()
                if job_id is None:
                    return
                s.execute(insert(MetricPointRow).on_conflict_do_nothing(),
                          [{**point, "job_id": job_id} for point in batch])
        except Exception:  # losing a batch of points must never fail the job
            log.exception("could not store %d metric points of %s", len(batch), self._arn)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        self.flush()


@dataclass(frozen=True)
class MetricPoint:
    host: str
    metric_name: str
    timestamp_ms: int
    value: float


def points(store: Store, account_id: str, region: str, job_name: str, *, metric_name: str | None = None,
           host: str | None = None, start_ms: int | None = None, end_ms: int | None = None) -> list[MetricPoint]:
    """The stored points of a job (its current incarnation), oldest first."""
    stmt = (select(MetricPointRow.host, MetricPointRow.metric_name, MetricPointRow.timestamp_ms,
                   MetricPointRow.value)
            .join(JobRow, JobRow.id == MetricPointRow.job_id)
            .where(JobRow.account_id == account_id, JobRow.region == region, JobRow.name == job_name))
    if metric_name is not None:
        stmt = stmt.where(MetricPointRow.metric_name == metric_name)
    if host is not None:
        stmt = stmt.where(MetricPointRow.host == host)
    if start_ms is not None:
        stmt = stmt.where(MetricPointRow.timestamp_ms >= start_ms)
    if end_ms is not None:
        stmt = stmt.where(MetricPointRow.timestamp_ms < end_ms)
    stmt = stmt.order_by(MetricPointRow.timestamp_ms, MetricPointRow.id)
    with store.read() as s:
        return [MetricPoint(*row) for row in s.execute(stmt).all()]


def series(store: Store, account_id: str, region: str) -> list[tuple[str, str, str]]:
    """(job name, metric name, host) of every series stored in an account and region."""
    stmt = (select(JobRow.name, MetricPointRow.metric_name, MetricPointRow.host)
            .join(JobRow, JobRow.id == MetricPointRow.job_id)
            .where(JobRow.account_id == account_id, JobRow.region == region)
            .distinct()
            .order_by(JobRow.name, MetricPointRow.metric_name, MetricPointRow.host))
    with store.read() as s:
        return [tuple(row) for row in s.execute(stmt).all()]  # type: ignore[misc]
