"""The code under test: a small training pipeline written against plain boto3, with no endpoint in it.

The smlocal fixture's AWS_ENDPOINT_URL_* variables are what send these calls to smlocal.
"""

from __future__ import annotations

import boto3

ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"


def upload_dataset(bucket: str, rows: list[tuple[float, int]]) -> str:
    s3 = boto3.client("s3")
    try:
        s3.create_bucket(Bucket=bucket)
    except (s3.exceptions.BucketAlreadyOwnedByYou, s3.exceptions.BucketAlreadyExists):
        pass  # (rclone, behind `--s3-store files`, answers the second)
    s3.put_object(Bucket=bucket, Key="data/train/rows.csv", Body="".join(f"{x},{y}\n" for x, y in rows).encode())
    return f"s3://{bucket}/data/train/"


def start_training(name: str, image: str, data_uri: str, output_uri: str,
                   entrypoint: list[str] | None = None) -> str:
    algorithm = {"TrainingImage": image, "TrainingInputMode": "File"}
    if entrypoint:
        algorithm["ContainerEntrypoint"] = entrypoint
    response = boto3.client("sagemaker").create_training_job(
        TrainingJobName=name, RoleArn=ROLE, AlgorithmSpecification=algorithm,
        InputDataConfig=[{"ChannelName": "train", "DataSource": {"S3DataSource": {
            "S3DataType": "S3Prefix", "S3Uri": data_uri}}}],
        OutputDataConfig={"S3OutputPath": output_uri},
        ResourceConfig={"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 1},
        StoppingCondition={"MaxRuntimeInSeconds": 900})
    return response["TrainingJobArn"]


def status(name: str) -> tuple[str, str]:
    job = boto3.client("sagemaker").describe_training_job(TrainingJobName=name)
    return job["TrainingJobStatus"], job["SecondaryStatus"]
