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
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from runner.agent import agent_environment, volume_paths
from runner.agent_protocol import (
    AGENT_ENTRYPOINT,
    WIPE_LABELS_VAR,
    WIPE_NODE_VAR,
    Command,
    Event,
    Exit,
    S3Access,
    agent_command,
    parse_events,
)
from runner.backend import LABEL_HOST, Backend, ContainerRef, ContainerSpec, resource_name
from runner.host_address import container_s3_endpoint
from runner.layout import HostLayout
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
DOCKER_SOCKET = "/var/run/docker.sock"
# How long a sidecar has to say it is ready before the algorithm starts anyway (it feeds Pipe FIFOs, which the
# algorithm's open waits for).
SIDECAR_READY_SECONDS = 60.0


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
        self.attempt = job.attempt
        # The network the agents' tasks join to reach the S3 store: the job's overlay (every node's gateway bridge
        # is its way out), or none for an isolated job's internal one (the node's default bridge then).
        self.network = ""
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
        """Volume -> path in the algorithm's container: one per folder it would get bind-mounted (not the agent's
        own staging folder)."""
        return {volume_name(source): target for source, target in
                volume_paths(self.layouts[host], self.spec).items() if target is not None}

    def _agent_volumes(self, host: str) -> dict[str, str]:
        """Volume -> path in the agent's container: the path the folder has on the server's disk."""
        return {volume_name(source): source for source in volume_paths(self.layouts[host], self.spec)}

    def _s3(self) -> S3Access:
        endpoint = container_s3_endpoint(self.settings) or ""
        return S3Access(endpoint, self.settings.s3_access_key, self.settings.s3_secret_key, self.job.region)

    # ---- agent tasks ------------------------------------------------------------------------------------

    def _spec(self, host: str, role: str, always_model: bool = False) -> ContainerSpec:
        peers = [h for h in self.layouts if h != host]
        # `run`: this run's parts are never an earlier run's (a retry, a spot restart).
        environment = agent_environment(self.job, host, str(self.layouts[host].job_root), self._s3(), peers,
                                        run=str(self.attempt), always_model=always_model)
        labels = {**self.labels, LABEL_AGENT: role, LABEL_AGENT_HOST: host}
        labels.pop(LABEL_HOST, None)
        return ContainerSpec(
            image=self.image, name=f"{resource_name(self.job.name)}-{host}-{role}", network=self.network,
            host=f"{host}-{role}", labels=labels, environment=environment, entrypoint=list(AGENT_ENTRYPOINT),
            command=agent_command(role, always_model=always_model), volumes=self._agent_volumes(host),
            node=self.nodes.get(host))

    def _start(self, host: str, role: str, always_model: bool = False) -> AgentRun:
        container = self.backend.create(self._spec(host, role, always_model))
        return AgentRun(host, role, self.backend.start(container))

    def _events(self, run: AgentRun) -> list[dict[str, Any]]:
        return parse_events(self.backend.output(run.container).decode("utf-8", errors="replace").splitlines())

    def _finish(self, run: AgentRun) -> list[dict[str, Any]]:
        """Wait for an agent task, read what it said, remove it."""
        try:
            code = self.backend.wait(run.container)
            events = self._events(run)
        finally:
            self.backend.remove(run.container)
        failed = next((e for e in events if e.get("event") == Event.FAILED), None)
        if failed is not None:
            raise AgentFailed(str(failed.get("reason")), platform=code != Exit.CLIENT_ERROR)
        if code != Exit.OK:
            raise AgentFailed(f"InternalServerError: the smlocal agent ({run.role}) on {run.host} exited with "
                              f"status {code}", platform=True)
        return events

    def _run_all(self, role: str, hosts: list[str], cancelled: Callable[[], bool], always_model: bool = False,
                 started: Callable[[list[AgentRun]], None] | None = None) -> dict[str, list[dict[str, Any]]]:
        """One agent task per host at once; every host's events (the first failure raised once all ended).
        `started(runs)` is called once they all run."""
        runs = [self._start(h, role, always_model) for h in hosts]
        if started is not None:
            started(runs)
        results: dict[str, list[dict[str, Any]]] = {}
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

    def stage(self, cancelled: Callable[[], bool], downloading: Callable[[list[str]], None]) -> None:
        """Every host's inputs on its node. `downloading(notices)` once each agent said, before fetching anything,
        what it will not serve as asked (a FastFile channel served as File): the Downloading phase begins."""
        def said(runs: list[AgentRun]) -> None:
            notices: list[str] = []
            waiting = list(runs)
            while waiting and not cancelled():
                for run in list(waiting):
                    events = self._events(run)
                    first = next((e for e in events if e.get("event") in (Event.STAGING, Event.FAILED)), None)
                    if first is not None or self._ended(run):
                        notices += [str(n) for n in (first or {}).get("notices") or []]
                        waiting.remove(run)
                if waiting:
                    time.sleep(0.1)
            downloading(list(dict.fromkeys(notices)))

        self._run_all(Command.STAGE, list(self.layouts), cancelled, started=said)

    def _ended(self, run: AgentRun) -> bool:
        refs = [c for c in self.backend.containers({LABEL_AGENT_HOST: run.host, LABEL_AGENT: run.role,
                                                    **self.labels}) if c.id == run.container.id]
        return not refs or refs[0].state == "exited"

    def needs_sidecar(self) -> bool:
        return any(c.input_mode == "Pipe" for c in self.spec.channels) or bool(self.spec.synced_folders())

    def start_sidecars(self, cancelled: Callable[[], bool]) -> None:
        """A sidecar per host, each ready (feeding its FIFOs, watching its folders) before the algorithms start."""
        if not self.needs_sidecar():
            return
        self._sidecars = [self._start(h, Command.SIDECAR) for h in self.layouts]
        deadline = time.monotonic() + SIDECAR_READY_SECONDS
        waiting = list(self._sidecars)
        while waiting and time.monotonic() < deadline and not cancelled():
            waiting = [run for run in waiting
                       if not any(e.get("event") == Event.SIDECAR_READY for e in self._events(run))]
            if waiting:
                time.sleep(0.2)

    def input_failure(self) -> str | None:
        """A Pipe channel's data that broke off while the algorithm ran (a sidecar said so)."""
        for run in self._sidecars:
            failed = next((e for e in self._events(run) if e.get("event") == Event.INPUT_FAILED), None)
            if failed is not None:
                return str(failed.get("reason"))
        return None

    def stop_sidecars(self) -> None:
        """SIGTERM, from the last host to the first, each waited for: the sidecars stop feeding and sync the
        folders a last time (algo-1's copy of a file two hosts synced is the one left, as on one engine)."""
        sidecars, self._sidecars = self._sidecars, []
        for run in reversed(sidecars):
            self.backend.signal(run.container, "SIGTERM")
            try:
                self._finish(run)
            except AgentFailed as e:
                log.warning("training job %s: the sidecar on %s: %s", self.job.name, run.host, e.reason)

    def upload(self, always_model: bool, cancelled: Callable[[], bool]) -> dict[str, str]:
        """The model and output stored (one model.tar.gz for all hosts); each host's failure file text."""
        first = "algo-1" if "algo-1" in self.layouts else next(iter(self.layouts))
        others = [h for h in self.layouts if h != first]
        results = self._run_all(Command.UPLOAD, others, cancelled, always_model) if others else {}
        results.update(self._run_all(Command.UPLOAD, [first], cancelled, always_model))
        return {host: str(e.get("text")) for host, events in results.items() for e in events
                if e.get("event") == Event.FAILURE_FILE}

    def wipe(self) -> None:
        """The job's volumes, on every node it used: here directly, elsewhere by a task with the node's engine."""
        local = self.backend.local_node()
        volume_labels = dict(self.labels)
        self.backend.remove_volumes(volume_labels)
        for node in sorted(set(self.nodes.values()) - {local}):
            spec = ContainerSpec(
                image=self.image, name=f"{resource_name(self.job.name)}-wipe", network="", host="wipe",
                labels={**self.labels, LABEL_AGENT: Command.WIPE},
                environment={WIPE_LABELS_VAR: json.dumps(volume_labels), WIPE_NODE_VAR: node},
                entrypoint=list(AGENT_ENTRYPOINT), command=agent_command(Command.WIPE),
                mounts={DOCKER_SOCKET: DOCKER_SOCKET}, node=node)
            run = AgentRun("wipe", "wipe", self.backend.start(self.backend.create(spec)))
            try:
                self._finish(run)
            except Exception as e:
                log.warning("training job %s: volumes on node %s not removed: %s", self.job.name, node, e)
