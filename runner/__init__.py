"""smlocal's job runner: runs training jobs in Docker under the SageMaker container contract."""
