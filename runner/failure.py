"""The FailureReason of a job whose algorithm exited non-zero."""

from __future__ import annotations

import os
from collections.abc import Sequence

from runner.layout import HostLayout, is_real_dir

MAX_REASON = 1024


def read_failure_file(layout: HostLayout) -> str | None:
    """The first 1024 characters of /opt/ml/output/failure, if the algorithm wrote one."""
    if not is_real_dir(layout.output_dir, layout.opt_ml):
        return None
    try:
        # O_NOFOLLOW: the container could have made `failure` a link to a host file.
        fd = os.open(layout.failure_file, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        text = f.read(4 * MAX_REASON).decode("utf-8", errors="replace").strip()
    return text[:MAX_REASON] or None


def algorithm_error(exit_code: int, last_lines: Sequence[str], host: str | None = None) -> str:
    """`AlgorithmError: ..., exit code: N` with the log's tail, the shape SageMaker reports."""
    container = f"the training container on {host}" if host else "the training container"
    head = f"AlgorithmError: {container} exited with a non-zero status, exit code: {exit_code}"
    tail: list[str] = []
    room = MAX_REASON - len(head) - len("\nLast log lines:\n")
    for line in reversed(last_lines):
        line = line[-300:]
        if room - len(line) - 1 < 0:
            break
        tail.insert(0, line)
        room -= len(line) + 1
    if not tail:
        return head[:MAX_REASON]
    return (head + "\nLast log lines:\n" + "\n".join(tail))[:MAX_REASON]


def failure_reason(layout: HostLayout, exit_code: int, last_lines: Sequence[str], *, name_host: bool = False) -> str:
    """The failure file's text, else the exit code and log tail; `name_host` (several hosts) says which host."""
    written = read_failure_file(layout)
    if written is None:
        return algorithm_error(exit_code, last_lines, layout.host if name_host else None)
    return f"{layout.host}: {written}"[:MAX_REASON] if name_host else written
