"""AddTags / ListTags / DeleteTags on training-job ARNs."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from tests.support.jobs import job_request


def tags_of(sm, arn: str) -> dict[str, str]:  # noqa: ANN001
    return {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=arn)["Tags"]}


def test_tag_lifecycle(sm, unique_name):
    arn = sm.create_training_job(**job_request(unique_name(), Tags=[{"Key": "team", "Value": "ml"}]))[
        "TrainingJobArn"]
    assert tags_of(sm, arn) == {"team": "ml"}
    added = sm.add_tags(ResourceArn=arn, Tags=[{"Key": "team", "Value": "research"}, {"Key": "cost", "Value": "1"}])
    assert added["Tags"] == [{"Key": "team", "Value": "research"}, {"Key": "cost", "Value": "1"}]
    assert tags_of(sm, arn) == {"team": "research", "cost": "1"}
    sm.delete_tags(ResourceArn=arn, TagKeys=["team", "not-there"])
    assert tags_of(sm, arn) == {"cost": "1"}


def test_list_tags_paginates(sm, unique_name):
    arn = sm.create_training_job(**job_request(unique_name()))["TrainingJobArn"]
    sm.add_tags(ResourceArn=arn, Tags=[{"Key": f"k{i:02d}", "Value": str(i)} for i in range(50)])
    page = sm.list_tags(ResourceArn=arn, MaxResults=50)
    assert len(page["Tags"]) == 50 and "NextToken" not in page
    assert [t["Key"] for t in page["Tags"]] == [f"k{i:02d}" for i in range(50)]


def test_tag_limit(sm, unique_name):
    arn = sm.create_training_job(**job_request(unique_name()))["TrainingJobArn"]
    sm.add_tags(ResourceArn=arn, Tags=[{"Key": f"k{i}", "Value": "v"} for i in range(50)])
    with pytest.raises(ClientError) as info:
        sm.add_tags(ResourceArn=arn, Tags=[{"Key": "one-more", "Value": "v"}])
    assert info.value.response["Error"]["Code"] == "ResourceLimitExceeded"
    # Overwriting an existing key is still fine at the limit.
    sm.add_tags(ResourceArn=arn, Tags=[{"Key": "k0", "Value": "new"}])
    assert tags_of(sm, arn)["k0"] == "new"
    assert len(tags_of(sm, arn)) == 50


def test_tags_on_unknown_resource(sm):
    arn = "arn:aws:sagemaker:us-east-1:123456789012:training-job/never-made"
    for call, kwargs in ((sm.list_tags, {}), (sm.add_tags, {"Tags": [{"Key": "a", "Value": "b"}]}),
                         (sm.delete_tags, {"TagKeys": ["a"]})):
        with pytest.raises(ClientError) as info:
            call(ResourceArn=arn, **kwargs)
        assert info.value.response["Error"]["Code"] == "ValidationException"
        assert arn in info.value.response["Error"]["Message"]


def test_tag_arn_pattern(sm):
    with pytest.raises(ClientError) as info:
        sm.list_tags(ResourceArn="not-an-arn")
    assert "at 'resourceArn' failed to satisfy constraint: Member must satisfy regular expression pattern" \
        in info.value.response["Error"]["Message"]


def test_reserved_tag_prefix(sm, unique_name):
    arn = sm.create_training_job(**job_request(unique_name()))["TrainingJobArn"]
    with pytest.raises(ClientError) as info:
        sm.add_tags(ResourceArn=arn, Tags=[{"Key": "aws:owner", "Value": "me"}])
    assert info.value.response["Error"]["Code"] == "ValidationException"
    assert tags_of(sm, arn) == {}


def test_duplicate_tag_keys_in_create_are_a_validation_error(sm, unique_name):
    name = unique_name()
    tags = [{"Key": "team", "Value": "a"}, {"Key": "team", "Value": "b"}]
    with pytest.raises(ClientError) as info:
        sm.create_training_job(**job_request(name, Tags=tags))
    assert info.value.response["Error"] == {"Code": "ValidationException",
                                            "Message": "Duplicate tag key 'team' specified."}
    with pytest.raises(ClientError) as info:
        sm.describe_training_job(TrainingJobName=name)
    assert info.value.response["Error"]["Message"] == "Requested resource not found."
    # The name is still free: the refused request stored nothing.
    assert sm.create_training_job(**job_request(name, Tags=tags[:1]))["TrainingJobArn"]


def test_duplicate_tag_keys_in_add_tags(sm, unique_name):
    arn = sm.create_training_job(**job_request(unique_name()))["TrainingJobArn"]
    with pytest.raises(ClientError) as info:
        sm.add_tags(ResourceArn=arn, Tags=[{"Key": "k", "Value": "1"}, {"Key": "k", "Value": "2"}])
    assert info.value.response["Error"]["Code"] == "ValidationException"
    assert tags_of(sm, arn) == {}


@pytest.mark.parametrize("key", ["aws:owner", "AWS:Owner", "Aws:x"])
def test_reserved_tag_prefix_in_create(sm, unique_name, key):
    name = unique_name()
    with pytest.raises(ClientError) as info:
        sm.create_training_job(**job_request(name, Tags=[{"Key": key, "Value": "me"}]))
    assert info.value.response["Error"] == {
        "Code": "ValidationException", "Message": "Tag keys starting with 'aws:' are reserved for system use."}
    with pytest.raises(ClientError):
        sm.describe_training_job(TrainingJobName=name)


def test_tag_calls_check_the_arns_region(api_server, unique_name):
    # The same job name exists in two regions; a caller in one may not reach the other's through its ARN.
    name = unique_name()
    eu = api_server.client(region="eu-west-1")
    us = api_server.client(region="us-east-1")
    eu_arn = eu.create_training_job(**job_request(name, Tags=[{"Key": "where", "Value": "eu"}]))["TrainingJobArn"]
    us.create_training_job(**job_request(name, Tags=[{"Key": "where", "Value": "us"}]))
    for call, kwargs in ((us.list_tags, {}), (us.add_tags, {"Tags": [{"Key": "x", "Value": "y"}]}),
                         (us.delete_tags, {"TagKeys": ["where"]})):
        with pytest.raises(ClientError) as info:
            call(ResourceArn=eu_arn, **kwargs)
        assert info.value.response["Error"] == {"Code": "ValidationException",
                                                "Message": "ARN should be scoped to correct region: us-east-1"}
    assert tags_of(eu, eu_arn) == {"where": "eu"}


def test_tag_calls_check_the_arns_account(sm, unique_name):
    arn = sm.create_training_job(**job_request(unique_name(), Tags=[{"Key": "a", "Value": "b"}]))["TrainingJobArn"]
    foreign = arn.replace(":123456789012:", ":210987654321:")
    for operation, call, kwargs in (("ListTags", sm.list_tags, {}),
                                    ("AddTags", sm.add_tags, {"Tags": [{"Key": "x", "Value": "y"}]}),
                                    ("DeleteTags", sm.delete_tags, {"TagKeys": ["a"]})):
        with pytest.raises(ClientError) as info:
            call(ResourceArn=foreign, **kwargs)
        assert info.value.response["Error"] == {
            "Code": "AccessDeniedException",
            "Message": f"User: arn:aws:iam::123456789012:root is not authorized to perform: sagemaker:{operation} on "
                       f"resource: {foreign} because no resource-based policy allows the sagemaker:{operation} action"}
    assert tags_of(sm, arn) == {"a": "b"}
