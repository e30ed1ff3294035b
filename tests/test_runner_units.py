"""The runner's pure pieces: path mapping, invocation, config files, endpoints, log parsing, reasons."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.backend import LogChunk, container_command
from runner.docker_backend import parse_docker_time, split_docker_timestamp
from runner.environment import container_environment
from runner.failure import algorithm_error, failure_reason
from runner.host_address import container_s3_endpoint
from runner.inputs.file_staging import relative_key, safe_relative_path
from runner.layout import HostLayout, input_data_config, prepare, resource_config
from runner.log_follower import MAX_EVENT_BYTES, LineAssembler
from runner.metrics import MetricCollector
from runner.s3 import parse_s3_uri
from smlocal.core.jobspec import JobSpec, MetricDefinition
from smlocal.core.logstore import JobLogKey, LogStreamWriter, list_streams, read_events, stream_path
from smlocal.core.settings import Settings
from smlocal.core.store import JobRecord

# ---- S3 keys -> channel paths ----------------------------------------------------------------


@pytest.mark.parametrize("key", ["../x", "a/../../x", "..", "a/..", "/", "", "./.", "a\x00b", "\x00"])
def test_keys_that_would_escape_the_channel_are_rejected(key: str) -> None:
    with pytest.raises(ValueError):
        safe_relative_path(key)


@pytest.mark.parametrize(("key", "expected"), [
    ("/etc/passwd", "etc/passwd"),  # a leading slash is made relative, never absolute
    ("a//b/./c.csv", "a/b/c.csv"),
    ("a/b..c", "a/b..c"),  # dots inside a name are harmless
])
def test_keys_are_sanitized_below_the_channel(key: str, expected: str) -> None:
    assert safe_relative_path(key).as_posix() == expected


@pytest.mark.parametrize(("prefix", "key", "expected"), [
    ("data/train/", "data/train/a/b.csv", "a/b.csv"),
    ("data/train", "data/train/a.csv", "/a.csv"),  # leading slash dropped by safe_relative_path
    ("data/train", "data/train.csv", "train.csv"),
    ("data/train", "data/training/x.csv", "training/x.csv"),
    ("data/file.csv", "data/file.csv", "file.csv"),
    ("", "top.csv", "top.csv"),
])
def test_prefix_listing_maps_keys_like_sagemaker(prefix: str, key: str, expected: str) -> None:
    assert relative_key(prefix, key) == expected


def test_s3_uris_parse_in_all_model_forms() -> None:
    assert parse_s3_uri("s3://b/p/q") == parse_s3_uri("https://b.s3.us-west-2.amazonaws.com/p/q")
    assert parse_s3_uri("https://s3.amazonaws.com/b/p/q").bucket == "b"
    assert str(parse_s3_uri("s3://b").child("job", "output")) == "s3://b/job/output"
    assert str(parse_s3_uri("s3://b/out/").child("job", "output")) == "s3://b/out/job/output"


# ---- invocation ------------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "entrypoint", "command"), [
    ({}, None, ["train"]),
    ({"ContainerArguments": ["a", "b"]}, None, ["a", "b"]),
    ({"ContainerEntrypoint": ["python", "x.py"]}, ["python", "x.py"], None),
    ({"ContainerEntrypoint": ["python"], "ContainerArguments": ["x.py", "1"]}, ["python"], ["x.py", "1"]),
])
def test_invocation_follows_sagemaker(spec: dict, entrypoint: list | None, command: list | None) -> None:
    assert container_command(spec.get("ContainerEntrypoint"), spec.get("ContainerArguments")) == (entrypoint, command)


# ---- config files ----------------------------------------------------------------------------

REQUEST = {
    "AlgorithmSpecification": {"TrainingImage": "x", "TrainingInputMode": "File"},
    "HyperParameters": {"epochs": "3", "lr": "0.1"},
    "InputDataConfig": [
        {"ChannelName": "train", "ContentType": "text/csv",
         "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://b/train/",
                                         "S3DataDistributionType": "ShardedByS3Key"}}},
        {"ChannelName": "eval", "InputMode": "Pipe", "RecordWrapperType": "RecordIO",
         "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://b/eval/"}}},
    ],
    "ResourceConfig": {"InstanceType": "ml.c5.xlarge", "InstanceCount": 3, "VolumeSizeInGB": 5},
    "CheckpointConfig": {"S3Uri": "s3://b/ckpt"},
}


def test_inputdataconfig_has_per_channel_mode_and_defaults() -> None:
    assert input_data_config(JobSpec.from_request(REQUEST)) == {
        "train": {"ContentType": "text/csv", "TrainingInputMode": "File",
                  "S3DistributionType": "ShardedByS3Key", "RecordWrapperType": "None"},
        "eval": {"TrainingInputMode": "Pipe", "S3DistributionType": "FullyReplicated",
                 "RecordWrapperType": "RecordIO"},
    }


def test_resourceconfig_lists_every_host_of_the_cluster() -> None:
    assert resource_config(JobSpec.from_request(REQUEST), "algo-1") == {
        "current_host": "algo-1", "current_instance_type": "ml.c5.xlarge",
        "current_group_name": "homogeneousCluster", "hosts": ["algo-1", "algo-2", "algo-3"],
        "instance_groups": [{"instance_group_name": "homogeneousCluster", "instance_type": "ml.c5.xlarge",
                             "hosts": ["algo-1", "algo-2", "algo-3"]}],
        "network_interface_name": "eth0",
    }


def test_resourceconfig_of_heterogeneous_cluster_names_the_hosts_group() -> None:
    request = {"ResourceConfig": {"InstanceGroups": [
        {"InstanceGroupName": "cpu", "InstanceType": "ml.c5.xlarge", "InstanceCount": 1},
        {"InstanceGroupName": "gpu", "InstanceType": "ml.p3.2xlarge", "InstanceCount": 2},
    ]}}
    config = resource_config(JobSpec.from_request(request), "algo-2")
    assert config["current_group_name"] == "gpu"
    assert config["current_instance_type"] == "ml.p3.2xlarge"
    assert config["hosts"] == ["algo-1", "algo-2", "algo-3"]
    assert [g["hosts"] for g in config["instance_groups"]] == [["algo-1"], ["algo-2", "algo-3"]]


def test_prepare_writes_the_tree_opening_only_what_any_uid_needs(tmp_path: Path) -> None:
    layout = HostLayout(tmp_path / "jobs" / "j")
    prepare(layout, JobSpec.from_request(REQUEST))
    config = layout.config_dir
    assert json.loads((config / "hyperparameters.json").read_text()) == {"epochs": "3", "lr": "0.1"}
    assert json.loads((config / "checkpointconfig.json").read_text()) == {
        "LocalPath": "/opt/ml/checkpoints", "S3Uri": "s3://b/ckpt"}

    def mode(path: Path) -> int:
        return path.stat().st_mode & 0o777

    # The algorithm (any uid) writes these...
    for d in (layout.model_dir, layout.output_dir, layout.output_data_dir, layout.checkpoints_dir):
        assert mode(d) == 0o777, d
    # ...reads these...
    for d in (layout.opt_ml, layout.config_dir, layout.channel_dir("train"), layout.channel_dir("eval")):
        assert mode(d) == 0o755, d
    assert mode(config / "resourceconfig.json") == 0o644
    # ...and nobody else enters the folders above the mounted tree.
    for d in (layout.job_root, layout.job_root / "algo-1", layout.opt_ml.parent, layout.staging_dir):
        assert mode(d) == 0o700, d


def test_prepare_without_hyperparameters_or_checkpoints(tmp_path: Path) -> None:
    layout = HostLayout(tmp_path / "j")
    prepare(layout, JobSpec.from_request({"ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1}}))
    assert json.loads((layout.config_dir / "hyperparameters.json").read_text()) == {}
    assert json.loads((layout.config_dir / "inputdataconfig.json").read_text()) == {}
    assert not (layout.config_dir / "checkpointconfig.json").exists()


# ---- environment -----------------------------------------------------------------------------


@pytest.mark.parametrize(("endpoint", "expected"), [
    ("http://127.0.0.1:9000", "http://host.docker.internal:9000"),
    ("http://localhost:9000", "http://host.docker.internal:9000"),
    ("http://[::1]:9000", "http://host.docker.internal:9000"),
    ("https://127.0.0.5", "https://host.docker.internal"),
    ("http://172.17.0.1:9000", "http://172.17.0.1:9000"),
    ("http://minio.internal:9000", "http://minio.internal:9000"),
])
def test_loopback_s3_endpoint_is_rewritten_for_containers(endpoint: str, expected: str) -> None:
    assert container_s3_endpoint(Settings(s3_endpoint=endpoint)) == expected


def test_explicit_container_endpoint_wins() -> None:
    settings = Settings(s3_endpoint="http://127.0.0.1:9000", container_s3_endpoint="http://10.0.0.2:9000")
    assert container_s3_endpoint(settings) == "http://10.0.0.2:9000"


def _job(request: dict) -> JobRecord:
    return JobRecord(name="j", arn="arn:aws:sagemaker:eu-west-1:123456789012:training-job/j",
                     account_id="123456789012", region="eu-west-1", request=request, status="InProgress",
                     secondary_status="Starting", failure_reason=None, creation_time=0.0,
                     last_modified_time=0.0, training_start_time=None, training_end_time=None,
                     runner_state="preparing")


def test_environment_carries_identity_region_s3_and_the_users_variables() -> None:
    settings = Settings(s3_endpoint="http://localhost:9000", s3_access_key="ak", s3_secret_key="sk")
    job = _job({"Environment": {"MY_VAR": "1", "TRAINING_JOB_NAME": "spoofed"}})
    env = container_environment(JobSpec.from_job(job), settings)
    assert env == {
        "TRAINING_JOB_NAME": "j",
        "TRAINING_JOB_ARN": "arn:aws:sagemaker:eu-west-1:123456789012:training-job/j",
        "AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "eu-west-1", "MY_VAR": "1",
        "AWS_ENDPOINT_URL_S3": "http://host.docker.internal:9000",
        "S3_ENDPOINT_URL": "http://host.docker.internal:9000",
        "AWS_ACCESS_KEY_ID": "ak", "AWS_SECRET_ACCESS_KEY": "sk",
    }


# ---- logs ------------------------------------------------------------------------------------


def test_docker_timestamps_become_epoch_milliseconds() -> None:
    ts, payload = split_docker_timestamp(b"2024-03-01T12:00:00.123456789Z hello\n")
    assert ts == 1709294400123
    assert payload == b"hello\n"


def test_docker_container_times_parse_to_epoch_seconds() -> None:
    assert parse_docker_time("2024-03-01T12:00:00.123456789Z") == pytest.approx(1709294400.123456)
    assert parse_docker_time("0001-01-01T00:00:00Z") is None


def test_partial_chunks_of_a_long_line_are_joined() -> None:
    asm = LineAssembler()
    assert asm.feed(LogChunk(1709294400100, b"a" * 10), 0) == []
    assert asm.feed(LogChunk(1709294400200, b"b" * 10 + b"\n"), 0) == [(1709294400100, "a" * 10 + "b" * 10)]
    assert asm.feed(LogChunk(1709294401000, b"\xff bad utf8\r\n"), 0) == [(1709294401000, "\ufffd bad utf8")]
    assert asm.feed(LogChunk(None, b"two\nlines\n"), 5) == [(5, "two"), (5, "lines")]
    assert asm.feed(LogChunk(1709294402000, b"no newline"), 0) == []
    assert asm.flush() == [(1709294402000, "no newline")]
    assert asm.flush() == []


def test_a_huge_line_is_cut_at_256_kib_and_memory_stays_bounded() -> None:
    asm = LineAssembler()
    frame = LogChunk(1, b"x" * 16 * 1024)  # Docker's partial frames of a line with no end in sight
    most = 0
    for _ in range(640):  # 10 MiB
        assert asm.feed(frame, 0) == []
        most = max(most, asm.pending_bytes)
    assert most == MAX_EVENT_BYTES
    [(ts, line)] = asm.feed(LogChunk(2, b"tail\nnext\n"), 0)[:1]
    assert ts == 1 and line == "x" * MAX_EVENT_BYTES
    assert MAX_EVENT_BYTES + 26 == 256 * 1024  # CloudWatch's event limit, overhead included
    # A cut through a multi-byte character never makes the event longer than the limit.
    asm = LineAssembler(limit=5)
    [(_, cut)] = asm.feed(LogChunk(1, "abcd\u00e9\u00e9\n".encode()), 0)
    assert cut == "abcd" and len(cut.encode()) <= 5


def test_stream_files_round_trip(tmp_path: Path) -> None:
    key = JobLogKey.of("123456789012", "us-east-1", "job-a", 1700000000.5)
    writer = LogStreamWriter(stream_path(tmp_path, key, "algo-1", 1700000000.9))
    writer.write(1700000000123, 'line "one"')
    writer.write(1700000000456, "ünïcode")
    writer.close()
    (key.folder(tmp_path) / "not-a-stream").write_text("x")
    [stream] = list_streams(tmp_path, key)
    assert stream.path == tmp_path / "logs" / "123456789012" / "us-east-1" / "job-a.1700000000500" / "algo-1-1700000000"
    assert stream.log_stream_name == "job-a/algo-1-1700000000"
    assert stream.creation_time_ms == 1700000000000
    events = list(read_events(stream.path))
    assert [(e["timestamp"], e["message"]) for e in events] == [
        (1700000000123, 'line "one"'), (1700000000456, "ünïcode")]
    assert all(e["ingestionTime"] >= 1700000000456 for e in events)
    with open(stream.path, "a") as f:
        f.write('{"timestamp": 1, "mess')  # a writer mid-line: not an event yet
    assert len(list(read_events(stream.path))) == 2
    # Another incarnation of the same name has a folder of its own.
    assert list_streams(tmp_path, JobLogKey.of("123456789012", "us-east-1", "job-a", 1700000001.0)) == []


def test_final_metrics_keep_the_last_value_of_each_definition() -> None:
    metrics = MetricCollector([MetricDefinition("loss", r"loss=([0-9.]+)"),
                               MetricDefinition("acc", r"acc: (\S+)"),
                               MetricDefinition("broken", "(")])
    for i, line in enumerate(["loss=0.9", "acc: 0.5", "loss=0.3 acc: nan-ish?", "acc: oops"]):
        metrics.feed(1000 * (i + 1), line)
    assert metrics.final() == [{"MetricName": "loss", "Value": 0.3, "Timestamp": 3.0},
                               {"MetricName": "acc", "Value": 0.5, "Timestamp": 2.0}]


# ---- failure reasons -------------------------------------------------------------------------


def test_failure_file_wins_and_is_cut_at_1024(tmp_path: Path) -> None:
    layout = HostLayout(tmp_path / "j")
    prepare(layout, JobSpec.from_request({}))
    layout.failure_file.write_text("E" * 3000)
    reason = failure_reason(layout, 1, ["ignored"])
    assert reason == "AlgorithmError: " + "E" * (1024 - len("AlgorithmError: "))


def test_failure_file_that_is_a_symlink_is_not_followed(tmp_path: Path) -> None:
    layout = HostLayout(tmp_path / "j")
    prepare(layout, JobSpec.from_request({}))
    secret = tmp_path / "host-secret"
    secret.write_text("do not leak")
    layout.failure_file.symlink_to(secret)
    assert "do not leak" not in failure_reason(layout, 2, [])


def test_algorithm_error_names_exit_code_and_log_tail_within_1024() -> None:
    reason = algorithm_error(137, [f"line {i} " + "x" * 200 for i in range(50)])
    assert reason.startswith("AlgorithmError:") and "exit code: 137" in reason
    assert "line 49" in reason and "line 0 " not in reason
    assert len(reason) <= 1024
