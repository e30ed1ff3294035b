"""The `smlocal` console script."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
import uvicorn
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel

from server.config import Settings, default_max_concurrent_jobs
from server.datadir import DataDirInUse, DataDirLock, make_private

app = typer.Typer(add_completion=False, help="A local, SageMaker-compatible training-job service.")
console = Console()


@app.callback()
def main() -> None:
    """smlocal: SageMaker training jobs on your machine."""


def _opt(envvar: str, help_text: str) -> typer.models.OptionInfo:
    return typer.Option(envvar=f"SMLOCAL_{envvar}", help=help_text)


@app.command()
def serve(
    host: Annotated[str, _opt("HOST", "Address to bind (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, _opt("PORT", "Port to bind.")] = 8080,
    data_dir: Annotated[Path, _opt("DATA_DIR", "Where jobs, logs and the database live.")] = Path(".smlocal"),
    db: Annotated[str | None, _opt("DB", "SQLite file (default: <data-dir>/smlocal.db).")] = None,
    s3_endpoint: Annotated[str | None, _opt(
        "S3_ENDPOINT", "S3-compatible store (e.g. MinIO). Unset: an embedded in-memory store.")] = None,
    s3_access_key: Annotated[str, _opt("S3_ACCESS_KEY", "Access key for the S3 store.")] = "minioadmin",
    s3_secret_key: Annotated[str, _opt("S3_SECRET_KEY", "Secret key for the S3 store.")] = "minioadmin",
    container_s3_endpoint: Annotated[str | None, _opt(
        "CONTAINER_S3_ENDPOINT", "The S3 store's address as seen from training containers.")] = None,
    embedded_s3_port: Annotated[int, _opt("EMBEDDED_S3_PORT", "Port of the embedded S3 store.")] = 9000,
    region: Annotated[str, _opt("REGION", "Region for requests that carry no SigV4 scope.")] = "us-east-1",
    account_id: Annotated[str, _opt("ACCOUNT_ID", "The 12-digit account id in ARNs.")] = "123456789012",
    access_key: Annotated[str | None, _opt("ACCESS_KEY", "Require SigV4 with this access key.")] = None,
    secret_key: Annotated[str | None, _opt("SECRET_KEY", "The secret key that goes with --access-key.")] = None,
    max_concurrent_jobs: Annotated[int | None, _opt(
        "MAX_CONCURRENT_JOBS", "Jobs run at once; more wait in Starting.")] = None,
    stop_grace_seconds: Annotated[float, _opt(
        "STOP_GRACE_SECONDS", "Seconds between SIGTERM and SIGKILL when a job stops.")] = 120.0,
    run_jobs: Annotated[bool, _opt("RUN_JOBS", "Run jobs in Docker (off: API only).")] = True,
    log_level: Annotated[str, _opt("LOG_LEVEL", "Log level.")] = "info",
) -> None:
    """Serve the SageMaker API on HOST:PORT."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if bool(access_key) != bool(secret_key):
        raise typer.BadParameter("--access-key and --secret-key go together")
    # One server per data dir: a second one would adopt and sweep the first one's jobs.
    make_private(data_dir)
    lock = DataDirLock(data_dir)
    try:
        lock.acquire()
    except DataDirInUse as exc:
        console.print(f"[red]smlocal: {escape(str(exc))}[/red]", soft_wrap=True)
        raise typer.Exit(1) from None
    embedded = None
    if not s3_endpoint:
        from server.embedded_s3 import EmbeddedS3

        embedded = EmbeddedS3("127.0.0.1", embedded_s3_port)
        try:
            embedded.start()
        except RuntimeError as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from None
        s3_endpoint = embedded.endpoint
    settings = Settings(
        host=host, port=port, data_dir=data_dir, db=db, region=region, account_id=account_id,
        access_key=access_key, secret_key=secret_key, s3_endpoint=s3_endpoint,
        s3_access_key=s3_access_key, s3_secret_key=s3_secret_key,
        container_s3_endpoint=container_s3_endpoint,
        max_concurrent_jobs=max_concurrent_jobs or default_max_concurrent_jobs(),
        stop_grace_seconds=stop_grace_seconds, run_jobs=run_jobs,
    )

    from server.app import create_app
    from server.store import SchemaTooNew

    try:
        try:
            application = create_app(settings)
        except SchemaTooNew as exc:
            console.print(f"[red]smlocal: {escape(str(exc))}[/red]", soft_wrap=True)
            raise typer.Exit(1) from None
        runner = application.state.runner
        _banner(settings, embedded is not None, runner.check_engine() if runner is not None else None)
        uvicorn.run(application, host=host, port=port, log_level=log_level.lower(),
                    access_log=log_level.lower() == "debug")
    finally:
        if embedded is not None:
            embedded.stop()
        lock.release()


def _banner(settings: Settings, embedded_s3: bool, engine_problem: str | None) -> None:
    shown_host = "localhost" if settings.host in ("127.0.0.1", "0.0.0.0") else settings.host
    api = f"http://{shown_host}:{settings.port}"
    s3_line = settings.s3_endpoint + (" [yellow](embedded, IN-MEMORY: contents are lost on exit)[/yellow]"
                                      if embedded_s3 else "")
    auth = "SigV4 required" if settings.access_key else "any signature accepted"
    jobs = (f"{settings.max_concurrent_jobs} at once, in Docker" if settings.run_jobs
            else "not run (--no-run-jobs)")
    if settings.run_jobs and engine_problem:
        jobs += (f"\n[red]Docker         UNREACHABLE: {escape(engine_problem)}[/red]\n"
                 "               jobs stay InProgress until it answers; smlocal retries (GET /health tells)")
    console.print(Panel.fit(
        f"SageMaker API  {api}\nS3 store       {s3_line}\n"
        f"data dir       {settings.data_dir.resolve()}\ndatabase       {Path(settings.db_path).resolve()}\n"
        f"auth           {auth}\njobs           {jobs}",
        title="smlocal",
    ))
    console.print("Point unmodified AWS tools at it:")
    console.print(f"  export AWS_ENDPOINT_URL_SAGEMAKER={api}", highlight=False)
    console.print(f"  export AWS_ENDPOINT_URL_S3={settings.s3_endpoint}", highlight=False)
    console.print(f"  export AWS_DEFAULT_REGION={settings.region}", highlight=False)
    if not settings.access_key:
        console.print("  export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test", highlight=False)


if __name__ == "__main__":
    app()
