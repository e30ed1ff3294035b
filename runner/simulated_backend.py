"""`Backend` without a container engine (`serve --backend simulated`): each container is a record and a thread
that plays the job's script (smlocal.core.simulation) against the same clock a real algorithm would run on.

Everything around the container is the real code: the runner validates, stages the inputs, creates "containers"
with their mounts, follows their output into CloudWatch Logs and metrics, stops them with SIGTERM and the grace,
uploads what they left in /opt/ml/model. The simulated algorithm, on host `algo-N` of a job:

- prints the script's log lines, spread evenly over `training_seconds` (line i at i/n of it), each with the time
  it was printed, as Docker's timestamped log stream would;
- Completed: at `training_seconds` writes a small model (`model.json`) into its /opt/ml/model and exits 0;
- Failed: at `training_seconds` prints `ERROR: <reason>`, writes the reason to /opt/ml/output/failure and exits
  1, so the runner reads it as SageMaker does (`AlgorithmError: <reason>, exit code: 1`, runner.failure);
- MaxRuntimeExceeded: never ends by itself. At `training_seconds` the job's MaxRuntimeInSeconds clock is brought
  forward: the backend asks the lifecycle for the stop the runner's clock makes when MaxRuntimeInSeconds runs
  out (`stop_at_deadline`: Stopping, SIGTERM and the grace, Stopped/MaxRuntimeExceeded). A job whose own
  MaxRuntimeInSeconds is shorter is stopped by the runner's clock first, as any job;
- Interrupted (managed spot jobs only): halfway through `training_seconds` of the job's first run it asks for a
  spot interruption, as `smlocal interrupt` does (`Lifecycle.request_interrupt`); the runner carries it out
  (SIGTERM, Interrupted, a new run), and the new run, the job having been interrupted once, completes;
- SIGTERM (a stop, a deadline, an interruption): prints that it saves its model, writes it, exits 0 at once, as
  a well-behaved algorithm does within the grace; SIGKILL: exits 137 at once, nothing written.

A container with no host label (a VPC job's S3 gateway, runner.vpc) runs until it is signalled or removed.

The containers outlive the server process as Docker's do: each record is kept in
`<data-dir>/simulated/containers/<id>.json` (written at create, start and exit). A restarted server loads them,
and a container started before the restart goes on from where its schedule is by the clock (lines whose time
passed are in its output with their own times; if its end passed, it exited then), so the runner's recovery
adopts it exactly as it adopts a Docker container. Networks are records in memory only: a restarted server's
pool makes new ones, and the old names, released or swept, are not errors.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.backend import (
    LABEL_HOST,
    LABEL_JOB_ARN,
    LABEL_JOB_NAME,
    STDOUT,
    Backend,
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
from smlocal.core.errors import ApiError
from smlocal.core.lifecycle import MAX_RUNTIME_EXCEEDED, IllegalTransition, Lifecycle
from smlocal.core.simulation import COMPLETED, FAILED, INTERRUPTED, Rules, Script, job_tags, script_for

log = logging.getLogger("smlocal.runner")

# MAX_RUNTIME_EXCEEDED (the lifecycle's) is also the scripted outcome's name (smlocal.core.simulation): the outcome
# is named after the SecondaryStatus it ends in.

NAME = "simulated"
STATE_FOLDER = "simulated"
MODEL_FILE = "model.json"
MODEL_MOUNT = "/opt/ml/model"
OUTPUT_MOUNT = "/opt/ml/output"
FAILED_EXIT = 1
KILLED_EXIT = 128 + 9
TERMINATED_EXIT = 128 + 15  # a service container (no algorithm) ends as a shell's child does on SIGTERM
SIGTERM_LINE = "SIGTERM received: saving the model to /opt/ml/model and exiting"


@dataclass
class _Container:
    """One simulated container, as persisted (`to_json`) plus what only this process holds."""

    id: str
    name: str
    labels: dict[str, str]
    image: str
    mounts: dict[str, str]  # host path -> container path
    script: Script | None  # None: no algorithm (a service container)
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    # Lines printed beside the script's (the SIGTERM notice, the error), as (epoch ms, line).
    extra: list[tuple[int, str]] = field(default_factory=list)
    printed: int = 0  # the script's lines printed so far
    # This process only.
    output: list[tuple[int, str]] = field(default_factory=list)
    signal: str | None = None
    removed: bool = False
    gone: bool = False  # it was removed while it ran: its wait says ContainerGone
    asked: bool = False  # the interruption or the deadline was asked for (the lifecycle keeps it anyway)
    exited: threading.Event = field(default_factory=threading.Event)

    @property
    def state(self) -> str:
        if self.finished_at is not None:
            return "exited"
        return "running" if self.started_at is not None else "created"

    def ref(self) -> ContainerRef:
        return ContainerRef(self.id, self.name, dict(self.labels), self.state, self.started_at)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "labels": self.labels, "image": self.image, "mounts": self.mounts,
                "script": self.script.to_json() if self.script is not None else None,
                "created_at": self.created_at, "started_at": self.started_at, "finished_at": self.finished_at,
                "exit_code": self.exit_code, "extra": self.extra, "printed": self.printed}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> _Container:
        script = data.get("script")
        return cls(data["id"], data["name"], dict(data["labels"]), data["image"], dict(data["mounts"]),
                   Script.from_json(script) if script else None, data["created_at"], data.get("started_at"),
                   data.get("finished_at"), data.get("exit_code"), [(int(t), str(s)) for t, s in data.get("extra", [])],
                   int(data.get("printed", 0)))

    def host_folder(self, container_path: str) -> Path | None:
        return next((Path(host) for host, path in self.mounts.items() if path == container_path), None)

    def schedule(self) -> list[tuple[float, str]]:
        """The script's lines, each with its offset from the start."""
        if self.script is None:
            return []
        lines, seconds = self.script.log, self.script.training_seconds
        return [(seconds * i / len(lines), line) for i, line in enumerate(lines)]


class _Output(ContainerOutput):
    """A container's output from `since_ms` on, following it until it exits (or is removed, or closed)."""

    def __init__(self, container: _Container, cond: threading.Condition, since_ms: int | None) -> None:
        self._c = container
        self._cond = cond
        self._since = since_ms
        self._closed = False

    def __iter__(self) -> Iterator[LogChunk]:
        index = 0
        while True:
            with self._cond:
                while (not self._closed and index >= len(self._c.output)
                       and self._c.finished_at is None and not self._c.removed):
                    self._cond.wait()
                if self._closed:
                    return
                if index >= len(self._c.output):
                    return  # it exited (or went) and everything it printed was given
                ts, line = self._c.output[index]
            index += 1
            if self._since is None or ts >= self._since:
                yield LogChunk(ts, (line + "\n").encode())

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class _NoShell(ExecSession):
    """`smlocal shell` into a simulated container: there is no process to run a command in; it says so."""

    def __init__(self, host: str, command: list[str]) -> None:
        self._pending = (f"smlocal: {host} is a simulated container (serve --backend simulated): there is no "
                         f"shell to run {' '.join(command)!r} in\n").encode()

    def read(self) -> tuple[int, bytes]:
        data, self._pending = self._pending, b""
        return STDOUT, data

    def write(self, data: bytes) -> None:
        pass

    def close_input(self) -> None:
        pass

    def resize(self, rows: int, cols: int) -> None:
        pass

    def exit_code(self) -> int | None:
        return 126  # the shell's "command cannot be executed"

    def close(self) -> None:
        self._pending = b""


class SimulatedBackend(Backend):
    name = NAME
    sizes_volumes = False

    def __init__(self, data_dir: Path | str, lifecycle: Lifecycle, rules: Rules | None = None) -> None:
        self._lifecycle = lifecycle
        self._rules = rules
        self._folder = Path(data_dir).resolve() / STATE_FOLDER / "containers"
        self._folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self._folder.parent, 0o700)
        # One lock for every record: their changes are tiny, and iterators wait on it.
        self._cond = threading.Condition()
        self._containers: dict[str, _Container] = {}
        self._networks: dict[str, NetworkRef] = {}
        self._load()

    # ---- the engine -------------------------------------------------------------------------------

    def ping(self) -> None:
        pass  # nothing to reach

    def has_image(self, image: str) -> bool:
        return True  # any image "is" local: nothing is pulled, nothing runs it

    def pull_image(self, image: str) -> None:
        pass

    def import_image(self, tag: str, rootfs: bytes) -> None:
        pass

    def create_network(self, name: str, labels: dict[str, str], *, subnet: str, internal: bool = False) -> NetworkRef:
        wanted = ipaddress.ip_network(subnet)
        gateway = str(next(wanted.hosts()))
        with self._cond:
            taken = next((n for n in self._networks.values()
                          if n.subnet and ipaddress.ip_network(n.subnet).overlaps(wanted)), None)
            if taken is not None:
                raise SubnetTaken(f"{subnet}: overlaps {taken.name} ({taken.subnet})")
            network = NetworkRef(uuid.uuid4().hex, name, dict(labels), subnet, gateway)
            self._networks[network.id] = network
        return network

    def remove_network(self, network: NetworkRef) -> None:
        with self._cond:
            for key, known in list(self._networks.items()):
                if key == network.id or known.name == network.name:
                    del self._networks[key]

    def networks(self, labels: dict[str, str] | None = None) -> list[NetworkRef]:
        with self._cond:
            return [n for n in self._networks.values() if _has_labels(n.labels, labels or {})]

    def create(self, spec: ContainerSpec) -> ContainerRef:
        container = _Container(uuid.uuid4().hex, spec.name, dict(spec.labels), spec.image, dict(spec.mounts),
                               self._script(spec), time.time())
        with self._cond:
            self._containers[container.id] = container
            self._save(container)
        return container.ref()

    def start(self, container: ContainerRef) -> ContainerRef:
        c = self._get(container)
        with self._cond:
            if c.started_at is None:
                c.started_at = time.time()
                self._save(c)
        self._run(c)
        return c.ref()

    def wait(self, container: ContainerRef) -> int:
        c = self._get(container)
        c.exited.wait()
        if c.gone or c.exit_code is None:
            raise ContainerGone(container.name)
        return c.exit_code

    def signal(self, container: ContainerRef, sig: str) -> None:
        with self._cond:
            c = self._containers.get(container.id)
            if c is None or c.finished_at is not None:
                return
            if c.signal != "SIGKILL":
                c.signal = sig
            self._cond.notify_all()

    def logs(self, container: ContainerRef, since_ms: int | None = None) -> ContainerOutput:
        return _Output(self._get(container), self._cond, since_ms)

    def exec(self, container: ContainerRef, command: list[str], *, tty: bool, stdin: bool,
             environment: dict[str, str] | None = None) -> ExecSession:
        c = self._get(container)
        if c.state != "running":
            raise ContainerNotRunning(container.name)
        return _NoShell(c.labels.get(LABEL_HOST) or c.name, command)

    def remove(self, container: ContainerRef) -> None:
        with self._cond:
            c = self._containers.pop(container.id, None)
            if c is None:
                return
            c.removed = True
            if c.started_at is not None and c.finished_at is None:
                c.gone = True
                c.finished_at, c.exit_code = time.time(), KILLED_EXIT
            self._cond.notify_all()
            self._file(c.id).unlink(missing_ok=True)
        c.exited.set()

    def containers(self, labels: dict[str, str]) -> list[ContainerRef]:
        with self._cond:
            return [c.ref() for c in self._containers.values() if _has_labels(c.labels, labels)]

    # ---- the simulated algorithm --------------------------------------------------------------------

    def _script(self, spec: ContainerSpec) -> Script | None:
        """The job's script (its tags, the rules), read when its container is made; None for a service container."""
        if LABEL_HOST not in spec.labels:
            return None
        arn, name = spec.labels.get(LABEL_JOB_ARN, ""), spec.labels.get(LABEL_JOB_NAME, "")
        try:
            return script_for(name, spec.image, job_tags(self._lifecycle.store, arn), self._rules)
        except ValueError as e:  # a bad smlocal:* tag added after CreateTrainingJob (AddTags): said, not ignored
            return Script(outcome=FAILED, failure_reason=f"smlocal: a simulation tag of this job is invalid: {e}",
                          training_seconds=0.0, log=())

    def _run(self, c: _Container) -> None:
        threading.Thread(target=self._play, args=(c,), name=f"smlocal-sim-{c.name}", daemon=True).start()

    def _play(self, c: _Container) -> None:
        """The algorithm of one container, from wherever its schedule is now, until it exits."""
        try:
            self._play_until_exit(c)
        except Exception:
            log.exception("simulated container %s failed", c.name)
            with self._cond:
                if c.finished_at is None:
                    self._exit(c, FAILED_EXIT, time.time())
        finally:
            c.exited.set()

    def _play_until_exit(self, c: _Container) -> None:
        assert c.started_at is not None
        schedule = c.schedule()
        script = c.script
        seconds = script.training_seconds if script is not None else None
        # Halfway (Interrupted) or at the end (MaxRuntimeExceeded): what the algorithm asks the lifecycle for.
        ask_at = None
        if script is not None and script.outcome == INTERRUPTED:
            ask_at = script.training_seconds / 2
        elif script is not None and script.outcome == MAX_RUNTIME_EXCEEDED:
            ask_at = script.training_seconds
        with self._cond:
            # Lines printed before a restart are given again with their own times (a follower skips them).
            c.output = sorted([(_ms(c.started_at + offset), line) for offset, line in schedule[:c.printed]]
                              + c.extra, key=lambda item: item[0])
            self._cond.notify_all()
        while True:
            ask = False
            with self._cond:
                if c.finished_at is not None or c.removed:
                    return
                now = time.time()
                if c.signal is not None:
                    self._on_signal(c, c.signal, now)
                    return
                elapsed = now - c.started_at
                while c.printed < len(schedule) and schedule[c.printed][0] <= elapsed:
                    offset, line = schedule[c.printed]
                    c.output.append((_ms(c.started_at + offset), line))
                    c.printed += 1
                    self._cond.notify_all()
                if ask_at is not None and not c.asked and elapsed >= ask_at:
                    c.asked = ask = True
                ends = seconds is not None and script is not None and script.outcome != MAX_RUNTIME_EXCEEDED
                if ends and seconds is not None and elapsed >= seconds and c.printed >= len(schedule):
                    self._finish(c, c.started_at + seconds)
                    return
                due = [t for t in (schedule[c.printed][0] if c.printed < len(schedule) else None,
                                   seconds if ends else None,
                                   ask_at if ask_at is not None and not c.asked else None) if t is not None]
                if not ask:
                    self._cond.wait(max(0.0, min(due) - elapsed) if due else None)
            if ask:
                self._ask_lifecycle(c)

    def _finish(self, c: _Container, at: float) -> None:
        """The script ran its course: Completed (or Interrupted that was not interrupted) saves its model and
        exits 0; Failed writes its failure file and exits 1."""
        script = c.script
        assert script is not None
        if script.outcome == FAILED:
            reason = script.failure_reason or ""
            self._print(c, at, f"ERROR: {reason}")
            self._write(c, OUTPUT_MOUNT, "failure", reason)
            self._exit(c, FAILED_EXIT, at)
        else:
            self._save_model(c, at, COMPLETED)
            self._exit(c, 0, at)

    def _on_signal(self, c: _Container, sig: str, now: float) -> None:
        if sig == "SIGKILL":
            self._exit(c, KILLED_EXIT, now)
        elif c.script is None:
            self._exit(c, TERMINATED_EXIT, now)
        else:
            self._print(c, now, SIGTERM_LINE)
            self._save_model(c, now, "SIGTERM")
            self._exit(c, 0, now)

    def _save_model(self, c: _Container, at: float, why: str) -> None:
        model = {"simulated": True, "job": c.labels.get(LABEL_JOB_NAME), "host": c.labels.get(LABEL_HOST),
                 "image": c.image, "lines_printed": c.printed, "saved_because": why,
                 "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))}
        self._write(c, MODEL_MOUNT, MODEL_FILE, json.dumps(model, indent=2) + "\n")

    def _write(self, c: _Container, mount: str, name: str, text: str) -> None:
        folder = c.host_folder(mount)
        if folder is None:
            return
        try:
            (folder / name).write_text(text)
        except OSError as e:
            log.warning("simulated container %s could not write %s/%s: %s", c.name, mount, name, e)

    def _print(self, c: _Container, at: float, line: str) -> None:
        c.extra.append((_ms(at), line))
        c.output.append((_ms(at), line))
        self._cond.notify_all()

    def _exit(self, c: _Container, code: int, at: float) -> None:
        c.finished_at, c.exit_code = at, code
        self._save(c)
        self._cond.notify_all()

    def _ask_lifecycle(self, c: _Container) -> None:
        """Outside the lock: the lifecycle's listeners (the runner) may signal this very container."""
        script = c.script
        arn = c.labels.get(LABEL_JOB_ARN, "")
        assert script is not None
        try:
            if script.outcome == MAX_RUNTIME_EXCEEDED:
                log.info("simulated job %s: its MaxRuntimeInSeconds clock is brought forward",
                         c.labels.get(LABEL_JOB_NAME))
                self._lifecycle.stop_at_deadline(arn, MAX_RUNTIME_EXCEEDED)
                return
            job = self._lifecycle.refresh(arn)
            if job is None or job.interruptions or job.interrupt_requested_at is not None:
                return  # interrupted once already: this run completes
            if not job.request.get("EnableManagedSpotTraining"):
                log.warning("simulated job %s is scripted Interrupted but is no managed spot job: it completes",
                            job.name)
                return
            self._lifecycle.request_interrupt(arn)
            log.info("simulated job %s: spot capacity reclaimed", job.name)
        except (ApiError, IllegalTransition) as e:  # the job moved on meanwhile (stopped, ended)
            log.info("simulated job %s: %s", c.labels.get(LABEL_JOB_NAME), e)
        except Exception:  # the algorithm goes on: a store hiccup must not fail the job
            log.exception("simulated job %s could not ask the lifecycle", c.labels.get(LABEL_JOB_NAME))

    # ---- records ------------------------------------------------------------------------------------

    def _get(self, container: ContainerRef) -> _Container:
        with self._cond:
            c = self._containers.get(container.id)
        if c is None:
            raise ContainerGone(container.name)
        return c

    def _file(self, container_id: str) -> Path:
        return self._folder / f"{container_id}.json"

    def _save(self, c: _Container) -> None:
        """Written whole to a new file renamed over the old one: a killed server leaves one or the other."""
        if c.removed:
            return
        path = self._file(c.id)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(c.to_json()))
        os.replace(temporary, path)

    def _load(self) -> None:
        """The containers a previous process left: those that were running go on by the clock."""
        for path in sorted(self._folder.glob("*.json")):
            try:
                c = _Container.from_json(json.loads(path.read_text()))
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.warning("dropping the unreadable simulated container record %s: %s", path.name, e)
                path.unlink(missing_ok=True)
                continue
            self._containers[c.id] = c
            if c.finished_at is not None:
                c.output = sorted([(_ms(c.started_at + offset), line) for offset, line in c.schedule()[:c.printed]]
                                  + c.extra, key=lambda item: item[0]) if c.started_at is not None else []
                c.exited.set()
        for path in self._folder.glob("*.tmp"):
            path.unlink(missing_ok=True)
        for c in list(self._containers.values()):
            if c.started_at is not None and c.finished_at is None:
                self._run(c)


def _ms(at: float) -> int:
    return int(at * 1000)


def _has_labels(labels: dict[str, str], wanted: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in wanted.items())
