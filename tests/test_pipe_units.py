"""Pipe mode's parts on their own: RecordIO framing checked by a reader written here from dmlc's recordio.h,
Gzip streaming, the epoch order and shards, and the FIFO writer in-process against a real S3 server:
it never holds a stop up, whatever the reader does, and never writes through what the container swapped in.
"""

from __future__ import annotations

import gzip
import os
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from minio import Minio

from runner.inputs import records
from runner.inputs.pipe import PipeInput
from runner.inputs.pipe_sources import CHUNK, PipeDataError, _gunzip, epoch_entries
from runner.inputs.provider import InputContext
from runner.layout import HostLayout
from runner.layout import prepare as prepare_layout
from smlocal.core.jobspec import JobSpec
from tests.support.s3server import S3Server

MAGIC = 0xCED7230A


def parse(stream: bytes) -> list[tuple[list[int], bytes]]:
    """Records of a RecordIO stream: (the cflags of its parts, the payload), per recordio.h.

    Every header is checked (magic, flag sequence 0 | 1 2* 3), every part's padding is zero; a split
    payload's parts are joined back to back (AWS's readers)."""
    out, pos = [], 0
    while pos < len(stream):
        flags, payload = [], b""
        while True:
            magic, lrec = struct.unpack_from("<II", stream, pos)
            assert magic == MAGIC, f"bad magic at {pos}"
            flag, length = lrec >> 29, lrec & ((1 << 29) - 1)
            pos += 8
            payload += stream[pos:pos + length]
            pad = -length % 4
            assert stream[pos + length:pos + length + pad] == b"\0" * pad
            pos += length + pad
            flags.append(flag)
            if flag in (0, 3):
                break
        assert flags == [0] or (flags[0] == 1 and flags[-1] == 3 and set(flags[1:-1]) <= {2}), flags
        out.append((flags, payload))
    return out


def chunked(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


# ---- RecordIO -------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 3, 4, 5, 8, 1000])
def test_a_payload_of_known_size_is_one_whole_record_padded_to_4_bytes(length: int) -> None:
    payload = os.urandom(length)
    stream = b"".join(records.frame(chunked(payload, 7), length))
    assert len(stream) == 8 + length + (-length % 4)
    assert stream[:8] == struct.pack("<II", MAGIC, length)  # little-endian, cflag 0 in the top 3 bits
    assert parse(stream) == [([0], payload)]


def test_a_payload_that_contains_the_magic_stays_one_record() -> None:
    payload = b"abcd" + struct.pack("<I", MAGIC) + b"efgh"
    assert parse(b"".join(records.frame(iter([payload]), len(payload)))) == [([0], payload)]


@pytest.mark.parametrize("length", [17, 24, 25, 40])
def test_a_payload_longer_than_a_part_is_split_with_continuation_flags(length: int) -> None:
    payload = os.urandom(length)
    stream = b"".join(records.frame(chunked(payload, 5), length, max_part=8))
    [(flags, joined)] = parse(stream)
    assert joined == payload
    parts = -(-length // 8)
    assert flags == [1] + [2] * (parts - 2) + [3]
    # Only the last part is padded: every other is a whole number of 4-byte words.
    lengths = []
    pos = 0
    while pos < len(stream):
        length_of = struct.unpack_from("<II", stream, pos)[1] & ((1 << 29) - 1)
        lengths.append(length_of)
        pos += 8 + length_of + (-length_of % 4)
    assert all(n == 8 for n in lengths[:-1])


@pytest.mark.parametrize("length", [0, 5, 16, 17, 32, 33, 100])
def test_a_payload_of_unknown_size_is_whole_when_it_fits_the_buffer_and_split_when_not(length: int) -> None:
    payload = os.urandom(length)
    stream = b"".join(records.frame(chunked(payload, 3), None, buffer_limit=16))
    [(flags, joined)] = parse(stream)
    assert joined == payload
    assert flags == ([0] if length <= 16 else [1] + [2] * (-(-length // 16) - 2) + [3])


def test_a_payload_that_is_not_the_size_announced_is_an_error() -> None:
    with pytest.raises(records.PayloadSizeChanged):
        b"".join(records.frame(iter([b"abc"]), 4))
    with pytest.raises(records.PayloadSizeChanged):
        b"".join(records.frame(iter([b"abcde"]), 4))


def test_the_largest_part_fits_the_29_bit_length() -> None:
    assert records.MAX_PART < 2**29 and records.MAX_PART % 4 == 0
    assert struct.unpack("<II", records.header(records.MAX_PART, records.LAST))[1] == (3 << 29) | records.MAX_PART
    with pytest.raises(ValueError):
        records.header(2**29)


# ---- Gzip -------------------------------------------------------------------------------------------


def test_gzip_is_decompressed_in_bounded_steps_across_members() -> None:
    data = gzip.compress(b"\0" * (5 * CHUNK)) + gzip.compress(b"tail")
    out = list(_gunzip(chunked(data, 1000), "s3://b/k"))
    assert b"".join(out) == b"\0" * (5 * CHUNK) + b"tail"
    assert max(map(len, out)) <= CHUNK  # a bomb never comes out in one piece


@pytest.mark.parametrize("data", [gzip.compress(b"x" * 1000)[:-9], b"not gzip at all"], ids=["truncated", "garbage"])
def test_broken_gzip_fails_the_channel(data: bytes) -> None:
    with pytest.raises(PipeDataError, match=r"^ClientError: Data download failed: s3://b/k is "):
        b"".join(_gunzip(iter([data]), "s3://b/k"))


def test_an_empty_gzip_object_is_empty() -> None:
    assert b"".join(_gunzip(iter([]), "s3://b/k")) == b""
    assert zlib.decompress(gzip.compress(b""), 16 + zlib.MAX_WBITS) == b""


# ---- epoch order and shards ---------------------------------------------------------------------------


@pytest.mark.parametrize("hosts", [1, 2, 3, 5])
@pytest.mark.parametrize("seed", [None, 0, 12345])
def test_every_epoch_deals_every_entry_to_exactly_one_host(hosts: int, seed: int | None) -> None:
    entries = [f"k{i:02d}" for i in range(11)]
    for epoch in range(4):
        shards = [epoch_entries(entries, epoch, seed, True, i, hosts, sort_key=lambda k: k) for i in range(hosts)]
        assert sorted(e for shard in shards for e in shard) == entries
        assert all(len(shard) in (len(entries) // hosts, -(-len(entries) // hosts)) for shard in shards)


def test_the_shuffle_follows_from_the_seed_and_the_epoch_alone() -> None:
    entries = list(range(50))
    orders = [epoch_entries(entries, epoch, 7, False, 0, 1) for epoch in range(3)]
    assert orders == [epoch_entries(entries, epoch, 7, False, 0, 1) for epoch in range(3)]  # again: the same
    assert len({tuple(o) for o in orders}) == 3 and all(sorted(o) == entries for o in orders)
    assert epoch_entries(entries, 0, 8, False, 0, 1) != orders[0]
    assert epoch_entries(entries, 0, None, False, 0, 1) == entries  # no seed: listing order


# ---- the FIFO writer, in-process ------------------------------------------------------------------------

BUCKET = "smlocal-test-pipe-units"


@pytest.fixture()
def pipe(tmp_path: Path, s3_server: S3Server, minio: Minio) -> Iterator[Any]:
    """A prepared Pipe channel `train` on one host over 2 MiB in S3 (more than a FIFO holds)."""
    raw = s3_server.client_with_bucket(BUCKET)
    payload = os.urandom(2 * 2**20)
    raw.put_object(Bucket=BUCKET, Key="data/big", Body=payload)
    request = {"TrainingJobName": "units", "AlgorithmSpecification": {"TrainingInputMode": "Pipe"},
               "InputDataConfig": [{"ChannelName": "train", "DataSource": {"S3DataSource": {
                   "S3DataType": "S3Prefix", "S3Uri": f"s3://{BUCKET}/data/"}}}]}
    spec = JobSpec.from_request(request)
    layout = HostLayout(tmp_path / "job")
    prepare_layout(layout, spec)
    context = InputContext(spec, [layout], lambda: minio)
    [provider] = PipeInput.for_hosts(spec.channels[0], ["algo-1"], context)
    provider.prepare(lambda: False)
    provider.payload = payload
    provider.fifo = layout.opt_ml / "input" / "data" / "train_0"
    yield provider
    provider.stop()


def stopped_at_once(provider: PipeInput) -> None:
    provider.stop()
    assert provider._writer is None or not provider._writer.is_alive()
    provider.stop()  # idempotent


def test_a_reader_that_never_opens_holds_nothing(pipe: Any) -> None:
    pipe.start()
    time.sleep(0.3)
    assert pipe._writer.is_alive()  # waiting for a reader, not stuck in open()
    stopped_at_once(pipe)


def test_a_reader_that_opens_and_stops_reading_does_not_hold_a_stop(pipe: Any) -> None:
    pipe.start()
    fd = os.open(pipe.fifo, os.O_RDONLY)  # blocks until the writer has opened its end
    try:
        assert os.read(fd, 10)  # data flows, then the reader stops reading: the FIFO fills up
        time.sleep(0.3)
        stopped_at_once(pipe)
    finally:
        os.close(fd)


def test_a_reader_that_closes_early_ends_the_epoch_and_the_next_one_is_whole(pipe: Any) -> None:
    pipe.start()
    with open(pipe.fifo, "rb") as f:
        assert len(f.read(100)) == 100
    with open(pipe.fifo.with_name("train_1"), "rb") as f:  # made in advance, before epoch 0 closed
        assert f.read() == pipe.payload
    assert pipe.epochs_written == 1  # epoch 1 streamed to its end; epoch 0 was cut by the reader
    stopped_at_once(pipe)


def test_an_ml_io_style_reader_gets_every_byte(pipe: Any) -> None:
    import select

    pipe.start()
    fd = os.open(pipe.fifo, os.O_RDONLY | os.O_NONBLOCK)
    data = bytearray()
    try:
        while True:
            select.select([fd], [], [])
            try:
                chunk = os.read(fd, 1 << 20)
            except BlockingIOError:
                continue
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    assert bytes(data) == pipe.payload
    stopped_at_once(pipe)


@pytest.mark.parametrize("swap", ["symlink", "regular-file"])
def test_a_fifo_swapped_for_something_else_is_never_written_to(pipe: Any, tmp_path: Path, swap: str) -> None:
    victim = tmp_path / "host-file"
    victim.write_bytes(b"precious")
    # Swapped in one rename: the writer prepare() started makes the FIFO again if it finds the name gone, so an
    # unlink followed by a new link could lose the name to it in between.
    swapped_in = tmp_path / "swapped-in"
    if swap == "symlink":
        swapped_in.symlink_to(victim)
    else:
        swapped_in.write_bytes(b"")
    os.replace(swapped_in, pipe.fifo)
    pipe.start()
    pipe._writer.join(5)
    assert not pipe._writer.is_alive()  # the channel ends there
    assert victim.read_bytes() == b"precious"
    if swap == "regular-file":
        assert pipe.fifo.read_bytes() == b""
    stopped_at_once(pipe)


def test_a_data_folder_swapped_for_a_link_does_not_move_the_fifos(pipe: Any, tmp_path: Path) -> None:
    data = pipe.fifo.parent
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    data.rename(data.with_name("moved"))
    data.symlink_to(elsewhere)
    pipe.start()
    reader = threading.Thread(target=lambda: open(data.with_name("moved") / "train_0", "rb").read())
    reader.start()
    reader.join(10)
    assert not reader.is_alive()
    assert list(elsewhere.iterdir()) == []  # the writer kept to the folder it opened before the start
    stopped_at_once(pipe)


def test_the_fifos_are_readable_by_an_algorithm_of_any_uid(pipe: Any) -> None:
    pipe.start()
    assert pipe.fifo.stat().st_mode & 0o777 == 0o644
    with open(pipe.fifo, "rb") as f:
        f.read()
    assert pipe.fifo.with_name("train_1").stat().st_mode & 0o777 == 0o644
    stopped_at_once(pipe)


def test_a_local_folder_channel_streams_its_files_in_name_order(tmp_path: Path, minio: Minio) -> None:
    from smlocal.core.local_channels import LocalChannelRoots

    source = tmp_path / "local"
    for rel, body in {"b.csv": b"2\n", "a.csv": b"1\n", "sub/c.csv": b"3\n"}.items():
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        (source / rel).write_bytes(body)
    request = {"TrainingJobName": "units", "AlgorithmSpecification": {"TrainingInputMode": "Pipe"},
               "InputDataConfig": [{"ChannelName": "train", "DataSource": {"S3DataSource": {
                   "S3DataType": "S3Prefix", "S3Uri": f"file://{source}"}}}]}
    spec = JobSpec.from_request(request)
    layout = HostLayout(tmp_path / "job")
    prepare_layout(layout, spec)
    context = InputContext(spec, [layout], lambda: minio, LocalChannelRoots.of([source]))
    [provider] = PipeInput.for_hosts(spec.channels[0], ["algo-1"], context)
    provider.prepare(lambda: False)
    provider.start()
    try:
        with open(layout.opt_ml / "input" / "data" / "train_0", "rb") as f:
            assert f.read() == b"1\n2\n3\n"
    finally:
        stopped_at_once(provider)
