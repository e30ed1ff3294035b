"""smlocal's own control service (InterruptTrainingJob, DescribeTrainingJobProgress, ExecuteCommand,
StartSession), in a botocore model."""
