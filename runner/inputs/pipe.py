"""Pipe mode: each channel is a FIFO per epoch, `/opt/ml/input/data/<channel>_<epoch>` from `_0`, fed from S3.

`PipeInput` is the channel's provider on one host. `prepare` lists the channel (once for all hosts),
makes the first FIFO and starts a writer thread that, epoch after epoch:
1. starts fetching the epoch's first entries (runner.inputs.pipe_sources), so that the first bytes are ready
   when a reader comes (for epoch 0: while the container is still starting);
2. waits for a reader: the FIFO is opened for writing with O_NONBLOCK, which fails (ENXIO) until some
   process has it open for reading, and is tried again every few milliseconds until one has or the
   host stops. So a reader that never opens a channel holds nothing: no thread is stuck in open();
3. makes the next epoch's FIFO, so that it exists before this one reaches EOF (ml-io counts on it);
4. streams the entries into it with blocking writes (the kernel fills the FIFO as the reader empties
   it: one system call per chunk); a reader that closes early (EPIPE) ends the epoch, and the writer
   goes on to wait for the next one;
5. closes it: EOF for the reader.
It goes on as long as the algorithm opens FIFOs. `stop` ends it whatever it is waiting for: a wait for
a reader or for a chunk looks at the stop flag every `WAIT_SLICE`, and a write blocked on a reader
that stopped reading is released by opening the FIFO's read end and draining it.

The entries are fetched ahead while the FIFO is written (up to `PREFETCH` entries at a time, the next
one started when those running have less than `AHEAD_BYTES` left, each through a queue of at most
`QUEUE_CHUNKS` chunks of up to 1 MiB), so the memory a channel takes is bounded whatever the size of
the data, small objects do not each wait for a round trip, and a large object's first bytes are not
slowed by requests for the next ones.

The container owns the folder the FIFOs are in and may swap a FIFO for a link or a file: the writer
works relative to a descriptor of the folder taken before the container started, opens with
O_NOFOLLOW and writes only to what `fstat` says is a FIFO.

A restarted server cannot continue an epoch it was streaming (its writer went with the old process:
the reader saw EOF there). `resume` starts writing at the newest FIFO of the channel, the one the
reader moves on to.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import queue
import re
import stat
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

from runner.inputs.pipe_sources import ChannelSource, Entry, PipeDataError
from runner.inputs.provider import Cancelled, InputContext, InputProvider
from runner.layout import READABLE_FILE
from runner.tree import open_dir
from smlocal.core.jobspec import ChannelSpec

log = logging.getLogger("smlocal.runner")

PREFETCH = 4
QUEUE_CHUNKS = 4
# The next entry's request starts when the ones running have less than this left to deliver (sizes from the
# listing; an entry of unknown size counts as `UNKNOWN_SIZE`): soon enough to hide a request's latency
# behind the end of a large object, late enough not to slow its first bytes with other requests.
AHEAD_BYTES = 128 * 1024 * 1024
UNKNOWN_SIZE = 64 * 1024
# How long a wait (for a fetched chunk, for a stopped writer) lasts before the stop flag is looked at again.
WAIT_SLICE = 0.2
# Between tries to open a FIFO for writing: short at first, so a reader is served at once.
OPEN_RETRY_FIRST = 0.002
OPEN_RETRY_MAX = 0.05
# A FIFO's buffer, as large as an unprivileged process may make it by default (/proc/sys/fs/pipe-max-size).
PIPE_BUFFER = 1024 * 1024
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_END = object()


def fifo_name(channel: str, epoch: int) -> str:
    return f"{channel}_{epoch}"


class PipeInput(InputProvider):
    """One Pipe channel on one host."""

    def __init__(self, channel: ChannelSpec, host: str, context: InputContext, source: ChannelSource) -> None:
        super().__init__(channel, host, context)
        self.source = source
        self._dir_fd = -1
        self._fd = -1  # the FIFO being written, while it is
        self._fd_lock = threading.Lock()
        self._stopping = threading.Event()
        self._writer: threading.Thread | None = None
        self._failure: str | None = None
        self.epochs_written = 0  # epochs streamed to their end (for tests and the log)

    @classmethod
    def for_hosts(cls, channel: ChannelSpec, hosts: list[str], context: InputContext) -> list[InputProvider]:
        spec = context.spec
        source = ChannelSource(channel, context.s3, spec.region, spec.role_arn, context.local_roots,
                               context.layouts[0].staging_dir)
        return [cls(channel, host, context, source) for host in hosts]

    @property
    def failure(self) -> str | None:
        return self._failure

    # ---- the provider's life ----------------------------------------------------------------

    def prepare(self, cancelled: Cancelled) -> None:
        self.source.load(cancelled)
        self._open_data_dir()
        self._make_fifo(0)
        # Fetching starts now; writing when the algorithm opens the FIFO.
        self._start_writer(0)

    def start(self) -> None:
        self._start_writer(0)  # started by prepare already

    def resume(self) -> None:
        try:
            self._open_data_dir()
        except OSError as e:
            log.warning("Pipe channel %s of %s cannot be resumed: %s", self.channel.name, self.host, e)
            return
        try:
            self.source.load(lambda: self._stopping.is_set())
        except Exception as e:  # noqa: BLE001 - a listing that fails now fails the job
            self._fail(getattr(e, "reason", f"InternalServerError: {e}"))
            return
        newest = self._newest_fifo()
        log.info("Pipe channel %s of %s resumes at epoch %d", self.channel.name, self.host, newest)
        self._start_writer(newest)

    def stop(self) -> None:
        self._stopping.set()
        writer = self._writer
        if writer is not None and writer is not threading.current_thread():
            writer.join(WAIT_SLICE * 2)
            if writer.is_alive():
                self._release_blocked_write()
                writer.join(10)
            if writer.is_alive():
                log.warning("the writer of Pipe channel %s on %s did not stop", self.channel.name, self.host)
        if self._dir_fd >= 0 and (writer is None or not writer.is_alive()):
            os.close(self._dir_fd)
            self._dir_fd = -1

    def _release_blocked_write(self) -> None:
        """A write blocked on a reader that stopped reading: open the FIFO's read end and drain it until the
        writer, which sees the stop flag once its write returns, has let go."""
        with self._fd_lock:
            if self._fd < 0:
                return
            try:
                # The very FIFO the writer has open (not whatever its name leads to now).
                drain = os.open(f"/proc/self/fd/{self._fd}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                return
        try:
            deadline = time.monotonic() + 10
            while self._writer is not None and self._writer.is_alive() and time.monotonic() < deadline:
                try:
                    if not os.read(drain, PIPE_BUFFER):
                        time.sleep(0.005)
                except BlockingIOError:
                    time.sleep(0.005)
        finally:
            os.close(drain)

    # ---- FIFOs ------------------------------------------------------------------------------

    def _open_data_dir(self) -> None:
        if self._dir_fd < 0:
            layout = self.context.layout(self.host)
            self._dir_fd = open_dir(layout.opt_ml, "input/data")

    def _make_fifo(self, epoch: int) -> None:
        name = fifo_name(self.channel.name, epoch)
        try:
            os.mkfifo(name, 0o600, dir_fd=self._dir_fd)
        except FileExistsError:
            return  # made in advance already (or something the algorithm put there: never written to)
        # Readable by an algorithm running as any uid; changed through an O_PATH descriptor of the FIFO just
        # made, so a link swapped in meanwhile is not followed.
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._dir_fd)
        try:
            if stat.S_ISFIFO(os.fstat(fd).st_mode):
                os.chmod(f"/proc/self/fd/{fd}", READABLE_FILE)
        finally:
            os.close(fd)

    def _newest_fifo(self) -> int:
        pattern = re.compile(re.escape(self.channel.name) + r"_(\d+)")
        epochs = [int(m.group(1)) for name in os.listdir(self._dir_fd) if (m := pattern.fullmatch(name))]
        return max(epochs, default=0)

    def _open_for_writing(self, epoch: int) -> int | None:
        """The FIFO opened for writing once a reader has it open; None when the host stops first."""
        name = fifo_name(self.channel.name, epoch)
        delay = OPEN_RETRY_FIRST
        while not self._stopping.is_set():
            try:
                fd = os.open(name, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._dir_fd)
            except OSError as e:
                if e.errno == errno.ENXIO:  # no reader yet
                    self._stopping.wait(delay)
                    delay = min(delay * 2, OPEN_RETRY_MAX)
                    continue
                if e.errno == errno.ENOENT:  # the algorithm removed it: make it again
                    self._make_fifo(epoch)
                    continue
                log.warning("Pipe channel %s on %s: cannot open %s: %s", self.channel.name, self.host, name, e)
                return None
            if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                os.close(fd)
                log.warning("Pipe channel %s on %s: %s is no longer a FIFO; the channel ends there",
                            self.channel.name, self.host, name)
                return None
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_BUFFER)
            os.set_blocking(fd, True)  # opened without blocking; written with
            return fd
        return None

    # ---- the writer -------------------------------------------------------------------------

    def _start_writer(self, first_epoch: int) -> None:
        if self._writer is not None or self._stopping.is_set():
            return
        self._writer = threading.Thread(target=self._write_epochs, args=(first_epoch,), daemon=True,
                                        name=f"smlocal-pipe-{self.channel.name}-{self.host}")
        self._writer.start()

    def _write_epochs(self, epoch: int) -> None:
        try:
            while not self._stopping.is_set():
                entries = self.source.entries(epoch, self.host_index, self.host_count)
                with _Prefetcher(self.source, entries, self._stopping) as stream:
                    fd = self._open_for_writing(epoch)
                    if fd is None:
                        return
                    with self._fd_lock:
                        self._fd = fd
                    try:
                        self._make_fifo(epoch + 1)  # there before the reader sees this one's EOF
                        self._feed(fd, stream)
                    finally:
                        with self._fd_lock:
                            self._fd = -1
                            os.close(fd)
                epoch += 1
        except PipeDataError as e:
            self._fail(e.reason)
        except Exception as e:
            log.exception("the writer of Pipe channel %s on %s failed", self.channel.name, self.host)
            self._fail(f"InternalServerError: Pipe channel {self.channel.name}: {type(e).__name__}: {e}")

    def _fail(self, reason: str) -> None:
        """The channel cannot go on: the job fails with `reason` (its hosts are stopped)."""
        log.warning("Pipe channel %s on %s: %s", self.channel.name, self.host, reason)
        self._failure = reason
        self.context.on_failure(reason)

    def _feed(self, fd: int, stream: Iterator[bytes]) -> None:
        for chunk in stream:
            if not self._write_all(fd, chunk):
                return  # the reader closed the FIFO early, or the host stops
        if not self._stopping.is_set():
            self.epochs_written += 1

    def _write_all(self, fd: int, chunk: bytes) -> bool:
        """Write all of it (blocking: see `stop` for what releases a write no reader takes); False when the
        reader closed the FIFO or the host stops."""
        view = memoryview(chunk)
        while view:
            if self._stopping.is_set():
                return False
            try:
                written = os.write(fd, view)
            except BrokenPipeError:
                return False
            view = view[written:]
        return True


class _Fetch:
    """One entry's bytes, read by a thread of its own into a bounded queue."""

    def __init__(self, source: ChannelSource, entry: Entry, stopping: threading.Event) -> None:
        self.queue: queue.Queue[Any] = queue.Queue(QUEUE_CHUNKS)
        size = source.expected_size(entry)
        self.left = UNKNOWN_SIZE if size is None else size  # about how much is still to be handed on
        self._cancel = threading.Event()
        self._stopping = stopping
        self._thread = threading.Thread(target=self._run, args=(source, entry), daemon=True,
                                        name="smlocal-pipe-fetch")
        self._thread.start()

    def _gone(self) -> bool:
        return self._cancel.is_set() or self._stopping.is_set()

    def _put(self, item: Any) -> bool:
        while not self._gone():
            try:
                self.queue.put(item, timeout=WAIT_SLICE)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, source: ChannelSource, entry: Entry) -> None:
        try:
            with contextlib.closing(source.chunks(entry, self._gone)) as chunks:
                for chunk in chunks:
                    if chunk and not self._put(chunk):
                        return
            self._put(_END)
        except BaseException as e:  # handed to the writer, which fails the channel with it
            self._put(e)

    def __iter__(self) -> Iterator[bytes]:
        while True:
            try:
                item = self.queue.get(timeout=WAIT_SLICE)
            except queue.Empty:
                if self._gone():
                    return
                continue
            if item is _END:
                self.left = 0
                return
            if isinstance(item, BaseException):
                raise item
            self.left = max(0, self.left - len(item))
            yield item

    def cancel(self) -> None:
        self._cancel.set()


class _Prefetcher:
    """An epoch's entries in order, with the next few fetched while the current one is written."""

    def __init__(self, source: ChannelSource, entries: list[Entry], stopping: threading.Event,
                 window: int = PREFETCH) -> None:
        self._source = source
        self._pending = deque(entries)
        self._stopping = stopping
        self._window = window
        self._running: deque[_Fetch] = deque()

    def _fill(self) -> None:
        while (self._pending and len(self._running) < self._window and not self._stopping.is_set()
               and sum(fetch.left for fetch in self._running) < AHEAD_BYTES):
            self._running.append(_Fetch(self._source, self._pending.popleft(), self._stopping))

    def __iter__(self) -> Iterator[bytes]:
        self._fill()
        while self._running:
            for chunk in self._running[0]:
                self._fill()
                yield chunk
            self._running.popleft()
            self._fill()

    def __enter__(self) -> _Prefetcher:
        self._fill()  # fetching begins before a reader is there
        return self

    def __exit__(self, *exc: object) -> None:
        for fetch in self._running:
            fetch.cancel()
        self._running.clear()
        self._pending.clear()

