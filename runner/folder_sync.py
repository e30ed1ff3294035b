"""Mirroring one host folder to an S3 prefix while a job runs (checkpoints, TensorBoard output, Debugger tensors).

SageMaker's rules (developer guide, "Checkpoints in Amazon SageMaker AI"): what was in S3 at the start is copied
in before the algorithm starts (`runner.artifacts.restore_folder`; `seed()` then records it as already in
S3), nothing added to S3 later is copied in, new and changed files are written to S3 during training, and a file
deleted in the container is deleted in S3. Every host syncs its own folder to the same URI: the last writer of a
name wins, and a host deletes only keys it knows it put there (uploaded by it, or seeded from the start-of-job
download), never what only another host wrote.

How: inotify (watchdog) on the host side of the bind mount. A file is uploaded only once its writer closed it
(IN_CLOSE_WRITE) or it was renamed into place (the atomic-write pattern); a write after that makes it dirty again
until the next close. So a file still being written is never uploaded from a modify event alone, and a torn
version never stays in S3. Two cases have no close event to wait for: a file that was created (and perhaps
written) before its folder's watch existed (`mkdir d && write d/f` races the watch on `d`), and what changed
while no server watched (`resume()`). Those are uploaded once their (size, mtime_ns) stayed the same for
`fallback_interval` seconds, unless an event shows a writer at work first. When inotify cannot be trusted (the
watch limit, a lost-events overflow, the folder itself gone) the sync falls back to that weaker rule for every
file: a full scan every `fallback_interval` seconds (`status().mode == "scan"`); a writer pausing longer than
that mid-file can then have a partial version uploaded, replaced by the complete one on a later scan.

The container owns the folder, so every read goes through `runner.tree`: links are never followed (nor uploaded
as their target), FIFOs and devices never opened. `final_sync()` after the container exited uploads whatever
differs, open files included. The caller creates `source` before `start()` (the runner does at prepare time);
`state_file` lies outside the container's tree (the job's staging folder): what this host has in S3, so a
restarted server resumes without re-uploading everything and still knows what it may delete.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

from minio import Minio
from minio.error import S3Error
from watchdog.events import (
    DirDeletedEvent,
    DirMovedEvent,
    EventsLostEvent,
    FileClosedEvent,
    FileClosedNoWriteEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileOpenedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import ObservedWatch
from watchdog.observers.inotify import InotifyObserver

from runner import tree
from runner.artifacts import TransferCancelled, UploadError
from runner.s3 import S3Location

log = logging.getLogger("smlocal.runner")

MAX_BACKOFF = 5.0  # seconds between retries while S3 fails
STOP_JOIN_SECONDS = 30.0  # an upload in flight stops at its next read; a hung request is not waited for longer

Signature = tuple[int, int]  # (size, mtime_ns)
_CHANGED = -1  # an mtime_ns no file has: what was uploaded changed under the upload, so it is stale


@dataclass(frozen=True)
class SyncStatus:
    files: int  # files currently in S3 from this host
    bytes: int
    pending: int  # paths dirty, being written or deleted, not yet in S3
    last_sync_at: float | None  # epoch seconds of the last successful upload/delete
    last_error: str | None  # the last failure, cleared by the next batch that succeeds
    mode: str  # "watch" or "scan" (fallback)


class _Failure(Exception):
    """S3 refused or could not be reached; `reason` is worded as a FailureReason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _reason(action: str, loc: S3Location, e: Exception) -> str:
    # Worded as runner.artifacts words its upload failures.
    detail = f"{e.code}: {e.message}" if isinstance(e, S3Error) else str(e) or type(e).__name__
    return f"ClientError: Artifact {action} {loc} failed: {detail}"


class _Reader:
    """A file whose reads stop the upload (TransferCancelled) when `abort()` says so."""

    def __init__(self, f: BinaryIO, abort: Callable[[], bool]) -> None:
        self._f, self._abort = f, abort

    def read(self, size: int = -1) -> bytes:
        if self._abort():
            raise TransferCancelled()
        return self._f.read(size)


def _signature(st: os.stat_result) -> Signature:
    return st.st_size, st.st_mtime_ns


# ---- one inotify instance for every sync (the per-user instance limit is 128 by default) ----------------------

# Paths (not the folders syncs watch) of events that matter; the recursive watch adds IN_CREATE and IN_MOVE itself.
_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent, FileOpenedEvent, FileModifiedEvent, FileClosedEvent, FileClosedNoWriteEvent,
    FileDeletedEvent, DirDeletedEvent, FileMovedEvent, DirMovedEvent, EventsLostEvent]
# Events that can make something ready or gone wake the worker, so that its debounce window opens at the close
# (and a rename right after it falls into the same batch). The rest (a creation, a write, anybody's open and
# read, ours included) waits for its next tick.
_WAKING = (FileClosedEvent, FileMovedEvent, FileDeletedEvent, DirDeletedEvent, DirMovedEvent, EventsLostEvent)
_lock = threading.Lock()  # the observer and _users; held while calling into watchdog
_observer: InotifyObserver | None = None
_users: dict[ObservedWatch, int] = {}  # two syncs of one folder share watchdog's watch
# Syncs that watch. A lock of its own, never held while calling into watchdog: watchdog logs (see _WatchTrouble)
# while holding its own locks, which _lock's holder may be waiting for.
_active_lock = threading.Lock()
_active: set[FolderSync] = set()


class _WatchTrouble(logging.Handler):
    """watchdog only logs that part of a tree went unwatched (watch limit) or a watch could not be rebuilt: a
    warning naming a path below a sync's folder (or none) sends that sync to its scan fallback."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < logging.WARNING:
            return
        args = record.args if isinstance(record.args, tuple) else ()
        paths = [os.fsdecode(a) for a in args if isinstance(a, bytes | str)]
        with _active_lock:
            syncs = list(_active)
        for sync in syncs:
            root = str(sync.source)
            if not paths or any(p == root or p.startswith(root + os.sep) for p in paths):
                sync._lose_watch(f"inotify: {record.getMessage()}")


def _watchdog_logger() -> logging.Logger:
    logger = logging.getLogger("watchdog.observers.inotify")
    if not any(isinstance(h, _WatchTrouble) for h in logger.handlers):
        logger.addHandler(_WatchTrouble())
        if not logger.isEnabledFor(logging.WARNING):
            logger.setLevel(logging.WARNING)
    return logger


def _watch(path: Path, handler: FileSystemEventHandler) -> ObservedWatch:
    global _observer
    _watchdog_logger()
    with _lock:
        if _observer is None or not _observer.is_alive():
            _observer = InotifyObserver(generate_full_events=True)  # moves in/out are moves, not creates/deletes
            _observer.start()
        watch = _observer.schedule(handler, str(path), recursive=True, event_filter=_EVENTS)
        _users[watch] = _users.get(watch, 0) + 1
        return watch


def _unwatch(watch: ObservedWatch, handler: FileSystemEventHandler) -> None:
    with _lock:
        if _observer is None or watch not in _users:
            return
        _users[watch] -= 1
        try:
            if _users[watch]:
                _observer.remove_handler_for_watch(handler, watch)
            else:
                del _users[watch]
                _observer.unschedule(watch)
        except (KeyError, OSError) as e:  # the emitter already stopped by itself (its folder went away)
            log.debug("unwatching %s: %s", watch.path, e)


class _Handler(FileSystemEventHandler):
    def __init__(self, sync: FolderSync) -> None:
        self._sync = sync

    def on_any_event(self, event: FileSystemEvent) -> None:
        self._sync._receive(event)


# ---- the sync ---------------------------------------------------------------------------------------------------

class FolderSync:
    """Keeps `dest` holding what `source` holds (this host's part of it), from start()/resume() to final_sync()."""

    def __init__(self, source: Path, dest: S3Location, client: Minio, state_file: Path, *, label: str,
                 delete: bool = True, debounce: float = 0.2, fallback_interval: float = 2.0) -> None:
        self.source = Path(source)
        self.dest = dest
        self.label = label
        self._client = client
        self._state_file = Path(state_file)
        self._delete = delete
        self._debounce = debounce
        self._interval = fallback_interval
        # What this host has in S3: relpath -> the signature of the file when it was uploaded.
        self._synced: dict[str, Signature] = {}
        self._saved: dict[str, Signature] | None = None  # what the state file holds
        # The worker's view of the folder since the last batch (paths relative to `source`, posix).
        self._ready: set[str] = set()  # closed or renamed into place: to upload
        self._open: dict[str, bool] = {}  # being written (True: modified; False: only opened after its creation)
        self._created: dict[str, tuple[Signature | None, float]] = {}  # no close to wait for: signature, since when
        self._gone: set[str] = set()  # deleted, and in S3 from this host
        self._scan_due = False
        self._mode = "watch"
        self._lost: str | None = None  # why the watch cannot be trusted (set by watchdog's threads)
        self._last_error: str | None = None
        self._last_sync_at: float | None = None
        self._inbox: list[FileSystemEvent] = []
        self._inbox_lock = threading.Lock()
        self._busy = threading.Lock()  # one batch at a time: the worker's, seed's, resume's or final_sync's
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._handler = _Handler(self)
        self._watch: ObservedWatch | None = None
        self._status = SyncStatus(0, 0, 0, None, None, "watch")

    # ---- public ----------------------------------------------------------------------------------------

    def seed(self) -> None:
        """Record every file now in the folder as already in S3 (just downloaded from there)."""
        with self._busy:
            self._synced.update(self._listing() or {})
            self._save()
            self._publish()

    def start(self) -> None:
        """Watch the folder and upload in the background (a second call does nothing)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stopping.clear()
        if self._mode == "watch":
            try:
                self._watch = _watch(self.source, self._handler)
                with _active_lock:
                    _active.add(self)
            except OSError as e:  # the watch limit, the instance limit, no folder
                self._lose_watch(f"cannot watch {self.source}: {e}")
        self._thread = threading.Thread(target=self._run, name=f"sync {self.label}", daemon=True)
        self._thread.start()

    def resume(self) -> None:
        """After a server restart: load what is in S3 from `state_file`, then start; the first batch is a full scan."""
        with self._busy:
            self._synced = self._load()
            self._scan_due = True
            self._publish()
        self._wake.set()  # the scan right away
        self.start()

    def stop(self) -> None:
        """Stop watching and uploading, without a final sync; an upload in flight is abandoned (it stays dirty)."""
        self._stopping.set()
        self._wake.set()
        self._unwatch()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(STOP_JOIN_SECONDS)
            if thread.is_alive():
                log.warning("%s: the sync thread is still in an S3 request", self.label)

    def final_sync(self, cancelled: Callable[[], bool] = lambda: False) -> None:
        """After the container exited: upload every file that differs from S3 (open ones too), delete what is gone.

        Raises UploadError (with the FailureReason) when S3 fails, TransferCancelled when `cancelled()` says so.
        """
        self.stop()
        with self._busy:
            try:
                present = self._listing()
                if present is None:
                    log.warning("%s: %s is not a folder any more; S3 is left as it is", self.label, self.source)
                    return
                gone = [rel for rel in self._synced if rel not in present] if self._delete else []
                for rel in [rel for rel, sig in present.items() if self._synced.get(rel) != sig] + gone:
                    if cancelled():
                        raise TransferCancelled()
                    if rel in present:
                        self._upload(rel, cancelled)
                    else:
                        self._remove(rel)
                for pending in (self._ready, self._open, self._created, self._gone):
                    pending.clear()
                self._last_error = None
            except _Failure as e:
                self._last_error = e.reason
                raise UploadError(e.reason) from None
            finally:
                self._save()
                self._publish()

    def status(self) -> SyncStatus:
        # Published by each batch; a lost watch shows at once, before the worker's next batch switches to scans.
        return replace(self._status, mode="scan") if self._lost else self._status

    # ---- called from watchdog's threads ----------------------------------------------------------------

    def _receive(self, event: FileSystemEvent) -> None:
        with self._inbox_lock:
            self._inbox.append(event)
        if isinstance(event, _WAKING):
            self._wake.set()

    def _lose_watch(self, why: str) -> None:
        self._lost = self._lost or why
        self._wake.set()

    # ---- the worker ------------------------------------------------------------------------------------

    def _run(self) -> None:
        backoff = 0.0
        while not self._stopping.is_set():
            self._wake.wait(self._timeout(backoff))
            # What arrives within `debounce` of the close (move, delete) that woke the worker goes into one batch:
            # a rename right after the close, a burst of files.
            if self._stopping.wait(self._debounce):
                return
            self._wake.clear()
            with self._busy:
                try:
                    self._batch()
                    self._last_error, backoff = None, 0.0
                except TransferCancelled:
                    return  # stop() while uploading
                except _Failure as e:
                    self._last_error, backoff = e.reason, min(MAX_BACKOFF, backoff * 2 or 0.5)
                    log.warning("%s: %s (retrying in %.1f s)", self.label, e.reason, backoff)
                except Exception as e:  # noqa: BLE001 - the thread must outlive any surprise
                    self._last_error, backoff = f"{type(e).__name__}: {e}", MAX_BACKOFF
                    log.exception("%s: sync batch failed", self.label)
                finally:
                    self._save()
                    self._publish()

    def _timeout(self, backoff: float) -> float:
        if backoff:
            return backoff
        if self._created:
            return max(0.05, min(since + self._interval for _, since in self._created.values()) - time.monotonic())
        # The fallback's scans, and a look at what was created without waking the worker.
        return self._interval

    def _batch(self) -> None:
        if self._lost is not None and self._mode == "watch":
            self._fall_back()
        self._take_events()
        if self._scan_due or self._mode == "scan":
            self._scan()
        self._settle()
        abort = self._stopping.is_set
        for rel in sorted(self._ready):
            # A writer may have opened the file again since its close (a checkpoint rewritten in place
            # truncates it first): what came in meanwhile is looked at right before each upload, so such a
            # file waits for that writer's close instead of going up empty or half written. (Its last close
            # always brings one more upload, so the version left in S3 is a closed one in any case.)
            self._take_events()
            if rel not in self._ready:
                continue
            self._ready.discard(rel)
            try:
                self._upload(rel, abort)
            except BaseException:
                self._ready.add(rel)  # retried by the next batch
                raise
        for rel in sorted(self._gone):
            self._remove(rel)

    def _take_events(self) -> None:
        """Fold what watchdog delivered since the last look into the worker's view (in watch mode)."""
        with self._inbox_lock:
            events, self._inbox = self._inbox, []
        if self._mode == "watch":
            for event in events:
                self._note(event)

    def _fall_back(self) -> None:
        log.warning("%s: %s; falling back to a full scan every %.1f s (a file is uploaded once unchanged for that "
                    "long, not at its close)", self.label, self._lost, self._interval)
        self._mode = "scan"
        self._unwatch()
        self._open.clear()  # the scan finds them

    def _note(self, event: FileSystemEvent) -> None:
        """Fold one event into the worker's view of the folder."""
        src = self._rel(event.src_path)
        if isinstance(event, EventsLostEvent):
            self._lost = self._lost or "inotify lost events (queue overflow)"
            self._fall_back()
        elif isinstance(event, DirDeletedEvent | DirMovedEvent):
            if src == "":
                self._lost = self._lost or f"{self.source} itself was removed or moved"
                self._fall_back()
                return
            if src is not None:
                self._forget(src, folder=True)
            dest = self._rel(event.dest_path) if isinstance(event, DirMovedEvent) else None
            if dest:  # a folder renamed into place: its files are complete
                for entry in tree.walk(self.source, dest):
                    if entry.kind == "file":
                        self._set_ready(f"{dest}/{entry.path}")
        elif not src and not isinstance(event, FileMovedEvent):
            return
        elif isinstance(event, FileMovedEvent):
            if src:
                self._forget(src)
            dest = self._rel(event.dest_path)
            if dest:
                self._set_ready(dest)
        elif isinstance(event, FileDeletedEvent):
            self._forget(src)
        elif isinstance(event, FileClosedEvent):
            self._set_ready(src)
        elif isinstance(event, FileModifiedEvent):
            self._created.pop(src, None)
            self._ready.discard(src)
            self._open[src] = True
        elif isinstance(event, FileCreatedEvent):
            self._gone.discard(src)
            if src not in self._open and src not in self._ready:
                self._created[src] = (None, time.monotonic())
        elif isinstance(event, FileOpenedEvent):
            # Right after its creation: the creator's open(O_CREAT), whose close will come. (Opening any other
            # file, our own reads included, says nothing.)
            if self._created.pop(src, None) is not None:
                self._open[src] = False
        elif isinstance(event, FileClosedNoWriteEvent):
            if self._open.get(src) is False:  # that opener was a reader: back to waiting for it to settle
                del self._open[src]
                self._created[src] = (None, time.monotonic())

    def _rel(self, path: str | bytes) -> str | None:
        """`path` relative to the folder ("" for the folder itself), None outside it (or no path)."""
        path, root = os.fsdecode(path), str(self.source)
        if path == root:
            return ""
        if path.startswith(root + os.sep):
            return path[len(root) + 1:]
        return None

    def _set_ready(self, rel: str) -> None:
        self._open.pop(rel, None)
        self._created.pop(rel, None)
        self._gone.discard(rel)
        self._ready.add(rel)

    def _forget(self, rel: str, folder: bool = False) -> None:
        """`rel` (a file, or everything below a folder) is gone: its key goes too, if this host put it there."""
        if folder:
            known = set(self._synced) | self._ready | set(self._open) | set(self._created)
            paths = [p for p in known if p.startswith(rel + "/")]
        else:
            paths = [rel]
        for path in paths:
            self._ready.discard(path)
            self._open.pop(path, None)
            self._created.pop(path, None)
            if path in self._synced and self._delete:
                self._gone.add(path)

    def _scan(self) -> None:
        """Compare the folder with S3: deletions now, changed files left to `_settle()` (no close to wait for)."""
        self._scan_due = False
        present = self._listing()
        if present is None:
            log.warning("%s: %s is not a folder; nothing synced until it is", self.label, self.source)
            return
        now = time.monotonic()
        for rel, sig in present.items():
            if self._synced.get(rel) != sig and rel not in self._ready and rel not in self._open:
                self._created.setdefault(rel, (sig, now))
        for rel in [r for r in self._created if r not in present]:
            del self._created[rel]
        if self._delete:
            self._gone.update(r for r in self._synced if r not in present)

    def _settle(self) -> None:
        """A file without a close to wait for is ready once its signature held for `fallback_interval` seconds."""
        now = time.monotonic()
        for rel, (seen, since) in list(self._created.items()):
            st = tree.stat_file(self.source, rel)
            if st is None:  # gone, or not a regular file: its own event (or the next scan) says what to do
                del self._created[rel]
            elif _signature(st) != seen:
                self._created[rel] = (_signature(st), now)
            elif now - since >= self._interval:
                del self._created[rel]
                if self._synced.get(rel) != seen:
                    self._ready.add(rel)

    def _listing(self) -> dict[str, Signature] | None:
        """Every regular file below the folder (links, FIFOs, devices left out); None when it is not a folder."""
        try:
            os.close(tree.open_dir(self.source))
        except OSError:
            return None
        return {e.path: (e.size, e.mtime_ns) for e in tree.walk(self.source) if e.kind == "file"}

    def _upload(self, rel: str, abort: Callable[[], bool]) -> None:
        opened = tree.open_file(self.source, rel)
        if opened is None:  # gone or replaced by a link, a FIFO...: not a file of this folder any more
            if rel in self._synced and self._delete:
                self._gone.add(rel)
            return
        f, st = opened
        sig = _signature(st)
        if self._synced.get(rel) == sig:
            f.close()  # closed without a change
            return
        loc = self.dest.child(rel)
        with f:
            try:
                self._client.put_object(loc.bucket, loc.key, _Reader(f, abort), sig[0])  # type: ignore[arg-type]
                failure = None
            except TransferCancelled:
                raise
            except Exception as e:  # noqa: BLE001 - S3Error, urllib3's errors, a short read...
                failure = e
            now = _signature(os.fstat(f.fileno()))
        if now != sig:
            # Written while it was uploaded (a short read fails the upload too): stale in S3 if it got there;
            # the writer's own events (or the next scan) bring it back.
            if failure is None:
                self._synced[rel] = (sig[0], _CHANGED)
            return
        if failure is not None:
            raise _Failure(_reason("upload to", loc, failure))
        self._synced[rel] = sig
        self._last_sync_at = time.time()

    def _remove(self, rel: str) -> None:
        loc = self.dest.child(rel)
        try:
            self._client.remove_object(loc.bucket, loc.key)
        except Exception as e:  # noqa: BLE001 - S3Error, urllib3's errors
            raise _Failure(_reason("deletion of", loc, e)) from None
        self._synced.pop(rel, None)
        self._gone.discard(rel)
        self._last_sync_at = time.time()

    # ---- bookkeeping -----------------------------------------------------------------------------------

    def _unwatch(self) -> None:
        with _active_lock:
            _active.discard(self)
        watch, self._watch = self._watch, None
        if watch is not None:
            _unwatch(watch, self._handler)

    def _publish(self) -> None:
        pending = len(self._ready | set(self._open) | set(self._created) | self._gone)
        self._status = SyncStatus(len(self._synced), sum(size for size, _ in self._synced.values()), pending,
                                  self._last_sync_at, self._last_error, self._mode)

    def _load(self) -> dict[str, Signature]:
        try:
            data: Any = json.loads(self._state_file.read_text())
            return {str(rel): (int(size), int(mtime)) for rel, (size, mtime) in data["files"].items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError, KeyError) as e:
            # Unknown: every file is uploaded again, and none deleted that this host cannot tell it put there.
            log.warning("%s: ignoring unreadable sync state %s: %s", self.label, self._state_file, e)
            return {}

    def _save(self) -> None:
        """Written whole and renamed over the old one, so a restart never reads half a state."""
        if self._synced == self._saved:
            return
        data = {"dest": str(self.dest), "files": {rel: list(sig) for rel, sig in sorted(self._synced.items())}}
        tmp = self._state_file.with_name(self._state_file.name + ".tmp")
        try:
            self._state_file.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(data))
            os.replace(tmp, self._state_file)
            self._saved = dict(self._synced)
        except OSError as e:
            log.warning("%s: cannot write the sync state %s: %s", self.label, self._state_file, e)
