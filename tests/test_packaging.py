"""The wheel holds everything `smlocal serve` needs: built from this tree, installed in a fresh venv, it
answers `smlocal --help`, an API request and the console's pages (templates are package data)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from smlocal.testing import free_port

REPO = Path(__file__).resolve().parent.parent


def _source_copy(target: Path) -> Path:
    """The checkout's files (tracked, and new ones not ignored) in `target`: setuptools builds in the source
    tree, and a `build/` left there from an older tree would put modules that no longer exist in the wheel."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            check=True, capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin folder of a fresh venv with only the wheel (and its dependencies) installed."""
    root = tmp_path_factory.mktemp("wheel")
    source = _source_copy(root / "source")
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(root / "dist"), str(source)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = (root / "dist").glob("smlocal-*.whl")
    # Every module and console file of the three packages, and nothing else of the checkout (tests, bench).
    with zipfile.ZipFile(wheel) as archive:
        packaged = {n for n in archive.namelist() if not n.startswith("smlocal-")}
    expected = {str(f.relative_to(source)) for top in ("server", "runner", "smlocal") for f in (source / top).rglob("*")
                if f.is_file() and "__pycache__" not in f.parts}
    assert packaged == expected, (sorted(expected - packaged), sorted(packaged - expected))
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True, timeout=120)
    # --no-compile: byte-compiling every dependency is most of the install's CPU, and nothing here depends on it.
    pip = subprocess.run([str(root / "venv" / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-compile",
                          str(wheel)],
                         capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr[-3000:]
    return root / "venv" / "bin"


def test_the_console_script_runs(installed: Path) -> None:
    done = subprocess.run([str(installed / "smlocal"), "--help"], capture_output=True, text=True, timeout=60,
                          cwd="/")
    assert done.returncode == 0, done.stderr
    assert "serve" in done.stdout


@pytest.fixture()
def served(installed: Path, tmp_path: Path) -> Iterator[str]:
    port, s3_port = free_port(), free_port()
    # cwd "/": nothing of this checkout can be imported, only what the wheel installed.
    process = subprocess.Popen([str(installed / "smlocal"), "serve", "--no-run-jobs", "--port", str(port),
                                "--data-dir", str(tmp_path / "data"), "--embedded-s3-port", str(s3_port)],
                               cwd="/", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, f"smlocal serve exited with {process.returncode}"
            try:
                urllib.request.urlopen(endpoint + "/health", timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "smlocal serve did not answer"
                time.sleep(0.2)
        yield endpoint
    finally:
        process.terminate()
        process.wait(30)


def test_the_installed_server_answers_the_api_and_the_console(served: str) -> None:
    sm = boto3.client("sagemaker", endpoint_url=served, region_name="us-east-1", aws_access_key_id="k",
                      aws_secret_access_key="s", config=Config(retries={"max_attempts": 1}))
    assert sm.list_training_jobs()["TrainingJobSummaries"] == []
    with urllib.request.urlopen(served + "/console/", timeout=10) as page:
        assert page.status == 200
        assert b"<html" in page.read().lower()
