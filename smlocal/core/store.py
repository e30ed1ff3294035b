"""Persistence of training jobs, their status transitions, tags and metric series (SQLAlchemy on SQLite).

Writes take SQLite's write lock up front (`transaction()`, BEGIN IMMEDIATE); reads never take it
(`read()`, a deferred transaction that WAL serves from a snapshot beside any writer). Commits are
fsynced (`synchronous=FULL`): a status a client was told about survives a power cut, not only a crash.
The schema carries a version (`PRAGMA user_version`); older databases are migrated step by step on
open, after a backup copy is taken.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
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
    inspect,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

from smlocal.core.space_reserve import SpaceReserve

log = logging.getLogger("smlocal.store")


class Base(DeclarativeBase):
    pass


LISTING_INDEX = "ix_training_jobs_listing"


class JobRow(Base):
    __tablename__ = "training_jobs"
    __table_args__ = (
        UniqueConstraint("account_id", "region", "name", name="uq_job_name"),
        # ListTrainingJobs' default order within an account and region: without it SQLite finds the jobs by
        # uq_job_name and sorts all of them for every page (~7 ms a page at 10,000 jobs; bench/api_load.py).
        Index(LISTING_INDEX, "account_id", "region", "creation_time"),
    )

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
    # The runner's own progress (smlocal.core.lifecycle.RUNNER_TRANSITIONS): queued, preparing, running,
    # terminating, done. Lets a restarted server tell what to run again, adopt or end.
    runner_state: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    # When runner_state last changed (a restarted server continues a stop's grace period from it).
    runner_since: Mapped[float | None] = mapped_column(Float, nullable=True)
    # While Stopping: the status the stop ends in (Stopped, or MaxRuntimeExceeded for the deadline).
    stop_target: Mapped[str | None] = mapped_column(String(32), nullable=True)
    final_metrics_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Which run of the job this is: 1, then one more per RetryStrategy retry (a platform fault).
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    # Spot interruptions so far (`smlocal interrupt`, or `serve --spot-interruptions`).
    interruptions: Mapped[int] = mapped_column(Integer, default=0)
    # When an interruption was asked for and not yet carried out (a restarted server carries it out).
    interrupt_requested_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Warm pools (smlocal.core.warm_pools). keep_alive_seconds: ResourceConfig.KeepAlivePeriodInSeconds as
    # last set (UpdateTrainingJob changes it); match_key: what a job must share to reuse the pool.
    keep_alive_seconds: Mapped[int] = mapped_column(Integer, default=0)
    match_key: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The pool this job runs on or left (its cache folder's name), when it was first made, its WarmPoolStatus,
    # since when it is Available, its ResourceRetainedBillableTimeInSeconds and ReusedByJob.
    warm_pool_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    warm_pool_born: Mapped[float | None] = mapped_column(Float, nullable=True)
    warm_pool_status: Mapped[str | None] = mapped_column(String(16), nullable=True, index=True)
    warm_pool_since: Mapped[float | None] = mapped_column(Float, nullable=True)
    warm_pool_retained_seconds: Mapped[int | None] = mapped_column(Integer, nullable=True)
    warm_pool_reused_by: Mapped[str | None] = mapped_column(String(63), nullable=True)

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


class TuningJobRow(Base):
    """A hyperparameter tuning job (smlocal.core.tuning.lifecycle changes its status; runner/tuning drives it)."""

    __tablename__ = "tuning_jobs"
    __table_args__ = (UniqueConstraint("account_id", "region", "name", name="uq_tuning_job_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[str] = mapped_column(String(12))
    region: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(32))
    arn: Mapped[str] = mapped_column(String(256), unique=True)
    # The validated CreateHyperParameterTuningJob request without its Tags.
    request_json: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), index=True)
    failure_reason: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    creation_time: Mapped[float] = mapped_column(Float, index=True)
    last_modified_time: Mapped[float] = mapped_column(Float)
    end_time: Mapped[float | None] = mapped_column(Float, nullable=True)
    # TuningJobCompletionDetails: trials since the best objective last improved; when convergence was detected.
    not_improving: Mapped[int] = mapped_column(Integer, default=0)
    convergence_time: Mapped[float | None] = mapped_column(Float, nullable=True)

    trials: Mapped[list[TrialRow]] = relationship(
        back_populates="tuning_job", order_by="TrialRow.number", cascade="all, delete-orphan"
    )


class TrialRow(Base):
    """One training job a tuning job launched: what it was given and, once it ended, what it scored.

    Made in the same transaction as its training job (smlocal.core.lifecycle.Lifecycle.create), so a restarted
    server finds every trial it launched and launches none twice.
    """

    __tablename__ = "tuning_trials"
    __table_args__ = (UniqueConstraint("tuning_job_id", "number", name="uq_trial_number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tuning_job_id: Mapped[int] = mapped_column(ForeignKey("tuning_jobs.id", ondelete="CASCADE"), index=True)
    # 1, 2, ...: the NNN in the training job's name, and the order the search strategy saw the trials in.
    number: Mapped[int] = mapped_column(Integer)
    training_job_name: Mapped[str] = mapped_column(String(63))
    training_job_arn: Mapped[str] = mapped_column(String(256), index=True)
    definition_name: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # TunedHyperParameters as the job got them (strings), and the search strategy's own values for them.
    tuned_json: Mapped[str] = mapped_column(Text)
    search_params_json: Mapped[str] = mapped_column(Text)
    # What the training job became, copied when it ended (kept if the training job is deleted later).
    training_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    failure_reason: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    training_start_time: Mapped[float | None] = mapped_column(Float, nullable=True)
    training_end_time: Mapped[float | None] = mapped_column(Float, nullable=True)
    objective_status: Mapped[str] = mapped_column(String(16), default="Pending")
    objective_value: Mapped[float | None] = mapped_column(Float, nullable=True)
    # The tuning job stopped it early (TrainingJobEarlyStoppingType=Auto, or Hyperband).
    early_stopped: Mapped[bool] = mapped_column(Integer, default=0)
    # The pruner's bookkeeping on the trial (optuna system attributes, e.g. Hyperband's rungs): a restarted
    # server gives it back so the brackets go on where they were.
    search_attrs_json: Mapped[str | None] = mapped_column(Text, nullable=True)

    tuning_job: Mapped[TuningJobRow] = relationship(back_populates="trials")


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
    runner_since: float | None = None
    stop_target: str | None = None
    attempt: int = 1
    interruptions: int = 0
    interrupt_requested_at: float | None = None
    keep_alive_seconds: int = 0
    warm_pool_id: str | None = None
    warm_pool_born: float | None = None
    warm_pool_status: str | None = None
    warm_pool_since: float | None = None
    warm_pool_retained_seconds: int | None = None
    warm_pool_reused_by: str | None = None

    @classmethod
    def from_row(cls, row: JobRow | SimpleNamespace, with_transitions: bool = True) -> JobRecord:
        """From a JobRow, or from a row `read_job` read in plain SQL (the same attributes)."""
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
            runner_since=row.runner_since,
            stop_target=row.stop_target,
            attempt=row.attempt or 1,
            interruptions=row.interruptions or 0,
            interrupt_requested_at=row.interrupt_requested_at,
            keep_alive_seconds=row.keep_alive_seconds or 0,
            warm_pool_id=row.warm_pool_id,
            warm_pool_born=row.warm_pool_born,
            warm_pool_status=row.warm_pool_status,
            warm_pool_since=row.warm_pool_since,
            warm_pool_retained_seconds=row.warm_pool_retained_seconds,
            warm_pool_reused_by=row.warm_pool_reused_by,
        )


# ---- schema versions -----------------------------------------------------------------------------
#
# Version 1 is the schema smlocal had before it was versioned (user_version 0 with tables present).
# Each migration brings the database from the version before it to its own; they only add: a column,
# a table, a mapping of old values. Tables that are new in the ORM and need no data are made by
# create_all after the migrations, so adding a table needs no step here.


def _v2_runner_phases(conn: Connection) -> None:
    """runner_state `claimed` splits into preparing / running; a stop remembers where it ends."""
    conn.exec_driver_sql("ALTER TABLE training_jobs ADD COLUMN runner_since FLOAT")
    conn.exec_driver_sql("ALTER TABLE training_jobs ADD COLUMN stop_target VARCHAR(32)")
    # A claimed job had started its containers once it reached Training (or anything after it).
    conn.exec_driver_sql(
        "UPDATE training_jobs SET runner_state = CASE WHEN secondary_status IN ('Starting', 'Downloading') "
        "THEN 'preparing' ELSE 'running' END, runner_since = last_modified_time "
        "WHERE runner_state = 'claimed'")
    conn.exec_driver_sql("UPDATE training_jobs SET stop_target = 'Stopped' WHERE status = 'Stopping'")


def _v3_long_jobs(conn: Connection) -> None:
    """Retries, spot interruptions and warm pools: every job so far ran once, never interrupted, kept no pool."""
    for column in ("attempt INTEGER NOT NULL DEFAULT 1", "interruptions INTEGER NOT NULL DEFAULT 0",
                   "interrupt_requested_at FLOAT", "keep_alive_seconds INTEGER NOT NULL DEFAULT 0",
                   "match_key TEXT", "warm_pool_id VARCHAR(64)", "warm_pool_born FLOAT",
                   "warm_pool_status VARCHAR(16)", "warm_pool_since FLOAT", "warm_pool_retained_seconds INTEGER",
                   "warm_pool_reused_by VARCHAR(63)"):
        conn.exec_driver_sql(f"ALTER TABLE training_jobs ADD COLUMN {column}")
    conn.exec_driver_sql("CREATE INDEX IF NOT EXISTS ix_training_jobs_warm_pool_status "
                         "ON training_jobs (warm_pool_status)")


def _v4_listing_index(conn: Connection) -> None:
    """ListTrainingJobs pages in creation order from an index, not from a sort of every job."""
    conn.exec_driver_sql(f"CREATE INDEX IF NOT EXISTS {LISTING_INDEX} "
                         "ON training_jobs (account_id, region, creation_time)")


MIGRATIONS: list[tuple[int, Callable[[Connection], None]]] = [
    (2, _v2_runner_phases),
    (3, _v3_long_jobs),
    (4, _v4_listing_index),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


class SchemaTooNew(RuntimeError):
    """The database was written by a newer smlocal; opening it could lose what that version stored."""


def _sqlite_url(db: str | Path) -> str:
    db = str(db)
    return db if "://" in db else f"sqlite:///{db}"


def _file_of(url: str) -> Path | None:
    if url.startswith("sqlite:///") and not url.endswith(":memory:"):
        return Path(url[len("sqlite:///"):])
    return None


def _configure_sqlite(engine: Engine) -> None:
    # pysqlite's own transaction handling starts transactions lazily, which lets two writers read the
    # same state and both act on it; BEGIN IMMEDIATE takes the write lock up front so every
    # read-modify-write (claim, stop, state change) is serialized. Reads begin deferred and never
    # ask for the lock: in WAL mode they read a snapshot while a writer works.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        # FULL: every commit is fsynced to the WAL, so an acknowledged write survives power loss
        # (NORMAL only survives a process crash). It costs one fsync per status change.
        cur.execute("PRAGMA synchronous=FULL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        if conn.get_execution_options().get("smlocal_read"):
            conn.exec_driver_sql("BEGIN DEFERRED")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")


def _backup(path: Path, version: int) -> Path:
    target = path.with_name(f"{path.name}.v{version}.bak")
    source = sqlite3.connect(str(path))
    try:
        dest = sqlite3.connect(str(target))
        try:
            source.backup(dest)
        finally:
            dest.close()
    finally:
        source.close()
    return target


class DiskFull(Exception):
    """A write was refused for want of room on the database's file system. If `retry`, the reserve was
    given up for it and the same write will fit when tried again."""

    def __init__(self, retry: bool) -> None:
        super().__init__("the database's file system is full")
        self.retry = retry


def _is_full(e: OperationalError) -> bool:
    orig = e.orig
    return getattr(orig, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(orig)


class Store:
    def __init__(self, db: str | Path) -> None:
        url = _sqlite_url(db)
        path = _file_of(url)
        self._reserve: SpaceReserve | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._reserve = SpaceReserve(path.parent)
            self._reserve.balance()  # kept from the start, not from the first write
        # No pool_pre_ping: a SQLite file's connection cannot go stale as a server's can, and the ping was one
        # more statement for every session, the API's reads included.
        self.engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        _configure_sqlite(self.engine)
        self._migrate(path)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._snapshots = threading.local()
        self._read_sessions = sessionmaker(self.engine.execution_options(smlocal_read=True),
                                           expire_on_commit=False)

    def _migrate(self, path: Path | None) -> None:
        with self.engine.connect() as probe:
            version = probe.exec_driver_sql("PRAGMA user_version").scalar() or 0
            has_jobs = inspect(probe).has_table(JobRow.__tablename__)
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(f"the database {path or ''} has schema version {version}, newer than this smlocal "
                               f"understands ({SCHEMA_VERSION}); use the smlocal that wrote it")
        if has_jobs and version == 0:
            version = 1
        if has_jobs and version < SCHEMA_VERSION and path is not None:
            backup = _backup(path, version)
            log.info("upgrading %s from schema version %d to %d (a copy is in %s)", path, version,
                     SCHEMA_VERSION, backup)
        with self.engine.begin() as conn:
            if has_jobs:
                for target, step in MIGRATIONS:
                    if target > version:
                        step(conn)
            Base.metadata.create_all(conn)
            conn.exec_driver_sql(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @property
    def schema_version(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.exec_driver_sql("PRAGMA user_version").scalar() or 0)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One serialized unit of work (holds the write lock): committed on success, rolled back on error.

        On a full file system DiskFull: the reserve is given up the first time (`retry`), so a job's end
        written again fits."""
        if self._reserve is not None:
            self._reserve.balance()
        try:
            with self._sessions() as session, session.begin():
                yield session
        except OperationalError as e:
            if not _is_full(e):
                raise
            raise DiskFull(retry=self._reserve is not None and self._reserve.release()) from e

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A consistent snapshot for reading; never waits for, nor blocks, a writer."""
        with self._read_sessions() as session, session.begin():
            yield session

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """read()'s snapshot as a plain sqlite3 connection, for the API's hottest reads (DescribeTrainingJob):
        a query through an ORM session costs ~0.3 ms of Python, the same SQL here ~10 µs (bench/api_load.py).

        The connection is the calling thread's own, taken out of the pool once (closed when the thread ends): a
        read on the event loop (server/app.py) must never wait for a pooled connection that writers hold."""
        conn = getattr(self._snapshots, "conn", None)
        if conn is None:
            pooled = self.engine.raw_connection()  # made as the pool makes them: the same pragmas
            conn = pooled.driver_connection
            assert isinstance(conn, sqlite3.Connection)
            pooled.detach()
            self._snapshots.conn = conn
        conn.execute("BEGIN DEFERRED")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    def close(self) -> None:
        conn = getattr(self._snapshots, "conn", None)
        if conn is not None:
            conn.close()
            del self._snapshots.conn
        self.engine.dispose()


# read_job's SQL, made from the model so that a new column is read as soon as it is mapped.
_JOB_ATTRIBUTES = [(a.key, a.columns[0].name) for a in JobRow.__mapper__.column_attrs]
_JOB_BY_ARN = (f"SELECT {', '.join(column for _, column in _JOB_ATTRIBUTES)} FROM {JobRow.__tablename__} "
               "WHERE arn = ?")
_TRANSITIONS_OF = (f"SELECT status, start_time, end_time, message FROM {TransitionRow.__tablename__} "
                   "WHERE job_id = ? ORDER BY id")


def read_job(conn: sqlite3.Connection, arn: str) -> JobRecord | None:
    """The job `arn` with its transitions, as JobRecord.from_row makes it of a JobRow, from a Store.snapshot()."""
    values = conn.execute(_JOB_BY_ARN, (arn,)).fetchone()
    if values is None:
        return None
    row = SimpleNamespace(**{key: value for (key, _), value in zip(_JOB_ATTRIBUTES, values, strict=True)})
    row.transitions = [SimpleNamespace(status=status, start_time=start, end_time=end, message=message)
                       for status, start, end, message in conn.execute(_TRANSITIONS_OF, (row.id,))]
    return JobRecord.from_row(row)
