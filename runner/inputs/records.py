"""RecordIO framing for Pipe channels with `RecordWrapperType: RecordIO`: each payload becomes one record.

The byte layout is dmlc-core's `recordio.h` (what MXNet and SageMaker's built-in algorithms read):
uint32 magic `0xced7230a`, then uint32 `lrec` with the payload length in its low 29 bits and the
continuation flag in its top 3 (`(cflag << 29) | length`), both little-endian, then the payload
zero-padded to a multiple of 4 bytes. cflag 0 is a whole record; a payload split over several parts
is written as 1 (first), 2 (middle)... 3 (last).

How a split payload is joined again differs between readers, so smlocal splits only what must be:
- AWS's own Pipe-mode readers join the parts' payloads back to back: sagemaker-tensorflow-extensions'
  PipeModeDataset (`RecordIOReader.cpp`, "Add support for multipart recordio records",
  aws/sagemaker-tensorflow-extensions#39) and ml-io (`read_split_record_payload`). smlocal's parts
  follow them.
- dmlc's own writer splits a payload only where it contains the magic number (at a 4-byte aligned
  offset), drops it, and its reader puts it back between the parts. dmlc refuses records of 2^29
  bytes or more, so a dmlc reader never needed to join parts split for size.
So a payload shorter than 2^29 bytes whose size is known (a plain S3 object) is always one whole
record; a larger one is split into parts of at most 2^29 - 4 bytes; a payload whose size is not known
in advance (a Gzip object being decompressed) is one whole record when it fits in `BUFFER_LIMIT`, and
is split into parts of `BUFFER_LIMIT` otherwise, so that memory stays bounded. Every part but the last
has a length that is a multiple of 4, so only a record's last part carries padding.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator

MAGIC = 0xCED7230A
LENGTH_BITS = 29
MAX_LENGTH = (1 << LENGTH_BITS) - 1
WHOLE, FIRST, MIDDLE, LAST = 0, 1, 2, 3
# The longest part of a split record (a multiple of 4, below 2^29).
MAX_PART = MAX_LENGTH & ~3
# A payload of unknown size is held up to this many bytes to find out whether it is one whole record.
BUFFER_LIMIT = 4 * 1024 * 1024

_HEADER = struct.Struct("<II")


class PayloadSizeChanged(Exception):
    """A payload announced with one size delivered another (the object changed while it was read)."""


def header(length: int, cflag: int = WHOLE) -> bytes:
    if not 0 <= length <= MAX_LENGTH or not 0 <= cflag <= LAST:
        raise ValueError(f"RecordIO part of {length} bytes with cflag {cflag}")
    return _HEADER.pack(MAGIC, (cflag << LENGTH_BITS) | length)


def padding(length: int) -> bytes:
    return b"\0" * (-length % 4)


def frame(chunks: Iterable[bytes], size: int | None, *, max_part: int = MAX_PART,
          buffer_limit: int = BUFFER_LIMIT) -> Iterator[bytes]:
    """One record around a payload that arrives as `chunks`; `size` is its length when known in advance.

    Only the buffer of an unknown-size payload is ever held (at most `buffer_limit` bytes plus a chunk);
    a known size streams straight through."""
    if max_part % 4 or buffer_limit % 4 or not 0 < max_part <= MAX_PART or not 0 < buffer_limit <= MAX_PART:
        raise ValueError("part sizes must be positive multiples of 4 below 2^29")
    if size is None:
        yield from _frame_unknown(chunks, buffer_limit)
    else:
        yield from _frame_known(chunks, size, max_part)


def _frame_known(chunks: Iterable[bytes], size: int, max_part: int) -> Iterator[bytes]:
    parts = [max_part] * (size // max_part)
    if size % max_part or not size:
        parts.append(size % max_part)
    flags = [WHOLE] if len(parts) == 1 else [FIRST] + [MIDDLE] * (len(parts) - 2) + [LAST]
    source = iter(chunks)
    pending, sent = b"", 0
    for length, cflag in zip(parts, flags, strict=True):
        yield header(length, cflag)
        left = length
        while left:
            if not pending:
                pending = next(source, b"")
                if not pending:
                    raise PayloadSizeChanged(f"expected {size} bytes, got {sent}")
            piece, pending = pending[:left], pending[left:]
            left -= len(piece)
            sent += len(piece)
            yield piece
        yield padding(length)
    if pending or any(source):
        raise PayloadSizeChanged(f"expected {size} bytes, got more")


def _frame_unknown(chunks: Iterable[bytes], limit: int) -> Iterator[bytes]:
    held = bytearray()
    started = False  # a first part went out: the payload is split
    for chunk in chunks:
        held += chunk
        # Emit full parts only while more bytes follow them: the last part must be flagged LAST.
        while len(held) > limit:
            yield header(limit, MIDDLE if started else FIRST)
            yield bytes(held[:limit])
            del held[:limit]
            started = True
    length = len(held)
    yield header(length, LAST if started else WHOLE)
    if length:
        yield bytes(held)
    yield padding(length)
