"""The console's hyperparameter tuning pages: the tuning job list, a page per tuning job, its Stop button.

Read through DescribeHyperParameterTuningJob, ListHyperParameterTuningJobs and
ListTrainingJobsForHyperParameterTuningJob; Stop is StopHyperParameterTuningJob. Each page has a fragment
(`/fragments/...`) that console.js swaps in every two seconds, as the training job pages do.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response

from server.console import tuning_views, views
from server.console.api import ConsoleApi
from server.console.objective_chart import objective_chart
from server.console.pages import Pages
from smlocal.core.errors import ApiError

PAGE_SIZE = 50


def add_tuning_pages(console: FastAPI, api: ConsoleApi, pages: Pages) -> None:
    def tuning_list(request: Request) -> dict[str, Any]:
        region = pages.region_of(request)
        status = request.query_params.get("status") or ""
        name = request.query_params.get("name") or ""
        token = request.query_params.get("next") or ""
        params: dict[str, Any] = {"SortBy": "CreationTime", "SortOrder": "Descending", "MaxResults": PAGE_SIZE}
        if status:
            params["StatusEquals"] = status
        if name:
            params["NameContains"] = name
        if token:
            params["NextToken"] = token
        context: dict[str, Any] = {
            "region": region, "section": "tuning", "status": status, "name": name, "rows": [], "error": None,
            "more": None, "statuses": tuning_views.TUNING_STATUSES,
            "fragment_url": pages.link("/fragments/tuning-jobs", region, status=status, name=name, next=token)}
        try:
            page = api.list_tuning_jobs(region, **params)
        except ApiError as error:
            context["error"] = error
            return context
        for summary in page.get("HyperParameterTuningJobSummaries", []):
            try:
                # The summary has no best objective value; DescribeHyperParameterTuningJob has.
                job = api.describe_tuning_job(region, summary["HyperParameterTuningJobName"])
            except ApiError:
                continue  # deleted since the list was made
            context["rows"].append(tuning_views.tuning_row(job))
        if page.get("NextToken"):
            context["more"] = pages.link("/tuning-jobs", region, status=status, name=name, next=page["NextToken"])
        return context

    @console.get("/tuning-jobs", response_class=HTMLResponse)
    def tuning_jobs_page(request: Request) -> HTMLResponse:
        context = tuning_list(request)
        return pages.render("tuning_jobs.html", 400 if context["error"] else 200, **context)

    @console.get("/fragments/tuning-jobs", response_class=HTMLResponse)
    def tuning_jobs_fragment(request: Request) -> HTMLResponse:
        context = tuning_list(request)
        return pages.render("_tuning_table.html", 400 if context["error"] else 200, **context)

    # ---- one tuning job -------------------------------------------------------------------------

    def describe(region: str, name: str) -> dict[str, Any] | HTMLResponse:
        """The tuning job, or the not-found page: DescribeHyperParameterTuningJob takes only the name, so
        whatever it refuses (no such job, or a name no job can have) there is no page at this address."""
        try:
            return api.describe_tuning_job(region, name)
        except ApiError as error:
            return pages.render("error.html", 404, region=region, section="tuning", code=error.code,
                                message=error.message)

    def summary_context(region: str, job: dict[str, Any]) -> dict[str, Any]:
        name = job["HyperParameterTuningJobName"]
        try:
            trials = api.tuning_trials(region, name)
        except ApiError:
            trials = []  # deleted since it was described: the page shows what the description said
        best = (job.get("BestTrainingJob") or {}).get("TrainingJobName")
        target = tuning_views.objective(job)
        names = tuning_views.tuned_names(trials)
        return {
            "job": job, "region": region, "section": "tuning", "name": name,
            "terminal": tuning_views.is_terminal(job), "strategy": tuning_views.strategy(job),
            "objective": target, "limits": tuning_views.limits_text(job),
            "counters": tuning_views.counters(job), "objective_counters": job.get("ObjectiveStatusCounters") or {},
            "created": views.when(job.get("CreationTime")),
            "ended": views.when(job.get("HyperParameterTuningEndTime")),
            "elapsed": tuning_views.elapsed(job, time.time()),
            "completion": tuning_views.completion_rows(job), "best": job.get("BestTrainingJob"),
            "best_value": tuning_views.best_value(job), "tuned_names": names,
            "trials": tuning_views.trial_rows(trials, names, best),
            "definitions": any(t.get("TrainingJobDefinitionName") for t in trials),
            "failures": any(t.get("FailureReason") for t in trials),
            "chart": objective_chart(trials, target.get("Type", "Minimize"), best),
        }

    def tuning_page_response(request: Request, name: str, http_status: int = 200,
                             action_error: tuple[str, ApiError] | None = None) -> HTMLResponse:
        region = pages.region_of(request)
        job = describe(region, name)
        if isinstance(job, HTMLResponse):
            return job
        return pages.render(
            "tuning_job.html", http_status, **summary_context(region, job), action_error=action_error,
            config=tuning_views.config_rows(job), ranges=tuning_views.range_rows(job),
            static=tuning_views.static_hyperparameters(job), describe_json=tuning_views.describe_json(job))

    @console.get("/tuning-jobs/{name}", response_class=HTMLResponse)
    def tuning_job_page(request: Request, name: str) -> HTMLResponse:
        return tuning_page_response(request, name)

    @console.get("/fragments/tuning-jobs/{name}", response_class=HTMLResponse)
    def tuning_job_fragment(request: Request, name: str) -> HTMLResponse:
        region = pages.region_of(request)
        job = describe(region, name)
        if isinstance(job, HTMLResponse):
            return job
        return pages.render("_tuning_summary.html", **summary_context(region, job))

    @console.post("/tuning-jobs/{name}/stop", response_class=HTMLResponse)
    async def stop_tuning_job(request: Request, name: str) -> Response:
        def again(request: Request, status: int, error: tuple[str, ApiError]) -> HTMLResponse:
            return tuning_page_response(request, name, status, error)

        return await pages.act(request, "StopHyperParameterTuningJob",
                               lambda region: api.stop_tuning_job(region, name), f"/tuning-jobs/{name}", again)

