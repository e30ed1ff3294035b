"""Settings shared by the API server and the runner."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

# `--max-waiting-jobs`: jobs that may wait for a slot at once; CreateTrainingJob past it is ResourceLimitExceeded.
DEFAULT_MAX_WAITING_JOBS = 100
# `--max-log-bytes-per-host`: one host's log stream file stops growing here (generous: a runaway loop, not a
# chatty job, is what it stops from filling the disk).
DEFAULT_MAX_LOG_BYTES_PER_HOST = 1 << 30


def _machine() -> tuple[int, float]:
    """This machine's cores and memory (GiB)."""
    cores = os.cpu_count() or 1
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gib = 4.0
    return cores, mem_gib


def machine() -> tuple[int, float]:
    """This machine's cores and memory (GiB), as `--enforce-instance-resources` measures instance types by."""
    return _machine()


def default_max_concurrent_jobs() -> int:
    # A training container typically wants a core and a few GiB; keep the machine responsive.
    cores, mem_gib = _machine()
    return max(1, min(cores * 2, int(mem_gib // 2)))


def default_max_hosts_per_job() -> int:
    # Every host of a job is a container running at once; beyond a few per core (or one per GiB) the
    # machine thrashes instead of training. Two at least, so multi-host jobs can always be tried.
    cores, mem_gib = _machine()
    return max(2, min(cores * 4, int(mem_gib)))


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = field(default_factory=lambda: Path(".smlocal"))
    db: str | None = None
    region: str = "us-east-1"
    account_id: str = "123456789012"
    # When both are set, every request must be SigV4-signed with them.
    access_key: str | None = None
    secret_key: str | None = None
    s3_endpoint: str | None = None
    # The embedded store serving s3_endpoint (`files` or `memory`); None for a store the operator runs.
    s3_store: str | None = None
    s3_access_key: str = "minioadmin"
    s3_secret_key: str = "minioadmin"
    # The S3 address as seen from inside training containers (defaults to s3_endpoint rewritten
    # to the Docker bridge gateway when it points at loopback).
    container_s3_endpoint: str | None = None
    max_concurrent_jobs: int = field(default_factory=default_max_concurrent_jobs)
    # Hosts (containers) one job may ask for; more is ResourceLimitExceeded at CreateTrainingJob.
    max_hosts_per_job: int = field(default_factory=default_max_hosts_per_job)
    # Jobs that may wait for a slot (past max_concurrent_jobs) at once; one more is ResourceLimitExceeded.
    max_waiting_jobs: int = DEFAULT_MAX_WAITING_JOBS
    # Bytes one host's log stream file may hold; past them its lines are dropped (after a line saying so).
    max_log_bytes_per_host: int = DEFAULT_MAX_LOG_BYTES_PER_HOST
    # Folders `file://` channels may name (resolved, absolute); none: `file://` channels are refused.
    local_channel_roots: tuple[Path, ...] = ()
    # FileSystemDataSource: file system id -> the folder standing for it (`--file-system`, smlocal.core.file_systems).
    file_systems: dict[str, Path] = field(default_factory=dict)
    stop_grace_seconds: float = 120.0
    run_jobs: bool = True
    # The IPv4 range job networks are carved from (runner.subnets); None: a default chosen at startup.
    job_subnets: str | None = None
    # Drills: spot interruptions per hour of Training, at random, for every managed spot job (0: none).
    spot_interruptions_per_hour: float = 0.0
    # Containers get their instance type's vCPUs (a cpuset) and memory limit, and a job whose instance type
    # this machine cannot hold is ResourceLimitExceeded at CreateTrainingJob (smlocal.core.instance_types).
    enforce_instance_resources: bool = False
    # VolumeSizeInGB as a file system of that size per host, where smlocal can mount one (runner.volumes).
    enforce_volume_size: bool = True
    # What runs the jobs' containers: `docker`, `swarm` (runner.swarm_backend), or `simulated` (no engine:
    # runner.simulated_backend plays each job's script, smlocal.core.simulation).
    backend: str = "docker"
    # `--simulate-rules`: the rules file scripting jobs (outcomes, CreateTrainingJob faults); None: tags only.
    simulate_rules: Path | None = None
    # `--backend swarm`: the image of smlocal's agent, which moves a job's data on the node of each host.
    agent_image: str | None = None

    @property
    def db_path(self) -> str:
        return self.db or str(Path(self.data_dir) / "smlocal.db")
