"""The pytest plugin for users (`smlocal.testing`), used the way a user uses it.

tests/user_suite/ is a user's project: pipeline code written against plain boto3 and tests that use
only the smlocal fixtures. It is copied out of this repository and run by a separate pytest, which
loads the plugin through smlocal's `pytest11` entry point (nothing names it). Afterwards nothing of
the fixture's smlocal is left: no process, container, network or data dir.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import docker
import pytest

from runner.backend import LABEL_DATA_DIR
from tests.support.readme import DOCS, code_blocks, section

SUITE = Path(__file__).resolve().parent / "user_suite"
# The page whose example is tests/user_suite/test_readme_example.py.
TESTING_DOC = DOCS / "testing.md"
DOCKER_TESTS = ("test_training_writes_a_model", "test_the_pipeline_trains_a_model",
                "test_a_job_left_running_at_the_end")


def run_suite(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
    project = tmp_path / "project"
    shutil.copytree(SUITE, project, ignore=shutil.ignore_patterns("__pycache__"))
    scratch = tmp_path / "tmp"  # the fixture's data dir is made here (TMPDIR)
    scratch.mkdir()
    notes = tmp_path / "notes.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "AWS_", "SMLOCAL_"))}
    env.update({"TMPDIR": str(scratch), "USER_SUITE_NOTES": str(notes)})
    result = subprocess.run([sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", *args], cwd=project,
                            env=env, capture_output=True, text=True, timeout=900)
    return result, scratch, notes


def outcomes(output: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in re.finditer(r"::(\w+) (PASSED|FAILED|SKIPPED|ERROR)", output)}


def job_resources(data_dir: str) -> list[str]:
    client = docker.from_env()
    label = f"{LABEL_DATA_DIR}={data_dir}"
    return ([c.name for c in client.containers.list(all=True, filters={"label": label})]
            + [n.name for n in client.networks.list(filters={"label": label})])


@pytest.mark.usefixtures("test_images")
def test_a_users_suite_passes_and_the_fixture_leaves_nothing_behind(tmp_path: Path) -> None:
    result, scratch, notes = run_suite(tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    plugins = re.search(r"^plugins: (.*)$", result.stdout, re.M)
    assert plugins and re.search(r"\bsmlocal-\d", plugins.group(1)), result.stdout[:2000]
    results = outcomes(result.stdout)
    assert len(results) == 7 and set(results.values()) == {"PASSED"}, results

    # The last test left a job training; the session's end removed it with everything else.
    data_dir = notes.read_text()
    assert Path(data_dir).parent == scratch.resolve()
    assert not Path(data_dir).exists()
    assert job_resources(data_dir) == []
    assert list(scratch.iterdir()) == []


def test_without_docker_the_suite_runs_against_the_api_only(tmp_path: Path) -> None:
    result, scratch, _ = run_suite(tmp_path, "--smlocal-jobs", "none", "--smlocal-s3-store", "files")
    assert result.returncode == 0, result.stdout + result.stderr
    results = outcomes(result.stdout)
    assert {name for name, outcome in results.items() if outcome == "SKIPPED"} == set(DOCKER_TESTS), results
    assert {outcome for name, outcome in results.items() if name not in DOCKER_TESTS} == {"PASSED"}, results
    assert list(scratch.iterdir()) == []


def readme_example_blocks() -> list[str]:
    """The python blocks of docs/testing.md (once the README's "Testing your code against smlocal")."""
    return code_blocks(section("Testing your code against smlocal", doc=TESTING_DOC), "python")


def test_the_readme_example_is_the_test_the_suite_runs() -> None:
    blocks = readme_example_blocks()
    assert (SUITE / "test_readme_example.py").read_text() in blocks
