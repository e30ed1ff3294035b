"""Tags on training-job and tuning-job ARNs (AddTags / ListTags / DeleteTags)."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server.aws.pagination import decode_token, encode_token
from smlocal.core.errors import ApiError
from smlocal.core.store import JobRow, Store, TagRow, TuningJobRow

MAX_TAGS_PER_RESOURCE = 50


def check_tag_keys(tags: list[dict[str, str]]) -> None:
    """What AddTags and CreateTrainingJob both refuse: reserved `aws:` keys and a key given twice."""
    seen: set[str] = set()
    for tag in tags:
        key = tag["Key"]
        if key.lower().startswith("aws:"):
            raise ApiError("ValidationException", "Tag keys starting with 'aws:' are reserved for system use.")
        if key in seen:
            raise ApiError("ValidationException", f"Duplicate tag key '{key}' specified.")
        seen.add(key)


def check_arn_scope(arn: str, region: str, account_id: str, operation: str) -> None:
    """A resource ARN must name the caller's region and account, as SageMaker requires.

    Another region is SageMaker's `ARN should be scoped to correct region: <region>` (seen from
    DescribeModelPackage, aws/amazon-sagemaker-examples#1438); another account is an IAM denial, as AWS
    gives for a resource with no resource-based policy.
    """
    # The model's ResourceArn pattern (arn:aws...:sagemaker:<region>:<12 digits>:...) held already.
    _, _, _, arn_region, arn_account, _ = arn.split(":", 5)
    if arn_region != region:
        raise ApiError("ValidationException", f"ARN should be scoped to correct region: {region}")
    if arn_account != account_id:
        raise ApiError("AccessDeniedException",
                       f"User: arn:aws:iam::{account_id}:root is not authorized to perform: sagemaker:{operation} "
                       f"on resource: {arn} because no resource-based policy allows the sagemaker:{operation} action")


class Tags:
    def __init__(self, store: Store) -> None:
        self.store = store

    @staticmethod
    def _require_job(s: Session, arn: str) -> None:
        """A training job or a hyperparameter tuning job must exist under the ARN."""
        if (s.scalars(select(JobRow.id).where(JobRow.arn == arn)).first() is None
                and s.scalars(select(TuningJobRow.id).where(TuningJobRow.arn == arn)).first() is None):
            raise ApiError("ValidationException", f"Resource {arn} not found.")

    def add(self, arn: str, tags: list[dict[str, str]]) -> list[dict[str, str]]:
        check_tag_keys(tags)
        with self.store.transaction() as s:
            self._require_job(s, arn)
            existing = {t.key: t for t in s.scalars(select(TagRow).where(TagRow.resource_arn == arn))}
            new_keys = {t["Key"] for t in tags} - set(existing)
            if len(existing) + len(new_keys) > MAX_TAGS_PER_RESOURCE:
                raise ApiError("ResourceLimitExceeded", f"The resource {arn} can have at most "
                               f"{MAX_TAGS_PER_RESOURCE} tags.")
            for tag in tags:
                row = existing.get(tag["Key"])
                if row is None:
                    row = TagRow(resource_arn=arn, key=tag["Key"], value=tag.get("Value", ""))
                    s.add(row)
                    existing[tag["Key"]] = row
                else:
                    row.value = tag.get("Value", "")
        return tags

    def list(self, arn: str, max_results: int | None, next_token: str | None) -> dict[str, object]:
        query = {"arn": arn}
        offset = decode_token(next_token, query)
        limit = max_results or 50
        with self.store.read() as s:
            self._require_job(s, arn)
            rows = s.scalars(
                select(TagRow).where(TagRow.resource_arn == arn).order_by(TagRow.id).offset(offset).limit(limit)
            ).all()
            total = s.scalar(select(func.count()).select_from(TagRow).where(TagRow.resource_arn == arn))
        result: dict[str, object] = {"Tags": [{"Key": r.key, "Value": r.value} for r in rows]}
        if offset + len(rows) < (total or 0):
            result["NextToken"] = encode_token(offset + len(rows), query)
        return result

    def delete(self, arn: str, keys: list[str]) -> None:
        with self.store.transaction() as s:
            self._require_job(s, arn)
            s.query(TagRow).filter(TagRow.resource_arn == arn, TagRow.key.in_(keys)).delete()
