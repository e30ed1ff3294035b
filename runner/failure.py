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


def algorithm_error(exit_code: int, last_lines: Sequence[str]) -> str:
    """`AlgorithmError: ..., exit code: N` with the log's tail, the shape SageMaker reports."""
    head = f"AlgorithmError: the training container exited with a non-zero status, exit code: {exit_code}"
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


def failure_reason(layout: HostLayout, exit_code: int, last_lines: Sequence[str]) -> str:
    return read_failure_file(layout) or algorithm_error(exit_code, last_lines)
