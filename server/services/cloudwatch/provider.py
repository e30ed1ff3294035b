"""The CloudWatch (metrics) provider: training metrics over time, as SageMaker publishes them.

Namespace `/aws/sagemaker/TrainingJobs`. A job's series is found by the dimension set
`{TrainingJobName: <job>}` (every host's points together, what the SageMaker SDK's
TrainingJobAnalytics asks for) or `{Host: <job>/algo-<n>}` (one host). Every point the runner stored is
kept, so statistics over a period are computed from the raw values, as CloudWatch does; a period of 1 s
returns each value logged in its own second.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable
from typing import Any

import regex

from server.aws.context import RequestContext
from smlocal.core.errors import ApiError
from smlocal.core.metric_series import METRIC_NAMESPACE, MetricPoint, points, series
from smlocal.core.store import Store

MAX_DATAPOINTS = 1440
DEFAULT_MAX_DATAPOINTS = 100_800
# High-resolution periods; anything else must be a multiple of 60.
_SHORT_PERIODS = frozenset({1, 5, 10, 20, 30})
_PERCENTILE = regex.compile(r"p(\d{1,2}(?:\.\d{1,2})?|100)")


def _invalid(message: str) -> ApiError:
    return ApiError("InvalidParameterValueException", message)


def _check_period(period: int) -> None:
    if period not in _SHORT_PERIODS and period % 60:
        raise _invalid("The parameter Period must be 1, 5, 10, 20, 30, or a multiple of 60.")


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    rank = max(0, math.ceil(p / 100 * len(ordered)) - 1)
    return ordered[min(rank, len(ordered) - 1)]


def statistic(name: str, values: list[float]) -> float:
    if name == "SampleCount":
        return float(len(values))
    if name == "Average":
        return sum(values) / len(values)
    if name == "Sum":
        return float(sum(values))
    if name == "Minimum":
        return min(values)
    if name == "Maximum":
        return max(values)
    found = _PERCENTILE.fullmatch(name)
    if found is None:
        raise _invalid(f"The value {name} for parameter Stat is not valid.")
    return _percentile(values, float(found[1]))


def _aligned_start(start: float, period: int) -> int:
    # CloudWatch rounds the start down to the period (to the minute for periods of a minute or more).
    step = min(period, 60)
    return int(math.floor(start / step) * step)


def buckets(found: list[MetricPoint], start: float, end: float, period: int) -> list[tuple[int, list[float]]]:
    """(bucket start in epoch seconds, values) of each period that holds points, oldest first."""
    first = _aligned_start(start, period)
    grouped: dict[int, list[float]] = {}
    for point in found:
        seconds = point.timestamp_ms / 1000
        if seconds < first or seconds >= end:
            continue
        grouped.setdefault(first + int((seconds - first) // period) * period, []).append(point.value)
    return sorted(grouped.items())


class CloudWatchMetrics:
    def __init__(self, store: Store) -> None:
        self.store = store

    def handlers(self) -> dict[str, Callable[[RequestContext, dict[str, Any]], dict[str, Any]]]:
        return {
            "GetMetricStatistics": self.get_metric_statistics,
            "GetMetricData": self.get_metric_data,
            "ListMetrics": self.list_metrics,
        }

    def _points(self, ctx: RequestContext, namespace: str, metric_name: str, dimensions: list[dict[str, str]],
                start: float, end: float) -> list[MetricPoint]:
        if namespace != METRIC_NAMESPACE:
            return []
        dims = {d["Name"]: d.get("Value") for d in dimensions}
        window = {"start_ms": int(_aligned_start(start, 1) * 1000), "end_ms": int(math.ceil(end * 1000))}
        if set(dims) == {"TrainingJobName"}:
            return points(self.store, ctx.account_id, ctx.region, dims["TrainingJobName"], metric_name=metric_name,
                          **window)
        if set(dims) == {"Host"} and "/" in (dims["Host"] or ""):
            job, host = dims["Host"].split("/", 1)
            return points(self.store, ctx.account_id, ctx.region, job, metric_name=metric_name, host=host,
                          **window)
        return []  # CloudWatch matches the exact dimension set; no series has any other

    # ---- GetMetricStatistics -----------------------------------------------------------------

    def get_metric_statistics(self, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
        stats, extended = params.get("Statistics"), params.get("ExtendedStatistics")
        if stats and extended:
            raise ApiError("InvalidParameterCombinationException",
                           "Parameters Statistics and ExtendedStatistics are mutually exclusive.")
        if not stats and not extended:
            raise ApiError("MissingRequiredParameterException",
                           "Either Statistics or ExtendedStatistics must be specified.")
        for name in extended or []:
            if _PERCENTILE.fullmatch(name) is None:
                raise _invalid(f"The value {name} for parameter ExtendedStatistics is not valid.")
        start, end, period = params["StartTime"], params["EndTime"], params["Period"]
        if start >= end:
            raise _invalid("The parameter StartTime must be less than the parameter EndTime.")
        _check_period(period)
        requested = math.ceil((end - _aligned_start(start, period)) / period)
        if requested > MAX_DATAPOINTS:
            raise ApiError("InvalidParameterCombinationException",
                           f"You have requested up to {requested:,} datapoints, which exceeds the limit of "
                           f"{MAX_DATAPOINTS:,}. You may reduce the datapoints requested by increasing Period, "
                           "or decreasing the time range.")
        name = params["MetricName"]
        found = [] if params.get("Unit") not in (None, "None") else self._points(
            ctx, params["Namespace"], name, params.get("Dimensions") or [], start, end)
        datapoints = []
        for bucket_start, values in buckets(found, start, end, period):
            datapoint: dict[str, Any] = {"Timestamp": float(bucket_start), "Unit": "None"}
            for stat in stats or []:
                datapoint[stat] = statistic(stat, values)
            if extended:
                datapoint["ExtendedStatistics"] = {p: statistic(p, values) for p in extended}
            datapoints.append(datapoint)
        return {"Label": name, "Datapoints": datapoints}

    # ---- GetMetricData -----------------------------------------------------------------------

    def get_metric_data(self, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
        start, end = params["StartTime"], params["EndTime"]
        if start >= end:
            raise _invalid("The parameter StartTime must be less than the parameter EndTime.")
        ids = [q["Id"] for q in params["MetricDataQueries"]]
        if len(set(ids)) != len(ids):
            raise ApiError("ValidationException", "The values for parameter id in MetricDataQueries are not unique.")
        descending = params.get("ScanBy", "TimestampDescending") == "TimestampDescending"
        results = []
        for query in params["MetricDataQueries"]:
            if query.get("ReturnData") is False:
                continue
            stat = query.get("MetricStat")
            if stat is None:
                # Metric math needs CloudWatch's expression engine, which smlocal does not have.
                results.append({"Id": query["Id"], "Label": query.get("Label", query["Id"]), "Timestamps": [],
                                "Values": [], "StatusCode": "InternalError",
                                "Messages": [{"Code": "Unsupported",
                                              "Value": "smlocal does not evaluate metric math expressions."}]})
                continue
            metric, period = stat["Metric"], stat["Period"]
            _check_period(period)
            found = [] if stat.get("Unit") not in (None, "None") else self._points(
                ctx, metric.get("Namespace", ""), metric.get("MetricName", ""), metric.get("Dimensions") or [],
                start, end)
            rows = [(t, statistic(stat["Stat"], values)) for t, values in buckets(found, start, end, period)]
            if descending:
                rows.reverse()
            results.append({"Id": query["Id"], "Label": query.get("Label") or metric.get("MetricName", ""),
                            "Timestamps": [float(t) for t, _ in rows], "Values": [v for _, v in rows],
                            "StatusCode": "Complete"})
        limit = params.get("MaxDatapoints") or DEFAULT_MAX_DATAPOINTS
        for result in results:
            result["Timestamps"] = result["Timestamps"][:limit]
            result["Values"] = result["Values"][:limit]
        return {"MetricDataResults": results, "Messages": []}

    # ---- ListMetrics -------------------------------------------------------------------------

    def list_metrics(self, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
        namespace = params.get("Namespace")
        if namespace not in (None, METRIC_NAMESPACE):
            return {"Metrics": []}
        wanted_name = params.get("MetricName")
        filters = params.get("Dimensions") or []
        metrics = []
        seen_jobs: set[tuple[str, str]] = set()
        for job, metric_name, host in series(self.store, ctx.account_id, ctx.region):
            if wanted_name is not None and metric_name != wanted_name:
                continue
            candidates = [[{"Name": "Host", "Value": f"{job}/{host}"}]]
            if (job, metric_name) not in seen_jobs:
                seen_jobs.add((job, metric_name))
                candidates.insert(0, [{"Name": "TrainingJobName", "Value": job}])
            for dims in candidates:
                present = {d["Name"]: d["Value"] for d in dims}
                if all(f["Name"] in present and f.get("Value") in (None, present[f["Name"]]) for f in filters):
                    metrics.append({"Namespace": METRIC_NAMESPACE, "MetricName": metric_name, "Dimensions": dims})
        offset = 0
        token = params.get("NextToken")
        if token:
            try:
                offset = int(json.loads(base64.urlsafe_b64decode(token.encode()))["o"])
            except (ValueError, KeyError, TypeError):
                raise ApiError("InvalidNextToken", "The service cannot complete the request: bad NextToken.") \
                    from None
        page = metrics[offset:offset + 500]
        result: dict[str, Any] = {"Metrics": page}
        if offset + 500 < len(metrics):
            result["NextToken"] = base64.urlsafe_b64encode(json.dumps({"o": offset + 500}).encode()).decode()
        return result

