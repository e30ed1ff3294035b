"""File mode's staging: a channel's objects downloaded into /opt/ml/input/data/<channel>/ of its hosts.

`runner.inputs.file.FileInput` drives it (once per channel for all its hosts) before the containers start.

Several hosts: a channel is listed once; each object is downloaded once and copied to every other host
that gets it. FullyReplicated gives every host every object; ShardedByS3Key gives host i (of n) the
objects i, i+n, i+2n, ... of the key-sorted list, whole objects.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from minio import Minio
from minio.error import InvalidResponseError, S3Error

from runner.failure import DOWNLOAD_DISK_FULL, disk_full, disk_full_reason
from runner.inputs.errors import DataDownloadError, DownloadCancelled
from runner.layout import READABLE_DIR, READABLE_FILE, HostLayout
from runner.s3 import BROKEN_MIDWAY, TRANSFER_ERRORS, TRANSFER_TRIES, S3Location, parse_s3_uri, unreachable
from smlocal.core.jobspec import ChannelSpec, JobSpec
from smlocal.core.local_channels import ROOT_FLAG, LocalChannelRoots, local_path

DOWNLOAD_WORKERS = 8
# Bytes read at most between two looks at the cancel flag (minio's fget_object reads the same amount).
CHUNK = 1024 * 1024


@dataclass(frozen=True)
class S3Object:
    """One object of a channel: where it is, and its path below the channel folder."""

    bucket: str
    key: str
    relative: str
    size: int | None = None  # from the listing (a manifest does not say)

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True)
class _Transfer:
    bucket: str
    key: str
    dests: tuple[Path, ...]  # downloaded to the first, copied to the others


def safe_relative_path(relative: str) -> PurePosixPath:
    """A key's path below the channel folder; never absolute, never climbing out with `..`, never with a NUL
    byte (no file system takes one: a manifest can still list it)."""
    parts = [p for p in relative.split("/") if p not in ("", ".")]
    if not parts or ".." in parts or "\x00" in relative:
        raise ValueError(relative)
    return PurePosixPath(*parts)


def relative_key(prefix: str, key: str) -> str:
    """Where an object listed under an S3 prefix lands, relative to the channel folder.

    `prefix/` matches `prefix/a/b.csv` -> `a/b.csv` (as the SageMaker SDK's local mode does). A prefix
    naming an object, or matching keys that merely start with it (`data/train` matches
    `data/train.csv`), keeps the key's path from the prefix's last `/` on.
    """
    rest = key[len(prefix):]
    if prefix and not prefix.endswith("/") and not rest.startswith("/"):
        return key[prefix.rfind("/") + 1:]
    return rest


def _dest(channel_dir: Path, relative: str, source: str) -> Path:
    try:
        rel = safe_relative_path(relative)
    except ValueError:
        raise DataDownloadError(
            f"ClientError: Data download failed: the object {source} maps to the path {relative!r}, "
            "which is not inside the channel folder."
        ) from None
    dest = channel_dir.joinpath(*rel.parts)
    if not dest.resolve().is_relative_to(channel_dir.resolve()):
        raise DataDownloadError(f"ClientError: Data download failed: {source} escapes the channel folder.")
    return dest


def _no_objects(uri: str, bucket: str, region: str, role: str) -> DataDownloadError:
    # The message SageMaker gives for a missing bucket or an empty prefix alike.
    return DataDownloadError(
        f'ClientError: Data download failed: No S3 objects found under S3 URL "{uri}" given in input data '
        f"source. Please ensure that the bucket exists in the selected region ({region}), that objects "
        f'exist under that S3 prefix, and that the role "{role}" has "s3:ListBucket" permissions on '
        f'bucket "{bucket}".'
    )


def _list_prefix(client: Minio, uri: str, loc: S3Location, region: str, role: str) -> list[S3Object]:
    objects = []
    try:
        for obj in client.list_objects(loc.bucket, prefix=loc.key, recursive=True):
            if obj.is_dir or obj.object_name.endswith("/"):
                continue  # zero-byte "folder" markers
            objects.append(S3Object(loc.bucket, obj.object_name, relative_key(loc.key, obj.object_name), obj.size))
    except S3Error as e:
        if e.code in ("NoSuchBucket", "AccessDenied", "NoSuchKey"):
            raise _no_objects(uri, loc.bucket, region, role) from None
        raise DataDownloadError(f"ClientError: Data download failed: {e.code}: {e.message} ({uri})") from None
    except TRANSFER_ERRORS as e:
        raise DataDownloadError(f"ClientError: Data download failed: {uri}: {unreachable(e)}") from None
    if not objects:
        raise _no_objects(uri, loc.bucket, region, role)
    return objects


def _list_manifest(client: Minio, uri: str, loc: S3Location, region: str, role: str) -> list[S3Object]:
    try:
        response = client.get_object(loc.bucket, loc.key)
        try:
            manifest = json.loads(response.read())
        finally:
            response.close()
            response.release_conn()
    except S3Error as e:
        raise DataDownloadError(
            f'ClientError: Data download failed: could not read the manifest file "{uri}": '
            f"{e.code}: {e.message}"
        ) from None
    except TRANSFER_ERRORS as e:
        raise DataDownloadError(f"ClientError: Data download failed: {uri}: {unreachable(e)}") from None
    except ValueError as e:
        raise DataDownloadError(
            f'ClientError: Data download failed: manifest "{uri}" is not JSON: {e}'
        ) from None
    if (not isinstance(manifest, list) or not manifest or not isinstance(manifest[0], dict)
            or not isinstance(manifest[0].get("prefix"), str)
            or not all(isinstance(k, str) for k in manifest[1:])):
        raise DataDownloadError(
            f'ClientError: Data download failed: manifest "{uri}" must be a JSON list whose first element is '
            '{"prefix": "s3://..."} followed by relative keys.'
        )
    try:
        base = parse_s3_uri(manifest[0]["prefix"])
    except ValueError:
        raise DataDownloadError(
            f'ClientError: Data download failed: manifest "{uri}" has an invalid prefix '
            f'{manifest[0]["prefix"]!r}.'
        ) from None
    if len(manifest) == 1:
        raise _no_objects(manifest[0]["prefix"], base.bucket, region, role)
    return [S3Object(base.bucket, base.key + rel, rel) for rel in manifest[1:]]


def shard_order(objects: list[S3Object]) -> list[S3Object]:
    """The order ShardedByS3Key deals objects out in: sorted by key, host i of n taking i, i+n, ..."""
    return sorted(objects, key=lambda o: (o.bucket, o.key))


def list_objects(client: Minio, uri: str, data_type: str, region: str, role: str) -> list[S3Object]:
    """The objects an S3Prefix or ManifestFile channel names, in listing (or manifest) order."""
    try:
        loc = parse_s3_uri(uri)
    except ValueError as e:
        raise DataDownloadError(f"ClientError: Data download failed: {e}") from None
    if data_type == "ManifestFile":
        return _list_manifest(client, uri, loc, region, role)
    return _list_prefix(client, uri, loc, region, role)


def check_prefix_has_objects(client: Minio, uri: str, region: str, role: str) -> S3Location:
    """Fail as SageMaker does when an S3Prefix names nothing, reading one listing page at most."""
    try:
        loc = parse_s3_uri(uri)
    except ValueError as e:
        raise DataDownloadError(f"ClientError: Data download failed: {e}") from None
    try:
        for obj in client.list_objects(loc.bucket, prefix=loc.key, recursive=True):
            if not (obj.is_dir or obj.object_name.endswith("/")):
                return loc
    except S3Error as e:
        if e.code in ("NoSuchBucket", "AccessDenied", "NoSuchKey"):
            raise _no_objects(uri, loc.bucket, region, role) from None
        raise DataDownloadError(f"ClientError: Data download failed: {e.code}: {e.message} ({uri})") from None
    except TRANSFER_ERRORS as e:
        raise DataDownloadError(f"ClientError: Data download failed: {uri}: {unreachable(e)}") from None
    raise _no_objects(uri, loc.bucket, region, role)


def _hosts_of(index: int, channel_dirs: Sequence[Path | None], sharded: bool) -> list[Path]:
    """The folders the `index`th object (or file) goes to: every host's, or (sharded) one host's in turn; a host
    whose folder is None (its tree is on another node) keeps its turn and gets nothing here."""
    dirs = [channel_dirs[index % len(channel_dirs)]] if sharded else channel_dirs
    return [d for d in dirs if d is not None]


def _plan(objects: list[S3Object], channel_dirs: Sequence[Path | None], sharded: bool) -> list[_Transfer]:
    """Where each object goes: every host's channel folder, or (sharded) round-robin over the key-sorted list."""
    if sharded:
        objects = shard_order(objects)
    transfers = []
    for index, obj in enumerate(objects):
        dirs = _hosts_of(index, channel_dirs, sharded)
        if dirs:
            transfers.append(_Transfer(obj.bucket, obj.key, tuple(_dest(d, obj.relative, obj.uri) for d in dirs)))
    return transfers


def _local_files(shown: Path, real: Path, roots: LocalChannelRoots) -> list[tuple[PurePosixPath, Path]]:
    """The regular files of a local channel folder: (path below the channel, real path to read).

    Symbolic links are followed only while they stay inside the allowed roots; one that leads out fails the
    job. FIFOs, sockets and devices are skipped: reading one could block or never end.
    """
    found: list[tuple[PurePosixPath, Path]] = []
    walked: set[Path] = set()

    def walk(folder: Path, below: PurePosixPath, spelled: Path) -> None:
        if folder in walked:  # a link loop, or two links to one folder
            return
        walked.add(folder)
        if roots.is_excluded(folder):
            raise DataDownloadError(f'ClientError: Data download failed: "{spelled}" is smlocal\'s data dir, '
                                    "which is never a channel.")
        with os.scandir(folder) as scan:
            entries = sorted(scan, key=lambda e: e.name)
        for entry in entries:
            path = Path(entry.path)
            if entry.is_symlink():
                target = roots.resolve(path)
                if target is None:
                    raise DataDownloadError(
                        f'ClientError: Data download failed: "{spelled / entry.name}" is a symbolic link that '
                        f"leads out of the allowed local channel roots ({ROOT_FLAG})."
                    )
                path = target
            if path.is_dir():
                walk(path, below / entry.name, spelled / entry.name)
            elif path.is_file():
                found.append((below / entry.name, path))

    walk(real, PurePosixPath(), shown)
    return found


def _copy_file(real: Path, dest: Path) -> None:
    # The path was checked just before: never follow a link swapped in since, nor block on a FIFO.
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        raise DataDownloadError(f'ClientError: Data download failed: local file "{real}": {e.strerror}') from None
    with os.fdopen(fd, "rb") as src:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise DataDownloadError(f'ClientError: Data download failed: local file "{real}" changed while staging.')
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(dest, "wb") as out:
            shutil.copyfileobj(src, out, 1024 * 1024)
    os.utime(dest, ns=(info.st_atime_ns, info.st_mtime_ns))


def local_files(uri: str, roots: LocalChannelRoots) -> list[tuple[PurePosixPath, Path]]:
    """The files of a `file://` channel: (path below the channel, real path to read), in name order.

    Checked at CreateTrainingJob already; again here, as links may have changed since."""
    source = local_path(uri)
    refusal = roots.refusal(source)
    if refusal is not None:
        raise DataDownloadError(f"ClientError: Data download failed: {refusal}.")
    real = roots.resolve(source)
    assert real is not None  # refusal() is None only for paths resolve() admits
    if real.is_dir():
        return _local_files(source, real, roots)
    if real.is_file():
        return [(PurePosixPath(source.name), real)]
    raise DataDownloadError(f'ClientError: Data download failed: local path "{source}" does not exist.')


def _copy_local(uri: str, channel_dirs: Sequence[Path | None], sharded: bool, roots: LocalChannelRoots) -> None:
    # Sharded: round-robin over the files in name order (a single file goes to the first host).
    for index, (below, path) in enumerate(local_files(uri, roots)):
        for channel_dir in _hosts_of(index, channel_dirs, sharded):
            _copy_file(path, channel_dir.joinpath(*below.parts))


def _fetch(client: Minio, bucket: str, key: str, dest: Path, cancelled: Callable[[], bool]) -> None:
    response = client.get_object(bucket, key)
    try:
        with open(dest, "wb") as f:
            # read1 returns what has arrived (up to CHUNK), so a slow store never delays a stop.
            while chunk := response.read1(CHUNK):
                if cancelled():
                    raise DownloadCancelled()
                f.write(chunk)
    except BaseException:
        # Half an object is no use to anyone, and on a full disk it holds the room the job's end needs.
        dest.unlink(missing_ok=True)
        raise
    finally:
        response.close()
        response.release_conn()


def _download_all(client: Minio, transfers: list[_Transfer], cancelled: Callable[[], bool]) -> None:
    def fetch(t: _Transfer) -> None:
        if cancelled():
            raise DownloadCancelled()
        first = t.dests[0]
        first.parent.mkdir(parents=True, exist_ok=True)
        try:
            for attempt in range(TRANSFER_TRIES):
                try:
                    _fetch(client, t.bucket, t.key, first, cancelled)
                    break
                except BROKEN_MIDWAY:
                    # The connection broke mid-object (the store restarted): the object again, from its start.
                    if attempt == TRANSFER_TRIES - 1:
                        raise
                    time.sleep(2 ** attempt)
            for dest in t.dests[1:]:
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(first, dest)
        except S3Error as e:
            raise DataDownloadError(
                f"ClientError: Data download failed: s3://{t.bucket}/{t.key}: {e.code}: {e.message}"
            ) from None
        except InvalidResponseError as e:
            # A store that refuses the key itself in words minio cannot read (rclone's 400 for a key such as
            # `data//tmp/x` or one with a NUL, from a manifest): the key is the client's fault; a 5xx is not.
            if getattr(e, "_code", 500) >= 500:
                raise
            raise DataDownloadError(
                f"ClientError: Data download failed: s3://{t.bucket}/{t.key!r}: the store refused the key "
                f"(HTTP {e._code})") from None
        except TRANSFER_ERRORS as e:
            raise DataDownloadError(f"ClientError: Data download failed: s3://{t.bucket}/{t.key}: {unreachable(e)}"
                                    ) from None
        except OSError as e:
            if disk_full(e):
                raise DataDownloadError(disk_full_reason(DOWNLOAD_DISK_FULL, e)) from None
            raise DataDownloadError(
                f"ClientError: Data download failed: s3://{t.bucket}/{t.key}: {e}"
            ) from None

    with ThreadPoolExecutor(max_workers=DOWNLOAD_WORKERS, thread_name_prefix="smlocal-download") as pool:
        futures = [pool.submit(fetch, t) for t in transfers]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = next((f for f in done if f.exception() is not None), None)
        if failed is not None:
            for f in futures:
                f.cancel()
            raise failed.exception()  # type: ignore[misc]


def _make_tree_readable(root: Path) -> None:
    # The algorithm may run as any uid: it reads its data, it does not need to change it.
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), READABLE_DIR)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), READABLE_FILE)


def stage_channel(channel: ChannelSpec, channel_dirs: Sequence[Path | None], client_factory: Callable[[], Minio],
                  region: str, role: str, cancelled: Callable[[], bool],
                  local_roots: LocalChannelRoots | None = None) -> None:
    """Download one channel into the given folders (one per host of the channel, in host order; None for a host
    whose tree is not on this machine: its shard is skipped); raises DataDownloadError with the FailureReason.

    Each object is downloaded once and copied to every other host that gets it. `file://` channels are
    copied only from under `local_roots` (none given: none allowed)."""
    name = channel.name
    s3 = channel.s3
    if s3 is None:
        raise DataDownloadError(f"ClientError: channel {name!r}: {channel.source_kind} is not supported by smlocal.")
    if s3.is_local:
        _copy_local(s3.uri, channel_dirs, s3.sharded, local_roots or LocalChannelRoots())
    else:
        if s3.data_type == "AugmentedManifestFile":  # refused at CreateTrainingJob since
            raise DataDownloadError(
                f"ClientError: channel {name!r}: AugmentedManifestFile can only be used in Pipe input mode."
            )
        client = client_factory()
        objects = list_objects(client, s3.uri, s3.data_type, region, role)
        _download_all(client, _plan(objects, channel_dirs, s3.sharded), cancelled)
    for channel_dir in channel_dirs:
        if channel_dir is not None:
            _make_tree_readable(channel_dir)


def download_objects(client: Minio, objects: list[S3Object], channel_dir: Path, cancelled: Callable[[], bool]) -> None:
    """These objects (already listed) into one host's channel folder."""
    _download_all(client, _plan(objects, [channel_dir], False), cancelled)
    _make_tree_readable(channel_dir)


def stage_channels(spec: JobSpec, layouts: Sequence[HostLayout], client_factory: Callable[[], Minio],
                   cancelled: Callable[[], bool], local_roots: LocalChannelRoots | None = None) -> None:
    """Every channel of the job into every host's tree, one channel after the other."""
    for channel in spec.channels:
        stage_channel(channel, [layout.channel_dir(channel.name) for layout in layouts], client_factory,
                      spec.region, spec.role_arn, cancelled, local_roots)
