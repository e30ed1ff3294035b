"""runner.folder_sync against a real S3 server (moto), no Docker: what ends up in S3, and when.

Every wait polls with a deadline; an absence is asserted only after a later event was seen through the same
sync (a barrier file), so that "not uploaded" means "skipped", not "not yet".
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import urllib3
from minio import Minio
from minio.error import S3Error

from runner.artifacts import TransferCancelled, UploadError
from runner.folder_sync import FolderSync
from runner.s3 import S3Location
from tests.support.s3server import start_s3_server

PREFIX = "ckpt/run-1"


def wait_for(check: Callable[[], object], what: str, timeout: float = 15.0) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def get(client: Minio, bucket: str, key: str) -> bytes | None:
    try:
        response = client.get_object(bucket, key)
    except S3Error as e:
        if e.code == "NoSuchKey":
            return None
        raise
    try:
        return response.read()
    finally:
        response.close()
        response.release_conn()


def listing(client: Minio, bucket: str) -> dict[str, bytes]:
    return {o.object_name[len(PREFIX) + 1:]: get(client, bucket, o.object_name) or b""
            for o in client.list_objects(bucket, prefix=PREFIX + "/", recursive=True)}


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fast_failing_client(endpoint: str) -> Minio:
    """A client that gives up at once (minio's own client retries a refused connection for seconds)."""
    return Minio(endpoint, access_key="test", secret_key="test", secure=False, region="us-east-1",
                 http_client=urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=2, read=10)))


@pytest.fixture()
def bucket(minio: Minio) -> str:
    name = f"sync-{uuid.uuid4().hex[:12]}"
    minio.make_bucket(name)
    return name


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    source = tmp_path / "checkpoints"
    source.mkdir()
    return source


@pytest.fixture()
def syncs(tmp_path: Path) -> Iterator[Callable[..., FolderSync]]:
    """Make FolderSyncs of `folder` (state in tmp_path/staging); every one is stopped when the test ends."""
    made: list[FolderSync] = []

    def make(source: Path, client: Minio, bucket: str, **options: object) -> FolderSync:
        sync = FolderSync(source, S3Location(bucket, PREFIX), client, tmp_path / "staging" / "sync.json",
                          label="test/algo-1/checkpoints", **options)  # type: ignore[arg-type]
        made.append(sync)
        return sync

    yield make
    for sync in made:
        sync.stop()


def test_closed_file_reaches_s3_while_running(folder: Path, minio: Minio, bucket: str, syncs) -> None:
    sync = syncs(folder, minio, bucket)
    sync.start()
    sync.start()  # idempotent
    write(folder / "step-1" / "model.pt", b"weights-1")
    wait_for(lambda: get(minio, bucket, f"{PREFIX}/step-1/model.pt") == b"weights-1", "the closed file in S3")
    wait_for(lambda: sync.status().pending == 0, "nothing pending")
    status = sync.status()
    assert (status.files, status.bytes, status.mode, status.last_error) == (1, 9, "watch", None)
    assert status.last_sync_at is not None and status.last_sync_at <= time.time()


def test_file_written_slowly_is_never_in_s3_torn(folder: Path, minio: Minio, bucket: str, syncs) -> None:
    sync = syncs(folder, minio, bucket)
    sync.start()
    key = f"{PREFIX}/big.bin"
    chunks = [os.urandom(4 * 2**20) for _ in range(8)]  # 32 MiB
    final = hashlib.sha256(b"".join(chunks)).hexdigest()
    seen: list[tuple[str, float]] = []  # (sha256, when) of every version GET returned
    done = threading.Event()

    def poll() -> None:
        etag = None
        while not done.is_set():
            try:
                current = minio.stat_object(bucket, key).etag
            except S3Error:
                current = None
            if current is not None and current != etag:
                etag = current
                data = get(minio, bucket, key)
                if data is not None:
                    seen.append((hashlib.sha256(data).hexdigest(), time.monotonic()))
            time.sleep(0.02)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        with open(folder / "big.bin", "wb") as f:
            for i, chunk in enumerate(chunks):
                f.write(chunk)
                f.flush()
                time.sleep(0.5 + 0.5 * (i % 2))
            closed_at = time.monotonic()
        wait_for(lambda: seen, "the file in S3 after its close")
    finally:
        done.set()
        poller.join()
    assert all(sha == final for sha, _ in seen), f"{len(seen)} versions seen, not all complete"
    assert seen[0][1] > closed_at


def test_atomic_write_syncs_the_final_name(folder: Path, minio: Minio, bucket: str, syncs) -> None:
    # Decided: a temporary file is uploaded if a batch picked up its close before the rename came, and then
    # deleted with the rename; either way only the final name is left.
    sync = syncs(folder, minio, bucket)
    sync.start()
    write(folder / ".model.pt.tmp", b"v1")
    os.rename(folder / ".model.pt.tmp", folder / "model.pt")  # at once: the usual pattern
    write(folder / "state.tmp", b"v2")
    wait_for(lambda: get(minio, bucket, f"{PREFIX}/state.tmp") == b"v2", "the closed temporary file")
    os.rename(folder / "state.tmp", folder / "state.json")  # after it was uploaded
    wait_for(lambda: listing(minio, bucket) == {"model.pt": b"v1", "state.json": b"v2"},
             "the final names only")
    # And a folder renamed into place (Hugging Face's tmp-checkpoint-N -> checkpoint-N).
    write(folder / "tmp-checkpoint-5" / "a.bin", b"a")
    write(folder / "tmp-checkpoint-5" / "sub" / "b.bin", b"b")
    os.rename(folder / "tmp-checkpoint-5", folder / "checkpoint-5")
    wait_for(lambda: listing(minio, bucket) == {"model.pt": b"v1", "state.json": b"v2", "checkpoint-5/a.bin": b"a",
                                                "checkpoint-5/sub/b.bin": b"b"}, "the renamed folder's files")


def test_deletion_propagates_but_never_to_another_hosts_keys(folder: Path, minio: Minio, bucket: str,
                                                             syncs) -> None:
    # Another host's files under the same URI, one in a folder this host also has.
    for key in ("other.bin", "d/other.bin"):
        minio.put_object(bucket, f"{PREFIX}/{key}", io.BytesIO(b"theirs"), 6)
    sync = syncs(folder, minio, bucket)
    sync.start()
    write(folder / "mine.bin", b"mine")
    write(folder / "d" / "mine.bin", b"mine")
    write(folder / "d" / "deeper" / "mine.bin", b"mine")
    wait_for(lambda: len(listing(minio, bucket)) == 5, "this host's three files")
    (folder / "mine.bin").unlink()
    for p in ("d/deeper/mine.bin", "d/mine.bin"):
        (folder / p).unlink()
    for p in ("d/deeper", "d"):
        (folder / p).rmdir()
    wait_for(lambda: listing(minio, bucket) == {"other.bin": b"theirs", "d/other.bin": b"theirs"},
             "this host's files deleted, the other host's kept")
    # A file moved out of the folder is deleted too.
    write(folder / "moved.bin", b"x")
    wait_for(lambda: "moved.bin" in listing(minio, bucket), "moved.bin")
    os.rename(folder / "moved.bin", folder.parent / "moved.bin")
    wait_for(lambda: "moved.bin" not in listing(minio, bucket), "the moved-away file's key deleted")
    # So is everything below a folder moved out (inotify says nothing about the files in it).
    write(folder / "e" / "f" / "g.bin", b"g")
    wait_for(lambda: "e/f/g.bin" in listing(minio, bucket), "e/f/g.bin")
    os.rename(folder / "e", folder.parent / "e")
    wait_for(lambda: "e/f/g.bin" not in listing(minio, bucket), "the moved-away folder's keys deleted")
    sync.final_sync()
    assert listing(minio, bucket) == {"other.bin": b"theirs", "d/other.bin": b"theirs"}


def test_seeded_files_are_not_uploaded_again_and_their_deletion_propagates(folder: Path, minio: Minio, bucket: str,
                                                                           syncs) -> None:
    for name in ("a.pt", "b.pt"):
        minio.put_object(bucket, f"{PREFIX}/{name}", io.BytesIO(b"from S3"), 7)
        minio.fget_object(bucket, f"{PREFIX}/{name}", str(folder / name))  # the start-of-job download
    sync = syncs(folder, minio, bucket)
    sync.seed()
    assert sync.status().files == 2
    sync.start()
    # Another host writes a.pt after the start: had this host uploaded its copy again, S3 would hold "from S3".
    minio.put_object(bucket, f"{PREFIX}/a.pt", io.BytesIO(b"other host"), 10)
    (folder / "b.pt").unlink()
    wait_for(lambda: get(minio, bucket, f"{PREFIX}/b.pt") is None, "the seeded file's deletion")
    write(folder / "c.pt", b"new")
    wait_for(lambda: get(minio, bucket, f"{PREFIX}/c.pt") == b"new", "a new file")
    sync.final_sync()
    assert listing(minio, bucket) == {"a.pt": b"other host", "c.pt": b"new"}


def test_resume_catches_what_changed_while_no_server_watched(folder: Path, minio: Minio, bucket: str,
                                                             syncs) -> None:
    first = syncs(folder, minio, bucket, fallback_interval=0.5)
    first.start()
    for name in ("changed", "deleted", "same"):
        write(folder / name, name.encode())
    wait_for(lambda: len(listing(minio, bucket)) == 3, "three files")
    first.stop()
    first.stop()  # safe twice
    write(folder / "changed", b"changed again")
    (folder / "deleted").unlink()
    write(folder / "new" / "added", b"added")
    # Proof that "same" is not uploaded again: another host's version of it stays.
    minio.put_object(bucket, f"{PREFIX}/same", io.BytesIO(b"other host"), 10)
    second = syncs(folder, minio, bucket, fallback_interval=0.5)
    second.resume()
    expected = {"changed": b"changed again", "same": b"other host", "new/added": b"added"}
    wait_for(lambda: listing(minio, bucket) == expected, "S3 matching the folder after resume()")
    assert second.status().mode == "watch"
    write(folder / "after", b"watched again")  # and it watches
    wait_for(lambda: get(minio, bucket, f"{PREFIX}/after") == b"watched again", "a file written after resume()")


def test_final_sync_uploads_a_file_never_closed(folder: Path, minio: Minio, bucket: str, syncs) -> None:
    sync = syncs(folder, minio, bucket)
    sync.start()
    with open(folder / "open.bin", "wb") as f:
        f.write(b"partial")
        f.flush()
        write(folder / "barrier", b"b")  # written after: once it is in S3, the open file's events were handled
        wait_for(lambda: get(minio, bucket, f"{PREFIX}/barrier") == b"b", "the barrier file")
        assert get(minio, bucket, f"{PREFIX}/open.bin") is None, "a file still open was uploaded"
        assert sync.status().pending == 1
        sync.final_sync()  # the container exited (killed) with the file open
        assert get(minio, bucket, f"{PREFIX}/open.bin") == b"partial"
    assert sync.status().pending == 0


def test_links_and_fifos_are_never_followed_or_opened(tmp_path: Path, folder: Path, minio: Minio, bucket: str,
                                                      syncs) -> None:
    outside = tmp_path / "host-secret"
    write(outside / "secret", b"host data")
    sync = syncs(folder, minio, bucket, fallback_interval=0.3)
    sync.start()
    os.symlink(outside / "secret", folder / "link")
    os.symlink(outside, folder / "linkdir")
    os.symlink(outside / "secret", folder / ".tmp-link")
    os.rename(folder / ".tmp-link", folder / "renamed-link")  # renamed into place: "ready" at once
    pipe = folder / "pipe"
    os.mkfifo(pipe)
    os.close(os.open(pipe, os.O_RDWR))  # opened for writing and closed: IN_CLOSE_WRITE, as for a finished file
    # A writer blocked until someone opens the FIFO for reading: the sync opening it would release it.
    released, done = threading.Event(), threading.Event()

    def blocked_writer() -> None:
        fd = os.open(pipe, os.O_WRONLY)
        if not done.is_set():
            released.set()
        os.close(fd)

    writer = threading.Thread(target=blocked_writer, daemon=True)
    writer.start()
    try:
        write(folder / "barrier", b"b")
        wait_for(lambda: "barrier" in listing(minio, bucket), "the barrier file")
        # Every created name (links, the FIFO) looked at and dropped, none waiting to settle into an upload.
        wait_for(lambda: sync.status().pending == 0, "nothing pending")
        ended = threading.Thread(target=sync.final_sync, daemon=True)
        ended.start()
        ended.join(10)
        assert not ended.is_alive(), "final_sync blocked on the FIFO"
    finally:
        done.set()
        os.close(os.open(pipe, os.O_RDONLY | os.O_NONBLOCK))  # let the writer go
        writer.join(5)
    assert not released.is_set(), "the FIFO was opened"
    assert listing(minio, bucket) == {"barrier": b"b"}


def test_watch_trouble_falls_back_to_scans(folder: Path, minio: Minio, bucket: str, syncs) -> None:
    sync = syncs(folder, minio, bucket, fallback_interval=0.3)
    sync.start()
    write(folder / "before", b"1")
    wait_for(lambda: "before" in listing(minio, bucket), "a file while watching")
    # What watchdog logs when the inotify watch limit leaves a new folder unwatched.
    logging.getLogger("watchdog.observers.inotify").warning(
        "Unable to watch %r: %s", os.fsencode(folder / "sub"), OSError(errno.ENOSPC, "inotify watch limit reached"))
    wait_for(lambda: sync.status().mode == "scan", "the scan fallback")
    write(folder / "sub" / "after", b"2")
    (folder / "before").unlink()
    wait_for(lambda: listing(minio, bucket) == {"sub/after": b"2"}, "scans uploading and deleting")


def test_s3_down_then_back(folder: Path, tmp_path: Path, syncs) -> None:
    port = free_port()
    client = fast_failing_client(f"127.0.0.1:{port}")
    sync = syncs(folder, client, "later", fallback_interval=0.3)
    sync.start()
    write(folder / "model.pt", b"kept until S3 is back")
    wait_for(lambda: sync.status().last_error, "the failure in status()")
    status = sync.status()
    assert status.last_error.startswith("ClientError: Artifact upload to s3://later/ckpt/run-1/model.pt failed")
    assert (status.files, status.pending) == (0, 1)
    with start_s3_server(port=port) as s3:
        client.make_bucket("later")
        wait_for(lambda: get(client, "later", f"{PREFIX}/model.pt") == b"kept until S3 is back", "the retry",
                 timeout=20)
        wait_for(lambda: sync.status().last_error is None, "the error cleared")
        assert sync.status().files == 1
        s3.stop()
        write(folder / "model.pt", b"v2")
        with pytest.raises(UploadError) as failed:
            sync.final_sync()
    assert failed.value.reason.startswith("ClientError: Artifact upload to s3://later/ckpt/run-1/model.pt failed")


def test_final_sync_cancelled(folder: Path, minio: Minio, bucket: str, syncs) -> None:
    write(folder / "model.pt", b"x" * 1000)
    sync = syncs(folder, minio, bucket)
    with pytest.raises(TransferCancelled):
        sync.final_sync(lambda: True)
    assert listing(minio, bucket) == {}
    sync.final_sync()
    assert listing(minio, bucket) == {"model.pt": b"x" * 1000}


def test_a_missing_folder_is_scanned_for_and_leaves_s3_alone(tmp_path: Path, minio: Minio, bucket: str,
                                                              syncs) -> None:
    minio.put_object(bucket, f"{PREFIX}/model.pt", io.BytesIO(b"in S3"), 5)
    (tmp_path / "staging").mkdir()
    (tmp_path / "staging" / "sync.json").write_text('{"files": {"model.pt": [5, 1]}}')
    sync = syncs(tmp_path / "gone", minio, bucket, fallback_interval=0.3)
    sync.resume()  # a restarted server, the job's folder removed meanwhile: nothing to watch
    assert sync.status().mode == "scan"
    sync.final_sync()
    assert listing(minio, bucket) == {"model.pt": b"in S3"}  # not taken for deleted
    assert sync.status().files == 1
