"""A way into a running host (`smlocal shell`): which hosts may be entered, one command run there
(ExecuteCommand), and interactive sessions (StartSession) whose stream server/shell.py carries.

SageMaker's rules, from its developer guide ("Access a training container through AWS Systems Manager (SSM)
for remote debugging", train-remote-debugging.html), kept here:
- a container can be accessed "when the SecondaryStatus of the corresponding training job is Training";
- only with remote debugging enabled: `RemoteDebugConfig.EnableRemoteDebug` at CreateTrainingJob, or turned
  on by UpdateTrainingJob while the job is Downloading or Training. An account can forbid it (the IAM
  condition key `sagemaker:EnableRemoteDebug`), so a job that did not ask for it is not entered here either:
  code and habits made against smlocal then hold on SageMaker, and the error says how to turn it on;
- the target is a host of the job, `algo-1` .. `algo-N` (`sagemaker-training-job:<job>_algo-<n>`).
One difference: SageMaker cannot open a session into a job with EnableNetworkIsolation, because its SSM
agent needs outbound calls; `docker exec` goes through the engine, not the job's network, so here it can,
and what the algorithm itself can reach is unchanged.

The sessions follow SSM's StartSession: a signed API call checks everything and answers a SessionId, a
StreamUrl and a TokenValue; the client then opens the stream once, within SESSION_CONNECT_SECONDS.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from server.aws.context import RequestContext
from smlocal.core.errors import ApiError
from smlocal.core.jobspec import JobSpec
from smlocal.core.lifecycle import IN_PROGRESS, RUNNING, TERMINATING, TRAINING, Lifecycle, training_job_arn

# ExecuteCommand keeps this much of each output; the rest is read and dropped, so the command still ends.
MAX_OUTPUT_BYTES = 1024 * 1024
DEFAULT_COMMAND_TIMEOUT_SECONDS = 300
# A StartSession's token opens its stream once, this soon.
SESSION_CONNECT_SECONDS = 60.0
STREAM_PATH = "/smlocal/sessions"  # StreamUrl: STREAM_PATH/<SessionId>/stream
TOKEN_HEADER = "x-smlocal-session-token"
# StartSession without a Command: the image's bash if it has one (framework images do), else its sh.
DEFAULT_SHELL = ("sh", "-c", "if command -v bash >/dev/null 2>&1; then exec bash; else exec sh; fi")


class HostProcess(Protocol):
    """A process started in a host's container (runner.backend.ExecSession, as the server sees it)."""

    def read(self) -> tuple[int, bytes]: ...

    def write(self, data: bytes) -> None: ...

    def close_input(self) -> None: ...

    def resize(self, rows: int, cols: int) -> None: ...

    def exit_code(self) -> int | None: ...

    def close(self) -> None: ...


class HostExec(Protocol):
    """The runner's `exec_in_host`: None while the host's container does not run."""

    def __call__(self, arn: str, host: str, command: list[str], *, tty: bool, stdin: bool,
                 environment: dict[str, str] | None = None) -> HostProcess | None: ...


@dataclass(frozen=True)
class Target:
    arn: str
    job: str
    host: str


@dataclass(frozen=True)
class Session:
    """A StartSession waiting for its stream to be opened."""

    target: Target
    command: tuple[str, ...]
    tty: bool
    environment: dict[str, str]
    token_digest: bytes
    expires_at: float


@dataclass
class _Capture:
    """One command's output, each stream kept up to `limit` bytes."""

    limit: int
    kept: dict[int, bytearray] = field(default_factory=lambda: {1: bytearray(), 2: bytearray()})
    truncated: bool = False

    def drain(self, process: HostProcess) -> None:
        while True:
            stream, data = process.read()
            if not data:
                return
            kept = self.kept.setdefault(stream, bytearray())
            room = self.limit - len(kept)
            if len(data) > room:
                self.truncated = True
            kept += data[:max(room, 0)]


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class HostAccess:
    def __init__(self, lifecycle: Lifecycle, host_exec: HostExec | None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._lifecycle = lifecycle
        self._exec = host_exec
        self._clock = clock
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def handlers(self) -> dict[str, Callable[[RequestContext, dict[str, Any]], dict[str, Any]]]:
        return {"ExecuteCommand": self.execute_command, "StartSession": self.start_session}

    # ---- the checks -------------------------------------------------------------------------

    def target(self, arn: str, host: str | None) -> Target:
        """The host to enter; the AWS-style error of what is in the way."""
        job = self._lifecycle.get(arn)  # ValidationException "Requested resource not found." as SageMaker's
        spec = JobSpec.from_job(job)
        if job.status != IN_PROGRESS or job.secondary_status != TRAINING:
            raise ApiError("ValidationException", f"Training job {job.name} is not running: it is {job.status} "
                           f"({job.secondary_status}). A host can be entered only while the job is {IN_PROGRESS} "
                           f"and {TRAINING}.")
        host = host or spec.hosts[0]
        if host not in spec.hosts:
            raise ApiError("ValidationException", f"Training job {job.name} has no host {host}: its hosts are "
                           f"{', '.join(spec.hosts)}.")
        if not spec.remote_debug:
            raise ApiError("ValidationException", f"Remote debugging is not enabled for training job {job.name}. "
                           "Enable it with RemoteDebugConfig={EnableRemoteDebug=true} when you create the job, or "
                           "while it is Downloading or Training: aws sagemaker update-training-job "
                           f"--training-job-name {job.name} --remote-debug-config EnableRemoteDebug=true")
        if job.runner_state not in (RUNNING, TERMINATING):
            raise ApiError("ValidationException", f"The containers of training job {job.name} have not started "
                           "yet (the training image is being prepared): try again in a moment.")
        return Target(arn, job.name, host)

    def _start(self, target: Target, command: list[str], *, tty: bool, stdin: bool,
               environment: dict[str, str] | None = None) -> HostProcess:
        process = self._exec(target.arn, target.host, command, tty=tty, stdin=stdin,
                             environment=environment) if self._exec is not None else None
        if process is None:
            raise ApiError("ValidationException", f"Host {target.host} of training job {target.job} is not "
                           "running: its container has exited.")
        return process

    # ---- ExecuteCommand ---------------------------------------------------------------------

    def execute_command(self, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
        target = self.target(training_job_arn(ctx.region, ctx.account_id, params["TrainingJobName"]),
                             params.get("HostName"))
        process = self._start(target, list(params["Command"]), tty=False, stdin=False)
        capture = _Capture(MAX_OUTPUT_BYTES)
        reader = threading.Thread(target=capture.drain, args=(process,), daemon=True,
                                  name=f"smlocal-exec-{target.job}-{target.host}")
        out: dict[str, Any] = {"TrainingJobName": target.job, "HostName": target.host}
        try:
            reader.start()
            reader.join(params.get("TimeoutInSeconds", DEFAULT_COMMAND_TIMEOUT_SECONDS))
            if reader.is_alive():
                out["TimedOut"] = True  # the engine cannot kill an exec: it runs on, detached
            else:
                code = process.exit_code()
                if code is not None:
                    out["ExitCode"] = code
        finally:
            process.close()
            reader.join(5)
        out.update(StandardOutput=capture.kept[1].decode(errors="replace"),
                   StandardError=capture.kept[2].decode(errors="replace"), OutputTruncated=capture.truncated)
        return out

    # ---- StartSession and its stream --------------------------------------------------------

    def start_session(self, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
        target = self.target(training_job_arn(ctx.region, ctx.account_id, params["TrainingJobName"]),
                             params.get("HostName"))
        token = secrets.token_urlsafe(32)
        # SSM's session ids are "<caller>-<random hex>".
        session_id = f"{target.job}-{secrets.token_hex(8)}"
        session = Session(target, tuple(params.get("Command") or DEFAULT_SHELL), bool(params.get("Tty")),
                          dict(params.get("Environment") or {}), _digest(token),
                          self._clock() + SESSION_CONNECT_SECONDS)
        with self._lock:
            self._forget_expired()
            self._sessions[session_id] = session
        return {"SessionId": session_id, "StreamUrl": f"{STREAM_PATH}/{session_id}/stream", "TokenValue": token,
                "HostName": target.host}

    def attach(self, session_id: str, token: str) -> tuple[HostProcess, bool]:
        """The stream of a StartSession is being opened: its process, and whether it has a TTY. The token
        works once; the job and host are checked again (the job may have ended since)."""
        with self._lock:
            self._forget_expired()
            session = self._sessions.get(session_id)
            if session is None or not hmac.compare_digest(session.token_digest, _digest(token)):
                raise ApiError("AccessDeniedException", "The session token is not valid: a session's stream is "
                               f"opened once, within {SESSION_CONNECT_SECONDS:.0f} seconds of StartSession, with "
                               "its TokenValue.", 403)
            del self._sessions[session_id]
        target = self.target(session.target.arn, session.target.host)
        return self._start(target, list(session.command), tty=session.tty, stdin=True,
                           environment=session.environment), session.tty

    def _forget_expired(self) -> None:
        now = self._clock()
        for session_id in [i for i, s in self._sessions.items() if s.expires_at <= now]:
            del self._sessions[session_id]
