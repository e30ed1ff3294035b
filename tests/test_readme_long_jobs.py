"""The README's spot drill ("Long jobs"), run as written in the quick-start's terminal against what `make run`
starts: a managed spot job checkpoints to S3 while it trains, `smlocal interrupt` takes its instance away, and
it resumes from the epoch it saved."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.readme import README, code_blocks, localize, section
from tests.support.smlocal import SmlocalServer

BUCKET = "workshop"


def drill_script(tmp: Path, server: SmlocalServer) -> str:
    """The quick-start's exports and bucket, then the Long jobs block, pointed at this test's server."""
    quick_start = max(code_blocks(section("Quick-start (workshop)"), "sh"), key=len)
    exports = [line for line in quick_start.splitlines() if line.startswith("export ")]
    [drill] = code_blocks(section("Long jobs"), "sh")
    assert "  sleep 1; n=$((n + 1))\n" in drill
    # Epochs of 0.2 s instead of 1 s: the same walk, in less time.
    drill = drill.replace("  sleep 1; n=$((n + 1))\n", "  sleep 0.2; n=$((n + 1))\n")
    script = "\n".join([*exports, f"aws s3 mb s3://{BUCKET}", drill])
    script = localize(script, api=server.endpoint, s3=server.s3_endpoint, bucket=BUCKET, tmp=tmp)
    return script.replace(".venv/bin/smlocal", str(Path(sys.executable).parent / "smlocal"))


@pytest.fixture()
def make_run_server(tmp_path: Path, test_images: object) -> Iterator[SmlocalServer]:
    """What `make run` starts: the embedded files store with its default keys, the default grace period (the
    drill's algorithm ends on SIGTERM at once)."""
    server = SmlocalServer(tmp_path / "smlocal", None).start()
    try:
        yield server
    finally:
        server.stop()


def test_readme_spot_drill_interrupts_and_resumes_from_the_checkpoint(make_run_server: SmlocalServer,
                                                                     tmp_path: Path) -> None:
    server = make_run_server
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "AWS_PAGER": "",
           "SMLOCAL_ENDPOINT_URL": server.endpoint, "COLUMNS": "200"}
    for var in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        env.pop(var, None)
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", drill_script(tmp_path, server)], cwd=README.parent,
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{server.log()}"
    assert "training job spot-demo-1 is being interrupted" in " ".join(result.stdout.split())

    # The aws CLI's answers, as JSON: CreateTrainingJob's, the describe's summary, the log lines.
    *_, summary, messages = (json.loads(m) for m in re.findall(r"^[{\[]\n.*?^[}\]]$", result.stdout,
                                                                re.S | re.M))
    assert summary["status"] == "Completed"
    assert summary["path"] == ["Starting", "Downloading", "Training", "Interrupted", "Starting", "Downloading",
                               "Training", "Uploading", "Completed"]
    assert summary["billable"] <= summary["training"]
    # Two runs, the second from the epoch the first one saved in its checkpoint.
    assert messages[0] == "starting at epoch 1" and len(messages) == 2, messages
    resumed = int(messages[1].removeprefix("starting at epoch "))
    assert resumed > 1
    stored = tmp_path / "smlocal" / "s3" / BUCKET / "checkpoints" / "spot-demo-1" / "epoch"
    assert stored.read_text() == "60\n"
