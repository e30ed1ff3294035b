"""smlocal's own control service (InterruptTrainingJob, DescribeTrainingJobProgress), in a botocore model."""
