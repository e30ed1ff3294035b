"""The README's quick-start (and its part 2, script mode, in docs/sdk-and-script-mode.md), run as written
against what `make run` starts: a real model trained from S3 data in a real container, with the
embedded files store and its default keys."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.readme import DOCS, README, code_blocks, section
from tests.support.smlocal import SmlocalServer

QUICK_START = (README, "Quick-start (workshop)")
SCRIPT_MODE = (DOCS / "sdk-and-script-mode.md", "Script mode (workshop, part 2)")


def quickstart_script(where: tuple[Path, str] = QUICK_START) -> str:
    """The longest `sh` block of the (document, heading) section `where`."""
    doc, title = where
    blocks = code_blocks(section(title, doc=doc), "sh")
    script = max(blocks, key=len)  # the block with the commands, not `make run`
    # The images are built by `make test` already; the venv is the one running these tests.
    lines = [line for line in script.splitlines() if line.strip() != "make images"]
    return "\n".join(lines)


def run_as_written(script: str, server: SmlocalServer, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    # /tmp/ first: the interpreter's own path may lie under /tmp.
    script = (script
              .replace("/tmp/", f"{tmp_path}/")
              .replace("http://localhost:8080", server.endpoint)
              .replace("http://localhost:9000", server.s3_endpoint)
              .replace(".venv/bin/python", sys.executable))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "AWS_PAGER": ""}
    for var in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        env.pop(var, None)
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=README.parent, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture()
def make_run_server(tmp_path: Path, test_images: object) -> Iterator[SmlocalServer]:
    """What `make run` starts: no S3 endpoint, so the embedded files store, with its default keys."""
    server = SmlocalServer(tmp_path / "smlocal", None, ["--stop-grace-seconds", "5"]).start()
    try:
        yield server
    finally:
        server.stop()


def test_readme_quickstart_trains_a_model(make_run_server: SmlocalServer, tmp_path: Path) -> None:
    server = make_run_server
    result = run_as_written(quickstart_script(), server, tmp_path)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{server.log()}"
    assert '"status": "Completed"' in result.stdout
    assert "output/model.tar.gz" in result.stdout
    listing = subprocess.run(["tar", "-tzf", str(tmp_path / "model.tar.gz")], capture_output=True, text=True,
                             check=True).stdout.split()
    assert "model.joblib" in [name.removeprefix("./") for name in listing]
    # The bucket, the data and the model are plain files in the store's folder.
    workshop = tmp_path / "smlocal" / "s3" / "workshop"
    assert (workshop / "data" / "train" / "train.csv").read_bytes() == (tmp_path / "train.csv").read_bytes()
    assert (workshop / "output" / "sklearn-demo-1" / "output" / "model.tar.gz").read_bytes() == (
        tmp_path / "model.tar.gz").read_bytes()


def test_readme_script_mode_trains_with_the_toolkit_baked_and_shipped(make_run_server: SmlocalServer,
                                                                       tmp_path: Path) -> None:
    server = make_run_server
    # Part 2 goes on in the quick-start's terminal: its bucket, data and environment.
    result = run_as_written(quickstart_script() + "\n" + quickstart_script(SCRIPT_MODE), server, tmp_path)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{server.log()}"
    summaries = [json.loads(m) for m in re.findall(r"^\{\n.*?^\}$", result.stdout, re.S | re.M)]
    script_jobs = [s for s in summaries if "accuracy" in s]
    assert len(script_jobs) == 2, result.stdout
    for n, summary in enumerate(script_jobs, 1):
        assert summary["status"] == "Completed"
        assert 0.8 < summary["accuracy"] <= 1.0
        assert summary["model"] == f"s3://workshop/output/sklearn-script-{n}/output/model.tar.gz"
    # The toolkit image has no /opt/ml/code: job 2 trained with the code from the store's sourcedir.tar.gz.
    sm = server.client()
    job = sm.describe_training_job(TrainingJobName="sklearn-script-2")
    assert job["AlgorithmSpecification"]["TrainingImage"] == "smlocal/training-toolkit:1"
