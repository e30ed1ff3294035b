"""The environment variables a training container gets."""

from __future__ import annotations

from runner.host_address import container_s3_endpoint
from smlocal.core.jobspec import JobSpec
from smlocal.core.settings import Settings


def container_environment(job: JobSpec, settings: Settings) -> dict[str, str]:
    """What the platform sets, then the request's Environment, then the job's identity.

    With EnableNetworkIsolation the container gets no store address and no keys: SageMaker makes no AWS
    credentials available to an isolated container (runner.networks cites the guide). The request's
    Environment is passed as given, isolated or not: SageMaker sets it in the container as asked, and
    what a user writes there is theirs to choose (the API's documentation of the field warns against
    secrets in it); with no route out of the job's network it reaches nothing anyway.
    """
    env: dict[str, str] = {"AWS_REGION": job.region, "AWS_DEFAULT_REGION": job.region}
    endpoint = None if job.network_isolation else container_s3_endpoint(settings)
    if endpoint:
        env.update({
            # boto3 >= 1.28 honours AWS_ENDPOINT_URL_S3; the training toolkit reads S3_ENDPOINT_URL.
            "AWS_ENDPOINT_URL_S3": endpoint,
            "S3_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": settings.s3_access_key,
            "AWS_SECRET_ACCESS_KEY": settings.s3_secret_key,
        })
        if settings.s3_store == "files":
            # rclone's S3 answers a ranged GET of an object stored with a checksum with the whole object's
            # CRC32, which boto3 >= 1.36 checks against the range and rejects: a download_file of more than
            # 8 MiB (ranged parts), as the training toolkit does for sourcedir.tar.gz, would fail.
            env["AWS_RESPONSE_CHECKSUM_VALIDATION"] = "when_required"
    # The user may point their code elsewhere, but the job's identity is the platform's to set.
    env.update(job.environment)
    env.update({"TRAINING_JOB_NAME": job.name, "TRAINING_JOB_ARN": job.arn})
    return env
