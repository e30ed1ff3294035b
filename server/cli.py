"""The `smlocal` console script."""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel

from runner.backend import Backend, BackendUnavailable
from runner.host_address import HOST_ALIAS, container_s3_endpoint, docker_bridge_gateway
from runner.subnets import SubnetRangeError, host_routes, resolve_job_subnets
from server import cli_views
from server.aws.regions import is_valid_region
from server.datadir import DataDirInUse, DataDirLock, make_private
from server.s3.base import STORE_KINDS, StoreStartError
from smlocal.core.file_systems import FileSystemMapError, FileSystems, parse_mapping
from smlocal.core.lifecycle import Lifecycle
from smlocal.core.logstore import MIN_LOG_BYTES_PER_HOST
from smlocal.core.settings import (
    DEFAULT_MAX_LOG_BYTES_PER_HOST,
    DEFAULT_MAX_WAITING_JOBS,
    Settings,
    default_max_concurrent_jobs,
    default_max_hosts_per_job,
)
from smlocal.core.simulation import Rules, RulesError
from smlocal.core.store import SchemaTooNew, Store
from smlocal.core.tuning.lifecycle import TuningLifecycle

if TYPE_CHECKING:
    from server.s3.front import S3Front
    from server.s3.watchdog import StoreWatchdog

# The server's machinery (the runner, the app, uvicorn, the engines' SDKs, the S3 stores) is imported where
# `serve` uses it, not here: `smlocal jobs`, `logs`, `stop` and `shell` start in half the time without it.

app = typer.Typer(add_completion=False, help="A local, SageMaker-compatible training-job service.")
BACKENDS = ("docker", "swarm", "simulated")
console = Console()
log = logging.getLogger("smlocal")


@app.callback()
def main() -> None:
    """smlocal: SageMaker training jobs on your machine."""


def _opt(envvar: str, help_text: str) -> typer.models.OptionInfo:
    return typer.Option(envvar=f"SMLOCAL_{envvar}", help=help_text)


@app.command()
def serve(
    host: Annotated[str, _opt("HOST", "Address to bind (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, _opt("PORT", "Port to bind.")] = 8080,
    data_dir: Annotated[Path, _opt("DATA_DIR", "Where jobs, logs and the database live.")] = Path(".smlocal"),
    db: Annotated[str | None, _opt("DB", "SQLite file (default: <data-dir>/smlocal.db).")] = None,
    s3_endpoint: Annotated[str | None, _opt(
        "S3_ENDPOINT", "S3-compatible store (e.g. MinIO). Unset: the embedded store (--s3-store).")] = None,
    s3_store: Annotated[str, _opt(
        "S3_STORE", "Embedded store without --s3-endpoint: 'files' (persistent, <data-dir>/s3/<bucket>/<key>) "
        "or 'memory' (lost on exit).")] = "files",
    s3_access_key: Annotated[str, _opt("S3_ACCESS_KEY", "Access key for the S3 store.")] = "minioadmin",
    s3_secret_key: Annotated[str, _opt("S3_SECRET_KEY", "Secret key for the S3 store.")] = "minioadmin",
    container_s3_endpoint: Annotated[str | None, _opt(
        "CONTAINER_S3_ENDPOINT", "The S3 store's address as seen from training containers.")] = None,
    embedded_s3_port: Annotated[int, _opt("EMBEDDED_S3_PORT", "Port of the embedded S3 store (on loopback, "
                                          "and on the Docker bridge gateway for training containers); with "
                                          "--s3-endpoint, of the S3-only front containers reach that store "
                                          "through (gateway only; another port when taken).")] = 9000,
    region: Annotated[str, _opt("REGION", "Region for requests that carry no SigV4 scope.")] = "us-east-1",
    account_id: Annotated[str, _opt("ACCOUNT_ID", "The 12-digit account id in ARNs.")] = "123456789012",
    access_key: Annotated[str | None, _opt("ACCESS_KEY", "Require SigV4 with this access key.")] = None,
    secret_key: Annotated[str | None, _opt("SECRET_KEY", "The secret key that goes with --access-key.")] = None,
    max_concurrent_jobs: Annotated[int | None, _opt(
        "MAX_CONCURRENT_JOBS", "Jobs run at once; more wait in Starting.")] = None,
    max_hosts_per_job: Annotated[int | None, _opt(
        "MAX_HOSTS_PER_JOB", "Hosts (containers) one job may ask for; more is ResourceLimitExceeded.")] = None,
    max_waiting_jobs: Annotated[int, _opt(
        "MAX_WAITING_JOBS", "Jobs that may wait for a slot (past --max-concurrent-jobs) at once; CreateTrainingJob "
        "past it is ResourceLimitExceeded.")] = DEFAULT_MAX_WAITING_JOBS,
    max_log_bytes_per_host: Annotated[int, _opt(
        "MAX_LOG_BYTES_PER_HOST", "Bytes one host's log stream file may hold: past them its lines are dropped "
        "(they still feed metrics and FailureReason), after a last line saying where it was cut.")
    ] = DEFAULT_MAX_LOG_BYTES_PER_HOST,
    local_channel_root: Annotated[list[Path] | None, _opt(
        "LOCAL_CHANNEL_ROOT", "A folder file:// channels may read from (repeatable; the env var takes a "
        "':'-separated list). None: file:// channels are refused.")] = None,
    file_system: Annotated[list[str] | None, _opt(
        "FILE_SYSTEM", "FS_ID=DIR: the folder standing for an EFS or FSx for Lustre file system that "
        "FileSystemDataSource channels name (repeatable; the env var takes a space-separated list). Unmapped ids "
        "are refused at CreateTrainingJob.")] = None,
    allow_unauthenticated: Annotated[bool, _opt(
        "ALLOW_UNAUTHENTICATED", "Serve a non-loopback --host without --access-key/--secret-key.")] = False,
    stop_grace_seconds: Annotated[float, _opt(
        "STOP_GRACE_SECONDS", "Seconds between SIGTERM and SIGKILL when a job stops.")] = 120.0,
    run_jobs: Annotated[bool, _opt("RUN_JOBS", "Run jobs in Docker (off: API only).")] = True,
    job_subnets: Annotated[str | None, _opt(
        "JOB_SUBNETS", "IPv4 range (CIDR) job networks get their subnets from, a /27 per job (more for jobs "
        "with over 29 hosts); it must not overlap this machine's routes or Docker's networks. Default: "
        "the first of 10.213.0.0/16 .. 10.249.0.0/16 that is clear.")] = None,
    spot_interruptions: Annotated[float, _opt(
        "SPOT_INTERRUPTIONS", "Drills: interrupt every managed spot job at random, RATE times per hour of "
        "Training on average (as `smlocal interrupt` does). 0: only on demand.")] = 0.0,
    enforce_volume_size: Annotated[bool, _opt(
        "ENFORCE_VOLUME_SIZE", "Give each host's /opt/ml a file system of ResourceConfig.VolumeSizeInGB (a sparse, "
        "loop-mounted ext4; needs root and room for it in the data dir, else the host's log says it is not "
        "enforced).")] = True,
    enforce_instance_resources: Annotated[bool, _opt(
        "ENFORCE_INSTANCE_RESOURCES", "Give each container its instance type's vCPUs (a cpuset) and memory "
        "(a limit), and refuse at CreateTrainingJob (ResourceLimitExceeded) an instance type larger than this "
        "machine.")] = False,
    backend: Annotated[str, _opt(
        "BACKEND", "What runs the jobs: 'docker' (a Docker engine), 'swarm' (the Docker Swarm this engine manages: "
        "each host a service, its data moved on its node; docs/past-one-machine.md) or 'simulated' (no engine at "
        "all: each job plays a script its smlocal:* tags or --simulate-rules set; docs/testing.md).")] = "docker",
    swarm_init: Annotated[bool, _opt(
        "SWARM_INIT", "With --backend swarm: make this engine a single-node swarm manager if it is not one "
        "(`docker swarm init`, advertising --s3-advertise-address or 127.0.0.1).")] = False,
    s3_advertise_address: Annotated[str | None, _opt(
        "S3_ADVERTISE_ADDRESS", "An address of this machine every node of the swarm reaches: the embedded S3 store "
        "also listens there, and the agents and training containers are given it. Default: the Docker bridge "
        "gateway (one node).")] = None,
    agent_image: Annotated[str, _opt(
        "AGENT_IMAGE", "With --backend swarm: the image of smlocal's agent, which stages inputs and uploads "
        "outputs on each node (`make images` builds it; every node needs it).")] = "smlocal/service:dev",
    simulate_rules: Annotated[Path | None, _opt(
        "SIMULATE_RULES", "A JSON or YAML file of rules scripting jobs by name, image or tag: their simulated "
        "outcome, Training time and log lines, and faults at CreateTrainingJob (docs/testing.md).")] = None,
    log_level: Annotated[str, _opt("LOG_LEVEL", "Log level.")] = "info",
) -> None:
    """Serve the SageMaker API on HOST:PORT."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if bool(access_key) != bool(secret_key):
        raise typer.BadParameter("--access-key and --secret-key go together")
    if not is_valid_region(region):
        raise typer.BadParameter(f"{region!r} is not an AWS region name (e.g. us-east-1)", param_hint="--region")
    if not (len(account_id) == 12 and account_id.isdigit()):
        raise typer.BadParameter(f"{account_id!r} is not a 12-digit account id", param_hint="--account-id")
    if spot_interruptions < 0:
        raise typer.BadParameter("must be 0 or more", param_hint="--spot-interruptions")
    if max_hosts_per_job is not None and max_hosts_per_job < 1:
        raise typer.BadParameter("must be at least 1", param_hint="--max-hosts-per-job")
    if max_waiting_jobs < 0:
        raise typer.BadParameter("must be 0 or more", param_hint="--max-waiting-jobs")
    if max_log_bytes_per_host < MIN_LOG_BYTES_PER_HOST:
        raise typer.BadParameter(f"must be at least {MIN_LOG_BYTES_PER_HOST} (room for the line saying where the "
                                 "stream was cut)", param_hint="--max-log-bytes-per-host")
    if backend not in BACKENDS:
        raise typer.BadParameter(f"{backend!r} is not one of {', '.join(BACKENDS)}", param_hint="--backend")
    # Simulated jobs ask no engine anything: no bridge gateway, no engine networks, no S3 front for containers.
    simulated = backend == "simulated"
    if backend == "swarm" and run_jobs:
        _check_swarm(swarm_init, s3_advertise_address)
    rules = _simulate_rules(simulate_rules)
    roots = tuple(_local_root(path) for path in local_channel_root or ())
    file_systems = _file_systems(file_system or (), data_dir)
    job_range = _job_subnets(job_subnets, simulated) if run_jobs else None
    if not access_key and not allow_unauthenticated and not _is_loopback(host):
        console.print(f"[red]Refusing to serve {escape(host)} without authentication: anyone who reaches it could run "
                      "containers on this machine. Set --access-key and --secret-key (SigV4 required), or pass "
                      "--allow-unauthenticated to accept any caller.[/red]")
        raise typer.Exit(2)
    # One server per data dir: a second one would adopt and sweep the first one's jobs.
    make_private(data_dir)
    lock = DataDirLock(data_dir)
    try:
        lock.acquire()
    except DataDirInUse as exc:
        console.print(f"[red]smlocal: {escape(str(exc))}[/red]", soft_wrap=True)
        raise typer.Exit(1) from None
    import uvicorn

    from runner.scheduler import Runner
    from runner.tuning.driver import Tuner
    from server.app import create_app
    from server.s3.embedded import embedded_store
    from server.s3.files import FileStore
    from server.s3.watchdog import StoreWatchdog

    embedded = None
    watchdog: StoreWatchdog | None = None
    if not s3_endpoint:
        if s3_store not in STORE_KINDS:
            raise typer.BadParameter(f"--s3-store must be one of {', '.join(STORE_KINDS)}")
        # Containers reach the store only through the bridge gateway; without jobs nobody needs it.
        embedded = embedded_store(s3_store, data_dir=data_dir, port=embedded_s3_port, access_key=s3_access_key,
                                  secret_key=s3_secret_key,
                                  gateway=(s3_advertise_address or docker_bridge_gateway())
                                  if run_jobs and not simulated else None)
        try:
            embedded.start()
        except StoreStartError as exc:
            console.print(f"[red]{exc}[/red]", highlight=False)
            raise typer.Exit(1) from None
        if isinstance(embedded, FileStore):
            watchdog = StoreWatchdog(embedded)
            watchdog.start()
        s3_endpoint = embedded.endpoint
        if backend == "swarm" and not container_s3_endpoint:
            # A swarm task has no host.docker.internal: it is given an address (this machine's, as every node
            # reaches it).
            container_s3_endpoint = f"http://{s3_advertise_address or docker_bridge_gateway()}:{embedded_s3_port}"
    front = None
    if embedded is None and s3_endpoint and run_jobs and not simulated and not container_s3_endpoint:
        front = _start_s3_front(s3_endpoint, data_dir, embedded_s3_port, s3_advertise_address)
        if front is not None:
            # A swarm task has no host.docker.internal: it gets the front's address itself.
            container_s3_endpoint = front.endpoint_for(
                (s3_advertise_address or docker_bridge_gateway() or HOST_ALIAS) if backend == "swarm" else HOST_ALIAS)
    settings = Settings(
        host=host, port=port, data_dir=data_dir, db=db, region=region, account_id=account_id,
        access_key=access_key, secret_key=secret_key, s3_endpoint=s3_endpoint,
        s3_store=s3_store if embedded is not None else None,
        s3_access_key=s3_access_key, s3_secret_key=s3_secret_key,
        container_s3_endpoint=container_s3_endpoint,
        max_concurrent_jobs=max_concurrent_jobs or default_max_concurrent_jobs(),
        max_hosts_per_job=max_hosts_per_job or default_max_hosts_per_job(), local_channel_roots=roots,
        max_waiting_jobs=max_waiting_jobs, max_log_bytes_per_host=max_log_bytes_per_host,
        file_systems=file_systems,
        stop_grace_seconds=stop_grace_seconds, run_jobs=run_jobs, job_subnets=job_range,
        spot_interruptions_per_hour=spot_interruptions,
        enforce_instance_resources=enforce_instance_resources, enforce_volume_size=enforce_volume_size,
        backend=backend, simulate_rules=simulate_rules.resolve() if simulate_rules else None,
        agent_image=agent_image,
    )

    try:
        try:
            store = Store(settings.db_path)
        except SchemaTooNew as exc:
            console.print(f"[red]smlocal: {escape(str(exc))}[/red]", soft_wrap=True)
            raise typer.Exit(1) from None
        # The one place the parts meet: the state, the runner that drives it, the app that serves it.
        lifecycle = Lifecycle(store)
        runner = (Runner(settings, lifecycle, backend=_backend(settings, lifecycle, rules))
                  if settings.run_jobs else None)
        tuning = TuningLifecycle(store, lifecycle)
        application = create_app(settings, store, lifecycle, runner, tuning,
                                 Tuner(tuning, lifecycle, store) if runner is not None else None,
                                 s3_health=watchdog.health if watchdog is not None else None)
        store_line = embedded.describe() if embedded else None
        if store_line and watchdog is not None:
            store_line += "; restarted if it dies (/health counts the restarts)"
        _banner(settings, store_line,
                runner.check_engine() if runner is not None else None, _containers_s3(settings, front))
        uvicorn.run(application, host=host, port=port, log_level=log_level.lower(),
                    access_log=log_level.lower() == "debug")
    finally:
        if watchdog is not None:
            watchdog.stop()
        if embedded is not None:
            embedded.stop()
        if front is not None:
            front.stop()
        lock.release()


def _start_s3_front(s3_endpoint: str, data_dir: Path, port: int, address: str | None = None) -> S3Front | None:
    """The S3-only address training containers get for a store smlocal does not run (server/s3/front.py): on
    `address` (--s3-advertise-address, what a swarm's nodes reach), else on the Docker bridge gateway."""
    from server.s3.front import start_front

    gateway = address or docker_bridge_gateway()
    if gateway is None:
        return None  # no engine yet: containers cannot run, and get the store's own address if they do
    try:
        front = start_front(s3_endpoint, gateway, [HOST_ALIAS], [port], Path(data_dir) / "s3-front.port")
    except OSError as e:
        log.warning("no S3 front on %s (%s): training containers get the store's own address", gateway, e)
        return None
    if front.port != port:
        log.warning("port %s on the Docker bridge gateway %s is taken (by the S3 store itself, if it listens on "
                    "every address: then containers can also reach it directly); training containers reach the "
                    "store through port %s", port, gateway, front.port)
    return front


def _simulate_rules(path: Path | None) -> Rules | None:
    """The --simulate-rules file, read once at start-up; a file that cannot be used stops `serve` (exit 2)."""
    if path is None:
        return None
    try:
        return Rules.load(path)
    except RulesError as e:
        console.print(f"[red]smlocal: --simulate-rules: {escape(str(e))}[/red]", soft_wrap=True)
        raise typer.Exit(2) from None


def _backend(settings: Settings, lifecycle: Lifecycle, rules: Rules | None) -> Backend | None:
    """The simulated backend when asked for; None: the runner's own default, Docker."""
    if settings.backend == "simulated":
        from runner.simulated_backend import SimulatedBackend

        return SimulatedBackend(settings.data_dir, lifecycle, rules)
    if settings.backend == "swarm":
        from runner.swarm_backend import SwarmBackend

        return SwarmBackend(stop_grace_seconds=settings.stop_grace_seconds)
    return None


def _check_swarm(init: bool, advertise: str | None) -> None:
    """`--backend swarm` needs an engine that manages a swarm: made one with --swarm-init, else refused with how."""
    from runner.swarm_backend import NotAManager, SwarmBackend

    swarm = SwarmBackend()
    try:
        swarm.check_manager()
        return
    except NotAManager as e:
        problem = str(e)
    except BackendUnavailable as e:
        console.print(f"[red]smlocal: --backend swarm: {escape(str(e))}[/red]", soft_wrap=True)
        raise typer.Exit(2) from None
    if not init:
        console.print(f"[red]smlocal: --backend swarm: {escape(problem)}. Make it one with `docker swarm init` "
                      "(other engines join it with `docker swarm join`), or pass --swarm-init.[/red]",
                      soft_wrap=True)
        raise typer.Exit(2)
    swarm.init_swarm(advertise or "127.0.0.1")


def _job_subnets(requested: str | None, simulated: bool = False) -> str:
    """The range job networks come from, checked against this machine's routes and the engine's networks.
    Simulated networks are records only, never on this machine: any range will do."""
    if simulated:
        engine_networks, routes = [], []
    else:
        from runner.docker_backend import DockerBackend

        routes = host_routes()
        try:
            engine_networks = DockerBackend().networks()
        except Exception as e:  # noqa: BLE001 - no engine (yet): its networks are skipped at each allocation anyway
            log.debug("no engine networks to check --job-subnets against: %s", e)
            engine_networks = []
    try:
        return str(resolve_job_subnets(requested, routes, engine_networks))
    except SubnetRangeError as e:
        raise typer.BadParameter(str(e), param_hint="--job-subnets") from None


def _file_systems(values: Iterable[str], data_dir: Path) -> dict[str, Path]:
    """`--file-system FS_ID=DIR` values as id -> resolved folder (smlocal.core.file_systems)."""
    mapped: dict[str, Path] = {}
    try:
        for value in values:
            fs_id, folder = parse_mapping(value)
            if fs_id in mapped and mapped[fs_id] != folder:
                raise FileSystemMapError(f"{fs_id} is mapped twice ({mapped[fs_id]} and {folder})")
            mapped[fs_id] = folder
        FileSystems.of(mapped, data_dir).check_folders()
    except FileSystemMapError as e:
        raise typer.BadParameter(str(e), param_hint="--file-system") from None
    return mapped


def _local_root(path: Path) -> Path:
    if not path.is_dir():
        raise typer.BadParameter(f"{path} is not a folder", param_hint="--local-channel-root")
    return path.resolve()


def _is_loopback(host: str) -> bool:
    """True when every address `host` stands for is a loopback address."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def _containers_s3(settings: Settings, front: S3Front | None) -> str | None:
    """Where training containers reach the store, and what they find there (for the banner)."""
    endpoint = container_s3_endpoint(settings)
    if not settings.run_jobs or endpoint is None or settings.backend == "simulated":
        return None  # no container to reach it
    if front is not None:
        return f"{endpoint} (S3 API only, forwarded to {settings.s3_endpoint}; not for EnableNetworkIsolation jobs)"
    if settings.container_s3_endpoint:
        return f"{endpoint} (--container-s3-endpoint; not for EnableNetworkIsolation jobs)"
    return f"{endpoint} (S3 API only; not for EnableNetworkIsolation jobs)"


def _banner(settings: Settings, embedded_s3: str | None, engine_problem: str | None,
            containers_s3: str | None = None) -> None:
    shown_host = "localhost" if settings.host in ("127.0.0.1", "0.0.0.0") else settings.host
    api = f"http://{shown_host}:{settings.port}"
    s3_line = embedded_s3 or str(settings.s3_endpoint)
    # The default secret is no secret; one the operator chose is not printed.
    shown_secret = settings.s3_secret_key if settings.s3_secret_key == "minioadmin" else "<--s3-secret-key>"
    if settings.access_key:
        auth = "SigV4 required"
    elif _is_loopback(settings.host):
        auth = "[yellow]UNAUTHENTICATED[/yellow] (any signature accepted; loopback only)"
    else:
        auth = f"[red]UNAUTHENTICATED[/red] (any signature accepted from anyone who reaches {escape(settings.host)})"
    engine = ("simulated (no container engine; scripts from smlocal:* tags"
              + (f" and {escape(str(settings.simulate_rules))})" if settings.simulate_rules else ")")
              if settings.backend == "simulated" else
              f"on the Docker Swarm this engine manages (agent {escape(settings.agent_image)}), overlay networks "
              f"from {settings.job_subnets}" if settings.backend == "swarm"
              else f"in Docker, networks from {settings.job_subnets}")
    jobs = (f"{settings.max_concurrent_jobs} at once (and up to {settings.max_waiting_jobs} waiting), {engine}"
            if settings.run_jobs else "not run (--no-run-jobs)") + f"; up to {settings.max_hosts_per_job} hosts each"
    if settings.run_jobs and engine_problem:
        jobs += (f"\n[red]Docker         UNREACHABLE: {escape(engine_problem)}[/red]\n"
                 "               jobs stay InProgress until it answers; smlocal retries (GET /health tells)")
    local = escape(", ".join(str(r) for r in settings.local_channel_roots)) or "off (no --local-channel-root)"
    if settings.file_systems:
        local += "\nfile systems   " + escape(", ".join(f"{k}={v}" for k, v in settings.file_systems.items()))
    web = f"{api}/console/"
    if settings.access_key:
        web += " (sign in with the access key / secret key; from this machine only)"
    console.print(Panel.fit(
        f"SageMaker API  {api}\nweb console    {web}\nS3 store       {s3_line}\n"
        + (f"S3 for jobs    {escape(containers_s3)}\n" if containers_s3 else "") +
        f"S3 keys        {settings.s3_access_key} / {shown_secret}\n"
        f"data dir       {settings.data_dir.resolve()}\ndatabase       {Path(settings.db_path).resolve()}\n"
        f"auth           {auth}\njobs           {jobs}\nfile:// from   {local}",
        title="smlocal",
    ))
    console.print("Point unmodified AWS tools at it:")
    console.print(f"  export AWS_ENDPOINT_URL_SAGEMAKER={api}", highlight=False)
    console.print(f"  export AWS_ENDPOINT_URL_CLOUDWATCH_LOGS={api}", highlight=False)
    console.print(f"  export AWS_ENDPOINT_URL_CLOUDWATCH={api}", highlight=False)
    console.print(f"  export AWS_ENDPOINT_URL_IAM={api}", highlight=False)
    console.print(f"  export AWS_ENDPOINT_URL_STS={api}", highlight=False)
    console.print(f"  export AWS_ENDPOINT_URL_S3={settings.s3_endpoint}", highlight=False)
    console.print(f"  export AWS_DEFAULT_REGION={settings.region}", highlight=False)
    if not settings.access_key:
        # The API accepts any signature, so the store's keys serve both.
        console.print(f"  export AWS_ACCESS_KEY_ID={settings.s3_access_key} AWS_SECRET_ACCESS_KEY={shown_secret}",
                      highlight=False)


# `smlocal jobs`, `smlocal logs`, `smlocal stop`: clients of a running server.
cli_views.register(app)

if __name__ == "__main__":
    app()
