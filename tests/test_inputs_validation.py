"""Which input mode takes which channel settings: refused at CreateTrainingJob, as SageMaker refuses them.

Through boto3 against the API-only server; a refused request stores nothing.
"""

from __future__ import annotations

import zlib
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.support.jobs import job_request

URI = "s3://smlocal-test-input/data/"


def channel(name: str = "train", data_type: str = "S3Prefix", **extra: Any) -> dict[str, Any]:
    source = {"S3DataType": data_type, "S3Uri": URI, "S3DataDistributionType": "FullyReplicated"}
    if "AttributeNames" in extra:
        source["AttributeNames"] = extra.pop("AttributeNames")
    return {"ChannelName": name, "DataSource": {"S3DataSource": source}, **extra}


def request(name: str, job_mode: str, *channels: dict[str, Any]) -> dict[str, Any]:
    return job_request(name, AlgorithmSpecification={"TrainingImage": "smlocal-test/busybox:1",
                                                     "TrainingInputMode": job_mode},
                       InputDataConfig=list(channels))


@pytest.mark.parametrize(("job_mode", "settings", "message"), [
    # SageMaker's own words (aws/sagemaker-python-sdk#716); the job's mode is File, the channel's unset.
    ("File", {"CompressionType": "Gzip"},
     "Invalid compression type for channel train: File mode only supports NONE, got Gzip instead"),
    ("Pipe", {"InputMode": "File", "CompressionType": "Gzip"},
     "Invalid compression type for channel train: File mode only supports NONE, got Gzip instead"),
    ("File", {"InputMode": "FastFile", "CompressionType": "Gzip"},
     "Invalid compression type for channel train: FastFile mode only supports NONE, got Gzip instead"),
    ("File", {"RecordWrapperType": "RecordIO"},
     "Invalid record wrapper type for channel train: File mode only supports NONE, got RecordIO instead"),
    ("FastFile", {"RecordWrapperType": "RecordIO"},
     "Invalid record wrapper type for channel train: FastFile mode only supports NONE, got RecordIO instead"),
    ("File", {"data_type": "AugmentedManifestFile", "AttributeNames": ["source-ref"]},
     "Invalid S3 data type for channel train: AugmentedManifestFile can only be used in Pipe input mode, "
     "got File instead"),
    ("Pipe", {"InputMode": "FastFile", "data_type": "AugmentedManifestFile", "AttributeNames": ["source-ref"]},
     "Invalid S3 data type for channel train: AugmentedManifestFile can only be used in Pipe input mode, "
     "got FastFile instead"),
    ("Pipe", {"data_type": "AugmentedManifestFile"},
     "Invalid S3 data source for channel train: AttributeNames must name the attributes to stream from an "
     "AugmentedManifestFile"),
    ("FastFile", {"data_type": "ManifestFile"},
     "Invalid S3 data type for channel train: FastFile mode only supports S3Prefix, got ManifestFile instead"),
    ("File", {"InputMode": "FastFile", "data_type": "ManifestFile"},
     "Invalid S3 data type for channel train: FastFile mode only supports S3Prefix, got ManifestFile instead"),
], ids=["gzip-file", "gzip-file-channel-overrides-pipe", "gzip-fastfile", "recordio-file", "recordio-fastfile",
        "augmented-file", "augmented-fastfile", "augmented-without-attributes", "manifest-fastfile",
        "manifest-fastfile-channel"])
def test_mode_and_type_combinations_sagemaker_refuses(sm: Any, unique_name: Any, job_mode: str,
                                                      settings: dict[str, Any], message: str) -> None:
    name = unique_name(f"refused-{zlib.crc32(repr((job_mode, settings)).encode())}")
    settings = dict(settings)
    data_type = settings.pop("data_type", "S3Prefix")
    with pytest.raises(ClientError) as info:
        sm.create_training_job(**request(name, job_mode, channel(data_type=data_type, **settings)))
    error = info.value.response["Error"]
    assert (error["Code"], error["Message"]) == ("ValidationException", message)
    assert sm.list_training_jobs(NameContains=name)["TrainingJobSummaries"] == []  # nothing stored


@pytest.mark.parametrize(("job_mode", "settings"), [
    ("Pipe", {"CompressionType": "Gzip", "RecordWrapperType": "RecordIO", "ShuffleConfig": {"Seed": 3}}),
    ("File", {"InputMode": "Pipe", "CompressionType": "Gzip"}),  # the channel's mode overrides the job's
    ("Pipe", {"data_type": "AugmentedManifestFile", "AttributeNames": ["source-ref", "label"],
              "RecordWrapperType": "RecordIO"}),
    ("FastFile", {}),
    ("File", {"InputMode": "FastFile", "CompressionType": "None", "RecordWrapperType": "None"}),
    ("File", {"data_type": "ManifestFile"}),
    ("Pipe", {"data_type": "ManifestFile"}),
], ids=["pipe-everything", "pipe-channel-in-file-job", "pipe-augmented", "fastfile-prefix", "fastfile-none",
        "file-manifest", "pipe-manifest"])
def test_combinations_sagemaker_accepts(sm: Any, unique_name: Any, job_mode: str, settings: dict[str, Any]) -> None:
    name = unique_name(f"accepted-{zlib.crc32(repr((job_mode, settings)).encode())}")
    settings = dict(settings)
    data_type = settings.pop("data_type", "S3Prefix")
    sm.create_training_job(**request(name, job_mode, channel(data_type=data_type, **settings)))
    described = sm.describe_training_job(TrainingJobName=name)
    assert described["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3DataType"] == data_type
