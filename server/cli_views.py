"""`smlocal jobs`, `smlocal logs`, `smlocal stop`, `smlocal interrupt` and `smlocal shell`: a running server,
through its API.

They use boto3 against the server's endpoint, exactly as any client would, and never open its database.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, NoReturn

import boto3
import typer
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from server import shell_client
from server.services.smlocal.host_access import DEFAULT_COMMAND_TIMEOUT_SECONDS
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


def _session() -> boto3.session.Session:
    # smlocal's own service model is found beside the AWS ones (`smlocal interrupt`).
    return boto3.session.Session(botocore_session=smlocal_session())


# A server started without --access-key accepts any signature; one is still needed to sign.
ANY_KEYS = Credentials("test", "test")


def _credentials(session: boto3.session.Session) -> Credentials:
    return session.get_credentials() or ANY_KEYS


def client(service: str, endpoint: str, region: str, **config: Any) -> Any:
    session = _session()
    keys: dict[str, str] = {}
    if session.get_credentials() is None:
        keys = {"aws_access_key_id": ANY_KEYS.access_key, "aws_secret_access_key": ANY_KEYS.secret_key}
    return session.client(service, endpoint_url=endpoint, region_name=region,
                          config=Config(**{"retries": {"max_attempts": 3, "mode": "standard"}, **config}), **keys)


@contextmanager
def api_errors(endpoint: str) -> Iterator[None]:
    """AWS errors as one readable line and exit code 1, never a traceback."""
    try:
        yield
    except ClientError as e:
        error = e.response.get("Error", {})
        err_console.print(f"[red]error[/red] ({error.get('Code')}): {error.get('Message')}", soft_wrap=True)
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


# ---- smlocal shell --------------------------------------------------------------------------------

# A command that did not end in time exits with this, as `timeout(1)` does.
TIMED_OUT_EXIT = 124


def shell(
    job: Annotated[str, typer.Argument(help="The training job's name.")],
    command: Annotated[list[str] | None, typer.Argument(
        help="A command to run instead of a shell, after `--` (e.g. -- sh -c 'ls /opt/ml').", show_default=False)
    ] = None,
    host: Annotated[str | None, typer.Option(help="The host (algo-1, algo-2, ...); the job's first by default.")
                    ] = None,
    interactive: Annotated[bool, typer.Option(
        "--interactive", "-i", help="Run COMMAND with this terminal's input (and a TTY if it is one), as the "
        "shell runs.")] = False,
    timeout: Annotated[int, typer.Option(
        help="Seconds to wait for COMMAND (without -i) to end; it runs on, detached, after that.")
    ] = DEFAULT_COMMAND_TIMEOUT_SECONDS,
    endpoint_url: Endpoint = DEFAULT_ENDPOINT,
    region: Region = "us-east-1",
) -> None:
    """Open a shell in a running host of a training job, through the server (its Docker engine need not be
    reachable from here), or run COMMAND there and exit with its exit code.

    The job must be InProgress and Training and have remote debugging enabled
    (RemoteDebugConfig={EnableRemoteDebug=true}), as SageMaker requires for `aws ssm start-session`.
    """
    if command and not interactive:
        _execute(job, command, host, timeout, endpoint_url, region)
    session = _session()
    # A terminal on both ends: the remote process gets one too (raw keys, its size); else plain bytes.
    tty = sys.stdin.isatty() and sys.stdout.isatty()
    params: dict[str, Any] = {"TrainingJobName": job, "Tty": tty}
    if host:
        params["HostName"] = host
    if command:
        params["Command"] = command
    if tty and (term := os.environ.get("TERM")):
        params["Environment"] = {"TERM": term}
    with api_errors(endpoint_url):
        started = client("smlocal", endpoint_url, region).start_session(**params)
    try:
        ws = shell_client.open_stream(endpoint_url, started["StreamUrl"], started["TokenValue"], region,
                                      _credentials(session).get_frozen_credentials())
    except shell_client.StreamRefused as e:
        err_console.print(f"[red]error[/red] ({e.code}): {e.message}", soft_wrap=True)
        raise typer.Exit(1) from None
    except OSError as e:
        err_console.print(f"[red]error[/red]: cannot open the session's stream at {endpoint_url}: {e}")
        raise typer.Exit(1) from None
    if tty:  # as `aws ssm start-session` says it
        err_console.print(f"Starting session with SessionId: {started['SessionId']} ({started['HostName']})",
                          soft_wrap=True)
    with ws:
        code = shell_client.relay(ws, tty)
    if tty:
        err_console.print(f"\nExiting session with SessionId: {started['SessionId']}.", soft_wrap=True)
    if code is None:
        err_console.print("[red]error[/red]: the session ended without the process's exit code")
        raise typer.Exit(1)
    raise typer.Exit(code)


def _execute(job: str, command: list[str], host: str | None, timeout: int, endpoint_url: str,
             region: str) -> NoReturn:
    """ExecuteCommand: its output printed as it came (stdout, stderr), then its exit code as ours."""
    params: dict[str, Any] = {"TrainingJobName": job, "Command": command, "TimeoutInSeconds": timeout}
    if host:
        params["HostName"] = host
    # One attempt: a command is not run twice because an answer was slow; the answer takes `timeout`.
    smlocal = client("smlocal", endpoint_url, region, retries={"max_attempts": 1}, read_timeout=timeout + 60)
    with api_errors(endpoint_url):
        result = smlocal.execute_command(**params)
    sys.stdout.write(result.get("StandardOutput", ""))
    sys.stdout.flush()
    sys.stderr.write(result.get("StandardError", ""))
    sys.stderr.flush()
    if result.get("OutputTruncated"):
        err_console.print("[yellow]smlocal: the output was longer than ExecuteCommand keeps (1 MiB each): "
                          "the rest was dropped[/yellow]")
    if result.get("TimedOut"):
        err_console.print(f"[red]error[/red]: the command did not end within {timeout} s (--timeout); it runs on "
                          f"in {result['HostName']}")
        raise typer.Exit(TIMED_OUT_EXIT)
    if "ExitCode" not in result:
        err_console.print("[red]error[/red]: the command ended but its exit code is unknown")
        raise typer.Exit(1)
    raise typer.Exit(result["ExitCode"])


def register(app: typer.Typer) -> None:
    app.command()(jobs)
    app.command()(logs)
    app.command()(stop)
    app.command()(interrupt)
    app.command()(shell)

