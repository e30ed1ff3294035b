"""Persistence of training jobs, their status transitions, tags and metric series (SQLAlchemy on SQLite)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker


class Base(DeclarativeBase):
    pass


class JobRow(Base):
    __tablename__ = "training_jobs"
    __table_args__ = (UniqueConstraint("account_id", "region", "name", name="uq_job_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[str] = mapped_column(String(12))
    region: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(63))
    arn: Mapped[str] = mapped_column(String(256), unique=True)
    # The validated CreateTrainingJob request, exactly the modelled members the client sent.
    request_json: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), index=True)
    secondary_status: Mapped[str] = mapped_column(String(32))
    failure_reason: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    creation_time: Mapped[float] = mapped_column(Float, index=True)
    last_modified_time: Mapped[float] = mapped_column(Float)
    training_start_time: Mapped[float | None] = mapped_column(Float, nullable=True)
    training_end_time: Mapped[float | None] = mapped_column(Float, nullable=True)
    # queued -> claimed (a runner owns it) -> done; lets a restarted server find what was in flight.
    runner_state: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    final_metrics_json: Mapped[str | None] = mapped_column(Text, nullable=True)

    transitions: Mapped[list[TransitionRow]] = relationship(
        back_populates="job", order_by="TransitionRow.id", cascade="all, delete-orphan"
    )


class TransitionRow(Base):
    __tablename__ = "status_transitions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("training_jobs.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(32))
    start_time: Mapped[float] = mapped_column(Float)
    end_time: Mapped[float | None] = mapped_column(Float, nullable=True)
    message: Mapped[str] = mapped_column(String(1024))

    job: Mapped[JobRow] = relationship(back_populates="transitions")


class TagRow(Base):
    __tablename__ = "tags"
    __table_args__ = (UniqueConstraint("resource_arn", "key", name="uq_tag_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    resource_arn: Mapped[str] = mapped_column(String(256), index=True)
    key: Mapped[str] = mapped_column(String(128))
    value: Mapped[str] = mapped_column(String(256))


class MetricPointRow(Base):
    """One value a MetricDefinitions regex found in one host's log line.

    Rows go with their job: the foreign key cascades on delete (SQLite may reuse a deleted job's id,
    so points must never outlive the row).
    """

    __tablename__ = "metric_points"
    __table_args__ = (
        # A stream replayed after a restart feeds the same lines again: the same point is stored once.
        UniqueConstraint("job_id", "host", "metric_name", "timestamp_ms", "value", name="uq_metric_point"),
        Index("ix_metric_points_series", "job_id", "metric_name", "timestamp_ms"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("training_jobs.id", ondelete="CASCADE"))
    host: Mapped[str] = mapped_column(String(16))
    metric_name: Mapped[str] = mapped_column(String(255))
    timestamp_ms: Mapped[int] = mapped_column(Integer)
    value: Mapped[float] = mapped_column(Float)


@dataclass(frozen=True)
class Transition:
    status: str
    start_time: float
    end_time: float | None
    message: str


@dataclass(frozen=True)
class JobRecord:
    """A detached snapshot of one job, safe to hand to threads and serializers."""

    name: str
    arn: str
    account_id: str
    region: str
    request: dict[str, Any]
    status: str
    secondary_status: str
    failure_reason: str | None
    creation_time: float
    last_modified_time: float
    training_start_time: float | None
    training_end_time: float | None
    runner_state: str
    final_metrics: list[dict[str, Any]] | None = None
    transitions: list[Transition] = field(default_factory=list)

    @classmethod
    def from_row(cls, row: JobRow, with_transitions: bool = True) -> JobRecord:
        return cls(
            name=row.name,
            arn=row.arn,
            account_id=row.account_id,
            region=row.region,
            request=json.loads(row.request_json),
            status=row.status,
            secondary_status=row.secondary_status,
            failure_reason=row.failure_reason,
            creation_time=row.creation_time,
            last_modified_time=row.last_modified_time,
            training_start_time=row.training_start_time,
            training_end_time=row.training_end_time,
            runner_state=row.runner_state,
            final_metrics=json.loads(row.final_metrics_json) if row.final_metrics_json else None,
            transitions=[
                Transition(t.status, t.start_time, t.end_time, t.message) for t in row.transitions
            ]
            if with_transitions
            else [],
        )


def _sqlite_url(db: str | Path) -> str:
    db = str(db)
    return db if "://" in db else f"sqlite:///{db}"


def _configure_sqlite(engine: Engine) -> None:
    # pysqlite's own transaction handling starts transactions lazily, which lets two writers read the
    # same state and both act on it; BEGIN IMMEDIATE takes the write lock up front so every
    # read-modify-write (claim, stop, state change) is serialized.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


class Store:
    def __init__(self, db: str | Path) -> None:
        url = _sqlite_url(db)
        if url.startswith("sqlite:///") and not url.endswith(":memory:"):
            Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        self.engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, pool_pre_ping=True
        )
        _configure_sqlite(self.engine)
        Base.metadata.create_all(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One serialized unit of work: committed on success, rolled back on any error."""
        with self._sessions() as session, session.begin():
            yield session

    def close(self) -> None:
        self.engine.dispose()
