"""What a Pipe channel streams: each host's entries of an epoch, in order, and each entry as bytes.

An entry is an S3 object (S3Prefix, ManifestFile), a local file (`file://`, smlocal's extension) or a
line of an augmented manifest (AugmentedManifestFile). `ChannelSource` is shared by the hosts of one
channel: it lists the objects (or spools and checks the manifest) once, and deals each epoch out:

- order: listing order (key order for a prefix, the manifest's order for a manifest);
- `ShuffleConfig.Seed`: a permutation per epoch, drawn from the seed and the epoch number alone, so a
  job run again sees the same orders;
- `ShardedByS3Key`: host i of n takes the entries i, i+n, ... of the epoch's order (key-sorted when not
  shuffled, as File mode deals them), so across hosts every entry is streamed exactly once per epoch,
  and with a seed the shards change from epoch to epoch, as on SageMaker.

An entry's bytes (`ChannelSource.chunks`) come in chunks of at most `CHUNK` from one GET, read as they
arrive; a read that fails or times out (a slow algorithm can leave a response idle for long) goes on
from where it stopped with a ranged GET of the same version (If-Match on its ETag). `CompressionType:
Gzip` is decompressed on the way, `RecordWrapperType: RecordIO` wraps each payload in one record
(runner.inputs.records). An augmented manifest line gives one payload per attribute in `AttributeNames`
order: a `-ref` attribute's payload is the S3 object it names, any other its text form.
"""

from __future__ import annotations

import json
import os
import random
import stat
import threading
import zlib
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3
from minio import Minio
from minio.error import S3Error

from runner.inputs import records
from runner.inputs.errors import DataDownloadError, DownloadCancelled
from runner.inputs.file_staging import S3Object, list_objects, local_files
from runner.s3 import parse_s3_uri
from smlocal.core.jobspec import ChannelSpec
from smlocal.core.local_channels import LocalChannelRoots

CHUNK = 1024 * 1024
# Tries of a GET that breaks off (connection reset, read timeout) without moving forward in between.
READ_RETRIES = 5
_GZIP = 16 + zlib.MAX_WBITS

Cancelled = Callable[[], bool]


class PipeDataError(Exception):
    """An entry could not be streamed; `reason` is what the job fails with."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class LocalFile:
    path: Path  # the real path (checked against the local channel roots when listed)
    name: str  # its path below the channel
    size: int | None = None


# An augmented manifest's line is its index among the manifest's non-empty lines.
Entry = S3Object | LocalFile | int


def epoch_entries(entries: list[Any], epoch: int, seed: int | None, sharded: bool, host_index: int,
                  host_count: int, sort_key: Callable[[Any], Any] | None = None) -> list[Any]:
    """The entries one host streams in one epoch (see the module's docstring)."""
    order = list(entries)
    if seed is not None:
        # A str seed is hashed (SHA-512) by random: the same on every run and platform.
        random.Random(f"smlocal-shuffle:{seed}:{epoch}").shuffle(order)
    elif sharded and sort_key is not None:
        order.sort(key=sort_key)
    if sharded:
        order = order[host_index::host_count]
    return order


class ChannelSource:
    """One Pipe channel's data, shared by its hosts."""

    def __init__(self, channel: ChannelSpec, client: Callable[[], Minio], region: str, role: str,
                 local_roots: LocalChannelRoots | None, spool_dir: Path) -> None:
        self.channel = channel
        self._client = client
        self._region = region
        self._role = role
        self._local_roots = local_roots or LocalChannelRoots()
        self._spool_dir = spool_dir
        self._lock = threading.Lock()
        self._entries: list[Any] | None = None
        self._manifest_path: Path | None = None
        # Where each non-empty line of a spooled augmented manifest is (8 bytes a line, not the lines).
        self._line_offsets = array("Q")
        self._line_lengths = array("Q")

    # ---- what there is --------------------------------------------------------------------

    def load(self, cancelled: Cancelled) -> None:
        """List the channel (once for all hosts); DataDownloadError when it names nothing usable."""
        with self._lock:
            if self._entries is not None:
                return
            s3 = self.channel.s3
            if s3 is None:
                raise DataDownloadError(f"ClientError: channel {self.channel.name!r}: {self.channel.source_kind} "
                                        "is not supported by smlocal.")
            if s3.is_local:
                self._entries = [LocalFile(path, below.as_posix(), _size_of(path))
                                 for below, path in local_files(s3.uri, self._local_roots)]
            elif s3.data_type == "AugmentedManifestFile":
                self._entries = self._spool_manifest(cancelled)
            else:
                self._entries = list_objects(self._client(), s3.uri, s3.data_type, self._region, self._role)

    def entries(self, epoch: int, host_index: int, host_count: int) -> list[Entry]:
        assert self._entries is not None, "load() first"
        s3 = self.channel.s3
        assert s3 is not None
        sort_key = _s3_sort_key if self._entries and isinstance(self._entries[0], S3Object) else None
        return epoch_entries(self._entries, epoch, self.channel.shuffle_seed, s3.sharded, host_index, host_count,
                             sort_key)

    # ---- an entry's bytes ---------------------------------------------------------------------

    @staticmethod
    def expected_size(entry: Entry) -> int | None:
        """About how many bytes an entry streams, when the listing said (for fetching ahead)."""
        return None if isinstance(entry, int) else entry.size

    def chunks(self, entry: Entry, cancelled: Cancelled) -> Iterator[bytes]:
        """The bytes the FIFO gets for one entry (decompressed, wrapped); PipeDataError when it cannot be read."""
        if isinstance(entry, int):
            for name, value in self._attributes(entry):
                if name.endswith("-ref"):
                    location = parse_s3_uri(value)
                    yield from self._payload(_S3Stream(self._client(), location.bucket, location.key, cancelled))
                else:
                    text = (value if isinstance(value, str) else json.dumps(value)).encode()
                    yield from self._wrap(iter((text,)), len(text))
        elif isinstance(entry, LocalFile):
            yield from self._payload(_LocalStream(entry))
        else:
            yield from self._payload(_S3Stream(self._client(), entry.bucket, entry.key, cancelled))

    def _payload(self, stream: _Stream) -> Iterator[bytes]:
        with stream:
            size = stream.size
            chunks: Iterator[bytes] = iter(stream)
            if self.channel.compression == "Gzip":
                chunks, size = _gunzip(chunks, stream.name), None
            yield from self._wrap(chunks, size)

    def _wrap(self, chunks: Iterator[bytes], size: int | None) -> Iterator[bytes]:
        if self.channel.record_wrapper != "RecordIO":
            yield from chunks
            return
        try:
            yield from records.frame(chunks, size)
        except records.PayloadSizeChanged as e:
            raise PipeDataError(f"ClientError: Data download failed: an object changed while it was streamed ({e})."
                                ) from None

    # ---- augmented manifests ----------------------------------------------------------------

    def _spool_manifest(self, cancelled: Cancelled) -> list[Any]:
        """Copy the manifest to the job's private staging folder and index its lines (offsets, not lines, in
        memory), checking each: a JSON object with every attribute of AttributeNames."""
        s3 = self.channel.s3
        assert s3 is not None
        uri = s3.uri
        try:
            location = parse_s3_uri(uri)
        except ValueError as e:
            raise DataDownloadError(f"ClientError: Data download failed: {e}") from None
        self._spool_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self._spool_dir / f"manifest-{self.channel.name}.jsonl"
        try:
            with open(path, "wb") as out, _S3Stream(self._client(), location.bucket, location.key, cancelled) as src:
                for chunk in src:
                    out.write(chunk)
        except PipeDataError as e:
            raise DataDownloadError(e.reason.replace("Data download failed:", "Data download failed: the augmented "
                                                     "manifest", 1)) from None
        self._manifest_path = path
        with open(path, "rb") as f:
            offset = 0
            for number, raw in enumerate(f, start=1):
                if cancelled():
                    raise DownloadCancelled()
                if raw.strip():
                    self._check_line(raw, number, uri)
                    self._line_offsets.append(offset)
                    self._line_lengths.append(len(raw))
                offset += len(raw)
        if not self._line_offsets:
            raise DataDownloadError(f'ClientError: Data download failed: the augmented manifest "{uri}" has no lines.')
        return list(range(len(self._line_offsets)))

    def _check_line(self, raw: bytes, number: int, uri: str) -> None:
        s3 = self.channel.s3
        assert s3 is not None
        where = f'ClientError: Data download failed: augmented manifest "{uri}", line {number}'
        try:
            line = json.loads(raw)
        except ValueError as e:
            raise DataDownloadError(f"{where} is not JSON: {e}") from None
        if not isinstance(line, dict):
            raise DataDownloadError(f"{where} is not a JSON object.")
        for name in s3.attribute_names:
            if name not in line:
                raise DataDownloadError(f"{where} has no attribute {name!r} (AttributeNames).")
            if name.endswith("-ref"):
                value = line[name]
                try:
                    if not isinstance(value, str):
                        raise ValueError(f"{value!r} is not a string")
                    parse_s3_uri(value)
                except ValueError as e:
                    raise DataDownloadError(f"{where}: attribute {name!r} must name an S3 object: {e}") from None

    def _attributes(self, line: int) -> Iterator[tuple[str, Any]]:
        s3 = self.channel.s3
        assert s3 is not None and self._manifest_path is not None
        fd = os.open(self._manifest_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            raw = os.pread(fd, self._line_lengths[line], self._line_offsets[line])
        finally:
            os.close(fd)
        parsed = json.loads(raw)
        for name in s3.attribute_names:
            yield name, parsed[name]


def _size_of(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _s3_sort_key(obj: S3Object) -> tuple[str, str]:
    return obj.bucket, obj.key


# ---- byte streams -----------------------------------------------------------------------------


class _Stream:
    name: str
    size: int | None

    def __iter__(self) -> Iterator[bytes]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> _Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _S3Stream(_Stream):
    """One object, read as it arrives; a broken-off read goes on with a ranged GET of the same version."""

    def __init__(self, client: Minio, bucket: str, key: str, cancelled: Cancelled) -> None:
        self.client = client
        self.bucket = bucket
        self.key = key
        self.name = f"s3://{bucket}/{key}"
        self._cancelled = cancelled
        self._response: Any = None
        self._etag: str | None = None
        self._response = self._get(0)
        length = self._response.headers.get("Content-Length")
        self.size = int(length) if length is not None else None
        self._etag = self._response.headers.get("ETag")

    def _get(self, offset: int) -> Any:
        headers = {"If-Match": self._etag} if self._etag and offset else None
        try:
            return self.client.get_object(self.bucket, self.key, offset=offset, request_headers=headers)
        except S3Error as e:
            if e.code == "PreconditionFailed":
                raise PipeDataError(f"ClientError: Data download failed: {self.name} changed while it was "
                                    "streamed.") from None
            raise PipeDataError(f"ClientError: Data download failed: {self.name}: {e.code}: {e.message}") from None
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise PipeDataError(f"ClientError: Data download failed: {self.name}: {e}") from None

    def __iter__(self) -> Iterator[bytes]:
        offset, failures = 0, 0
        while True:
            try:
                chunk = self._response.read1(CHUNK)
            except (urllib3.exceptions.HTTPError, OSError) as e:
                failures += 1
                if failures > READ_RETRIES or self._cancelled():
                    raise PipeDataError(f"ClientError: Data download failed: {self.name}: {e}") from None
                self._release()
                self._response = self._get(offset)
                continue
            if not chunk:
                if self.size is not None and offset < self.size:
                    failures += 1
                    if failures > READ_RETRIES:
                        raise PipeDataError(f"ClientError: Data download failed: {self.name} ended after {offset} "
                                            f"of {self.size} bytes.")
                    self._release()
                    self._response = self._get(offset)
                    continue
                return
            failures = 0
            offset += len(chunk)
            yield chunk

    def _release(self) -> None:
        response, self._response = self._response, None
        if response is not None:
            try:
                response.close()
                response.release_conn()
            except Exception:  # noqa: BLE001 - a broken connection is being dropped anyway
                pass

    def close(self) -> None:
        self._release()


class _LocalStream(_Stream):
    def __init__(self, entry: LocalFile) -> None:
        self.name = entry.name
        try:
            # Checked when listed; never follow a link swapped in since, nor block on a FIFO.
            self._fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise PipeDataError(f'ClientError: Data download failed: local file "{entry.path}": {e.strerror}') from None
        info = os.fstat(self._fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(self._fd)
            raise PipeDataError(f'ClientError: Data download failed: local file "{entry.path}" changed while '
                                "streaming.")
        self.size = info.st_size

    def __iter__(self) -> Iterator[bytes]:
        while chunk := os.read(self._fd, CHUNK):
            yield chunk

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _gunzip(chunks: Iterator[bytes], name: str) -> Iterator[bytes]:
    """Decompress a gzip stream (several members back to back too), never more than CHUNK out per step."""
    inflater = zlib.decompressobj(_GZIP)
    in_member = False  # the current member has begun and not ended
    try:
        for chunk in chunks:
            data = chunk
            while data:
                in_member = True
                out = inflater.decompress(data, CHUNK)
                if out:
                    yield out
                data = inflater.unconsumed_tail
                if inflater.eof:
                    data = inflater.unused_data + data
                    inflater = zlib.decompressobj(_GZIP)
                    in_member = False
        rest = inflater.flush()
        if rest:
            yield rest
    except zlib.error as e:
        raise PipeDataError(f"ClientError: Data download failed: {name} is not valid Gzip ({e}).") from None
    if in_member and not inflater.eof:
        raise PipeDataError(f"ClientError: Data download failed: {name} is a truncated Gzip stream.")
