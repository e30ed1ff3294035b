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
