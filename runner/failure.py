"""The FailureReason of a job whose algorithm exited non-zero.

SageMaker writes `AlgorithmError: <the failure file's text>, exit code: <N>`; smlocal adds the log's
last lines after it (they usually show the traceback), all within the 1024 characters the API allows.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence

from runner import tree
from runner.layout import HostLayout

MAX_REASON = 1024
# Bytes read from the failure file at most: the container controls its size (and its type).
FAILURE_FILE_LIMIT = 4 * MAX_REASON
TAIL_LINE_LIMIT = 300

# SageMaker's words when the instance's volume fills up while it downloads the inputs or packs the model
# (FailureReasons users quote: "ClientError: Data download failed:Insufficient disk space",
# "ClientError: Artifact upload failed:Insufficient disk space").
DOWNLOAD_DISK_FULL = "ClientError: Data download failed:Insufficient disk space"
UPLOAD_DISK_FULL = "ClientError: Artifact upload failed:Insufficient disk space"


def disk_full(e: BaseException) -> bool:
    """`e` says the file system (or the user's quota on it) has no room left."""
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full_reason(phrase: str, e: OSError) -> str:
    """SageMaker's phrase, then where: the file the write failed on is smlocal's, not the user's."""
    return f"{phrase} ({e.strerror}: smlocal's data dir is on a file system that is full)"


def read_failure_file(layout: HostLayout) -> str | None:
    """The first 1024 characters of /opt/ml/output/failure, if the algorithm wrote one as a regular file.

    Read without blocking (a FIFO there would hang a plain open), without following links (in the
    file's name or its folders) and only if fstat says it is a regular file (a device node would
    leak host bytes)."""
    data = tree.read_regular(layout.opt_ml, "output/failure", FAILURE_FILE_LIMIT)
    if not data:
        return None
    text = data.decode("utf-8", errors="replace").strip()
    return text[:MAX_REASON] or None


def _with_tail(head: str, last_lines: Sequence[str]) -> str:
    tail: list[str] = []
    room = MAX_REASON - len(head) - len("\nLast log lines:\n")
    for line in reversed(last_lines):
        line = line[-TAIL_LINE_LIMIT:]
        if room - len(line) - 1 < 0:
            break
        tail.insert(0, line)
        room -= len(line) + 1
    if not tail:
        return head[:MAX_REASON]
    return (head + "\nLast log lines:\n" + "\n".join(tail))[:MAX_REASON]


def algorithm_error(exit_code: int, last_lines: Sequence[str], host: str | None = None,
                    written: str | None = None) -> str:
    """`AlgorithmError: <failure file or what happened>, exit code: N` and the log's tail."""
    if written:
        head = f"AlgorithmError: {host + ': ' if host else ''}{written}, exit code: {exit_code}"
    else:
        container = f"the training container on {host}" if host else "the training container"
        head = f"AlgorithmError: {container} exited with a non-zero status, exit code: {exit_code}"
    return _with_tail(head, last_lines)


def failure_reason(layout: HostLayout, exit_code: int, last_lines: Sequence[str], *, name_host: bool = False) -> str:
    """The job's FailureReason; `name_host` (several hosts) says which host failed."""
    return algorithm_error(exit_code, last_lines, layout.host if name_host else None, read_failure_file(layout))
