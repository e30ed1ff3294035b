"""The web console at /console: the job list, a page per job, and the few JSON feeds its scripts poll; the
tuning job pages are in `tuning_pages`.

A sub-application of the API's FastAPI app. Everything it shows or does goes through the registry's
providers (`ConsoleApi`), under the same validation as API requests; its pages are rendered on the server
(Jinja2, autoescaped) and its scripts, vendored in `static/`, only fetch, swap and draw.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlencode

import botocore.session
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.staticfiles import StaticFiles

from server.aws.regions import is_valid_region
from server.aws.registry import ServiceRegistry
from server.console import tuning_views, views
from server.console.access import ConsoleAccess, ConsoleGuard
from server.console.api import ConsoleApi
from server.console.artifacts import ARTIFACT_NAMES, ArtifactStore
from server.console.pages import PageAgain, Pages
from server.console.tuning_pages import add_tuning_pages
from smlocal.core.errors import ApiError
from smlocal.core.lifecycle import TERMINAL_STATUSES
from smlocal.core.metric_series import METRIC_NAMESPACE
from smlocal.core.settings import Settings

log = logging.getLogger("smlocal.console")

CONSOLE_PATH = "/console"
PAGE_SIZE = 50
LOG_PAGE_EVENTS = 1000
# GetMetricData takes at most 500 queries a call.
METRIC_QUERIES_PER_CALL = 500


def _templates() -> Environment:
    return Environment(loader=PackageLoader("server.console", "templates"),
                       autoescape=select_autoescape(["html"], default_for_string=True, default=True))


def _not_found(error: ApiError) -> bool:
    # DescribeTrainingJob says so in its message (a ValidationException, as SageMaker's); the tuning
    # operations have a code of their own.
    return error.message == "Requested resource not found." or error.code == "ResourceNotFound"


def create_console(settings: Settings, registry: ServiceRegistry) -> FastAPI:
    api = ConsoleApi(registry, settings.account_id)
    access = ConsoleAccess(bind_host=settings.host, access_key=settings.access_key, secret_key=settings.secret_key)
    artifacts = ArtifactStore(settings)
    templates = _templates()
    known_regions = sorted(botocore.session.get_session().get_available_regions("sagemaker"))

    console = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    console.add_middleware(ConsoleGuard, access=access)
    console.mount("/static", StaticFiles(packages=[("server.console", "static")]), name="static")

    class RegionError(Exception):
        pass

    def region_of(request: Request) -> str:
        region = request.query_params.get("region") or settings.region
        if not is_valid_region(region):
            raise RegionError(region)
        return region

    def link(path: str, region: str, **params: Any) -> str:
        query = {k: v for k, v in params.items() if v not in (None, "")}
        if region != settings.region:
            query = {"region": region, **query}
        return f"{CONSOLE_PATH}{path}" + (f"?{urlencode(query)}" if query else "")

    def render(template: str, http_status: int = 200, **context: Any) -> HTMLResponse:
        region = context.get("region", settings.region)
        base = {
            "console": CONSOLE_PATH, "account_id": settings.account_id, "default_region": settings.region,
            "region": region, "regions": known_regions, "token": access.token, "zone": views.local_zone(),
            "keys_required": access.keys is not None, "link": lambda path, **p: link(path, region, **p),
            "statuses": views.STATUSES, "section": "jobs",
        }
        return HTMLResponse(templates.get_template(template).render({**base, **context}), status_code=http_status)

    def error_page(error: ApiError, region: str, status: int | None = None) -> HTMLResponse:
        return render("error.html", status or (404 if _not_found(error) else 400), region=region,
                      code=error.code, message=error.message)

    @console.exception_handler(RegionError)
    async def bad_region(_request: Request, exc: RegionError) -> HTMLResponse:
        return render("error.html", 400, code="InvalidRegion",
                      message=f"'{exc}' is not an AWS region name (e.g. {settings.region}).")

    @console.exception_handler(HTTPException)
    async def no_route(request: Request, exc: HTTPException) -> HTMLResponse:
        # An address no route takes (`/console/tuning-jobs/a/b`): the console's own page, not a JSON body.
        not_found = exc.status_code == 404
        section = "tuning" if request.url.path.startswith(f"{CONSOLE_PATH}/tuning-jobs") else "jobs"
        response = render("error.html", exc.status_code, section=section,
                          code=HTTPStatus(exc.status_code).phrase.replace(" ", "").replace("-", ""),
                          message="The console has no page at this address." if not_found else str(exc.detail))
        response.headers.update(exc.headers or {})
        return response

    @console.exception_handler(Exception)
    async def failed(_request: Request, exc: Exception) -> HTMLResponse:
        log.exception("console request failed", exc_info=exc)
        return render("error.html", 500, code="InternalFailure",
                      message="The console could not answer this request; the server's log says why.")

    # ---- the job list ---------------------------------------------------------------------------

    def job_list(request: Request) -> dict[str, Any]:
        region = region_of(request)
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
            "region": region, "status": status, "name": name, "rows": [], "error": None, "more": None,
            "fragment_url": link("/fragments/jobs", region, status=status, name=name, next=token)}
        try:
            page = api.list_jobs(region, **params)
        except ApiError as error:
            context["error"] = error
            return context
        now = time.time()
        for summary in page.get("TrainingJobSummaries", []):
            try:
                job = api.describe_job(region, summary["TrainingJobName"])
            except ApiError:
                continue  # deleted since the list was made
            context["rows"].append(views.job_row(job, now))
        if page.get("NextToken"):
            context["more"] = link("/", region, status=status, name=name, next=page["NextToken"])
        return context

    @console.get("/", response_class=HTMLResponse)
    def jobs_page(request: Request) -> HTMLResponse:
        context = job_list(request)
        return render("jobs.html", 400 if context["error"] else 200, **context)

    @console.get("/fragments/jobs", response_class=HTMLResponse)
    def jobs_fragment(request: Request) -> HTMLResponse:
        context = job_list(request)
        return render("_jobs_table.html", 400 if context["error"] else 200, **context)

    # ---- one job --------------------------------------------------------------------------------

    def job_progress(region: str, job: dict[str, Any]) -> dict[str, Any] | None:
        try:
            return api.job_progress(region, job["TrainingJobName"])
        except ApiError:
            return None  # deleted since it was described: the page shows what DescribeTrainingJob said

    def summary_context(region: str, job: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        terminal = job["TrainingJobStatus"] in TERMINAL_STATUSES
        return {
            "job": job, "region": region, "name": job["TrainingJobName"], "terminal": terminal,
            "steps": views.timeline(job, now), "created": views.when(job.get("CreationTime")),
            "started": views.when(job.get("TrainingStartTime")), "ended": views.when(views.end_time(job)),
            "elapsed": views.duration(views.elapsed(job, now)),
            "artifacts": artifacts.available(region, job),
            "progress": views.progress(job, job_progress(region, job), now),
            "can_interrupt": views.can_interrupt(job),
        }

    def job_page_response(request: Request, name: str, http_status: int = 200,
                          action_error: tuple[str, ApiError] | None = None) -> HTMLResponse:
        region = region_of(request)
        try:
            job = api.describe_job(region, name)
        except ApiError as error:
            return error_page(error, region)
        algo = job.get("AlgorithmSpecification") or {}
        return render(
            "job.html", http_status, **summary_context(region, job), action_error=action_error,
            config=views.config_rows(job), channels=views.channel_rows(job),
            hyperparameters=sorted((job.get("HyperParameters") or {}).items()),
            environment=sorted((job.get("Environment") or {}).items()),
            metric_definitions=algo.get("MetricDefinitions") or [],
            describe_json=views.describe_json(job), hosts=views.hosts(job),
            tuning_job=tuning_views.tuning_job_name(job),
        )

    @console.get("/jobs/{name}", response_class=HTMLResponse)
    def job_page(request: Request, name: str) -> HTMLResponse:
        return job_page_response(request, name)

    @console.get("/fragments/jobs/{name}", response_class=HTMLResponse)
    def job_fragment(request: Request, name: str) -> HTMLResponse:
        region = region_of(request)
        try:
            job = api.describe_job(region, name)
        except ApiError as error:
            return error_page(error, region)
        return render("_job_summary.html", **summary_context(region, job))

    async def act(request: Request, operation: str, action: Callable[[str], None], done: str,
                  again: PageAgain) -> Response:
        """A button's POST: only with the page's token and from the console's own origin (`write_refusal`),
        then the API operation (`action(region)`); back to the page at `done`, or `again` with the
        operation's error."""
        form = {k: v[-1] for k, v in parse_qs((await request.body()).decode("utf-8", "replace")).items()}
        headers = {k.lower(): v for k, v in request.headers.items()}
        refusal = access.write_refusal(headers, request.url.scheme, form.get("token"))
        region = region_of(request)
        if refusal is not None:
            return render("error.html", 403, region=region, code="Forbidden", message=refusal)

        def call() -> ApiError | None:
            try:
                action(region)
            except ApiError as error:
                return error
            return None

        error = await run_in_threadpool(call)
        if error is None:
            return RedirectResponse(link(done, region), status_code=303)
        return await run_in_threadpool(again, request, 400, (operation, error))

    async def act_on_job(request: Request, name: str, operation: str, action: Callable[[str, str], None]) -> Response:
        def again(request: Request, status: int, error: tuple[str, ApiError]) -> HTMLResponse:
            return job_page_response(request, name, status, error)

        return await act(request, operation, lambda region: action(region, name), f"/jobs/{name}", again)

    @console.post("/jobs/{name}/stop", response_class=HTMLResponse)
    async def stop_job(request: Request, name: str) -> Response:
        return await act_on_job(request, name, "StopTrainingJob", api.stop_job)

    @console.post("/jobs/{name}/interrupt", response_class=HTMLResponse)
    async def interrupt_job(request: Request, name: str) -> Response:
        return await act_on_job(request, name, "InterruptTrainingJob", api.interrupt_job)

    @console.get("/jobs/{name}/artifacts/{artifact}")
    def download(request: Request, name: str, artifact: str) -> Response:
        region = region_of(request)
        if artifact not in ARTIFACT_NAMES:
            return render("error.html", 404, region=region, code="NotFound",
                          message=f"A job offers only {' and '.join(ARTIFACT_NAMES)}.")
        try:
            job = api.describe_job(region, name)
        except ApiError as error:
            return error_page(error, region)
        found = [a for a in artifacts.available(region, job) if a.name == artifact]
        if not found:
            return render("error.html", 404, region=region, code="NotFound",
                          message=f"Training job {name} has no {artifact}: it is written when the job ends, and "
                                  "only when the job saved something there.")
        return StreamingResponse(
            artifacts.stream(region, found[0]), media_type="application/gzip",
            headers={"content-length": str(found[0].size),
                     "content-disposition": f'attachment; filename="{name}-{artifact}"'})

    # ---- the feeds the job page's scripts poll ---------------------------------------------------

    def json_error(error: ApiError) -> JSONResponse:
        return JSONResponse({"error": {"code": error.code, "message": error.message}},
                            status_code=404 if _not_found(error) else 400)

    @console.get("/api/jobs/{name}/streams")
    def streams(request: Request, name: str) -> JSONResponse:
        region = region_of(request)
        try:
            api.describe_job(region, name)
            try:
                names = api.log_streams(region, name)
            except ApiError as error:
                if error.code != "ResourceNotFoundException":
                    raise
                names = []  # no job in this region has logged anything yet
        except ApiError as error:
            return json_error(error)
        return JSONResponse({"streams": [{"name": s, "host": views.host_of_stream(s)} for s in names]})

    @console.get("/api/jobs/{name}/logs")
    def logs(request: Request, name: str) -> JSONResponse:
        region = region_of(request)
        stream = request.query_params.get("stream", "")
        if not stream.startswith(f"{name}/"):
            return JSONResponse({"error": {"code": "InvalidParameterException",
                                           "message": f"stream must be one of {name}'s log streams"}}, 400)
        try:
            page = api.log_events(region, stream, request.query_params.get("token") or None, LOG_PAGE_EVENTS)
        except ApiError as error:
            return json_error(error)
        return JSONResponse({"events": [{"timestamp": e["timestamp"], "message": e["message"]}
                                        for e in page.get("events", [])],
                             "nextToken": page.get("nextForwardToken")})

    @console.get("/api/jobs/{name}/metrics")
    def metrics(request: Request, name: str) -> JSONResponse:
        region = region_of(request)
        try:
            job = api.describe_job(region, name)
            names = [d["Name"] for d in (job.get("AlgorithmSpecification") or {}).get("MetricDefinitions") or []]
            hosts = views.hosts(job)
            start = math.floor(views.epoch(job["CreationTime"]) or 0) - 1
            end = (views.end_time(job) or time.time()) + 1
            period = views.metric_period(start, end)
            wanted = [(m, h) for m in range(len(names)) for h in range(len(hosts))]
            results: dict[str, dict[str, Any]] = {}
            for first in range(0, len(wanted), METRIC_QUERIES_PER_CALL):
                queries = [{
                    "Id": f"m{m}h{h}", "ReturnData": True,
                    "MetricStat": {"Period": period, "Stat": "Average", "Metric": {
                        "Namespace": METRIC_NAMESPACE, "MetricName": names[m],
                        "Dimensions": [{"Name": "Host", "Value": f"{name}/{hosts[h]}"}]}},
                } for m, h in wanted[first:first + METRIC_QUERIES_PER_CALL]]
                results.update({r["Id"]: r for r in api.metric_data(region, queries, start, end)})
        except ApiError as error:
            return json_error(error)
        out = []
        for m, metric in enumerate(names):
            series = []
            for h, host in enumerate(hosts):
                found = results.get(f"m{m}h{h}") or {}
                points = [[round(views.epoch(t) * 1000), v] for t, v in
                          zip(found.get("Timestamps", []), found.get("Values", []), strict=False)
                          if views.finite(v) is not None]
                series.append({"host": host, "points": points})
            out.append({"name": metric, "series": series})
        return JSONResponse({"period": period, "metrics": out})

    add_tuning_pages(console, api, Pages(region_of=region_of, link=link, render=render, act=act))
    return console


def mount_console(app: FastAPI, settings: Settings, registry: ServiceRegistry) -> None:
    """Serve the console at /console on `app`; call before the app's catch-all API route."""

    @app.get(CONSOLE_PATH, include_in_schema=False)
    def to_console(request: Request) -> RedirectResponse:
        query = request.url.query
        return RedirectResponse(f"{CONSOLE_PATH}/" + (f"?{query}" if query else ""), status_code=307)

    app.mount(CONSOLE_PATH, create_console(settings, registry))
