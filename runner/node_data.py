"""A cluster job's data, moved on the node that runs each host by smlocal's agent (runner.agent).

On one engine a host's /opt/ml is a folder of the server's disk, bind-mounted (runner.layout). On a cluster
(`Backend.stages_on_node`) the host may run on another node, so each folder the algorithm would get is a named
volume on that node instead (`volume_name`: the same name for the same folder, so a restarted server finds it),
and the agent's tasks, pinned to the node, mount the volumes at the very paths the server would use on its own
disk: the runner's staging, Pipe, sync and upload code runs unchanged inside them.

A host's life here: `stage` (config files, channels, checkpoints restored) before any algorithm starts; a
`sidecar` while it runs when something must move meanwhile (Pipe FIFOs fed, checkpoints and TensorBoard synced);
`upload` after it exits (the failure file read, the model and output packed and stored: every other host's part
first, then algo-1 merges them into one model.tar.gz); `wipe`, the volumes removed from every node the job used.
Each agent task says what happened in JSON lines on its output (runner.agent_protocol) and is removed once read.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from runner.agent import agent_environment
from runner.agent_protocol import parse_events
from runner.backend import LABEL_HOST, Backend, ContainerRef, ContainerSpec, resource_name
from runner.layout import HostLayout, container_mounts
from smlocal.core.jobspec import JobSpec
from smlocal.core.settings import Settings
from smlocal.core.store import JobRecord

log = logging.getLogger("smlocal.runner")

# The image the agent's tasks run: the smlocal service image (`make images`), which holds the runner's code.
DEFAULT_AGENT_IMAGE = "smlocal/service:dev"
LABEL_AGENT = "smlocal.agent"
# The host an agent's task works for (LABEL_HOST is the algorithm's own: a restarted server adopts only those).
LABEL_AGENT_HOST = "smlocal.agent-host"
# The node a service is pinned to (runner.swarm_backend writes it).
LABEL_NODE = "smlocal.node"
AGENT_COMMAND = ["python3", "-m", "runner.agent"]
DOCKER_SOCKET = "/var/run/docker.sock"


class AgentFailed(Exception):
    """An agent task reported a failure; `reason` is the job's FailureReason (or the platform's)."""

    def __init__(self, reason: str, platform: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.platform = platform


def volume_name(host_path: str) -> str:
    """The node-local volume standing for one of a host's folders (`smlocal-v-<hash of its path>`)."""
    return f"smlocal-v-{hashlib.sha256(host_path.encode()).hexdigest()[:20]}"


@dataclass
class AgentRun:
    host: str
    role: str
    container: ContainerRef


class NodeData:
    def __init__(self, job: JobRecord, spec: JobSpec, settings: Settings, backend: Backend, layouts: list[HostLayout],
                 labels: dict[str, str], image: str = DEFAULT_AGENT_IMAGE) -> None:
        self.job = job
        self.spec = spec
        self.settings = settings
        self.backend = backend
        self.layouts = {layout.host: layout for layout in layouts}
        self.labels = labels  # the job's (no host): the agents are found and removed with the job
        self.image = image
        self.nodes: dict[str, str] = {}
        self._sidecars: list[AgentRun] = []

    # ---- where hosts run, and what they mount -------------------------------------------------------

    def place(self, existing: dict[str, str] | None = None) -> dict[str, str]:
        """A node per host: as the job's services already say (a restarted server), else spread anew."""
        missing = [h for h in self.layouts if h not in (existing or {})]
        self.nodes = {**(existing or {}), **(self.backend.place(missing) if missing else {})}
        return self.nodes

    def adopt(self, containers: list[ContainerRef]) -> None:
        """A restarted server takes the job up: each host stays on its node, its sidecar goes on."""
        self.place({c.host: c.labels[LABEL_NODE] for c in containers
                    if c.host in self.layouts and c.labels.get(LABEL_NODE)})
        self._sidecars = [AgentRun(c.labels.get(LABEL_AGENT_HOST, ""), "sidecar", c) for c in containers
                          if c.labels.get(LABEL_AGENT) == "sidecar"]

    def algorithm_volumes(self, host: str) -> dict[str, str]:
        """Volume -> path in the algorithm's container: one per folder it would get bind-mounted."""
        return {volume_name(source): target for source, target in
                container_mounts(self.layouts[host], self.spec).items()}

    def _agent_volumes(self, host: str) -> dict[str, str]:
        """Volume -> path in the agent's container: the path the folder has on the server's disk."""
        return {volume_name(source): source for source in container_mounts(self.layouts[host], self.spec)}

    # ---- agent tasks ------------------------------------------------------------------------------------

    def _spec(self, host: str, role: str, **extra: object) -> ContainerSpec:
        peers = [h for h in self.layouts if h != host]
        environment = agent_environment(self.job, host, str(self.layouts[host].job_root), self.settings, peers,
                                        **extra)
        labels = {**self.labels, LABEL_AGENT: role, LABEL_AGENT_HOST: host}
        labels.pop(LABEL_HOST, None)
        # On no network of the job's: an agent reaches the S3 store, which an isolated job's network cannot.
        return ContainerSpec(
            image=self.image, name=f"{resource_name(self.job.name)}-{host}-{role}", network="",
            host=f"{host}-{role}", labels=labels, environment=environment, entrypoint=AGENT_COMMAND,
            command=[role], volumes=self._agent_volumes(host), node=self.nodes.get(host))

    def _start(self, host: str, role: str, **extra: object) -> AgentRun:
        container = self.backend.create(self._spec(host, role, **extra))
        return AgentRun(host, role, self.backend.start(container))

    def _finish(self, run: AgentRun) -> list[dict[str, object]]:
        """Wait for an agent task, read what it said, remove it."""
        try:
            code = self.backend.wait(run.container)
            events = parse_events(self.backend.output(run.container).decode("utf-8", errors="replace"))
        finally:
            self.backend.remove(run.container)
        failed = next((e for e in events if e.get("event") == "failed"), None)
        if failed is not None:
            raise AgentFailed(str(failed.get("reason")), platform=code != 1)
        if code != 0:
            raise AgentFailed(f"InternalServerError: the smlocal agent ({run.role}) on {run.host} exited with "
                              f"status {code}", platform=True)
        return events

    def _run_all(self, role: str, hosts: list[str], cancelled: Callable[[], bool], **extra: object
                 ) -> dict[str, list[dict[str, object]]]:
        """One agent task per host at once; every host's events (the first failure raised once all ended)."""
        runs = [self._start(h, role, **extra) for h in hosts]
        results: dict[str, list[dict[str, object]]] = {}
        errors: list[AgentFailed] = []

        def finish(run: AgentRun) -> None:
            try:
                results[run.host] = self._finish(run)
            except AgentFailed as e:
                errors.append(e)
            except Exception as e:  # the engine refused, the task vanished: the platform's fault
                errors.append(AgentFailed(f"InternalServerError: {type(e).__name__}: {e}", platform=True))

        threads = [threading.Thread(target=finish, args=(run,), daemon=True) for run in runs]
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(0.2)
                if cancelled():
                    for run in runs:
                        self.backend.remove(run.container)
        if errors:
            raise next((e for e in errors if not e.platform), errors[0])
        return results

    # ---- the phases ---------------------------------------------------------------------------------------

    def stage(self, cancelled: Callable[[], bool]) -> list[str]:
        """Every host's inputs on its node; the notices to show (a FastFile channel served as File)."""
        results = self._run_all("stage", list(self.layouts), cancelled)
        notices = [str(n) for events in results.values() for e in events if e.get("event") == "staged"
                   for n in e.get("notices") or []]  # type: ignore[union-attr]
        return list(dict.fromkeys(notices))

    def needs_sidecar(self) -> bool:
        return any(c.input_mode == "Pipe" for c in self.spec.channels) or bool(self.spec.synced_folders())

    def start_sidecars(self) -> None:
        if self.needs_sidecar():
            self._sidecars = [self._start(h, "sidecar") for h in self.layouts]

    def stop_sidecars(self) -> None:
        """SIGTERM: the sidecars stop feeding and sync the folders a last time."""
        sidecars, self._sidecars = self._sidecars, []
        for run in sidecars:
            self.backend.signal(run.container, "SIGTERM")
        for run in sidecars:
            try:
                self._finish(run)
            except AgentFailed as e:
                log.warning("training job %s: the sidecar on %s: %s", self.job.name, run.host, e.reason)

    def upload(self, always_model: bool, cancelled: Callable[[], bool]) -> dict[str, str]:
        """The model and output stored (one model.tar.gz for all hosts); each host's failure file text."""
        first, others = "algo-1" if "algo-1" in self.layouts else next(iter(self.layouts)), []
        others = [h for h in self.layouts if h != first]
        results = self._run_all("upload", others, cancelled, always_model=always_model) if others else {}
        results.update(self._run_all("upload", [first], cancelled, always_model=always_model))
        return {host: str(e.get("text")) for host, events in results.items() for e in events
                if e.get("event") == "failure-file"}

    def wipe(self) -> None:
        """The job's volumes, on every node it used: here directly, elsewhere by a task with the node's engine."""
        local = self.backend.local_node()
        volume_labels = dict(self.labels)
        self.backend.remove_volumes(volume_labels)
        for node in sorted(set(self.nodes.values()) - {local}):
            spec = ContainerSpec(
                image=self.image, name=f"{resource_name(self.job.name)}-wipe", network="", host="wipe",
                labels={**self.labels, LABEL_AGENT: "wipe"},
                environment=agent_environment(self.job, "algo-1", "", self.settings, [],
                                              volume_labels=volume_labels),
                entrypoint=AGENT_COMMAND, command=["wipe"], mounts={DOCKER_SOCKET: DOCKER_SOCKET}, node=node)
            run = AgentRun("wipe", "wipe", self.backend.start(self.backend.create(spec)))
            try:
                self._finish(run)
            except Exception as e:
                log.warning("training job %s: volumes on node %s not removed: %s", self.job.name, node, e)
