"""The FastAPI application: every request is resolved to a service of the registry and dispatched."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from server.aws import protocol
from server.aws.auth import Authenticator
from server.aws.context import RequestContext
from server.aws.registry import Service, ServiceRegistry
from server.console import mount_console
from server.services.cloudwatch.provider import CloudWatchMetrics
from server.services.iam.provider import Iam
from server.services.logs.provider import CloudWatchLogs
from server.services.sagemaker.faults import CreateFaults
from server.services.sagemaker.provider import JobLimits, Operations
from server.services.smlocal.host_access import HostAccess, HostProcess
from server.services.smlocal.model import SERVICE_NAME, smlocal_session
from server.services.smlocal.provider import Control
from server.services.sts.provider import Sts
from server.shell import mount_shell
from smlocal.core.errors import ApiError
from smlocal.core.file_systems import FileSystems
from smlocal.core.lifecycle import Lifecycle
from smlocal.core.local_channels import LocalChannelRoots
from smlocal.core.settings import Settings, machine
from smlocal.core.store import DiskFull, Store
from smlocal.core.tuning.lifecycle import TuningLifecycle

log = logging.getLogger("smlocal.server")


class JobRunner(Protocol):
    """What the app needs of the runner `smlocal serve` hands it (runner.scheduler.Runner): started and
    stopped with the app, asked for its health. It hears of new jobs and stops from the lifecycle."""

    def start(self) -> None: ...

    def shutdown(self) -> None: ...

    def health(self) -> dict[str, Any]: ...

    def progress(self, arn: str) -> list[dict[str, Any]] | None: ...

    def exec_in_host(self, arn: str, host: str, command: list[str], *, tty: bool, stdin: bool,
                     environment: dict[str, str] | None = None) -> HostProcess | None: ...


class Background(Protocol):
    """A loop started and stopped with the app (the tuner that drives tuning jobs)."""

    def start(self) -> None: ...

    def shutdown(self) -> None: ...


def create_app(settings: Settings, store: Store, lifecycle: Lifecycle, runner: JobRunner | None,
               tuning: TuningLifecycle | None = None, tuner: Background | None = None,
               s3_health: Callable[[], dict[str, Any]] | None = None) -> FastAPI:
    """The HTTP app over the parts `smlocal serve` built (server.cli, the composition root); `runner` None:
    jobs are not run (--no-run-jobs). `tuner` drives the tuning jobs `tuning` holds. `s3_health`: the
    embedded store's watchdog's report, when smlocal runs the store."""
    data_dir = Path(settings.data_dir).resolve()
    limits = JobLimits(max_hosts_per_job=settings.max_hosts_per_job,
                       local_roots=LocalChannelRoots.of(settings.local_channel_roots, settings.data_dir),
                       file_systems=FileSystems.of(settings.file_systems, settings.data_dir),
                       machine=machine() if settings.enforce_instance_resources else None,
                       max_concurrent_jobs=settings.max_concurrent_jobs if runner is not None else None,
                       max_waiting_jobs=settings.max_waiting_jobs if runner is not None else None)
    # `smlocal shell`: ExecuteCommand and StartSession, and the WebSocket a session streams over.
    hosts = HostAccess(lifecycle, runner.exec_in_host if runner is not None else None)
    registry = ServiceRegistry([
        Service.of("sagemaker", Operations(store, lifecycle, data_dir=data_dir, limits=limits,
                                           faults=CreateFaults.of(settings), tuning=tuning)),
        Service.of("logs", CloudWatchLogs(store, data_dir)),
        Service.of("cloudwatch", CloudWatchMetrics(store)),
        Service.of("iam", Iam()),
        Service.of("sts", Sts()),
        Service.of(SERVICE_NAME, Control(lifecycle, runner.progress if runner is not None else lambda _arn: None,
                                         hosts), smlocal_session()),
    ])
    authenticator = Authenticator(settings.region, settings.access_key, settings.secret_key)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if runner is not None:
            runner.start()
        if tuner is not None:
            tuner.start()
        try:
            yield
        finally:
            if tuner is not None:
                tuner.shutdown()
            if runner is not None:
                runner.shutdown()
            store.close()

    app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings = settings
    app.state.lifecycle = lifecycle
    app.state.services = registry
    app.state.runner = runner

    def health_report() -> dict[str, Any]:
        report: dict[str, Any] = {"service": "smlocal", "status": "ok"}
        if s3_health is not None:
            report["s3Store"] = s3_health()
            if not report["s3Store"]["up"]:
                report["status"] = "degraded"
                report["problem"] = report["s3Store"]["problem"]
        if runner is None:
            report["runner"] = {"enabled": False}
            return report
        report["runner"] = {"enabled": True, **runner.health()}
        if report["runner"]["engine"]["reachable"] is False:
            report["status"] = "degraded"
            report["problem"] = (f"{report['runner']['engine']['error']}; jobs stay InProgress until it answers "
                                 "(smlocal retries with backoff)")
        return report

    # Registered before the AWS dispatcher, which answers every other path with an AWS error.
    @app.get("/health")
    async def health() -> Response:
        return JSONResponse(await run_in_threadpool(health_report))

    # Before the catch-all API route below, which would take /console too.
    mount_console(app, settings, registry)
    mount_shell(app, hosts, authenticator)

    def handle(route: protocol.Route, body: bytes, ctx: RequestContext, request_id: str) -> Response:
        service, op = route.service, route.operation
        assert service is not None and op is not None
        operation_model = service.operation_model(op)
        result = service.invoke(op, ctx, route.wire.parse(body, operation_model.input_shape))
        return route.wire.response(service, operation_model, result, request_id)

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"])
    async def dispatch(request: Request, path: str) -> Response:
        request_id = protocol.new_request_id()
        body = await request.body()
        # Resolved before auth so the check knows the service (route.service.signing_name), and so an
        # error is answered in the wire protocol the client speaks.
        route = protocol.resolve(registry, request.method, path, request.headers, body)
        try:
            # The scope's service must be the one the target belongs to: its botocore signing name.
            region = authenticator.authenticate(
                request.method, str(request.url), dict(request.headers), body,
                signing_name=route.service.signing_name if route.service is not None else None)
            route.raise_if_unresolved()
            ctx = RequestContext(region=region, account_id=settings.account_id)
            assert route.service is not None and route.operation is not None
            if route.service.runs_on_event_loop(route.operation):
                # A read of ~0.1 ms: handing it to a thread and back cost ~0.4 ms of CPU a request under load
                # and held DescribeTrainingJob under 1,000 req/s on 2 cores (bench/api_load.py).
                return handle(route, body, ctx, request_id)
            return await run_in_threadpool(handle, route, body, ctx, request_id)
        except ApiError as error:
            return route.wire.error_response(error, request_id, route.service)
        except DiskFull:
            # AWS's answer when it cannot take a request for now (SDKs retry it with backoff).
            return route.wire.error_response(ApiError(
                "ServiceUnavailable", "The request cannot be served now: smlocal's data dir has no room left. "
                "Free some room and try again.", 503), request_id, route.service)
        except Exception:  # noqa: BLE001 - a client must get AWS's error shape, never a stack trace
            log.exception("request %s failed", request_id)
            return route.wire.error_response(
                ApiError("InternalFailure", "The request processing has failed because of an unknown error.",
                         500),
                request_id, route.service,
            )

    return app

