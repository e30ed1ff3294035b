"""`smlocal jobs`, `smlocal logs`, `smlocal stop` and `smlocal interrupt`: a running server, through its API.

They use boto3 against the server's endpoint, exactly as any client would, and never open its database.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import boto3
import typer
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from server.services.smlocal.model import smlocal_session
from smlocal.core.lifecycle import TERMINAL_STATUSES
from smlocal.core.logstore import LOG_GROUP

STATUS_STYLE = {"Completed": "green", "Failed": "red", "Stopped": "yellow", "Stopping": "yellow",
                "InProgress": "cyan"}
FOLLOW_POLL_SECONDS = 0.5

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

Endpoint = Annotated[str, typer.Option(
    "--endpoint-url", envvar="SMLOCAL_ENDPOINT_URL", help="The smlocal server to talk to.")]
Region = Annotated[str, typer.Option(
    envvar=["SMLOCAL_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"], help="The region the jobs live in.")]
DEFAULT_ENDPOINT = "http://127.0.0.1:8080"


def client(service: str, endpoint: str, region: str) -> Any:
    # smlocal's own service model is found beside the AWS ones (`smlocal interrupt`).
    session = boto3.session.Session(botocore_session=smlocal_session())
    keys: dict[str, str] = {}
    if session.get_credentials() is None:
        # A server started without --access-key accepts any signature; one is still needed to sign.
        keys = {"aws_access_key_id": "test", "aws_secret_access_key": "test"}
    return session.client(service, endpoint_url=endpoint, region_name=region,
                          config=Config(retries={"max_attempts": 3, "mode": "standard"}), **keys)


@contextmanager
def api_errors(endpoint: str) -> Iterator[None]:
    """AWS errors as one readable line and exit code 1, never a traceback."""
    try:
        yield
    except ClientError as e:
        error = e.response.get("Error", {})
        err_console.print(f"[red]error[/red] ({error.get('Code')}): {error.get('Message')}")
        raise typer.Exit(1) from None
    except EndpointConnectionError:
        err_console.print(f"[red]error[/red]: cannot reach smlocal at {endpoint}: is `smlocal serve` running? "
                          "(--endpoint-url / SMLOCAL_ENDPOINT_URL)")
        raise typer.Exit(1) from None
    except BotoCoreError as e:
        err_console.print(f"[red]error[/red]: {e}")
        raise typer.Exit(1) from None


def _when(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def _status(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, ""))


# ---- smlocal jobs ---------------------------------------------------------------------------------


def jobs(
    status: Annotated[str | None, typer.Option(
        help="Only jobs in this status (InProgress, Completed, Failed, Stopping, Stopped).")] = None,
    name_contains: Annotated[str | None, typer.Option(help="Only jobs whose name contains this.")] = None,
    endpoint_url: Endpoint = DEFAULT_ENDPOINT,
    region: Region = "us-east-1",
) -> None:
    """List training jobs, newest first."""
    sm = client("sagemaker", endpoint_url, region)
    params: dict[str, Any] = {"SortBy": "CreationTime", "SortOrder": "Descending"}
    if status:
        params["StatusEquals"] = status
    if name_contains:
        params["NameContains"] = name_contains
    with api_errors(endpoint_url):
        summaries = [s for page in sm.get_paginator("list_training_jobs").paginate(**params)
                     for s in page["TrainingJobSummaries"]]
    table = Table(title=f"training jobs at {endpoint_url} ({region})", title_justify="left")
    for column in ("name", "status", "secondary status", "created", "ended", "last change"):
        table.add_column(column, no_wrap=column == "name")
    for s in summaries:
        table.add_row(s["TrainingJobName"], _status(s["TrainingJobStatus"]), s.get("SecondaryStatus", ""),
                      _when(s.get("CreationTime")), _when(s.get("TrainingEndTime")),
                      _when(s.get("LastModifiedTime")))
    console.print(table)
    console.print(f"{len(summaries)} job{'s' if len(summaries) != 1 else ''}")


# ---- smlocal logs ---------------------------------------------------------------------------------


class _StreamReader:
    """Reads each of a job's streams forward, remembering where it stopped."""

    def __init__(self, logs: Any, job: str, host: str | None) -> None:
        self.logs = logs
        self.job = job
        self.host = host
        self.tokens: dict[str, str | None] = {}

    def _stream_names(self) -> list[str]:
        names: list[str] = []
        params: dict[str, Any] = {"logGroupName": LOG_GROUP, "logStreamNamePrefix": f"{self.job}/"}
        try:
            while True:
                page = self.logs.describe_log_streams(**params)
                names += [s["logStreamName"] for s in page["logStreams"]]
                if "nextToken" not in page:
                    return names
                params["nextToken"] = page["nextToken"]
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
                return []  # no job here has logged anything yet
            raise

    def _wanted(self, stream: str) -> bool:
        return self.host is None or stream.split("/", 1)[1].rsplit("-", 1)[0] == self.host

    def read_new(self) -> list[tuple[int, str, str]]:
        """(timestamp, host, message) of everything logged since the last call, oldest first."""
        for name in self._stream_names():
            if self._wanted(name):
                self.tokens.setdefault(name, None)
        found: list[tuple[int, str, str]] = []
        for name, token in self.tokens.items():
            host = name.split("/", 1)[1].rsplit("-", 1)[0]
            while True:
                params: dict[str, Any] = {"logGroupName": LOG_GROUP, "logStreamName": name}
                params.update({"nextToken": token} if token else {"startFromHead": True})
                page = self.logs.get_log_events(**params)
                token = page["nextForwardToken"]
                found += [(e["timestamp"], host, e["message"]) for e in page["events"]]
                if not page["events"]:
                    break
            self.tokens[name] = token
        return sorted(found, key=lambda item: item[0])

    @property
    def hosts(self) -> set[str]:
        return {name.split("/", 1)[1].rsplit("-", 1)[0] for name in self.tokens}


def _print_events(events: list[tuple[int, str, str]], show_host: bool) -> None:
    for _timestamp, host, message in events:
        line = Text.assemble((f"[{host}] ", "cyan"), message) if show_host else Text(message)
        console.print(line, soft_wrap=True)


def logs(
    job: Annotated[str, typer.Argument(help="The training job's name.")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the job ends.")] = False,
    host: Annotated[str | None, typer.Option(help="Only this host's log (algo-1, algo-2, ...).")] = None,
    endpoint_url: Endpoint = DEFAULT_ENDPOINT,
    region: Region = "us-east-1",
) -> None:
    """Print a training job's log (every host's, interleaved by time, unless --host is given).

    With --follow, keep printing new lines until the job ends; the exit code is then 1 if it failed.
    """
    sm = client("sagemaker", endpoint_url, region)
    reader = _StreamReader(client("logs", endpoint_url, region), job, host)
    with api_errors(endpoint_url):
        described = sm.describe_training_job(TrainingJobName=job)
        final_pass = not follow
        while True:
            events = reader.read_new()
            _print_events(events, show_host=host is None and len(reader.hosts) > 1)
            if final_pass:
                break
            time.sleep(FOLLOW_POLL_SECONDS)
            described = sm.describe_training_job(TrainingJobName=job)
            # Every line is stored before the job shows a final status: one more read gets the rest.
            final_pass = described["TrainingJobStatus"] in TERMINAL_STATUSES
    if follow:
        _print_end(described)
        if described["TrainingJobStatus"] == "Failed":
            raise typer.Exit(1)


def _print_end(described: dict[str, Any]) -> None:
    status = described["TrainingJobStatus"]
    line = Text.assemble("training job ", (described["TrainingJobName"], "bold"), " ", _status(status),
                         f" ({described.get('SecondaryStatus')})")
    if described.get("FailureReason"):
        line.append(f": {described['FailureReason']}")
    err_console.print(line, soft_wrap=True)


# ---- smlocal stop ---------------------------------------------------------------------------------


def stop(
    job: Annotated[str, typer.Argument(help="The training job's name.")],
    wait: Annotated[bool, typer.Option(help="Wait until the job has stopped.")] = False,
    endpoint_url: Endpoint = DEFAULT_ENDPOINT,
    region: Region = "us-east-1",
) -> None:
    """Stop a training job (SIGTERM, then SIGKILL after the server's grace period)."""
    sm = client("sagemaker", endpoint_url, region)
    with api_errors(endpoint_url):
        sm.stop_training_job(TrainingJobName=job)
        described = sm.describe_training_job(TrainingJobName=job)
        while wait and described["TrainingJobStatus"] not in TERMINAL_STATUSES:
            time.sleep(FOLLOW_POLL_SECONDS)
            described = sm.describe_training_job(TrainingJobName=job)
    console.print(Text.assemble("training job ", (job, "bold"), " ", _status(described["TrainingJobStatus"]),
                                f" ({described['SecondaryStatus']})"))


def interrupt(
    job: Annotated[str, typer.Argument(help="The managed spot training job's name.")],
    endpoint_url: Endpoint = DEFAULT_ENDPOINT,
    region: Region = "us-east-1",
) -> None:
    """Interrupt a spot training job as a capacity reclaim does: SIGTERM and the grace, its checkpoints
    synced, SecondaryStatus Interrupted, then it runs again from them on fresh containers."""
    with api_errors(endpoint_url):
        client("smlocal", endpoint_url, region).interrupt_training_job(TrainingJobName=job)
        described = client("sagemaker", endpoint_url, region).describe_training_job(TrainingJobName=job)
    console.print(Text.assemble("training job ", (job, "bold"), " is being interrupted (",
                                described["SecondaryStatus"], "); it runs again from its checkpoints"))


def register(app: typer.Typer) -> None:
    app.command()(jobs)
    app.command()(logs)
    app.command()(stop)
    app.command()(interrupt)

