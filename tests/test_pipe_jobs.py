"""Pipe mode end to end: real containers read FIFOs fed from a real S3 server, as real readers do.

The algorithm is tests/support/pipe_reader.py in the python image: it reads each channel in a thread of
its own, epoch after epoch, in the style the test asks for (plain `open()`, ml-io's non-blocking open
and `select()`, PipeModeDataset's wait for the FIFO and its state file), parses RecordIO with a reader
of its own, and reports a SHA-256 of every epoch (and of every record) that the test compares with
the source objects.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import pytest

from runner.inputs.pipe_sources import epoch_entries
from tests.support.docker_env import PYTHON_BASE_IMAGE
from tests.support.jobs import job_request, wait_recording
from tests.support.pipe_jobs import completed, ended, pipe_channel, put_objects, reader_job
from tests.support.runner_jobs import (
    FINAL,
    INPUT_BUCKET,
    leftovers,
    log_messages,
    model_files,
    s3_client,
    settle,
    sh_job,
    wait_until,
)
from tests.support.smlocal import SmlocalServer

SERVER = "runner_server"  # `sm` and `s3` are clients of the runner plugin's server (tests/conftest.py)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run_recording(sm: Any, request: dict[str, Any], timeout: float = 120.0) -> tuple[dict[str, Any], list[str]]:
    sm.create_training_job(**request)
    return wait_recording(sm, request["TrainingJobName"], FINAL, timeout=timeout)


def result_of(s3: Any, name: str) -> dict[str, Any]:
    return json.loads(model_files(s3, name)["result.json"])


# ---- every byte, every epoch --------------------------------------------------------------------


def test_every_byte_of_three_epochs_arrives_plain_gzip_recordio_and_shuffled(
        sm: Any, s3: Any, unique_name: Callable[[str], str], docker_engine: docker.DockerClient,
        runner_server: SmlocalServer) -> None:
    name = unique_name("pipe-bytes")
    rng = os.urandom
    objects = {f"part-{i:02d}.bin": rng(1000 + 997 * i) for i in range(7)}  # lengths not multiples of 4
    objects["part-07.bin"] = b""  # an empty object is an empty record
    objects["sub/part-08.bin"] = rng(3)
    put_objects(s3, f"{name}/raw", objects)
    # Gzip objects: one larger than RecordIO's whole-record buffer once decompressed (a split record).
    texts = {"a.csv.gz": b"1,2,3\n" * 10, "b.csv.gz": b"".join(b"%d,%d\n" % (i, i * i) for i in range(600_000)),
             "c.csv.gz": b"last\n"}
    members = {key: gzip.compress(body) for key, body in texts.items()}
    members["d.csv.gz"] = gzip.compress(b"two ") + gzip.compress(b"members\n")  # concatenated gzip members
    texts["d.csv.gz"] = b"two members\n"
    put_objects(s3, f"{name}/gz", members)
    raw = f"s3://{INPUT_BUCKET}/{name}/raw/"
    gz = f"s3://{INPUT_BUCKET}/{name}/gz/"
    channels = [
        pipe_channel("plain", raw),
        pipe_channel("gzip", gz, CompressionType="Gzip"),
        pipe_channel("recordio", raw, RecordWrapperType="RecordIO"),
        pipe_channel("gzip-recordio", gz, CompressionType="Gzip", RecordWrapperType="RecordIO"),
        pipe_channel("shuffled", raw, RecordWrapperType="RecordIO", ShuffleConfig={"Seed": 42}),
    ]
    plan = {c["ChannelName"]: {"epochs": 3, "records": "RecordIO" in str(c)} for c in channels}
    job, seen = run_recording(sm, reader_job(s3, name, channels, plan))
    completed(job, seen)
    result = result_of(s3, name)
    assert result["errors"] == []
    got = result["channels"]

    keys = sorted(objects)
    stream = b"".join(objects[k] for k in keys)
    for epoch in got["plain"]:
        assert (epoch["bytes"], epoch["sha256"]) == (len(stream), sha(stream))
    unzipped = b"".join(texts[k] for k in sorted(texts))
    assert [e["sha256"] for e in got["gzip"]] == [sha(unzipped)] * 3
    assert [e["records"] for e in got["recordio"]] == [[sha(objects[k]) for k in keys]] * 3
    assert [e["records"] for e in got["gzip-recordio"]] == [[sha(texts[k]) for k in sorted(texts)]] * 3
    # Shuffled: every object once per epoch, in an order that changes with the epoch and follows from the seed.
    orders = [e["records"] for e in got["shuffled"]]
    assert all(sorted(order) == sorted(sha(objects[k]) for k in keys) for order in orders)
    assert len({tuple(order) for order in orders}) == 3
    for epoch, order in enumerate(orders):
        assert order == [sha(objects[k]) for k in epoch_entries(keys, epoch, 42, False, 0, 1)]
    assert wait_until(lambda: leftovers(docker_engine, runner_server, name) == [], 30, "cleanup")


# ---- the readers of the field ----------------------------------------------------------------------


def test_plain_mlio_and_pipemodedataset_readers_each_read_three_epochs(
        sm: Any, s3: Any, unique_name: Callable[[str], str]) -> None:
    name = unique_name("pipe-styles")
    # More than a FIFO's buffer (1 MiB) per epoch, so the writer waits for room as the readers read.
    objects = {f"obj-{i}": os.urandom(700_000 + i) for i in range(3)}
    put_objects(s3, f"{name}/data", objects)
    uri = f"s3://{INPUT_BUCKET}/{name}/data/"
    # The job's TrainingInputMode is Pipe; `plain` and `mlio` inherit it, `pmd` says so itself.
    channels = [pipe_channel("plain", uri, mode=None), pipe_channel("mlio", uri, mode=None),
                pipe_channel("pmd", uri)]
    plan = {"plain": {"style": "plain", "epochs": 3}, "mlio": {"style": "mlio", "epochs": 3},
            "pmd": {"style": "pmd", "epochs": 3}}
    job, seen = run_recording(sm, reader_job(s3, name, channels, plan, job_mode="Pipe"))
    completed(job, seen)
    result = result_of(s3, name)
    assert result["errors"] == []
    stream = b"".join(objects[k] for k in sorted(objects))
    for style in ("plain", "mlio", "pmd"):
        assert [(e["bytes"], e["sha256"]) for e in result["channels"][style]] == [(len(stream), sha(stream))] * 3
    config = json.loads(model_files(s3, name).get("result.json", b"{}"))  # the reader checked the mode (pmd)
    assert config["errors"] == []


def test_readers_that_close_early_never_open_or_stop_reading_do_not_hold_the_job_up(
        sm: Any, s3: Any, unique_name: Callable[[str], str], docker_engine: docker.DockerClient,
        runner_server: SmlocalServer) -> None:
    name = unique_name("pipe-hostile")
    big = {f"big-{i}": os.urandom(1_500_000) for i in range(2)}  # 3 MB: the writer is waiting for room
    put_objects(s3, f"{name}/data", big)
    uri = f"s3://{INPUT_BUCKET}/{name}/data/"
    channels = [pipe_channel("early", uri), pipe_channel("never", uri), pipe_channel("held", uri)]
    plan = {"early": {"epochs": 2, "close_after": 100}, "never": {"skip": True}, "held": {"hold": True}}
    job, seen = run_recording(sm, reader_job(s3, name, channels, plan), timeout=60)
    completed(job, seen)
    early = result_of(s3, name)["channels"]["early"]
    stream = b"".join(big[k] for k in sorted(big))
    assert early[0]["bytes"] == 100  # closed early: the writer took EPIPE and moved on to the next epoch
    assert (early[1]["bytes"], early[1]["sha256"]) == (len(stream), sha(stream))
    assert wait_until(lambda: leftovers(docker_engine, runner_server, name) == [], 30, "cleanup")
    # And the next job runs normally.
    after = unique_name("pipe-after-hostile")
    completed(*run_recording(sm, sh_job(after, "echo fine > /opt/ml/model/ok")))
    assert model_files(s3, after) == {"ok": b"fine\n"}


def test_a_stop_ends_a_writer_waiting_on_a_reader_that_stopped_reading(
        sm: Any, s3: Any, unique_name: Callable[[str], str], runner_server: SmlocalServer,
        docker_engine: docker.DockerClient) -> None:
    name = unique_name("pipe-stop")
    put_objects(s3, f"{name}/data", {"big": os.urandom(3_000_000)})
    script = ("import signal,sys;signal.signal(15,lambda*a:sys.exit(0));"
              "f=open('/opt/ml/input/data/big_0','rb');print('opened',flush=True);signal.pause()")
    request = job_request(name, PYTHON_BASE_IMAGE, AlgorithmSpecification={
        "TrainingImage": PYTHON_BASE_IMAGE, "TrainingInputMode": "Pipe",
        "ContainerEntrypoint": ["python3", "-c", script]},
        InputDataConfig=[pipe_channel("big", f"s3://{INPUT_BUCKET}/{name}/data/")])
    sm.create_training_job(**request)
    wait_until(lambda: "opened" in log_messages(runner_server, name), 60, "the reader to open its FIFO")
    sm.stop_training_job(TrainingJobName=name)
    job, seen = wait_recording(sm, name, FINAL, timeout=60)
    ended(job, seen, "Stopped")
    assert job["SecondaryStatus"] == "Stopped" and seen[0] in ("Stopping/Stopping", "Stopped/Stopped")
    assert [t["Status"] for t in job["SecondaryStatusTransitions"]] == [
        "Starting", "Downloading", "Training", "Stopping", "Stopped"]
    assert wait_until(lambda: leftovers(docker_engine, runner_server, name) == [], 30, "cleanup")


def test_an_object_gone_while_streaming_fails_the_job_with_sagemakers_reason(
        sm: Any, s3: Any, unique_name: Callable[[str], str], runner_server: SmlocalServer,
        docker_engine: docker.DockerClient) -> None:
    name = unique_name("pipe-gone")
    # Ten objects: the writer fetches a few ahead before the reader comes, never the last one.
    put_objects(s3, f"{name}/data", {f"o{i}": b"object %d" % i for i in range(10)})
    plan = {"train": {"epochs": 1, "pause_before": 0}}
    request = reader_job(s3, name, [pipe_channel("train", f"s3://{INPUT_BUCKET}/{name}/data/")], plan)
    sm.create_training_job(**request)
    wait_until(lambda: "paused train" in log_messages(runner_server, name), 60, "the reader to wait")
    s3.delete_object(Bucket=INPUT_BUCKET, Key=f"{name}/data/o9")  # listed, then gone before it is read
    [container] = docker_engine.containers.list(filters={"label": f"smlocal.job-name={name}"})
    container.exec_run(["touch", "/tmp/go"])
    job, seen = wait_recording(sm, name, FINAL, timeout=60)
    ended(job, seen, "Failed")
    assert job["FailureReason"].startswith(
        f"ClientError: Data download failed: s3://{INPUT_BUCKET}/{name}/data/o9: NoSuchKey")
    assert wait_until(lambda: leftovers(docker_engine, runner_server, name) == [], 30, "cleanup")


# ---- augmented manifests ---------------------------------------------------------------------------


def test_augmented_manifest_streams_the_named_attributes_in_order(
        sm: Any, s3: Any, unique_name: Callable[[str], str]) -> None:
    name = unique_name("pipe-manifest")
    images = {f"img-{i}.jpg": os.urandom(50 + 13 * i) for i in range(3)}
    put_objects(s3, f"{name}/images", images)
    lines = [{"source-ref": f"s3://{INPUT_BUCKET}/{name}/images/{key}", "label": i % 2,
              "meta": {"who": "annotator", "n": i}, "ignored": "x"} for i, key in enumerate(sorted(images))]
    body = "\n".join(json.dumps(line) for line in lines) + "\n\n"  # a blank line is skipped
    s3.put_object(Bucket=INPUT_BUCKET, Key=f"{name}/train.manifest", Body=body.encode())
    uri = f"s3://{INPUT_BUCKET}/{name}/train.manifest"
    attributes = ["source-ref", "label", "meta"]
    channels = [
        pipe_channel("records", uri, data_type="AugmentedManifestFile", AttributeNames=attributes,
                     RecordWrapperType="RecordIO"),
        pipe_channel("raw", uri, data_type="AugmentedManifestFile", AttributeNames=["label", "source-ref"]),
    ]
    plan = {"records": {"epochs": 2, "records": True}, "raw": {"epochs": 1}}
    job, seen = run_recording(sm, reader_job(s3, name, channels, plan))
    completed(job, seen)
    got = result_of(s3, name)["channels"]
    expected = []
    for line in lines:
        expected += [sha(images[line["source-ref"].rsplit("/", 1)[1]]), sha(str(line["label"]).encode()),
                     sha(json.dumps(line["meta"]).encode())]
    assert [e["records"] for e in got["records"]] == [expected] * 2
    # Without RecordIO the attributes of a line arrive back to back, undelimited.
    raw = b"".join(str(line["label"]).encode() + images[line["source-ref"].rsplit("/", 1)[1]] for line in lines)
    assert got["raw"][0]["sha256"] == sha(raw)


def test_an_augmented_manifest_line_without_an_attribute_fails_at_download(
        sm: Any, s3: Any, unique_name: Callable[[str], str]) -> None:
    name = unique_name("pipe-bad-manifest")
    s3.put_object(Bucket=INPUT_BUCKET, Key=f"{name}/m.jsonl", Body=b'{"label": 1}\n{"other": 2}\n')
    uri = f"s3://{INPUT_BUCKET}/{name}/m.jsonl"
    channels = [pipe_channel("train", uri, data_type="AugmentedManifestFile", AttributeNames=["label"])]
    job, seen = run_recording(sm, reader_job(s3, name, channels, {"train": {}}))
    ended(job, seen, "Failed")
    assert job["FailureReason"] == (f'ClientError: Data download failed: augmented manifest "{uri}", line 2 has no '
                                    "attribute 'label' (AttributeNames).")
    assert "InProgress/Training" not in seen


# ---- a restart, and memory ---------------------------------------------------------------------------


def test_a_restarted_server_goes_on_with_the_next_epoch(
        smlocal_factory: Callable[..., SmlocalServer], unique_name: Callable[[str], str],
        docker_engine: docker.DockerClient) -> None:
    server = smlocal_factory("--stop-grace-seconds", "1")
    try:
        sm, s3 = server.client(), s3_client(server)
        name = unique_name("pipe-restart")
        objects = {f"o{i}": os.urandom(400_000) for i in range(3)}
        put_objects(s3, f"{name}/data", objects)
        plan = {"train": {"epochs": 3, "pause_before": 1}}
        sm.create_training_job(**reader_job(s3, name, [pipe_channel("train", f"s3://{INPUT_BUCKET}/{name}/data/")],
                                            plan))
        wait_until(lambda: "paused train" in log_messages(server, name), 60, "epoch 0 to be read")
        server.stop(kill=True)  # the writer goes with the process; the container keeps running
        server.start()
        [container] = docker_engine.containers.list(filters={"label": f"smlocal.job-name={name}"})
        container.exec_run(["touch", "/tmp/go"])
        job, seen = wait_recording(server.client(), name, FINAL, timeout=60)
        completed(job, seen)
        stream = b"".join(objects[k] for k in sorted(objects))
        epochs = result_of(s3, name)["channels"]["train"]
        assert [(e["bytes"], e["sha256"]) for e in epochs] == [(len(stream), sha(stream))] * 3
        assert "resumes at epoch 1" in server.log()
    finally:
        settle(server, docker_engine)


def _peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def test_memory_stays_bounded_whatever_the_size_of_the_data(
        smlocal_factory: Callable[..., SmlocalServer], unique_name: Callable[[str], str],
        docker_engine: docker.DockerClient) -> None:
    server = smlocal_factory("--stop-grace-seconds", "1")
    try:
        sm, s3 = server.client(), s3_client(server)
        warm = unique_name("pipe-warm")
        put_objects(s3, f"{warm}/data", {"small": b"warm"})
        completed(*run_recording(sm, reader_job(s3, warm, [pipe_channel("train",
                                                                         f"s3://{INPUT_BUCKET}/{warm}/data/")],
                                                {"train": {}})))
        assert server.process is not None
        before = _peak_rss_kib(server.process.pid)

        name = unique_name("pipe-memory")
        size = 128 * 2**20
        put_objects(s3, f"{name}/data", {"large": os.urandom(2**20) * 128})
        # 160 MiB of zeros in 160 KiB of Gzip, as one RecordIO record: decompressed and split on the way.
        put_objects(s3, f"{name}/bomb", {"zeros.gz": gzip.compress(b"\0" * (160 * 2**20))})
        channels = [pipe_channel("large", f"s3://{INPUT_BUCKET}/{name}/data/"),
                    pipe_channel("bomb", f"s3://{INPUT_BUCKET}/{name}/bomb/", CompressionType="Gzip",
                                 RecordWrapperType="RecordIO")]
        completed(*run_recording(sm, reader_job(s3, name, channels, {"large": {}, "bomb": {"records": True}}),
                                 timeout=240))
        got = result_of(s3, name)["channels"]
        assert got["large"][0]["bytes"] == size
        assert got["bomb"][0]["records"] == [sha(b"\0" * (160 * 2**20))]
        grown_mib = (_peak_rss_kib(server.process.pid) - before) / 1024
        print(f"peak memory grew by {grown_mib:.1f} MiB")
        assert grown_mib < 64, f"the server's peak memory grew by {grown_mib:.0f} MiB for 288 MiB streamed"
    finally:
        settle(server, docker_engine)


# ---- the embedded stores ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["files", "memory"])
def test_pipe_and_fastfile_read_the_embedded_stores(tmp_path: Path, kind: str, unique_name: Callable[[str], str],
                                                      docker_engine: docker.DockerClient) -> None:
    """What `make run` starts (`--s3-store files`: rclone serve s3 with SigV4 keys; `memory`: moto) serves the
    runner's streams and mounts as it serves downloads."""
    server = SmlocalServer(tmp_path / "data", None, ["--s3-store", kind, "--stop-grace-seconds", "1"]).start()
    try:
        sm, s3 = server.client(), s3_client(server)
        name = unique_name(f"pipe-store-{kind}")
        objects = {f"part-{i}": os.urandom(300_000 + i) for i in range(3)}
        put_objects(s3, f"{name}/data", objects)
        uri = f"s3://{INPUT_BUCKET}/{name}/data/"
        channels = [pipe_channel("stream", uri, RecordWrapperType="RecordIO"),
                    pipe_channel("mounted", uri, mode="FastFile")]
        plan = {"stream": {"epochs": 2, "records": True}, "mounted": {"style": "files"}}
        job, seen = run_recording(sm, reader_job(s3, name, channels, plan))
        completed(job, seen)
        got = result_of(s3, name)
        assert got["errors"] == []
        keys = sorted(objects)
        assert [e["records"] for e in got["channels"]["stream"]] == [[sha(objects[k]) for k in keys]] * 2
        assert got["channels"]["mounted"][0]["sha256"] == sha(b"".join(objects[k] for k in keys))
        assert job["SecondaryStatusTransitions"][1]["StatusMessage"] == "Downloading input data"  # mounted, not copied
    finally:
        settle(server, docker_engine)
        server.stop()
