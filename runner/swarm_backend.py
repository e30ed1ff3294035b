"""`Backend` on Docker Swarm: each host of a job is a service of one task, on an attachable overlay network.

What the job flow calls a container is a service here (`ContainerRef.id` is the service's id):
- `create` makes it with no replica (SageMaker's instances exist before the algorithm starts; a service of 0
  replicas is that), `start` scales it to one. Restart condition none: a task that ends is not run again.
- Its name and alias on the job's overlay network is the host (`algo-N`); the endpoint mode is DNS round-robin,
  since this kernel has no IPVS (a virtual IP needs it) and a host's name must resolve to its one task anyway.
- `signal(SIGTERM)` scales it back to 0: Swarm sends the stop signal and, after the service's stop grace period
  (`--stop-grace-seconds`), SIGKILL, so the grace is the engine's as on SageMaker. A task's exit code is read
  from its status once it is no longer running.
- Data does not go through the server's disk: `ContainerSpec.volumes` are node-local named volumes, and the
  agent's tasks (runner.agent) stage and upload on the node that runs the host (`ContainerSpec.node`).
- Logs are the service's logs, through the manager, wherever the task runs.

No docker SDK type leaves this module.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from docker.errors import APIError, NotFound
from docker.types import (
    ContainerSpec as SwarmContainerSpec,
)
from docker.types import (
    EndpointSpec,
    IPAMConfig,
    IPAMPool,
    Mount,
    NetworkAttachmentConfig,
    Placement,
    Resources,
    RestartPolicy,
    ServiceMode,
    TaskTemplate,
)

from runner.backend import (
    LABEL_JOB_ARN,
    BackendUnavailable,
    ContainerGone,
    ContainerNotRunning,
    ContainerOutput,
    ContainerRef,
    ContainerSpec,
    ExecSession,
    LogChunk,
    NetworkRef,
    SubnetTaken,
)
from runner.docker_backend import (
    DockerBackend,
    _engine,
    _label_filter,
    parse_docker_time,
    remove_quietly,
    split_docker_timestamp,
)
from runner.node_data import LABEL_NODE

log = logging.getLogger("smlocal.runner")

# Task states after which the task runs no more (Swarm's words).
ENDED_STATES = frozenset({"complete", "failed", "shutdown", "rejected", "orphaned", "remove"})
WAIT_POLL_SECONDS = 0.25
# What a process ended by SIGTERM exits with (128 + 15), for a task Swarm removed when it stopped it.
SIGTERM_EXIT_CODE = 143
# How long a volume may stay in use by the containers of services just removed.
VOLUME_RELEASE_SECONDS = 30.0


# A service's log stream follows the service, not its task: it never ends by itself. Once the task ended, what it
# printed last has this long to arrive through the manager before the stream is closed.
LOG_TAIL_SECONDS = 1.0
# Each frame of a log stream that is not a TTY's: stream id (1 byte), 3 zero bytes, the payload's length (4 bytes).
STREAM_HEADER_SIZE = 8


class _ServiceOutput(ContainerOutput):
    """A service's logs from a point on, ended once its task ended (and its last lines came through).

    Read from the response's socket itself: shutting the socket is the one way to end a read blocked in
    another thread (the SDK's generator cannot be closed while it runs)."""

    def __init__(self, response: Any, sock: Any, ended: Callable[[], bool]) -> None:
        self._response = response
        self._raw: socket.socket = getattr(sock, "_sock", sock)
        self._done = threading.Event()
        threading.Thread(target=self._watch, args=(ended,), name="smlocal-service-logs", daemon=True).start()

    def _watch(self, ended: Callable[[], bool]) -> None:
        while not self._done.wait(WAIT_POLL_SECONDS):
            if ended():
                self._done.wait(LOG_TAIL_SECONDS)
                break
        self.close()

    def __iter__(self) -> Iterator[LogChunk]:
        try:
            # Not a TTY: each frame has the 8-byte header saying stdout or stderr; with timestamps each payload is
            # `<RFC 3339 nano> <line>`.
            while True:
                # Read through urllib3 (the response is chunked), as the SDK's own stream helper does.
                header = self._response.raw.read(STREAM_HEADER_SIZE)
                if len(header) < STREAM_HEADER_SIZE:
                    return
                length = struct.unpack(">BxxxL", header)[1]
                frame = self._response.raw.read(length) if length else b""
                ts, payload = split_docker_timestamp(frame)
                yield LogChunk(ts, payload)
        except Exception:  # noqa: BLE001 - the socket shut under the read (urllib3 says ProtocolError): the end
            if not self._done.is_set():
                raise
        finally:
            self._done.set()

    def close(self) -> None:
        self._done.set()
        try:
            self._raw.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already shut
        self._raw.close()


class NotAManager(Exception):
    """The engine is not a swarm manager; `serve --backend swarm` says how to make it one."""


class SwarmBackend(DockerBackend):
    name = "swarm"
    # Inputs and outputs move on the node that runs the host (runner.agent), never through the server's disk.
    stages_on_node = True

    def __init__(self, *args: Any, stop_grace_seconds: float = 120.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stop_grace_seconds = stop_grace_seconds
        self._next_node = 0

    # ---- the swarm ------------------------------------------------------------------------------------

    def check_manager(self) -> None:
        """NotAManager unless this engine manages a swarm (services can only be made on a manager)."""
        with _engine():
            swarm = self.client.info().get("Swarm") or {}
        if swarm.get("LocalNodeState") != "active" or not swarm.get("ControlAvailable"):
            raise NotAManager(f"the Docker engine is not a swarm manager (swarm state: "
                              f"{swarm.get('LocalNodeState') or 'unknown'})")

    def init_swarm(self, advertise_address: str) -> None:
        """`serve --swarm-init`: make this engine a single-node swarm (more nodes join it later)."""
        with _engine():
            self.client.api.init_swarm(advertise_addr=advertise_address)

    def nodes(self) -> list[str]:
        """The ids of the nodes a host may run on: ready and active, managers and workers alike."""
        with _engine():
            listed = self.client.api.nodes()
        return sorted(n["ID"] for n in listed if (n.get("Status") or {}).get("State") == "ready"
                      and (n.get("Spec") or {}).get("Availability", "active") == "active")

    def place(self, hosts: list[str]) -> dict[str, str]:
        """A node for each host, spreading a job's hosts over the nodes (round robin, from where the previous
        job stopped so that one-host jobs spread too)."""
        nodes = self.nodes()
        if not nodes:
            raise BackendUnavailable("the swarm has no ready node")
        placed = {}
        for host in hosts:
            placed[host] = nodes[self._next_node % len(nodes)]
            self._next_node += 1
        return placed

    # ---- networks ---------------------------------------------------------------------------------------

    def create_network(self, name: str, labels: dict[str, str], *, subnet: str, internal: bool = False) -> NetworkRef:
        # Attachable: the agents' tasks and the algorithm's join it; internal: an isolated job reaches nothing but
        # its own hosts (an overlay has no route out without the node's gateway bridge).
        gateway = None
        with _engine():
            try:
                created = self.client.api.create_network(
                    name, driver="overlay", attachable=True, internal=internal, labels=labels,
                    ipam=IPAMConfig(pool_configs=[IPAMPool(subnet=subnet)]))
            except APIError as e:
                if "overlap" in str(e.explanation or e):
                    raise SubnetTaken(f"{subnet}: {e.explanation or e}") from None
                raise
        return NetworkRef(created["Id"], name, dict(labels), subnet, gateway)

    # ---- hosts as services ---------------------------------------------------------------------------------

    def create(self, spec: ContainerSpec) -> ContainerRef:
        # no_copy: an empty volume stays empty (Docker would copy the image's /opt/ml/model into it, and its mode).
        mounts = [Mount(target=path, source=volume, type="volume", labels=dict(spec.labels),
                        read_only=path in spec.read_only, no_copy=True)
                  for volume, path in spec.volumes.items()]
        # Bind mounts of the node's own paths (the agent's `wipe` task reaches the node's engine through its socket).
        mounts += [Mount(target=path, source=source, type="bind", read_only=path in spec.read_only)
                   for source, path in spec.mounts.items()]
        container = SwarmContainerSpec(
            self._image_id(spec.image), command=spec.entrypoint, args=spec.command, hostname=spec.host,
            env=spec.environment, labels=spec.labels, mounts=mounts,
            stop_grace_period=int(self.stop_grace_seconds * 1e9), sysctls=spec.sysctls or None)
        # The instance type's resources (`--enforce-instance-resources`) as reservations: the scheduler puts the
        # task on a node that has them free.
        cpus = _cpuset_size(spec.cpuset)
        resources = Resources(cpu_reservation=int(cpus * 1e9) if cpus else None, mem_reservation=spec.memory)
        template = TaskTemplate(
            container, resources=resources, restart_policy=RestartPolicy(condition="none"),
            placement=Placement(constraints=[f"node.id=={spec.node}"] if spec.node else None),
            networks=[NetworkAttachmentConfig(spec.network, aliases=[spec.host])] if spec.network else None)
        labels = {**spec.labels, **({LABEL_NODE: spec.node} if spec.node else {})}
        name = service_name(spec.name)
        with _engine():
            created = self.client.api.create_service(
                template, name=name, labels=labels, mode=ServiceMode("replicated", replicas=0),
                endpoint_spec=EndpointSpec(mode="dnsrr"))
        return ContainerRef(created["ID"], name, labels)

    def _image_id(self, image: str) -> str:
        """The image's id: given a tag, each node's engine asks the image's registry for it first (no registry is
        asked for an id); a node has the image by the same id when it was loaded or pulled there."""
        with _engine():
            try:
                return str(self.client.api.inspect_image(image)["Id"])
            except NotFound:
                return image  # not on the manager: the node's engine finds it, or the task is rejected

    def _scale(self, container: ContainerRef, replicas: int) -> None:
        with _engine():
            try:
                service = self.client.api.inspect_service(container.id)
                self.client.api.update_service(container.id, service["Version"]["Index"],
                                               mode=ServiceMode("replicated", replicas=replicas),
                                               fetch_current_spec=True)
            except NotFound:
                raise ContainerGone(container.name) from None

    def start(self, container: ContainerRef) -> ContainerRef:
        started_at = time.time()
        self._scale(container, 1)
        return ContainerRef(container.id, container.name, container.labels, "running", started_at)

    def _task(self, service_id: str) -> dict[str, Any] | None:
        """The service's task (the newest, if Swarm kept several)."""
        with _engine():
            tasks = self.client.api.tasks(filters={"service": service_id})
        return max(tasks, key=lambda t: t.get("CreatedAt", ""), default=None)

    def _scaled_down(self, service_id: str) -> bool:
        with _engine():
            try:
                spec = self.client.api.inspect_service(service_id)["Spec"]
            except NotFound:
                return False
        return ((spec.get("Mode") or {}).get("Replicated") or {}).get("Replicas") == 0

    def _exists(self, service_id: str) -> bool:
        with _engine():
            try:
                self.client.api.inspect_service(service_id)
                return True
            except NotFound:
                return False

    def wait(self, container: ContainerRef) -> int:
        while True:
            if not self._exists(container.id):
                raise ContainerGone(container.name)
            task = self._task(container.id)
            status = (task or {}).get("Status") or {}
            if task is None and self._scaled_down(container.id):
                return SIGTERM_EXIT_CODE  # stopped on another node: Swarm removed its task with the scale-down
            if task is not None and status.get("State") in ENDED_STATES:
                ran = status.get("ContainerStatus") or {}
                code = ran.get("ExitCode")
                if code is None or not ran.get("ContainerID"):
                    # Never ran: rejected (the image is not on the node, a mount failed) or failed before its
                    # container was made (its overlay network's subnet overlaps a network on the node, "fatal task
                    # error"), which Swarm reports with exit code 0. The platform's fault, never a completed host.
                    raise RuntimeError(f"task of {container.name} {status.get('State')}: {status.get('Err')}")
                return int(code)
            time.sleep(WAIT_POLL_SECONDS)

    def signal(self, container: ContainerRef, sig: str) -> None:
        """To the task's container when it runs on this node (its exit code and log stay, as with Docker). On another
        node the engine cannot reach it: SIGTERM scales the service to 0, and Swarm sends SIGTERM and, after the
        service's stop grace period, SIGKILL itself."""
        task = self._task(container.id)
        status = (task or {}).get("Status") or {}
        container_id = (status.get("ContainerStatus") or {}).get("ContainerID")
        if container_id and task is not None and task.get("NodeID") == self.local_node():
            with _engine():
                try:
                    self.client.api.kill(container_id, signal=sig)
                except NotFound:
                    pass
                except APIError as e:
                    if e.status_code != 409:  # it already exited
                        raise
            return
        if sig == "SIGTERM":
            try:
                self._scale(container, 0)
            except ContainerGone:
                pass

    def local_node(self) -> str | None:
        with _engine():
            return (self.client.info().get("Swarm") or {}).get("NodeID")

    def output(self, container: ContainerRef) -> bytes:
        with _engine():
            try:
                chunks = self.client.api.service_logs(container.id, stdout=True, stderr=True, follow=False)
                return b"".join(chunks)
            except NotFound:
                raise ContainerGone(container.name) from None

    def logs(self, container: ContainerRef, since_ms: int | None = None) -> ContainerOutput:
        kwargs: dict[str, Any] = {}
        if since_ms is not None:
            kwargs["since"] = since_ms / 1000
        api = self.client.api
        params = {"details": False, "follow": True, "stdout": True, "stderr": True, "timestamps": True,
                  "tail": "all", "since": kwargs.get("since", 0)}
        with _engine():
            response = api._get(api._url("/services/{0}/logs", container.id), params=params, stream=True)
            if response.status_code == 404:
                raise ContainerGone(container.name)
            api._raise_for_status(response)
            sock = api._get_raw_response_socket(response)
        return _ServiceOutput(response, sock, lambda: self._ended(container))

    def _ended(self, container: ContainerRef) -> bool:
        try:
            task = self._task(container.id)
        except BackendUnavailable:
            return False
        return not self._exists(container.id) or (
            task is not None and ((task.get("Status") or {}).get("State") in ENDED_STATES))

    def exec(self, container: ContainerRef, command: list[str], *, tty: bool, stdin: bool,
             environment: dict[str, str] | None = None) -> ExecSession:
        """A way in (`smlocal shell`) for a host whose task runs on this node; the engine has no exec elsewhere."""
        task = self._task(container.id)
        status = (task or {}).get("Status") or {}
        container_id = (status.get("ContainerStatus") or {}).get("ContainerID")
        if task is None or status.get("State") != "running" or not container_id:
            raise ContainerNotRunning(container.name)
        if task.get("NodeID") != self.local_node():
            raise ContainerNotRunning(f"{container.name} runs on another node of the swarm")
        return super().exec(ContainerRef(container_id, container.name, container.labels), command, tty=tty,
                            stdin=stdin, environment=environment)

    def remove(self, container: ContainerRef) -> None:
        remove_quietly(lambda: self.client.api.remove_service(container.id), f"service {container.name}")

    def containers(self, labels: dict[str, str]) -> list[ContainerRef]:
        found = []
        with _engine():
            services = self.client.api.services(filters={"label": _label_filter(labels)})
        for service in services:
            task = self._task(service["ID"])
            status = (task or {}).get("Status") or {}
            state = status.get("State")
            engine_state = ("running" if state == "running" else "exited" if state in ENDED_STATES
                            else "created")
            started = parse_docker_time(status.get("Timestamp") or "") if state == "running" else None
            found.append(ContainerRef(service["ID"], service["Spec"]["Name"],
                                      dict(service["Spec"].get("Labels") or {}), engine_state, started))
        return found

    def volume_job_arns(self, labels: dict[str, str]) -> set[str]:
        with _engine():
            volumes = (self.client.api.volumes(filters={"label": _label_filter(labels)}) or {}).get("Volumes") or []
        return {(v.get("Labels") or {}).get(LABEL_JOB_ARN, "") for v in volumes} - {""}

    def remove_volumes(self, labels: dict[str, str]) -> None:
        """The job's volumes on this node (the agent removes those on other nodes: runner.agent `wipe`). A removed
        service's task containers go a moment after it: a volume still in use is tried again until they have."""
        deadline = time.monotonic() + VOLUME_RELEASE_SECONDS
        with _engine():
            left = [v["Name"] for v in (self.client.api.volumes(filters={"label": _label_filter(labels)}) or {}).get(
                "Volumes") or []]
            while left:
                in_use = []
                for name in left:
                    try:
                        self.client.api.remove_volume(name, force=True)
                    except NotFound:
                        pass
                    except APIError as e:
                        if e.status_code != 409 or time.monotonic() > deadline:
                            log.warning("could not remove volume %s: %s", name, e)
                        else:
                            in_use.append(name)
                left = in_use
                if left:
                    time.sleep(WAIT_POLL_SECONDS)


def _cpuset_size(cpuset: str | None) -> int:
    """How many CPUs a cpuset in the kernel's list format names ("0-3,6" is 5)."""
    total = 0
    for part in (cpuset or "").split(","):
        if "-" in part:
            low, high = part.split("-")
            total += int(high) - int(low) + 1
        elif part:
            total += 1
    return total


# Swarm's limit on a service's name.
MAX_SERVICE_NAME = 63


def service_name(name: str) -> str:
    """`name`, or (too long for Swarm) its first characters and a hash of all of it, still unique."""
    if len(name) <= MAX_SERVICE_NAME:
        return name
    return f"{name[:MAX_SERVICE_NAME - 9].rstrip('-')}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
