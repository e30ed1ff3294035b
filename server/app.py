"""The FastAPI application: one `POST /` endpoint that dispatches on `X-Amz-Target`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import botocore.session
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from server import protocol
from server.auth import SigV4Verifier
from server.config import Settings
from server.errors import ApiError
from server.lifecycle import Lifecycle
from server.operations import CREATE_REQUIRED, Operations, RequestContext
from server.store import Store
from server.validation import validate_input

log = logging.getLogger("smlocal.server")


def load_service_model() -> Any:
    return botocore.session.get_session().get_service_model("sagemaker")


def create_app(settings: Settings) -> FastAPI:
    store = Store(settings.db_path)
    lifecycle = Lifecycle(store)
    runner = None
    if settings.run_jobs:
        from runner.scheduler import Runner

        runner = Runner(settings, lifecycle)
    operations = Operations(store, lifecycle, on_change=runner.wake if runner else lambda: None)
    handlers = operations.handlers()
    served = set(handlers)
    model = load_service_model()
    verifier = (
        SigV4Verifier(settings.access_key, settings.secret_key)
        if settings.access_key and settings.secret_key
        else None
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if runner is not None:
            runner.start()
        try:
            yield
        finally:
            if runner is not None:
                runner.shutdown()
            store.close()

    app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings = settings
    app.state.lifecycle = lifecycle
    app.state.runner = runner

    def health_report() -> dict[str, Any]:
        report: dict[str, Any] = {"service": "smlocal", "status": "ok"}
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

    def handle(target: str | None, body: bytes, ctx: RequestContext) -> dict[str, Any]:
        op = protocol.operation_from_target(target, served)
        operation_model = model.operation_model(op)
        params = protocol.parse_body(body)
        extra = CREATE_REQUIRED if op == "CreateTrainingJob" else ()
        params = validate_input(operation_model.input_shape, params, extra)
        result = handlers[op](ctx, params)
        return protocol.shape_output(operation_model.output_shape, result) or {}

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"])
    async def dispatch(request: Request, path: str) -> Response:
        request_id = protocol.new_request_id()
        body = await request.body()
        try:
            if verifier is not None:
                verifier.verify(request.method, str(request.url), dict(request.headers), body)
            if request.method != "POST" or path:
                raise ApiError("UnknownOperationException", f"Unknown operation {request.method} /{path}")
            region = protocol.region_from_authorization(request.headers.get("authorization")) or settings.region
            ctx = RequestContext(region=region, account_id=settings.account_id)
            result = await run_in_threadpool(handle, request.headers.get("x-amz-target"), body, ctx)
            return protocol.json_response(result, request_id)
        except ApiError as error:
            return protocol.error_response(error, request_id)
        except Exception:  # noqa: BLE001 - a client must get AWS's error shape, never a stack trace
            log.exception("request %s failed", request_id)
            return protocol.error_response(
                ApiError("InternalFailure", "The request processing has failed because of an unknown error.",
                         500),
                request_id,
            )

    return app
