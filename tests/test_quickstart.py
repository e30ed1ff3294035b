"""The README's quick-start, run as written against what `make run` starts: a real model trained from
S3 data in a real container, with the embedded files store and its default keys."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.smlocal import SmlocalServer

README = Path(__file__).resolve().parents[1] / "README.md"


def quickstart_script() -> str:
    text = README.read_text()
    section = text.split("## Quick-start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    script = max(blocks, key=len)  # the block with the commands, not `make run`
    # The images are built by `make test` already; the venv is the one running these tests.
    lines = [line for line in script.splitlines() if line.strip() != "make images"]
    return "\n".join(lines)


@pytest.mark.usefixtures("test_images")
def test_readme_quickstart_trains_a_model(tmp_path):
    server = SmlocalServer(tmp_path / "smlocal", None, ["--stop-grace-seconds", "5"]).start()
    try:
        run_quickstart(server, tmp_path)
    finally:
        server.stop()
    # The bucket, the data and the model are plain files in the store's folder.
    workshop = tmp_path / "smlocal" / "s3" / "workshop"
    assert (workshop / "data" / "train" / "train.csv").read_bytes() == (tmp_path / "train.csv").read_bytes()
    assert (workshop / "output" / "sklearn-demo-1" / "output" / "model.tar.gz").read_bytes() == (
        tmp_path / "model.tar.gz").read_bytes()


def run_quickstart(server: SmlocalServer, tmp_path: Path) -> None:
    # /tmp/ first: the interpreter's own path may lie under /tmp.
    script = (quickstart_script()
              .replace("/tmp/", f"{tmp_path}/")
              .replace("http://localhost:8080", server.endpoint)
              .replace("http://localhost:9000", server.s3_endpoint)
              .replace(".venv/bin/python", sys.executable))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "AWS_PAGER": ""}
    for var in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        env.pop(var, None)
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=README.parent, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{server.log()}"
    assert '"status": "Completed"' in result.stdout
    assert "output/model.tar.gz" in result.stdout
    listing = subprocess.run(["tar", "-tzf", str(tmp_path / "model.tar.gz")], capture_output=True, text=True,
                             check=True).stdout.split()
    assert "model.joblib" in [name.removeprefix("./") for name in listing]
