"""Every constraint family of the model, through boto3, with AWS's message style."""

from __future__ import annotations

import re

import pytest
from botocore.exceptions import ClientError

from tests.support.jobs import job_request


@pytest.fixture()
def raw_sm(api_server):  # noqa: ANN001, ANN201
    """boto3 without its client-side checks, to reach the server's own."""
    return api_server.client(parameter_validation=False)


def rejected(client, **request) -> tuple[str, str]:  # noqa: ANN001
    with pytest.raises(ClientError) as info:
        client.create_training_job(**request)
    error = info.value.response["Error"]
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    return error["Code"], error["Message"]


def test_name_pattern(sm, unique_name):
    code, message = rejected(sm, **job_request("bad_name"))
    assert code == "ValidationException"
    assert message == (
        "1 validation error detected: Value 'bad_name' at 'trainingJobName' failed to satisfy constraint: "
        "Member must satisfy regular expression pattern: [a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}"
    )


def test_pattern_matches_whole_string(sm):
    # The model's patterns carry no anchors; a valid prefix must not be enough.
    code, message = rejected(sm, **job_request("good-start-"))
    assert "at 'trainingJobName'" in message and "regular expression pattern" in message


def test_max_length_and_pattern_both_reported(sm):
    name = "a" * 64
    code, message = rejected(sm, **job_request(name))
    assert message.startswith("2 validation errors detected: ")
    assert (f"Value '{name}' at 'trainingJobName' failed to satisfy constraint: Member must have length "
            "less than or equal to 63") in message
    assert "; " in message


def test_min_value(raw_sm, unique_name):
    request = job_request(unique_name(), StoppingCondition={"MaxRuntimeInSeconds": 0})
    code, message = rejected(raw_sm, **request)
    assert message == (
        "1 validation error detected: Value '0' at 'stoppingCondition.maxRuntimeInSeconds' failed to "
        "satisfy constraint: Member must have value greater than or equal to 1"
    )


def test_max_value(sm, unique_name):
    request = job_request(unique_name(), RetryStrategy={"MaximumRetryAttempts": 31})
    code, message = rejected(sm, **request)
    assert "Value '31' at 'retryStrategy.maximumRetryAttempts' failed to satisfy constraint: Member must " \
           "have value less than or equal to 30" in message


def test_enum(sm, unique_name):
    request = job_request(unique_name())
    request["ResourceConfig"]["InstanceType"] = "ml.huge"
    code, message = rejected(sm, **request)
    assert code == "ValidationException"
    assert re.search(r"Value 'ml.huge' at 'resourceConfig.instanceType' failed to satisfy constraint: "
                     r"Member must satisfy enum value set: \[ml\.m4\.xlarge, .*ml\.m5\.large, .*\]", message)


def test_input_mode_enum(sm, unique_name):
    request = job_request(unique_name())
    request["AlgorithmSpecification"]["TrainingInputMode"] = "Stream"
    code, message = rejected(sm, **request)
    assert "at 'algorithmSpecification.trainingInputMode' failed to satisfy constraint: Member must satisfy " \
           "enum value set: [Pipe, File, FastFile]" in message


def test_role_arn_pattern(sm, unique_name):
    code, message = rejected(sm, **job_request(unique_name(), RoleArn="arn:aws:iam::123:role/too-short-acct"))
    assert "at 'roleArn' failed to satisfy constraint: Member must satisfy regular expression pattern" in message


def test_list_member_path_and_size(sm, unique_name):
    channels = [{"ChannelName": "bad name!", "DataSource": {"S3DataSource": {
        "S3DataType": "S3Prefix", "S3Uri": "s3://bucket/train"}}}]
    code, message = rejected(sm, **job_request(unique_name(), InputDataConfig=channels))
    assert "Value 'bad name!' at 'inputDataConfig.1.member.channelName' failed to satisfy constraint" in message

    many = [{"ChannelName": f"c{i}", "DataSource": {"S3DataSource": {
        "S3DataType": "S3Prefix", "S3Uri": f"s3://bucket/c{i}"}}} for i in range(21)]
    code, message = rejected(sm, **job_request(unique_name(), InputDataConfig=many))
    assert "at 'inputDataConfig' failed to satisfy constraint: Member must have length less than or equal " \
           "to 20" in message


def test_s3_uri_pattern(sm, unique_name):
    request = job_request(unique_name(), OutputDataConfig={"S3OutputPath": "ftp://bucket/out"})
    code, message = rejected(sm, **request)
    assert "Value 'ftp://bucket/out' at 'outputDataConfig.s3OutputPath' failed to satisfy constraint: Member " \
           "must satisfy regular expression pattern: (https|s3)://([^/]+)/?(.*)" in message


def test_map_key_pattern(sm, unique_name):
    request = job_request(unique_name(), Environment={"1BAD": "x", "GOOD": "y"})
    code, message = rejected(sm, **request)
    assert message == (
        "1 validation error detected: Value '{1BAD=x, GOOD=y}' at 'environment' failed to satisfy "
        "constraint: Map keys must satisfy constraint: [Member must have length less than or equal to 512, "
        "Member must satisfy regular expression pattern: [a-zA-Z_][a-zA-Z0-9_]*]"
    )


def test_map_value_length(sm, unique_name):
    request = job_request(unique_name(), HyperParameters={"lr": "1" * 2501})
    code, message = rejected(sm, **request)
    assert "at 'hyperParameters' failed to satisfy constraint: Map value must satisfy constraint: [Member must " \
           "have length less than or equal to 2500" in message


def test_unicode_letter_pattern(sm, unique_name):
    # Tag keys use \p{L}\p{Z}\p{N}: letters of any script pass, other symbols do not.
    ok = job_request(unique_name(), Tags=[{"Key": "équipe données 42", "Value": "ü"}])
    assert sm.create_training_job(**ok)["TrainingJobArn"]
    code, message = rejected(sm, **job_request(unique_name(), Tags=[{"Key": "bad#key", "Value": "v"}]))
    assert "Value 'bad#key' at 'tags.1.member.key' failed to satisfy constraint: Member must satisfy " \
           "regular expression pattern" in message


def test_several_errors_are_joined(raw_sm):
    request = job_request("x_y", RoleArn="nope")
    request["ResourceConfig"]["InstanceType"] = "ml.tiny"
    code, message = rejected(raw_sm, **request)
    assert message.startswith("4 validation errors detected: ")
    assert message.count("; Value ") == 3


def test_seed_required_members_are_required(raw_sm, unique_name):
    request = job_request(unique_name())
    del request["StoppingCondition"]
    code, message = rejected(raw_sm, **request)
    assert message == ("1 validation error detected: Value null at 'stoppingCondition' failed to satisfy "
                       "constraint: Member must not be null")


def test_exactly_one_of_image_and_algorithm(sm, unique_name):
    both = job_request(unique_name())
    both["AlgorithmSpecification"]["AlgorithmName"] = "xgboost"
    code, message = rejected(sm, **both)
    assert code == "ValidationException" and "TrainingImage or AlgorithmName" in message

    neither = job_request(unique_name())
    del neither["AlgorithmSpecification"]["TrainingImage"]
    code, message = rejected(sm, **neither)
    assert code == "ValidationException" and "TrainingImage or AlgorithmName" in message


def test_spot_needs_max_wait(sm, unique_name):
    request = job_request(unique_name(), EnableManagedSpotTraining=True)
    code, message = rejected(sm, **request)
    assert message == ("Invalid MaxWaitTimeInSeconds. It must be present and be greater than or equal to "
                       "MaxRuntimeInSeconds")


def test_max_wait_not_below_max_runtime(sm, unique_name):
    request = job_request(unique_name(), EnableManagedSpotTraining=True,
                          StoppingCondition={"MaxRuntimeInSeconds": 600, "MaxWaitTimeInSeconds": 300})
    code, message = rejected(sm, **request)
    assert code == "ValidationException" and "MaxWaitTimeInSeconds" in message

    ok = job_request(unique_name(), EnableManagedSpotTraining=True,
                     StoppingCondition={"MaxRuntimeInSeconds": 600, "MaxWaitTimeInSeconds": 600})
    assert sm.create_training_job(**ok)["TrainingJobArn"]


def test_max_runtime_limit(sm, unique_name):
    request = job_request(unique_name(), StoppingCondition={"MaxRuntimeInSeconds": 28 * 24 * 3600 + 1})
    code, message = rejected(sm, **request)
    assert code == "ValidationException" and "MaxRuntimeInSeconds" in message


def test_duplicate_channel_names(sm, unique_name):
    channel = {"ChannelName": "train", "DataSource": {"S3DataSource": {
        "S3DataType": "S3Prefix", "S3Uri": "s3://bucket/train"}}}
    code, message = rejected(sm, **job_request(unique_name(), InputDataConfig=[channel, channel]))
    assert code == "ValidationException" and "train" in message


def test_list_parameters_are_validated(sm):
    with pytest.raises(ClientError) as info:
        sm.list_training_jobs(SortBy="Size")
    assert "at 'sortBy' failed to satisfy constraint: Member must satisfy enum value set: " \
           "[Name, CreationTime, Status]" in info.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as info:
        sm.list_training_jobs(MaxResults=101)
    assert "Value '101' at 'maxResults' failed to satisfy constraint: Member must have value less than or " \
           "equal to 100" in info.value.response["Error"]["Message"]


def test_failed_create_stores_nothing(sm, unique_name):
    name = unique_name()
    request = job_request(name)
    request["ResourceConfig"]["InstanceType"] = "ml.nope"
    rejected(sm, **request)
    with pytest.raises(ClientError) as info:
        sm.describe_training_job(TrainingJobName=name)
    assert info.value.response["Error"]["Message"] == "Requested resource not found."


def test_local_folder_channel_is_accepted_only_for_channels(smlocal_factory, tmp_path_factory, unique_name):
    root = tmp_path_factory.mktemp("local-root")
    sm = smlocal_factory("--no-run-jobs", "--local-channel-root", str(root)).client()
    channel = [{"ChannelName": "train", "DataSource": {"S3DataSource": {
        "S3DataType": "S3Prefix", "S3Uri": f"file://{root}/data/train"}}}]
    name = unique_name()
    assert sm.create_training_job(**job_request(name, InputDataConfig=channel))["TrainingJobArn"]
    assert sm.describe_training_job(TrainingJobName=name)["InputDataConfig"] == channel
    # Outputs still go to S3: the extension is for input channels alone.
    code, message = rejected(sm, **job_request(unique_name(), OutputDataConfig={"S3OutputPath": f"file://{root}"}))
    assert "at 'outputDataConfig.s3OutputPath' failed to satisfy constraint" in message
    relative = [{"ChannelName": "train", "DataSource": {"S3DataSource": {
        "S3DataType": "S3Prefix", "S3Uri": "file://relative/path"}}}]
    code, message = rejected(sm, **job_request(unique_name(), InputDataConfig=relative))
    assert "at 'inputDataConfig.1.member.dataSource.s3DataSource.s3Uri' failed to satisfy constraint" in message


# ---- instances and hosts ----------------------------------------------------------------------------

GROUPS = [{"InstanceGroupName": "cpu", "InstanceType": "ml.m5.large", "InstanceCount": 1},
          {"InstanceGroupName": "gpu", "InstanceType": "ml.g5.xlarge", "InstanceCount": 1}]


def test_instance_count_zero_without_groups(raw_sm, unique_name):
    request = job_request(unique_name())
    request["ResourceConfig"]["InstanceCount"] = 0
    assert rejected(raw_sm, **request) == (
        "ValidationException",
        "1 validation error detected: Value '0' at 'resourceConfig.instanceCount' failed to satisfy constraint: "
        "Member must have value greater than or equal to 1")


def test_instance_group_of_zero_instances(raw_sm, unique_name):
    request = job_request(unique_name(), ResourceConfig={"VolumeSizeInGB": 10, "InstanceGroups": [
        GROUPS[0], {**GROUPS[1], "InstanceCount": 0}]})
    code, message = rejected(raw_sm, **request)
    assert (code, message) == (
        "ValidationException",
        "1 validation error detected: Value '0' at 'resourceConfig.instanceGroups.2.member.instanceCount' failed to "
        "satisfy constraint: Member must have value greater than or equal to 1")


@pytest.mark.parametrize("member", [{"InstanceType": "ml.m5.large"}, {"InstanceCount": 2},
                                    {"InstanceType": "ml.m5.large", "InstanceCount": 2}])
def test_instance_type_or_count_with_instance_groups(sm, unique_name, member):
    request = job_request(unique_name(), ResourceConfig={"VolumeSizeInGB": 10, "InstanceGroups": GROUPS, **member})
    assert rejected(sm, **request) == (
        "ValidationException", "InstanceType or InstanceCount cannot be specified with InstanceGroups")


def test_instance_groups_alone_are_accepted(sm, unique_name):
    name = unique_name()
    sm.create_training_job(**job_request(name, ResourceConfig={"VolumeSizeInGB": 10, "InstanceGroups": GROUPS}))
    assert sm.describe_training_job(TrainingJobName=name)["ResourceConfig"]["InstanceGroups"] == GROUPS


def test_thousands_of_hosts_exceed_the_default_limit(sm, unique_name):
    name = unique_name()
    request = job_request(name)
    request["ResourceConfig"]["InstanceCount"] = 5000
    code, message = rejected(sm, **request)
    assert code == "ResourceLimitExceeded"
    assert re.fullmatch(r"The account-level service limit 'Number of instances per training job' is \d+ Instances, "
                        r"with current utilization of 0 Instances and a request delta of 5000 Instances\. Please "
                        r"start smlocal with a higher --max-hosts-per-job to request an increase for this limit\.",
                        message), message
    with pytest.raises(ClientError):
        sm.describe_training_job(TrainingJobName=name)


def test_max_hosts_per_job_flag(smlocal_factory, unique_name):
    sm = smlocal_factory("--no-run-jobs", "--max-hosts-per-job", "3").client()
    at_limit = job_request(unique_name())
    at_limit["ResourceConfig"]["InstanceCount"] = 3
    assert sm.create_training_job(**at_limit)["TrainingJobArn"]
    over = job_request(unique_name())
    over["ResourceConfig"]["InstanceCount"] = 4
    code, message = rejected(sm, **over)
    assert code == "ResourceLimitExceeded"
    assert "'Number of instances per training job' is 3 Instances" in message
    assert "request delta of 4 Instances" in message and "--max-hosts-per-job" in message
    # Instance groups count all their hosts together.
    groups = [{**GROUPS[0], "InstanceCount": 2}, {**GROUPS[1], "InstanceCount": 2}]
    code, message = rejected(sm, **job_request(unique_name(), ResourceConfig={"VolumeSizeInGB": 5,
                                                                                "InstanceGroups": groups}))
    assert code == "ResourceLimitExceeded" and "request delta of 4 Instances" in message


# ---- channels ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("channel_name", [".", ".."])
def test_dot_channel_names(sm, unique_name, channel_name):
    name = unique_name()
    channels = [{"ChannelName": channel_name, "DataSource": {"S3DataSource": {
        "S3DataType": "S3Prefix", "S3Uri": "s3://bucket/train"}}}]
    assert rejected(sm, **job_request(name, InputDataConfig=channels)) == (
        "ValidationException", f"Channel name '{channel_name}' is not valid: a channel name cannot be '.' or '..'.")
    with pytest.raises(ClientError):
        sm.describe_training_job(TrainingJobName=name)


def test_a_hub_dataset_channel_is_refused_at_create(sm, unique_name):
    name = unique_name()
    channels = [{"ChannelName": "hub", "DataSource": {"DatasetSource": {
        "DatasetArn": "arn:aws:sagemaker:us-east-1:123456789012:hub-content/h/DataSet/d/1.0.0"}}}]
    assert rejected(sm, **job_request(name, InputDataConfig=channels)) == (
        "ValidationException", "Invalid data source for channel hub: smlocal cannot read a DatasetSource (a SageMaker "
        "hub dataset); use an S3DataSource or a FileSystemDataSource")
    with pytest.raises(ClientError):
        sm.describe_training_job(TrainingJobName=name)


def test_dotted_channel_names_that_are_names_are_fine(sm, unique_name):
    channels = [{"ChannelName": n, "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": f"s3://b/{n}"}}}
                for n in ("...", ".hidden", "train.v2")]
    assert sm.create_training_job(**job_request(unique_name(), InputDataConfig=channels))["TrainingJobArn"]


def test_inter_container_traffic_encryption_is_accepted(sm, unique_name):
    name = unique_name()
    sm.create_training_job(**job_request(name, EnableInterContainerTrafficEncryption=True))
    assert sm.describe_training_job(TrainingJobName=name)["EnableInterContainerTrafficEncryption"] is True


# ---- checkpoints ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("local_path", ["/opt/ml/model", "/opt/ml/output/", "/opt/ml//input", "/opt/ml", "/",
                                        "checkpoints", "/opt/ml/model/../model"])
def test_a_checkpoint_path_cannot_replace_what_the_platform_mounts(sm, unique_name, local_path):
    name = unique_name("bad-ckpt")
    request = job_request(name, CheckpointConfig={"S3Uri": "s3://bucket/ckpt", "LocalPath": local_path})
    code, message = rejected(sm, **request)
    assert code == "ValidationException"
    assert message.startswith(f"Invalid CheckpointConfig.LocalPath '{local_path}': it must be an absolute path")
    with pytest.raises(ClientError):
        sm.describe_training_job(TrainingJobName=name)


@pytest.mark.parametrize("n, local_path", list(enumerate(["/opt/ml/checkpoints", "/opt/ml/checkpoints/", "/data/ckpt",
                                                           "/opt/ml/model/ck"])))
def test_checkpoint_paths_of_its_own_are_accepted(sm, unique_name, n, local_path):
    checkpoints = {"S3Uri": "s3://bucket/ckpt", "LocalPath": local_path}
    request = job_request(unique_name(f"ckpt{n}"), CheckpointConfig=checkpoints)
    assert sm.create_training_job(**request)["TrainingJobArn"]


# ---- tuning jobs -------------------------------------------------------------------------------------


def test_a_warm_start_parent_without_a_name_is_a_validation_error(sm, unique_name):
    """The model leaves the parent's name optional; SageMaker needs it (found by tests/test_fuzz_api.py: it was an
    InternalFailure)."""
    from tests.support.tuning import tuning_request

    request = tuning_request("warm-start-without-a-parent")
    warm = {"ParentHyperParameterTuningJobs": [{}], "WarmStartType": "IdenticalDataAndAlgorithm"}
    code, message = _rejected_tuning(sm, request, warm)
    assert code == "ValidationException"
    assert message == ("1 validation error detected: Value null at 'warmStartConfig.parentHyperParameterTuningJobs.1."
                       "member.hyperParameterTuningJobName' failed to satisfy constraint: Member must not be null")


def _rejected_tuning(sm, request, warm) -> tuple[str, str]:  # noqa: ANN001
    with pytest.raises(ClientError) as error:
        sm.create_hyper_parameter_tuning_job(**request, WarmStartConfig=warm)
    return error.value.response["Error"]["Code"], error.value.response["Error"]["Message"]
