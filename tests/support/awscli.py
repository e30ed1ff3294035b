"""The aws CLI, run against a test server (its environment from SmlocalServer.cli_env)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

# The CLI installed beside the interpreter running the tests (the project's venv), else any on PATH.
_VENV_AWS = Path(sys.executable).parent / "aws"
AWS = str(_VENV_AWS) if _VENV_AWS.exists() else (shutil.which("aws") or f"{sys.executable} -m awscli")


def aws(server, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:  # noqa: ANN001
    cmd = [*AWS.split(), "--endpoint-url", server.endpoint, "--output", "json", *args]
    result = subprocess.run(cmd, capture_output=True, text=True, env=server.cli_env(), timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"{cmd} failed: {result.stderr}")
    return result
