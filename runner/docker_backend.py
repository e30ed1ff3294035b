"""`Backend` on a Docker engine, through the docker SDK. No docker SDK type leaves this module."""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import shutil
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import docker
import requests
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.types import DeviceRequest, IPAMConfig, IPAMPool
from docker.utils import parse_repository_tag
from docker.utils.socket import frames_iter

from runner.backend import (
    STDOUT,
    Backend,
    BackendUnavailable,
    ContainerGone,
    ContainerNotRunning,
    ContainerOutput,
    ContainerRef,
    ContainerSpec,
    ExecSession,
    ImageUnavailable,
    LogChunk,
    NetworkRef,
    SubnetTaken,
)

log = logging.getLogger("smlocal.runner")

# Docker prefixes each line with RFC 3339 nano time when asked for timestamps.
_DOCKER_TS_RE = re.compile(rb"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d) ?")


def split_docker_timestamp(frame: bytes) -> tuple[int | None, bytes]:
    """Split a `docker logs --timestamps` frame into (epoch ms, payload)."""
    m = _DOCKER_TS_RE.match(frame)
    if not m:
        return None, frame
    base, fraction, zone = m.group(1).decode(), (m.group(2) or b"").decode(), m.group(3).decode()
    # datetime keeps microseconds; docker sends nanoseconds.
    iso = f"{base}.{fraction[:6].ljust(6, '0')}{'+00:00' if zone == 'Z' else zone}"
    return int(datetime.fromisoformat(iso).timestamp() * 1000), frame[m.end():]


def remove_quietly(remove: Callable[[], object], what: str) -> None:
    """Remove something of a job's: gone already is fine, any other refusal is logged (cleanup goes on)."""
    with _engine():
        try:
            remove()
        except NotFound:
            pass
        except APIError as e:
            log.warning("could not remove %s: %s", what, e)


def _socket_path(api: Any) -> str | None:
    """The unix socket docker-py talks to the engine through; None over TCP."""
    return getattr(getattr(api, "_custom_adapter", None), "socket_path", None)


def _mount_namespace_problem(api: Any) -> str | None:
    """Why the engine behind `api` would not see what smlocal mounts, or None if it shares smlocal's mount
    namespace. A mount made in a host's folder after dockerd's namespace was made does not show there unless
    the mount propagates, and a container would then see the empty folder beneath: so only an engine whose
    process is found (its unix socket's peer) in this very namespace counts."""
    path = _socket_path(api)
    if not path:
        return "the container engine is reached over TCP, so smlocal cannot tell what it sees"
    try:
        with socket.socket(socket.AF_UNIX) as probe:
            probe.settimeout(2)
            probe.connect(path)
            pid, _uid, _gid = struct.unpack("3i", probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                                   struct.calcsize("3i")))
        theirs, ours = os.readlink(f"/proc/{pid}/ns/mnt"), os.readlink("/proc/self/ns/mnt")
    except OSError as e:
        return f"smlocal cannot tell which mount namespace the container engine runs in ({e})"
    if theirs != ours:
        return "the container engine runs in another mount namespace, where a volume smlocal mounts would not show"
    return None


def _label_filter(labels: dict[str, str]) -> list[str]:
    return [f"{k}={v}" for k, v in labels.items()]


def parse_docker_time(raw: str) -> float | None:
    """Docker's RFC 3339 nano time in epoch seconds (None for the zero time of a container never started)."""
    if not raw or raw.startswith("0001-"):
        return None
    base, _, rest = raw.partition(".")
    fraction = "".join(c for c in rest if c.isdigit())
    zone = rest[len(fraction):] if rest else raw[len(base):]
    zone = "+00:00" if zone in ("Z", "") else zone
    return datetime.fromisoformat(f"{base}.{fraction[:6].ljust(6, '0')}{zone}").timestamp()


def _is_unreachable(e: BaseException) -> bool:
    if isinstance(e, requests.exceptions.ConnectionError):
        return True
    # Raised by the client's constructor when it cannot ask the engine for its API version.
    return isinstance(e, DockerException) and not isinstance(e, APIError) and "Error while fetching server" in str(e)


@contextmanager
def _engine() -> Iterator[None]:
    try:
        yield
    except (requests.exceptions.RequestException, DockerException) as e:
        if _is_unreachable(e):
            raise BackendUnavailable(f"the Docker engine does not answer: {e}") from e
        raise


class _DockerOutput(ContainerOutput):
    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[LogChunk]:
        # With timestamps, each frame is `<RFC 3339 nano> <payload>`: a line, or a 16 KiB part of a longer one.
        for frame in self._stream:
            ts, payload = split_docker_timestamp(frame)
            yield LogChunk(ts, payload)

    def close(self) -> None:
        self._stream.close()


# How long `exit_code()` waits for the engine to mark an exec finished after its output ended.
EXEC_EXIT_WAIT_SECONDS = 5.0


class _DockerExec(ExecSession):
    """`docker exec`: the engine's hijacked connection, stdin one way and the output the other."""

    def __init__(self, api: Any, exec_id: str, sock: Any, tty: bool) -> None:
        self._api = api
        self._id = exec_id
        self._sock = sock
        # Over a unix socket the SDK hands over a SocketIO; writes and shutdowns go to the socket under it.
        self._raw: socket.socket = getattr(sock, "_sock", sock)
        # The client's default timeout would end a shell that is quiet for a minute.
        self._raw.settimeout(None)
        # Without a TTY each frame carries an 8-byte header saying stdout or stderr (the SDK parses it).
        self._frames = frames_iter(sock, tty)
        self._closed = False

    def read(self) -> tuple[int, bytes]:
        try:
            return next(self._frames)
        except StopIteration:
            return STDOUT, b""
        except (OSError, ValueError):
            if self._closed:  # close() from another thread: the end, not an error
                return STDOUT, b""
            raise

    def write(self, data: bytes) -> None:
        self._raw.sendall(data)

    def close_input(self) -> None:
        # A half-close: the engine closes the process's stdin and keeps sending its output.
        self._raw.shutdown(socket.SHUT_WR)

    def resize(self, rows: int, cols: int) -> None:
        with _engine():
            self._api.exec_resize(self._id, height=rows, width=cols)

    def exit_code(self) -> int | None:
        deadline = time.monotonic() + EXEC_EXIT_WAIT_SECONDS
        with _engine():
            while True:
                try:
                    info = self._api.exec_inspect(self._id)
                except NotFound:  # the container went, and its execs with it
                    return None
                if not info.get("Running"):
                    code = info.get("ExitCode")
                    return int(code) if code is not None else None
                if time.monotonic() > deadline:
                    return None
                time.sleep(0.05)

    def close(self) -> None:
        self._closed = True
        try:
            self._raw.shutdown(socket.SHUT_RDWR)  # wakes a read() blocked in another thread
        except OSError:
            pass  # already shut, or the engine hung up first
        self._raw.close()


class DockerBackend(Backend):
    name = "docker"

    def __init__(self, client: docker.DockerClient | None = None, max_pool_size: int = 32) -> None:
        self._client = client
        self._max_pool_size = max_pool_size
        self._lock = threading.Lock()
        self._gpus: int | None = None
        self._mounts_unseen: str | None = None  # why_mounts_unseen's answer, once asked ("" : none)

    @property
    def client(self) -> docker.DockerClient:
        # Made on first use (and again after a failure) so the API serves while Docker is down.
        with self._lock:
            if self._client is None:
                with _engine():
                    # Each running host holds two long-lived connections (its log stream and its wait).
                    self._client = docker.from_env(max_pool_size=self._max_pool_size)
            return self._client

    def _accepts_connections(self) -> bool:
        """A new connection to the engine opens (not one of the pool's kept-alive ones, which a daemon that
        is shutting down still answers on)."""
        api = self.client.api
        path = _socket_path(api)
        try:
            if path:
                with socket.socket(socket.AF_UNIX) as probe:
                    probe.settimeout(2)
                    probe.connect(path)
            else:
                parts = urlsplit(api.base_url.replace("tcp://", "http://"))
                socket.create_connection((parts.hostname, parts.port or 2375), timeout=2).close()
        except OSError:
            return False
        return True

    def why_mounts_unseen(self) -> str | None:
        # Asked once: where dockerd runs does not change while smlocal does (a restart of it is a new process
        # in the same place).
        if self._mounts_unseen is None:
            self._mounts_unseen = _mount_namespace_problem(self.client.api) or ""
        return self._mounts_unseen or None

    def ping(self) -> None:
        try:
            with _engine():
                # Asked on a new connection too: a daemon shutting down still answers on the pool's old ones.
                if not self._accepts_connections():
                    raise BackendUnavailable("the Docker engine does not answer (it accepts no connection)")
                self.client.ping()
        except BackendUnavailable:
            raise
        except DockerException as e:
            raise BackendUnavailable(f"the Docker engine does not answer: {e}") from e

    def gpus(self) -> int:
        # Counted once: the machine's GPUs and its engine's NVIDIA support do not change while smlocal runs.
        if self._gpus is None:
            with _engine():
                self._gpus = _usable_gpus(self.client.info())
        return self._gpus

    def has_image(self, image: str) -> bool:
        with _engine():
            try:
                self.client.api.inspect_image(image)
                return True
            except ImageNotFound:
                return False

    def pull_image(self, image: str) -> None:
        repository, tag = parse_repository_tag(image)
        with _engine():
            try:
                # The SDK sends credentials from ~/.docker/config.json (and its helpers) for the registry.
                self.client.api.pull(repository, tag=tag or "latest")
            except (APIError, DockerException) as e:
                if _is_unreachable(e):
                    raise
                detail = getattr(e, "explanation", None) or str(e)
                raise ImageUnavailable(
                    f"ClientError: Image {image} could not be found locally or pulled: {detail}") from None
        if not self.has_image(image):
            raise ImageUnavailable(f"ClientError: Image {image} could not be found locally or pulled.")

    def import_image(self, tag: str, rootfs: bytes) -> None:
        repository, version = parse_repository_tag(tag)
        with _engine():
            self.client.api.import_image_from_data(rootfs, repository=repository, tag=version or "latest")

    def create_network(self, name: str, labels: dict[str, str], *, subnet: str, internal: bool = False) -> NetworkRef:
        api = self.client.api
        gateway = str(next(ipaddress.ip_network(subnet).hosts()))
        kwargs: dict[str, Any] = {"driver": "bridge", "labels": labels,
                                  # Explicit, so the engine never takes a block of its default pools (runner.subnets).
                                  "ipam": IPAMConfig(pool_configs=[IPAMPool(subnet=subnet, gateway=gateway)])}
        if internal:
            # `internal` alone only stops forwarding out of the bridge: the host's own addresses (the bridge's
            # gateway address, docker0's, every other one) still answer a container, whatever listens on
            # 0.0.0.0 included (checked on Docker 20.10). With no IPv4 address on the bridge the host is not
            # on the containers' network at all ("No route to host"); containers still reach each other, and
            # the embedded DNS does not forward names it does not know.
            kwargs.update(internal=True, options={"com.docker.network.bridge.inhibit_ipv4": "true"})
        with _engine():
            try:
                created = api.create_network(name, **kwargs)
            except APIError as e:
                if "overlaps" in str(e.explanation or e):  # "Pool overlaps with other one on this address space"
                    raise SubnetTaken(f"{subnet}: {e.explanation or e}") from None
                raise
        return NetworkRef(created["Id"], name, dict(labels), subnet, gateway)

    def create(self, spec: ContainerSpec) -> ContainerRef:
        api = self.client.api
        with _engine():
            created = api.create_container(
                spec.image,
                command=spec.command,
                entrypoint=spec.entrypoint,
                name=spec.name,
                hostname=spec.host,
                environment=spec.environment,
                labels=spec.labels,
                detach=True,
                host_config=api.create_host_config(
                    binds={host: {"bind": path, "mode": "ro" if path in spec.read_only else "rw"}
                           for host, path in spec.mounts.items()},
                    sysctls=spec.sysctls or None,
                    network_mode=spec.network,
                    # Lets the algorithm reach smlocal's S3 store on the host, whatever the network (an
                    # isolated job has no route to the host, and no name for it either).
                    extra_hosts={**({} if spec.isolated else {"host.docker.internal": "host-gateway"}),
                                 **spec.peers},
                    shm_size=spec.shm_size,
                    cpuset_cpus=spec.cpuset,
                    mem_limit=spec.memory,
                    memswap_limit=spec.memory,  # no swap beyond the limit: an instance has none
                    device_requests=[DeviceRequest(count=spec.gpus, capabilities=[["gpu"]])] if spec.gpus else None,
                ),
                networking_config=api.create_networking_config(
                    {spec.network: api.create_endpoint_config(aliases=[spec.host], ipv4_address=spec.address)}),
            )
            if spec.uplink is not None:
                try:
                    api.connect_container_to_network(created["Id"], spec.uplink)
                except BaseException:
                    api.remove_container(created["Id"], force=True)
                    raise
        return ContainerRef(created["Id"], spec.name, dict(spec.labels))

    def start(self, container: ContainerRef) -> ContainerRef:
        # Taken before the start, so no line the container prints is older than its `started_at` (the
        # platform's own first lines in its log stream carry this time).
        started_at = time.time()
        with _engine():
            try:
                self.client.api.start(container.id)
            except NotFound:
                raise ContainerGone(container.name) from None
        return ContainerRef(container.id, container.name, container.labels, "running", started_at)

    def wait(self, container: ContainerRef) -> int:
        with _engine():
            try:
                code = int(self.client.api.wait(container.id, timeout=None)["StatusCode"])
            except NotFound:
                raise ContainerGone(container.name) from None
        try:
            with _engine():
                state = self.client.api.inspect_container(container.id)["State"]
        except NotFound:
            raise ContainerGone(container.name) from None
        except BackendUnavailable:
            state = {}
        if code != 0 and (not state or not self._accepts_connections()):
            # An engine that is shutting down (a restart, an upgrade) closes its listener first, then stops
            # its containers, still answering on the connections it had: an exit seen then is the engine's
            # doing. A platform fault (RetryStrategy retries it), not the algorithm's exit.
            raise ContainerGone(f"{container.name} was stopped by the Docker engine shutting down (exit code "
                                f"{code}): the engine restarted or went away while the job ran")
        # `docker rm -f` marks the container for removal before it kills it, so an exit that comes from a
        # removal behind smlocal's back is told from the algorithm's own: a platform fault, as above.
        if state.get("Status") == "removing":
            raise ContainerGone(container.name)
        return code

    def signal(self, container: ContainerRef, sig: str) -> None:
        with _engine():
            try:
                self.client.api.kill(container.id, signal=sig)
            except NotFound:
                pass
            except APIError as e:
                # 409: it already exited, which is what we wanted.
                if e.status_code != 409:
                    raise

    def logs(self, container: ContainerRef, since_ms: int | None = None) -> ContainerOutput:
        kwargs: dict[str, Any] = {"stream": True, "follow": True, "timestamps": True}
        if since_ms is not None:
            kwargs["since"] = since_ms / 1000
        with _engine():
            try:
                return _DockerOutput(self.client.api.logs(container.id, **kwargs))
            except NotFound:
                raise ContainerGone(container.name) from None

    def output(self, container: ContainerRef) -> bytes:
        with _engine():
            try:
                return self.client.api.logs(container.id, stdout=True, stderr=True, stream=False)
            except NotFound:
                raise ContainerGone(container.name) from None

    def exec(self, container: ContainerRef, command: list[str], *, tty: bool, stdin: bool,
             environment: dict[str, str] | None = None) -> ExecSession:
        api = self.client.api
        with _engine():
            try:
                created = api.exec_create(container.id, command, stdout=True, stderr=True, stdin=stdin, tty=tty,
                                          environment=environment or None)
                sock = api.exec_start(created["Id"], tty=tty, socket=True)
            except NotFound:
                raise ContainerGone(container.name) from None
            except APIError as e:
                if e.status_code == 409:  # "Container ... is not running" (or paused, or restarting)
                    raise ContainerNotRunning(container.name) from None
                raise
        return _DockerExec(api, created["Id"], sock, tty)

    def remove(self, container: ContainerRef) -> None:
        with _engine():
            try:
                self.client.api.remove_container(container.id, force=True, v=True)
            except NotFound:
                pass
            except APIError as e:
                if e.status_code != 409:  # removal already in progress
                    log.warning("could not remove container %s: %s", container.name, e)

    def remove_network(self, network: NetworkRef) -> None:
        remove_quietly(lambda: self.client.api.remove_network(network.id), f"network {network.name}")

    def containers(self, labels: dict[str, str]) -> list[ContainerRef]:
        api = self.client.api
        found = []
        with _engine():
            for summary in api.containers(all=True, filters={"label": _label_filter(labels)}):
                try:
                    attrs = api.inspect_container(summary["Id"])
                except NotFound:
                    continue
                state = attrs.get("State") or {}
                labels = dict((attrs.get("Config") or {}).get("Labels") or {})
                exited = state.get("Status") == "exited"
                found.append(ContainerRef(attrs["Id"], attrs.get("Name", "").lstrip("/"), labels,
                                          state.get("Status", "unknown"),
                                          parse_docker_time(state.get("StartedAt") or ""),
                                          parse_docker_time(state.get("FinishedAt") or "") if exited else None,
                                          state.get("ExitCode") if exited else None))
        return found

    def networks(self, labels: dict[str, str] | None = None) -> list[NetworkRef]:
        filters = {"label": _label_filter(labels)} if labels else None
        with _engine():
            return [_network_ref(n) for n in self.client.api.networks(filters=filters)]


def _network_ref(listed: dict[str, Any]) -> NetworkRef:
    """A network as the engine lists it, with its IPv4 subnet if it has one."""
    configs = [c for c in (listed.get("IPAM") or {}).get("Config") or [] if ":" not in c.get("Subnet", ":")]
    subnet = configs[0]["Subnet"] if configs else None
    gateway = configs[0].get("Gateway") if configs else None
    return NetworkRef(listed["Id"], listed["Name"], dict(listed.get("Labels") or {}), subnet, gateway)


# The NVIDIA driver makes one /dev/nvidiaN per GPU (beside nvidiactl, nvidia-uvm...).
_NVIDIA_DEVICE = re.compile(r"nvidia\d+")


def _usable_gpus(info: dict[str, Any], dev: Path = Path("/dev")) -> int:
    """This machine's NVIDIA GPUs, if the engine can hand them out: Docker serves a `gpu` device request
    through the NVIDIA Container Toolkit's hook, which the toolkit's set-up (`nvidia-ctk runtime configure`)
    also registers as the engine's `nvidia` runtime (`docker info`: Runtimes); its hook on the PATH will do."""
    try:
        devices = [d for d in dev.iterdir() if _NVIDIA_DEVICE.fullmatch(d.name)]
    except OSError:
        return 0
    if not devices:
        return 0
    if "nvidia" in (info.get("Runtimes") or {}) or shutil.which("nvidia-container-runtime-hook"):
        return len(devices)
    log.warning("this machine has %d NVIDIA GPUs, but the Docker engine has no NVIDIA runtime (the NVIDIA Container "
                "Toolkit): jobs on GPU instance types run on CPU", len(devices))
    return 0
