"""The README's "Testing orchestration code", run as written: its test file saved under the name the README gives,
and its pytest command, in a project of its own outside this repository. No container engine is asked for
anything: DOCKER_HOST points at a port nothing listens on."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from tests.support.readme import REPO, code_blocks, section

TITLE = "Testing orchestration code"


def test_the_readme_orchestration_tests_run_as_written(tmp_path: Path) -> None:
    text = section(TITLE)
    [suite] = code_blocks(text, "python")
    [command] = code_blocks(text, "sh")
    filename = re.search(r"save this as `([\w.]+\.py)`", " ".join(text.split())).group(1)
    argv = shlex.split(command.strip())
    assert argv[0] == ".venv/bin/pytest" and argv[1] == filename, argv
    project = tmp_path / "project"
    project.mkdir()
    (project / filename).write_text(suite)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "AWS_", "SMLOCAL_", "DOCKER_"))}
    # This checkout's smlocal first (the plugin, and the `smlocal serve` it starts); no engine anywhere.
    env.update({"DOCKER_HOST": "tcp://127.0.0.1:9", "TMPDIR": str(scratch), "PYTHONPATH": str(REPO)})
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v", *argv[1:]], cwd=project,
                            env=env, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    tests = re.findall(r"::(test_\w+) PASSED", result.stdout)
    assert tests == ["test_a_model_comes_back", "test_a_failed_job_raises_its_reason",
                     "test_throttling_is_absorbed_by_the_retries"], output
    assert "no Docker engine answers" not in output  # asked for simulated: no fallback, no warning
    assert list(scratch.iterdir()) == []  # the plugin's smlocal left nothing behind
