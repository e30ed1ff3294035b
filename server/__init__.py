"""smlocal's API server: the SageMaker training-job API over AWS JSON 1.1."""
