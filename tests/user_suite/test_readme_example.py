def test_training_writes_a_model(smlocal, smlocal_s3, smlocal_sagemaker):
    smlocal.require_docker()  # skips when no Docker engine answers
    smlocal_s3.create_bucket(Bucket="data")
    smlocal_s3.put_object(Bucket="data", Key="train/rows.csv", Body=b"0.1,0\n0.9,1\n0.2,0\n0.8,1\n")
    smlocal_sagemaker.create_training_job(
        TrainingJobName="demo", RoleArn="arn:aws:iam::123456789012:role/SageMakerRole",
        AlgorithmSpecification={"TrainingImage": "smlocal-example/sklearn:1", "TrainingInputMode": "File"},
        InputDataConfig=[{"ChannelName": "train", "DataSource": {"S3DataSource": {
            "S3DataType": "S3Prefix", "S3Uri": "s3://data/train/"}}}],
        OutputDataConfig={"S3OutputPath": "s3://data/models"},
        ResourceConfig={"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 1},
        StoppingCondition={"MaxRuntimeInSeconds": 300})
    assert smlocal.wait_for_job("demo")["TrainingJobStatus"] == "Completed"
    smlocal_s3.head_object(Bucket="data", Key="models/demo/output/model.tar.gz")
