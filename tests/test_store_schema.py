"""The store: schema versions and upgrades that keep every job, reads beside a writer, durable commits."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from smlocal.core.lifecycle import Lifecycle
from smlocal.core.store import SCHEMA_VERSION, SchemaTooNew, Store
from tests.support.jobs import job_request
from tests.support.smlocal import SmlocalServer

V1_SCHEMA = Path(__file__).parent / "data" / "schema_v1.sql"
ARN = "arn:aws:sagemaker:us-east-1:123456789012:training-job/{}"

# Jobs as the unversioned schema (before this change) stored them: (name, status, secondary, runner_state).
V1_JOBS = [
    ("queued", "InProgress", "Starting", "queued"),
    ("claimed-downloading", "InProgress", "Downloading", "claimed"),
    ("claimed-training", "InProgress", "Training", "claimed"),
    ("claimed-stopping", "Stopping", "Stopping", "claimed"),
    ("completed", "Completed", "Completed", "done"),
    ("failed", "Failed", "Failed", "done"),
]


def make_v1_database(path: Path) -> None:
    db = sqlite3.connect(path)
    db.executescript(V1_SCHEMA.read_text())
    for i, (name, status, secondary, runner_state) in enumerate(V1_JOBS, start=1):
        request = job_request(name)
        db.execute(
            "INSERT INTO training_jobs (id, account_id, region, name, arn, request_json, status, secondary_status, "
            "failure_reason, creation_time, last_modified_time, training_start_time, training_end_time, "
            "runner_state, final_metrics_json) VALUES (?, '123456789012', 'us-east-1', ?, ?, ?, ?, ?, ?, ?, ?, ?, "
            "NULL, ?, NULL)",
            (i, name, ARN.format(name), json.dumps(request), status, secondary,
             "ClientError: x" if status == "Failed" else None, 1000.0 + i, 2000.0 + i,
             1500.0 if secondary != "Starting" else None, runner_state))
        db.execute("INSERT INTO status_transitions (job_id, status, start_time, end_time, message) "
                   "VALUES (?, 'Starting', ?, NULL, 'Preparing the instances for training')", (i, 1000.0 + i))
    db.execute("INSERT INTO tags (resource_arn, key, value) VALUES (?, 'team', 'ml')", (ARN.format("completed"),))
    db.commit()
    db.close()


def test_an_unversioned_database_is_upgraded_without_losing_a_job(tmp_path: Path) -> None:
    path = tmp_path / "smlocal.db"
    make_v1_database(path)
    store = Store(path)
    assert store.schema_version == SCHEMA_VERSION
    lifecycle = Lifecycle(store)
    jobs = {name: lifecycle.get(ARN.format(name)) for name, *_ in V1_JOBS}
    assert {name: (j.status, j.secondary_status) for name, j in jobs.items()} == {
        name: (status, secondary) for name, status, secondary, _ in V1_JOBS}
    assert jobs["failed"].failure_reason == "ClientError: x"
    assert jobs["claimed-training"].request == job_request("claimed-training")
    assert [t.message for t in jobs["queued"].transitions] == ["Preparing the instances for training"]
    # The runner's old `claimed` becomes what it meant: containers not started yet, or started.
    assert {name: j.runner_state for name, j in jobs.items()} == {
        "queued": "queued", "claimed-downloading": "preparing", "claimed-training": "running",
        "claimed-stopping": "running", "completed": "done", "failed": "done"}
    assert jobs["claimed-stopping"].stop_target == "Stopped"
    # The copy taken before the upgrade is the old database, untouched.
    backup = sqlite3.connect(tmp_path / "smlocal.db.v1.bak")
    assert backup.execute("SELECT count(*) FROM training_jobs").fetchone() == (len(V1_JOBS),)
    assert backup.execute("PRAGMA user_version").fetchone() == (0,)
    backup.close()
    # A second open is a no-op.
    store.close()
    assert Lifecycle(Store(path)).get(ARN.format("completed")).runner_state == "done"


def test_a_server_serves_jobs_from_an_upgraded_database(smlocal_factory: Callable[..., SmlocalServer],
                                                        tmp_path: Path) -> None:
    db = tmp_path / "old" / "smlocal.db"
    db.parent.mkdir()
    make_v1_database(db)
    server = smlocal_factory("--no-run-jobs", "--db", str(db))
    sm = server.client()
    names = [s["TrainingJobName"] for s in sm.list_training_jobs(MaxResults=100)["TrainingJobSummaries"]]
    assert sorted(names) == sorted(name for name, *_ in V1_JOBS)
    assert sm.describe_training_job(TrainingJobName="failed")["FailureReason"] == "ClientError: x"
    assert sm.list_tags(ResourceArn=ARN.format("completed"))["Tags"] == [{"Key": "team", "Value": "ml"}]


def test_a_database_from_a_newer_smlocal_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "smlocal.db"
    Store(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(SchemaTooNew, match="newer than this smlocal understands"):
        Store(path)
    # The console script says so and exits, without touching the file.
    result = subprocess.run([sys.executable, "-m", "server.cli", "serve", "--no-run-jobs", "--data-dir",
                             str(tmp_path / "data"), "--db", str(path), "--s3-endpoint", "http://127.0.0.1:9"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "newer than this smlocal understands" in result.stdout + result.stderr


def test_reads_never_wait_for_the_write_lock(tmp_path: Path) -> None:
    path = tmp_path / "smlocal.db"
    lifecycle = Lifecycle(Store(path))
    lifecycle.create(account_id="123456789012", region="us-east-1", name="j", request=job_request("j"), tags=[])
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("BEGIN IMMEDIATE")  # another writer holds the lock (busy_timeout would make readers wait 30 s)
    try:
        results: list[object] = []

        def read() -> None:
            results.append(lifecycle.get(ARN.format("j")).status)
            results.append(len(lifecycle.queued_jobs(10)))
            results.append(len(lifecycle.unfinished_jobs()))

        reader = threading.Thread(target=read)
        started = time.monotonic()
        reader.start()
        reader.join(10)
        assert results == ["InProgress", 1, 0]
        assert time.monotonic() - started < 10
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_commits_are_fsynced(tmp_path: Path) -> None:
    store = Store(tmp_path / "smlocal.db")
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
