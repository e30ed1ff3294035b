"""A stand-in for one Swarm node, for runner.agent's tests: no swarm, plain `docker run`.

A host's folders are named volumes (runner.agent.volume_paths); the agent's containers (the service image,
`python -m runner.agent <command>`) mount each one at its path on the server, the "algorithm" (busybox) at its
path in the container, as the Swarm backend's tasks do. Everything made here carries the node's labels and
goes in `remove_all`, which touches nothing else on the engine.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
from docker.models.containers import Container
from docker.types import Mount

from runner.agent import agent_environment, volume_paths
from runner.agent_protocol import AGENT_ENTRYPOINT, S3Access, agent_command, parse_events
from runner.layout import HostLayout
from smlocal.core.jobspec import JobSpec
from smlocal.core.store import JobRecord
from tests.support.docker_env import BUSYBOX_IMAGE

LABEL = "smlocal.test.agent-node"


def job_record(request: dict[str, Any], name: str) -> JobRecord:
    return JobRecord(name=name, arn=f"arn:aws:sagemaker:us-east-1:123456789012:training-job/{name}",
                     account_id="123456789012", region="us-east-1", request=request, status="InProgress",
                     secondary_status="Downloading", failure_reason=None, creation_time=1_700_000_000.0,
                     last_modified_time=1_700_000_000.0, training_start_time=None, training_end_time=None,
                     runner_state="")


@dataclass
class AgentRun:
    container: Container
    exit_code: int | None = None

    def wait(self, timeout: float = 120.0) -> int:
        result = self.container.wait(timeout=timeout)
        self.exit_code = int(result["StatusCode"])
        return self.exit_code

    def stdout(self) -> str:
        return self.container.logs(stdout=True, stderr=False).decode(errors="replace")

    def stderr(self) -> str:
        return self.container.logs(stdout=False, stderr=True).decode(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        return parse_events(self.stdout().splitlines())

    def named(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events() if e["event"] == event]

    def wait_for_event(self, event: str, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.named(event)
            if found:
                return found[0]
            self.container.reload()
            if self.container.status == "exited":
                break
            time.sleep(0.1)
        raise AssertionError(f"no {event!r} event; stdout:\n{self.stdout()}\nstderr:\n{self.stderr()[-4000:]}")

    def describe(self) -> str:
        return f"exit {self.exit_code}\nstdout:\n{self.stdout()}\nstderr:\n{self.stderr()[-4000:]}"


class AgentNode:
    """Named volumes for the hosts of jobs, the agent's containers and the algorithm's, on this engine."""

    def __init__(self, client: docker.DockerClient, image: str, s3: S3Access) -> None:
        self.client = client
        self.image = image
        self.s3 = s3
        self.labels = {"smlocal.test": "true", LABEL: uuid.uuid4().hex[:12]}
        # (job_root, host) -> host path -> volume name
        self._volumes: dict[tuple[str, str], dict[str, str]] = {}

    # ---- volumes ------------------------------------------------------------------------------------

    def volumes(self, job_root: str, host: str, spec: JobSpec, *, staging: bool = True) -> dict[str, str]:
        """The host's volumes (made on first use): host path -> volume name. `staging`: the agent's own staging
        folder is a volume too (as runner.agent advises)."""
        key = (job_root, host)
        if key not in self._volumes:
            made = {}
            for index, (path, inside) in enumerate(volume_paths(HostLayout(Path(job_root), host), spec).items()):
                if inside is None and not staging:
                    continue
                name = f"smlocal-test-agent-{self.labels[LABEL]}-{len(self._volumes)}-{host}-{index}"
                self.client.volumes.create(name=name, labels=self.labels)
                made[path] = name
            self._volumes[key] = made
        return self._volumes[key]

    # ---- the agent ----------------------------------------------------------------------------------

    def agent(self, record: JobRecord, host: str, job_root: str, command: str, *, peers: tuple[str, ...] = (),
              always_model: bool = False, run: str | None = None, staging: bool = True,
              wait: bool = True) -> AgentRun:
        spec = JobSpec.from_job(record)
        mounts = [Mount(target=path, source=volume, type="volume")
                  for path, volume in self.volumes(job_root, host, spec, staging=staging).items()]
        container = self.client.containers.create(
            self.image, entrypoint=list(AGENT_ENTRYPOINT), command=agent_command(command, always_model=always_model),
            environment=agent_environment(record, host, job_root, self.s3, peers, run=run),
            mounts=mounts, labels=self.labels, detach=True)
        container.start()
        run_ = AgentRun(container)
        if wait:
            run_.wait()
        return run_

    # ---- the algorithm ------------------------------------------------------------------------------

    def algorithm(self, record: JobRecord, host: str, job_root: str, script: str, *,
                  timeout: float = 60.0) -> tuple[int, str]:
        """Run `script` in busybox with the host's volumes at their container paths (no copy of the image's
        content into them, as the backend mounts them); its exit code and output."""
        container = self.start_algorithm(record, host, job_root, script)
        try:
            code = int(container.wait(timeout=timeout)["StatusCode"])
            return code, container.logs().decode(errors="replace")
        finally:
            container.remove(force=True)

    def start_algorithm(self, record: JobRecord, host: str, job_root: str, script: str) -> Container:
        """The same, left running."""
        spec = JobSpec.from_job(record)
        inside = volume_paths(HostLayout(Path(job_root), host), spec)
        mounts = [Mount(target=inside[path], source=volume, type="volume", no_copy=True)
                  for path, volume in self.volumes(job_root, host, spec).items() if inside.get(path)]
        container = self.client.containers.create(BUSYBOX_IMAGE, ["sh", "-c", script], mounts=mounts,
                                                  labels=self.labels, network_mode="none", detach=True)
        container.start()
        return container

    # ---- the end --------------------------------------------------------------------------------------

    def remove_all(self) -> list[str]:
        """Remove every container and volume with this node's labels; what could not be removed."""
        selector = {"label": [f"{LABEL}={self.labels[LABEL]}"]}
        left = []
        for container in self.client.containers.list(all=True, filters=selector):
            try:
                container.remove(force=True)
            except docker.errors.NotFound:
                pass
        for volume in self.client.volumes.list(filters=selector):
            try:
                volume.remove(force=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as e:
                left.append(f"{volume.name}: {e}")
        return left
