"""The console's way to the services: the registry's providers, called as the API calls them.

Each call goes through `Service.invoke`, as the wire dispatcher's does for a client: validated against
the botocore model, handed to the provider's handler with a request context (the server's account, the
region the console shows) and shaped to the modelled output. The console has no other way to jobs, logs
or metrics: no SQL, no file of its own. What DescribeTrainingJob does not say (a job's attempt, its spot
interruptions, the folders it syncs to S3) comes from smlocal's own service, `smlocal`, the same way.
"""

from __future__ import annotations

from typing import Any

from server.aws.context import RequestContext
from server.aws.registry import Service, ServiceRegistry
from smlocal.core.logstore import LOG_GROUP


class ConsoleApi:
    def __init__(self, registry: ServiceRegistry, account_id: str) -> None:
        self._services: dict[str, Service] = {service.name: service for service in registry}
        self.account_id = account_id

    def call(self, service_name: str, operation: str, region: str, **params: Any) -> dict[str, Any]:
        """Run `operation` of a served service for `region`; raises the ApiError a client would get."""
        ctx = RequestContext(region=region, account_id=self.account_id)
        return self._services[service_name].invoke(operation, ctx, params)

    # ---- SageMaker ----------------------------------------------------------------------------

    def list_jobs(self, region: str, **params: Any) -> dict[str, Any]:
        return self.call("sagemaker", "ListTrainingJobs", region, **params)

    def describe_job(self, region: str, name: str) -> dict[str, Any]:
        return self.call("sagemaker", "DescribeTrainingJob", region, TrainingJobName=name)

    def stop_job(self, region: str, name: str) -> None:
        self.call("sagemaker", "StopTrainingJob", region, TrainingJobName=name)

    def list_tuning_jobs(self, region: str, **params: Any) -> dict[str, Any]:
        return self.call("sagemaker", "ListHyperParameterTuningJobs", region, **params)

    def describe_tuning_job(self, region: str, name: str) -> dict[str, Any]:
        return self.call("sagemaker", "DescribeHyperParameterTuningJob", region, HyperParameterTuningJobName=name)

    def tuning_trials(self, region: str, name: str) -> list[dict[str, Any]]:
        """Every HyperParameterTrainingJobSummary of the tuning job, oldest first, through all of its pages."""
        found: list[dict[str, Any]] = []
        params: dict[str, Any] = {"HyperParameterTuningJobName": name, "SortBy": "CreationTime",
                                  "SortOrder": "Ascending", "MaxResults": 100}
        while True:
            page = self.call("sagemaker", "ListTrainingJobsForHyperParameterTuningJob", region, **params)
            found += page.get("TrainingJobSummaries", [])
            if not page.get("NextToken"):
                return found
            params["NextToken"] = page["NextToken"]

    def stop_tuning_job(self, region: str, name: str) -> None:
        self.call("sagemaker", "StopHyperParameterTuningJob", region, HyperParameterTuningJobName=name)

    # ---- smlocal's own service ----------------------------------------------------------------

    def job_progress(self, region: str, name: str) -> dict[str, Any]:
        """Attempt, spot interruptions and (while this server runs the job) its synced folders."""
        return self.call("smlocal", "DescribeTrainingJobProgress", region, TrainingJobName=name)

    def interrupt_job(self, region: str, name: str) -> None:
        self.call("smlocal", "InterruptTrainingJob", region, TrainingJobName=name)

    # ---- CloudWatch Logs ----------------------------------------------------------------------

    def log_streams(self, region: str, job_name: str) -> list[str]:
        """The job's stream names (`<job>/algo-<n>-<epoch>`), by name; none before its first line."""
        names: list[str] = []
        params: dict[str, Any] = {"logGroupName": LOG_GROUP, "logStreamNamePrefix": f"{job_name}/",
                                  "orderBy": "LogStreamName"}
        while True:
            page = self.call("logs", "DescribeLogStreams", region, **params)
            names += [s["logStreamName"] for s in page.get("logStreams", [])]
            if not page.get("nextToken"):
                return names
            params["nextToken"] = page["nextToken"]

    def log_events(self, region: str, stream: str, token: str | None, limit: int) -> dict[str, Any]:
        params: dict[str, Any] = {"logGroupName": LOG_GROUP, "logStreamName": stream, "limit": limit}
        params.update({"nextToken": token} if token else {"startFromHead": True})
        return self.call("logs", "GetLogEvents", region, **params)

    # ---- CloudWatch metrics -------------------------------------------------------------------

    def metric_data(self, region: str, queries: list[dict[str, Any]], start: float, end: float) -> list[dict[str, Any]]:
        page = self.call("cloudwatch", "GetMetricData", region, MetricDataQueries=queries, StartTime=start,
                         EndTime=end, ScanBy="TimestampAscending")
        return page.get("MetricDataResults", [])
