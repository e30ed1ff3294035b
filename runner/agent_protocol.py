"""How the server and smlocal's agent (runner.agent) talk: one environment variable in, JSON lines and an exit
code out. Standard library only, so the backend that starts the agent's tasks imports it at no cost.

In: `SMLOCAL_AGENT_JOB`, the JSON of an `AgentJob` (`runner.agent.agent_environment` builds it from a job).
The command line is `AGENT_ENTRYPOINT` + `agent_command(...)`, in the service image (smlocal/service).

Out: one JSON object per line on stdout, `{"event": <Event>, ...}`; `parse_events` finds them in a task's log
(other lines, the agent's own log on stderr, are skipped). The exit code says how the command ended (`Exit`):
- `stage`     -> `staging` {notices} before anything is fetched, then `staged` {notices} | `failed`; the notices are
                 sentences for the job's log and the Downloading transition (a FastFile channel served as File)
- `sidecar`   -> `sidecar-ready` once it feeds the Pipe FIFOs and watches the synced folders; `input-failed`
                 {reason} if a Pipe channel's data breaks off (the server stops the hosts and fails the job with
                 it; the sidecar goes on until SIGTERM); on SIGTERM the last sync of the synced folders, then
                 `synced` | `failed` (the last sync failed: the job's FailureReason, as upload failures are)
- `upload`    -> `failure-file` {text} if the algorithm wrote /opt/ml/output/failure; then `part-uploaded`
                 {uri} on any host but the first, or `uploaded` {model: the ModelArtifacts URI or null when
                 nothing was uploaded, missing: hosts whose part was not there (only without --always-model)} on
                 the first | `failed`
- `wipe`      -> `wiped` {volumes: their names} (the node's engine reached through its socket)
- any command -> `failed` {reason: the FailureReason} with exit 1 (the job's fault: `ClientError: ...`) or 2
                 (smlocal's: `InternalServerError: ...`); `cancelled` with exit 3 after a SIGTERM that came before
                 the work was done (stage, upload).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from enum import IntEnum, StrEnum
from typing import Any

ENV_VAR = "SMLOCAL_AGENT_JOB"
# `wipe`: the labels (JSON object) every volume to remove carries.
WIPE_LABELS_VAR = "SMLOCAL_AGENT_WIPE_LABELS"
# `wipe`: the swarm node id the task was placed on; the engine behind its socket must be that node's.
WIPE_NODE_VAR = "SMLOCAL_AGENT_WIPE_NODE"
# The agent in the service image: its venv's python is first on the PATH (Dockerfile).
AGENT_ENTRYPOINT = ("python", "-m", "runner.agent")
ALWAYS_MODEL_FLAG = "--always-model"


class Command(StrEnum):
    STAGE = "stage"
    SIDECAR = "sidecar"
    UPLOAD = "upload"
    # The job's volumes on this node removed, through the node's engine (its socket mounted in the task).
    WIPE = "wipe"


class Event(StrEnum):
    STAGING = "staging"
    STAGED = "staged"
    SIDECAR_READY = "sidecar-ready"
    INPUT_FAILED = "input-failed"
    SYNCED = "synced"
    FAILURE_FILE = "failure-file"
    PART_UPLOADED = "part-uploaded"
    UPLOADED = "uploaded"
    WIPED = "wiped"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Exit(IntEnum):
    OK = 0
    CLIENT_ERROR = 1  # the `failed` reason is the job's FailureReason as it is (ClientError: ...)
    INTERNAL_ERROR = 2  # InternalServerError: a platform fault (RetryStrategy retries it)
    CANCELLED = 3


@dataclass(frozen=True)
class S3Access:
    """The S3 store as the agent reaches it from its node (the address training containers use)."""

    endpoint: str  # http://host:port
    access_key: str
    secret_key: str
    region: str = "us-east-1"


@dataclass(frozen=True)
class AgentJob:
    """What `SMLOCAL_AGENT_JOB` holds. `job` is enough to rebuild the JobSpec (`JobSpec.from_job`): name, arn,
    account_id, region, creation_time, request. `job_root` is the server's path string of the job's folder
    (`runner.layout.job_root`): the agent's volumes are mounted at the paths `HostLayout(job_root, host)` gives."""

    job: dict[str, Any]
    host: str
    job_root: str
    s3: S3Access
    peers: tuple[str, ...] = ()  # the job's other hosts; the first host's upload collects their parts
    # Set per run of the job (a retry, a spot restart) so that a part a previous run left is never taken.
    run: str | None = None
    always_model: bool = False  # as `--always-model`

    def to_json(self) -> str:
        data = asdict(self)
        data["peers"] = list(self.peers)
        if self.run is None:
            del data["run"]
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> AgentJob:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"{ENV_VAR} is not a JSON object")
        missing = {"job", "host", "job_root", "s3"} - set(data)
        if missing:
            raise ValueError(f"{ENV_VAR} lacks {', '.join(sorted(missing))}")
        s3 = data["s3"]
        return cls(job=dict(data["job"]), host=str(data["host"]), job_root=str(data["job_root"]),
                   s3=S3Access(str(s3["endpoint"]), str(s3["access_key"]), str(s3["secret_key"]),
                               str(s3.get("region") or data["job"].get("region") or "us-east-1")),
                   peers=tuple(str(p) for p in data.get("peers") or ()),
                   run=None if data.get("run") is None else str(data["run"]),
                   always_model=bool(data.get("always_model", False)))


def agent_command(command: Command | str, *, always_model: bool = False) -> list[str]:
    """The task's arguments after `AGENT_ENTRYPOINT`."""
    command = Command(command)
    return [command.value, *([ALWAYS_MODEL_FLAG] if always_model and command is Command.UPLOAD else [])]


def event_line(event: Event, **fields: Any) -> str:
    return json.dumps({"event": event.value, **fields}, separators=(",", ":"))


_EVENTS = {e.value for e in Event}


def parse_events(lines: Iterable[str | bytes]) -> list[dict[str, Any]]:
    """The agent's events in a log, in order. A line may carry a prefix (a timestamp, Swarm's `task@node |`):
    the JSON is read from its first `{`. Lines that are not an event are skipped."""
    events = []
    for line in lines:
        text = line.decode("utf-8", errors="replace") if isinstance(line, bytes) else line
        start = text.find("{")
        if start < 0:
            continue
        try:
            data = json.loads(text[start:])
        except ValueError:
            continue
        if isinstance(data, dict) and data.get("event") in _EVENTS:
            events.append(data)
    return events
