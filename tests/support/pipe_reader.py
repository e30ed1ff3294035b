"""A Pipe-mode algorithm for the tests, run inside the python image: reads FIFOs the way real readers do.

Shipped to the container as a File-mode `code` channel and driven by the `plan` hyperparameter, a JSON
object channel -> {"style", "epochs", "records", "close_after", "hold"}:

- style `plain`: `open()` (blocks until smlocal opens the writing end), reads to EOF;
- style `mlio`: as ml-io's SageMaker pipe stream: `O_RDONLY | O_NONBLOCK`, 3 tries 1 s apart when the
  FIFO is not there yet, then `select()` before every read, so an empty read means EOF only once the
  FIFO reported it ready;
- style `pmd`: as sagemaker-tensorflow-extensions' PipeModeDataset: requires the channel's
  TrainingInputMode to be Pipe, keeps the epoch in `/opt/ml/pipe_state/.<channel>-pipe_mode-state`
  under a file lock, and waits up to 120 s for each FIFO to appear;
- style `files`: not a FIFO but the folder `/opt/ml/input/data/<channel>/` (File, FastFile): its files in
  name order, read whole, as one stream;
- `records`: parse the stream as RecordIO (written here from dmlc's recordio.h, independently of
  smlocal's writer): magic 0xced7230a, lrec = cflag << 29 | length, little-endian, 4-byte padding; a
  split record's parts (cflag 1, 2..., 3) joined back to back, as AWS's readers (PipeModeDataset,
  ml-io) join them;
- `close_after`: close epoch 0 after this many bytes (an early-closing reader), then read epoch 1 whole;
- `hold`: open epoch 0, read nothing, keep it open until the algorithm ends;
- `skip`: never open the channel;
- `pause_before`: before opening that epoch, print `paused <channel>` and wait for /tmp/go to appear
  (the test drops it in with `docker exec` once it has done what it wanted meanwhile).

Each channel is read in a thread of its own (channels in parallel). The result goes to
/opt/ml/model/result.json (/opt/ml/model/<host>/result.json when the job has several hosts): per
channel and epoch the bytes read, their SHA-256, the records' SHA-256s in order, and when the reader
opened the FIFO and got its first byte (epoch seconds).
"""

import fcntl
import hashlib
import json
import os
import select
import struct
import sys
import threading
import time

DATA = "/opt/ml/input/data"
MAGIC = 0xCED7230A
CHUNK = 1 << 20


class PlainReader:
    def __init__(self, path):
        self.file = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by close()

    def read(self, n):
        return self.file.read(n)

    def close(self):
        self.file.close()


class FolderReader:
    """Every file below a channel's folder, in path order, as one stream."""

    def __init__(self, folder):
        paths = sorted(os.path.join(d, f) for d, _, files in os.walk(folder) for f in files)
        self.files = [open(p, "rb") for p in paths]  # noqa: SIM115 - closed by close()

    def read(self, n):
        while self.files:
            chunk = self.files[0].read(n)
            if chunk:
                return chunk
            self.files.pop(0).close()
        return b""

    def close(self):
        for f in self.files:
            f.close()


class MlioReader:
    def __init__(self, path):
        for attempt in range(3):
            try:
                self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
                break
            except FileNotFoundError:
                if attempt == 2:
                    raise
                time.sleep(1)

    def read(self, n):
        while True:
            select.select([self.fd], [], [])
            try:
                return os.read(self.fd, n)
            except BlockingIOError:
                continue

    def close(self):
        os.close(self.fd)


def open_pmd(channel):
    config = json.load(open("/opt/ml/input/config/inputdataconfig.json"))
    if config[channel]["TrainingInputMode"].lower() != "pipe":
        raise SystemExit(f"PipeModeDataset: channel {channel} is not in Pipe mode")
    os.makedirs("/opt/ml/pipe_state", exist_ok=True)
    state = f"/opt/ml/pipe_state/.{channel}-pipe_mode-state"
    with open(state, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        epoch = int(f.read() or 0)
        f.seek(0)
        f.truncate()
        f.write(str(epoch + 1))
        fcntl.flock(f, fcntl.LOCK_UN)
    path = f"{DATA}/{channel}_{epoch}"
    deadline = time.time() + 120
    while not os.path.exists(path):
        if time.time() > deadline:
            raise SystemExit(f"PipeModeDataset: {path} did not appear")
        time.sleep(0.01)
    return PlainReader(path)


class Counted:
    """What a reader returned: its bytes' SHA-256, how many, and when the first came."""

    def __init__(self, reader):
        self.reader = reader
        self.digest = hashlib.sha256()
        self.size = 0
        self.first_byte_at = None

    def read(self, n):
        chunk = self.reader.read(n)
        if chunk:
            if self.first_byte_at is None:
                self.first_byte_at = time.time()
            self.digest.update(chunk)
            self.size += len(chunk)
        return chunk


def read_exactly(reader, n):
    out = b""
    while len(out) < n:
        piece = reader.read(n - len(out))
        if not piece:
            raise SystemExit(f"RecordIO: the stream ended inside a record ({len(out)} of {n} bytes)")
        out += piece
    return out


def read_records(reader):
    """Each record's payload SHA-256, in order."""
    hashes = []
    while True:
        head = reader.read(8)
        if not head:
            return hashes
        head += read_exactly(reader, 8 - len(head))
        record = hashlib.sha256()
        while True:
            magic, lrec = struct.unpack("<II", head)
            if magic != MAGIC:
                raise SystemExit(f"RecordIO: bad magic {magic:#x}")
            cflag, length = lrec >> 29, lrec & ((1 << 29) - 1)
            body = read_exactly(reader, length + (-length % 4))
            if body[length:] != b"\0" * (-length % 4):
                raise SystemExit("RecordIO: padding is not zero")
            record.update(body[:length])
            if cflag in (0, 3):
                break
            if cflag not in (1, 2):
                raise SystemExit(f"RecordIO: bad cflag {cflag}")
            head = read_exactly(reader, 8)
            if (struct.unpack("<II", head)[1] >> 29) not in (2, 3):
                raise SystemExit("RecordIO: a split record goes on with a part that is not 2 or 3")
        hashes.append(record.hexdigest())


def read_channel(channel, spec, result):
    epochs = []
    result[channel] = epochs
    for epoch in range(spec.get("epochs", 1)):
        if spec.get("pause_before") == epoch:
            print(f"paused {channel}", flush=True)
            while not os.path.exists("/tmp/go"):
                time.sleep(0.05)
        path = f"{DATA}/{channel}_{epoch}"
        opened_at = time.time()
        if spec.get("style") == "files":
            raw = FolderReader(f"{DATA}/{channel}")
        elif spec.get("style") == "mlio":
            raw = MlioReader(path)
        elif spec.get("style") == "pmd":
            raw = open_pmd(channel)
        else:
            raw = PlainReader(path)
        if spec.get("hold") and epoch == 0:
            result.setdefault("_held", []).append(raw)
            return
        reader, hashes = Counted(raw), None
        limit = spec.get("close_after") if epoch == 0 else None
        if spec.get("records"):
            hashes = read_records(reader)
        else:
            while reader.read(CHUNK if limit is None else min(CHUNK, limit - reader.size)):
                if limit is not None and reader.size >= limit:
                    break
        raw.close()
        epochs.append({"sha256": reader.digest.hexdigest(), "bytes": reader.size, "records": hashes,
                       "opened_at": opened_at, "first_byte_at": reader.first_byte_at, "done_at": time.time()})


def main():
    plan = json.loads(json.load(open("/opt/ml/input/config/hyperparameters.json"))["plan"])
    result, errors = {}, []

    def run(channel, spec):
        try:
            read_channel(channel, spec, result)
        except BaseException as e:  # noqa: BLE001 - reported in the result
            errors.append(f"{channel}: {e!r}")

    threads = [threading.Thread(target=run, args=item) for item in plan.items() if not item[1].get("skip")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.pop("_held", None)
    resources = json.load(open("/opt/ml/input/config/resourceconfig.json"))
    out = "/opt/ml/model"
    if len(resources["hosts"]) > 1:
        out = f"{out}/{resources['current_host']}"
        os.makedirs(out, exist_ok=True)
    json.dump({"channels": result, "errors": errors}, open(f"{out}/result.json", "w"))
    print("read", {c: [e["bytes"] for e in epochs] for c, epochs in result.items()}, errors)
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
