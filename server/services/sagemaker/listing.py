"""ListTrainingJobs: filters, sorting and NextToken pagination over the stored jobs."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row, select

from server.aws.pagination import decode_token, encode_token
from smlocal.core import warm_pools
from smlocal.core.store import JobRow, Store

_SUMMARY_COLUMNS = (JobRow.name, JobRow.arn, JobRow.creation_time, JobRow.last_modified_time, JobRow.status,
                    JobRow.secondary_status, JobRow.training_end_time, JobRow.warm_pool_status,
                    JobRow.warm_pool_retained_seconds, JobRow.warm_pool_reused_by)
_SORT_COLUMNS = {"Name": JobRow.name, "CreationTime": JobRow.creation_time, "Status": JobRow.status}


def list_training_jobs(store: Store, account_id: str, region: str, params: dict[str, Any]) -> dict[str, Any]:
    query_key = {k: v for k, v in params.items() if k not in ("NextToken", "MaxResults")}
    query_key.update(account=account_id, region=region)
    offset = decode_token(params.get("NextToken"), query_key)
    limit = params.get("MaxResults") or 10

    # The summary's columns only: a whole row (its stored request among them) for each of 100 jobs costs more
    # than the query.
    stmt = select(*_SUMMARY_COLUMNS).where(JobRow.account_id == account_id, JobRow.region == region)
    if "CreationTimeAfter" in params:
        stmt = stmt.where(JobRow.creation_time > params["CreationTimeAfter"])
    if "CreationTimeBefore" in params:
        stmt = stmt.where(JobRow.creation_time < params["CreationTimeBefore"])
    if "LastModifiedTimeAfter" in params:
        stmt = stmt.where(JobRow.last_modified_time > params["LastModifiedTimeAfter"])
    if "LastModifiedTimeBefore" in params:
        stmt = stmt.where(JobRow.last_modified_time < params["LastModifiedTimeBefore"])
    if params.get("NameContains"):
        # SageMaker matches NameContains case-insensitively.
        stmt = stmt.where(JobRow.name.icontains(params["NameContains"], autoescape=True))
    if "StatusEquals" in params:
        stmt = stmt.where(JobRow.status == params["StatusEquals"])
    if "WarmPoolStatusEquals" in params:
        stmt = stmt.where(JobRow.warm_pool_status == params["WarmPoolStatusEquals"])
    if "TrainingPlanArnEquals" in params:
        stmt = stmt.where(False)

    column = _SORT_COLUMNS[params.get("SortBy", "CreationTime")]
    descending = params.get("SortOrder", "Ascending") == "Descending"
    order = [column.desc(), JobRow.id.desc()] if descending else [column.asc(), JobRow.id.asc()]
    stmt = stmt.order_by(*order).offset(offset).limit(limit + 1)

    with store.read() as s:
        rows = s.execute(stmt).all()
    page = rows[:limit]
    result: dict[str, Any] = {"TrainingJobSummaries": [_summary(r) for r in page]}
    if len(rows) > limit:
        result["NextToken"] = encode_token(offset + limit, query_key)
    return result


def _summary(row: Row[Any]) -> dict[str, Any]:
    summary = {
        "TrainingJobName": row.name,
        "TrainingJobArn": row.arn,
        "CreationTime": row.creation_time,
        "LastModifiedTime": row.last_modified_time,
        "TrainingJobStatus": row.status,
        "SecondaryStatus": row.secondary_status,
    }
    if row.training_end_time is not None:
        summary["TrainingEndTime"] = row.training_end_time
    pool = warm_pools.status_shape(row.warm_pool_status, row.warm_pool_retained_seconds, row.warm_pool_reused_by)
    if pool is not None:
        summary["WarmPoolStatus"] = pool
    return summary
