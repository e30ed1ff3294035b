"""Pipe and FastFile measurements for `make bench` (called by bench.run, same S3 server, same smlocal).

1. Pipe throughput: an algorithm reads `train_0` to EOF (1 MiB reads); the bytes over the time from its
   open() to EOF, against a raw read of the same objects, in the same order, from the same server by
   this process (one streamed GET after the other, as a stream must deliver them).
2. Time to first byte of a data set of 2 GiB (8 x 256 MiB) in File, Pipe and FastFile mode: from
   CreateTrainingJob to the first byte the algorithm reads, and from the algorithm's start to it. The
   algorithm is a busybox script timing itself with /proc/uptime, which containers share with the host.
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

from minio import Minio

from runner.inputs.pipe_sources import CHUNK
from tests.support.docker_env import BUSYBOX_IMAGE, PYTHON_BASE_IMAGE
from tests.support.jobs import job_request

BUCKET = "smlocal-bench"
TTFB_COUNT = 8
TTFB_SIZE = 256 * 1024 * 1024

# The reader: plain open(), 1 MiB readinto, timestamps in /opt/ml/model/t.json.
PIPE_READER = """
import json, time
t0 = time.time()
f = open('/opt/ml/input/data/train_0', 'rb', buffering=0)
buf, n, first = bytearray(1 << 20), 0, None
while True:
    k = f.readinto(buf)
    if not k:
        break
    if first is None:
        first = time.time()
    n += k
json.dump({'bytes': n, 'open': t0, 'first': first, 'end': time.time()}, open('/opt/ml/model/t.json', 'w'))
"""


def _uptime() -> float:
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


def _channel(prefix: str, mode: str) -> list[dict[str, Any]]:
    return [{"ChannelName": "train", "InputMode": mode, "DataSource": {"S3DataSource": {
        "S3DataType": "S3Prefix", "S3Uri": f"s3://{BUCKET}/{prefix}/"}}}]


def _model_json(client: Minio, name: str, member: str) -> dict[str, Any]:
    import io
    import tarfile

    response = client.get_object(BUCKET, f"out/{name}/output/model.tar.gz")
    try:
        body = response.read()
    finally:
        response.close()
        response.release_conn()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        member_file = tar.extractfile(member)
        assert member_file is not None
        return json.loads(member_file.read())


def _run(sm: Any, request: dict[str, Any], wait_done: Any) -> dict[str, Any]:
    sm.create_training_job(**request)
    return wait_done(sm, request["TrainingJobName"], 0.5)


def raw_ordered_read(client: Minio, prefix: str) -> tuple[int, float]:
    """Every object of the prefix in key order, one streamed GET after the other: (bytes, seconds)."""
    start = time.perf_counter()
    keys = sorted(o.object_name for o in client.list_objects(BUCKET, prefix=f"{prefix}/", recursive=True))
    total = 0
    for key in keys:
        response = client.get_object(BUCKET, key)
        try:
            while chunk := response.read1(CHUNK):
                total += len(chunk)
        finally:
            response.close()
            response.release_conn()
    return total, time.perf_counter() - start


def pipe_read(sm: Any, client: Minio, name: str, prefix: str, wait_done: Any) -> tuple[int, float]:
    # The script as a JSON string: a hyperparameter's value is one line.
    request = job_request(name, PYTHON_BASE_IMAGE, OutputDataConfig={"S3OutputPath": f"s3://{BUCKET}/out"},
                          HyperParameters={"script": json.dumps(PIPE_READER)},
                          InputDataConfig=_channel(prefix, "Pipe"))
    request["AlgorithmSpecification"]["ContainerEntrypoint"] = [
        "python3", "-c",
        "import json; exec(json.loads(json.load(open('/opt/ml/input/config/hyperparameters.json'))['script']))"]
    _run(sm, request, wait_done)
    t = _model_json(client, name, "t.json")
    return t["bytes"], t["end"] - t["open"]


def pipe_throughput_rows(sm: Any, client: Minio, wait_done: Any, datasets: list[tuple[str, str]],
                         runs: int = 3) -> list[tuple[str, str, str, str]]:
    rows = []
    for label, prefix in datasets:
        raw_runs, pipe_runs = [], []
        size = 0
        for i in range(runs):  # interleaved: load from elsewhere slows both sides alike
            size, seconds = raw_ordered_read(client, prefix)
            raw_runs.append(seconds)
            piped, seconds = pipe_read(sm, client, f"pipe-{prefix}-{i}", prefix, wait_done)
            assert piped == size, (piped, size)
            pipe_runs.append(seconds)
        raw, piped = statistics.median(raw_runs), statistics.median(pipe_runs)
        rows.append((f"Pipe throughput, {label}", f"{size / piped / 1e6:.0f} MB/s ({piped:.2f} s)",
                     f"{size / raw / 1e6:.0f} MB/s raw ordered GET ({raw:.2f} s)",
                     f"{raw / piped * 100:.0f} % of raw speed"))
    return rows


def first_byte(sm: Any, client: Minio, name: str, prefix: str, mode: str, wait_done: Any) -> tuple[float, float]:
    """(seconds from CreateTrainingJob, seconds from the algorithm's start) to the first byte read."""
    target = "/opt/ml/input/data/train_0" if mode == "Pipe" else \
        "/opt/ml/input/data/train/$(ls /opt/ml/input/data/train | head -n 1)"
    script = (f"s=$(cut -d' ' -f1 /proc/uptime); head -c 1 {target} > /dev/null; "
              "e=$(cut -d' ' -f1 /proc/uptime); echo \"{\\\"start\\\": $s, \\\"first\\\": $e}\" > /opt/ml/model/t.json")
    request = job_request(name, BUSYBOX_IMAGE, OutputDataConfig={"S3OutputPath": f"s3://{BUCKET}/out"},
                          InputDataConfig=_channel(prefix, mode))
    request["AlgorithmSpecification"]["ContainerEntrypoint"] = ["sh", "-c", script]
    created = _uptime()
    _run(sm, request, wait_done)
    t = _model_json(client, name, "t.json")
    return t["first"] - created, t["first"] - t["start"]


def first_byte_rows(sm: Any, client: Minio, wait_done: Any, prefix: str, runs: int = 3
                    ) -> list[tuple[str, str, str, str]]:
    results: dict[str, list[tuple[float, float]]] = {"File": [], "Pipe": [], "FastFile": []}
    for i in range(runs):
        for mode in results:
            results[mode].append(first_byte(sm, client, f"ttfb-{mode.lower()}-{i}", prefix, mode, wait_done))
    file_ttfb = statistics.median(r[0] for r in results["File"])
    size = f"{TTFB_COUNT * TTFB_SIZE / 2**30:.0f} GiB"
    rows = []
    for mode in ("Pipe", "FastFile"):
        ttfb = statistics.median(r[0] for r in results[mode])
        in_algorithm = statistics.median(r[1] for r in results[mode])
        rows.append((f"Time to first byte, {mode}, {size}", f"{ttfb:.2f} s after CreateTrainingJob "
                     f"({in_algorithm:.2f} s after the algorithm started)", f"{file_ttfb:.2f} s File mode",
                     f"{file_ttfb / ttfb:.1f}x sooner"))
    return rows
