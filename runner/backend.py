"""What the job flow asks of a container engine: the `Backend` interface and the values it trades in.

Handles are smlocal's own dataclasses (`ContainerRef`, `NetworkRef`, `LogChunk`); no engine SDK type
crosses this line, so a cluster engine (Docker Swarm, Kubernetes) can implement `Backend` without the
job flow changing. Everything an engine creates for a job carries the labels of `job_labels`, which is
how a restarted server finds (`containers` / `networks`) what to adopt or remove.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field

LABEL_JOB_NAME = "smlocal.job-name"
LABEL_JOB_ARN = "smlocal.job-arn"
LABEL_MANAGED = "smlocal.managed"
LABEL_HOST = "smlocal.host"
# Tells apart the jobs of several smlocal instances (each with its own data dir) on one engine.
LABEL_DATA_DIR = "smlocal.data-dir"


class BackendUnavailable(Exception):
    """The engine does not answer. Jobs keep their state; the runner retries later."""


class ImageUnavailable(Exception):
    """The training image is neither local nor pullable; `reason` is the job's FailureReason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SubnetTaken(Exception):  # noqa: N818
    """The engine already has a network overlapping the subnet asked for (another server took it meanwhile)."""


class ContainerGone(Exception):
    """The container was removed behind smlocal's back."""


class ContainerNotRunning(Exception):  # noqa: N818
    """A command cannot be started in a container that is not running (it has not started, or it exited)."""


@dataclass
class ContainerSpec:
    image: str
    name: str
    network: str
    host: str  # the hostname, and its alias on the job's network
    labels: dict[str, str]
    environment: dict[str, str]
    entrypoint: list[str] | None
    command: list[str] | None
    # host path -> container path
    mounts: dict[str, str] = field(default_factory=dict)
    # Its fixed address on the job's network, and the other hosts' (name -> address) for /etc/hosts.
    address: str | None = None
    peers: dict[str, str] = field(default_factory=dict)
    # EnableNetworkIsolation: on an isolated network (`create_network(internal=True)`), and no name for
    # the host (`host.docker.internal`) either.
    isolated: bool = False
    # Container paths of `mounts` mounted read-only (a FileSystemDataSource channel in `ro` mode).
    read_only: set[str] = field(default_factory=set)
    # A second network it is also on (a VPC job's S3 gateway: the engine's default bridge), and sysctls of its
    # network namespace.
    uplink: str | None = None
    sysctls: dict[str, str] = field(default_factory=dict)
    # What its instance type gives it (smlocal.core.instance_types): /dev/shm's size in bytes (None: the
    # engine's default), NVIDIA GPUs, and under --enforce-instance-resources the CPUs it may run on (a cpuset,
    # in the kernel's list format) and its memory limit in bytes.
    shm_size: int | None = None
    gpus: int = 0
    cpuset: str | None = None
    memory: int | None = None
    # On a cluster (`Backend.stages_on_node`): named volumes (name -> container path) in place of `mounts`, made
    # on the node that runs it, and that node (`Backend.place`).
    volumes: dict[str, str] = field(default_factory=dict)
    node: str | None = None


@dataclass(frozen=True)
class ContainerRef:
    id: str
    name: str
    labels: dict[str, str]
    state: str = "created"  # created | running | exited | paused | ... (the engine's words)
    started_at: float | None = None  # epoch seconds; None if it never started
    finished_at: float | None = None  # epoch seconds, once it exited
    exit_code: int | None = None  # once it exited

    @property
    def host(self) -> str | None:
        return self.labels.get(LABEL_HOST)


@dataclass(frozen=True)
class NetworkRef:
    id: str
    name: str
    labels: dict[str, str]
    # Its IPv4 subnet and gateway (runner.subnets), so containers can get fixed addresses; None for
    # networks smlocal did not make and that have none (host, none).
    subnet: str | None = None
    gateway: str | None = None


@dataclass(frozen=True)
class LogChunk:
    """A piece of a container's output: a whole line (with its newline) or, for long lines, a part of one."""

    timestamp_ms: int | None
    data: bytes


class ContainerOutput(ABC):
    """A container's output from a point on, following it until it exits (`close()` ends it early)."""

    @abstractmethod
    def __iter__(self) -> Iterator[LogChunk]: ...

    @abstractmethod
    def close(self) -> None: ...


STDOUT, STDERR = 1, 2


class ExecSession(ABC):
    """A process started in a running container beside its algorithm (`Backend.exec`): `smlocal shell`.

    With a TTY its output is the terminal's (stdout and stderr as one, marked STDOUT); without one each
    chunk says which of the two it came from."""

    @abstractmethod
    def read(self) -> tuple[int, bytes]:
        """The next chunk of output, as (STDOUT or STDERR, data); data is b"" once the output ended."""

    @abstractmethod
    def write(self, data: bytes) -> None:
        """To its stdin (a session started with `stdin`)."""

    @abstractmethod
    def close_input(self) -> None:
        """End of its stdin: a shell reading commands from it exits."""

    @abstractmethod
    def resize(self, rows: int, cols: int) -> None:
        """The size of its TTY (a session started with `tty`)."""

    @abstractmethod
    def exit_code(self) -> int | None:
        """Its exit code once the output ended (None if the engine cannot say)."""

    @abstractmethod
    def close(self) -> None:
        """Detach (a `read()` blocked in another thread returns b""); the process may go on running."""


class Backend(ABC):
    """A container engine, as the job flow uses it. Every method may raise BackendUnavailable."""

    # What GET /health and the banner call it (`serve --backend`).
    name = "engine"
    # False: a host's /opt/ml is a folder of the server's disk, bind-mounted. True (a cluster): the job's data moves
    # on the node that runs each host, in volumes there, by smlocal's agent (runner.node_data).
    stages_on_node = False
    # Whether a host's folder gets a file system of VolumeSizeInGB (runner.volumes): not for a backend whose
    # "algorithm" writes nothing of a size a volume would bound (simulated: ~45 ms a host for nothing).
    sizes_volumes = True

    def place(self, hosts: list[str]) -> dict[str, str]:
        """The node each host runs on (a cluster's); one engine has one node, which needs no name."""
        return {}

    def remove_volumes(self, labels: dict[str, str]) -> None:
        """Remove the volumes carrying these labels (a cluster job's, on this node); none made elsewhere."""
        return None

    def volume_job_arns(self, labels: dict[str, str]) -> set[str]:
        """The jobs (their ARNs) that have volumes carrying these labels on this node (a cluster's); none made here."""
        return set()

    def local_node(self) -> str | None:
        """The id of the node this server's engine is (a cluster's); None for a lone engine."""
        return None

    def why_mounts_unseen(self) -> str | None:
        """None if a file system smlocal mounts in a host's folder shows in the containers (the engine shares
        smlocal's mount namespace), else why it would not (runner.volumes)."""
        return None

    def output(self, container: ContainerRef) -> bytes:
        """Everything an exited container printed (stdout and stderr), without following it."""
        raise NotImplementedError

    @abstractmethod
    def ping(self) -> None:
        """Return if the engine answers, else raise BackendUnavailable (with what is wrong)."""

    def gpus(self) -> int:
        """The NVIDIA GPUs the engine can give a container (`ContainerSpec.gpus`); none unless it says so."""
        return 0

    @abstractmethod
    def has_image(self, image: str) -> bool: ...

    @abstractmethod
    def pull_image(self, image: str) -> None:
        """Fetch the image; ImageUnavailable (with the FailureReason) when it cannot be had."""

    @abstractmethod
    def import_image(self, tag: str, rootfs: bytes) -> None:
        """Make an image `tag` whose file tree is the tar `rootfs` (smlocal's own helper images; nothing pulled)."""

    @abstractmethod
    def create_network(self, name: str, labels: dict[str, str], *, subnet: str, internal: bool = False) -> NetworkRef:
        """A bridge network on `subnet` (its first address the gateway), so containers on it can be given
        addresses (`ContainerSpec.address`); SubnetTaken if the engine has a network overlapping it. With
        `internal`, its containers reach each other and nothing else: not the host, not the S3 store, not
        the internet."""

    @abstractmethod
    def create(self, spec: ContainerSpec) -> ContainerRef: ...

    @abstractmethod
    def start(self, container: ContainerRef) -> ContainerRef:
        """Start it; the returned ref has `started_at`."""

    @abstractmethod
    def wait(self, container: ContainerRef) -> int:
        """Block until a started container exits; its exit code. ContainerGone if it was removed."""

    @abstractmethod
    def signal(self, container: ContainerRef, sig: str) -> None:
        """Send SIGTERM / SIGKILL; a container that already exited is not an error."""

    @abstractmethod
    def logs(self, container: ContainerRef, since_ms: int | None = None) -> ContainerOutput: ...

    @abstractmethod
    def exec(self, container: ContainerRef, command: list[str], *, tty: bool, stdin: bool,
             environment: dict[str, str] | None = None) -> ExecSession:
        """Start `command` in the running container; ContainerNotRunning if it is not, ContainerGone if it
        was removed."""

    @abstractmethod
    def remove(self, container: ContainerRef) -> None:
        """Remove it, running or not; one already gone is not an error."""

    @abstractmethod
    def remove_network(self, network: NetworkRef) -> None: ...

    @abstractmethod
    def containers(self, labels: dict[str, str]) -> list[ContainerRef]:
        """Every container (running or not) carrying all these labels."""

    @abstractmethod
    def networks(self, labels: dict[str, str] | None = None) -> list[NetworkRef]:
        """The networks carrying all these labels (every network of the engine without any), with their subnets."""


def job_labels(job_name: str, job_arn: str, host: str | None, data_dir: str) -> dict[str, str]:
    """A container's labels (with its host), or the job network's (host None)."""
    labels = {LABEL_JOB_NAME: job_name, LABEL_JOB_ARN: job_arn, LABEL_MANAGED: "true", LABEL_DATA_DIR: data_dir}
    if host is not None:
        labels[LABEL_HOST] = host
    return labels


def resource_name(job_name: str) -> str:
    """`smlocal-<job>-<shortid>`: unique on the engine even when a job name is reused."""
    return f"smlocal-{job_name}-{uuid.uuid4().hex[:8]}"


def container_command(entrypoint: tuple[str, ...] | list[str] | None, arguments: tuple[str, ...] | list[str] | None,
                      ) -> tuple[list[str] | None, list[str] | None]:
    """(entrypoint, command) exactly as SageMaker invokes the image.

    `train` by default; ContainerEntrypoint replaces the image's entrypoint and drops `train`;
    ContainerArguments replace `train`. With an entrypoint given, Docker does not fall back to the
    image's CMD, so no command means none.
    """
    if entrypoint:
        return list(entrypoint), list(arguments) if arguments else None
    return None, list(arguments) if arguments else ["train"]
