"""Docker helpers for tests: engine client, local test images, host address.

Nothing here skips tests: when the engine is missing the error says how to get
one (scripts/ensure-docker.sh), because silently skipping the container tests
would hide that they never ran.

Networking: containers on the default bridge reach this host through the
bridge gateway address (usually 172.17.0.1), never through 127.0.0.1. Any
server a container must reach (e.g. the moto S3 server) has to bind on that
address or on 0.0.0.0; see `host_address_for_containers`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import docker
import docker.errors

from runner.host_address import host_address_for_containers

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_IMAGES_SCRIPT = REPO_ROOT / "scripts" / "build-images.sh"

BUSYBOX_IMAGE = "smlocal-test/busybox:1"
PYTHON_BASE_IMAGE = "smlocal/python-base:1"
SKLEARN_EXAMPLE_IMAGE = "smlocal-example/sklearn:1"
# The real SageMaker training toolkit (`train`), and the script-mode example baked into it.
TOOLKIT_IMAGE = "smlocal/training-toolkit:1"
SCRIPT_EXAMPLE_IMAGE = "smlocal-example/sklearn-script:1"
# Debian's PyTorch, for a real DataLoader with workers (tests/test_instance_types.py).
TORCH_IMAGE = "smlocal-test/torch:1"
TEST_IMAGES: tuple[str, ...] = (BUSYBOX_IMAGE, PYTHON_BASE_IMAGE, SKLEARN_EXAMPLE_IMAGE, TOOLKIT_IMAGE,
                                SCRIPT_EXAMPLE_IMAGE, TORCH_IMAGE)



def docker_client() -> docker.DockerClient:
    """Client for the local engine; raises RuntimeError if it does not answer."""
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        raise RuntimeError(
            "Docker engine is not reachable "
            f"({exc}). Run scripts/ensure-docker.sh (as root) to install and start it."
        ) from exc
    return client


def missing_test_images(client: docker.DockerClient) -> list[str]:
    missing = []
    for tag in TEST_IMAGES:
        try:
            client.images.get(tag)
        except docker.errors.ImageNotFound:
            missing.append(tag)
    return missing


def ensure_test_images(client: docker.DockerClient | None = None) -> None:
    """Build the test images with scripts/build-images.sh if any tag is missing.

    The first build takes minutes (debootstrap); later calls are a few
    `images.get` lookups. The script itself takes a lock, so concurrent
    callers (e.g. pytest-xdist workers) do not build twice.
    """
    client = client or docker_client()
    missing = missing_test_images(client)
    if not missing:
        return
    # The toolkit's wheels are built with this interpreter's pip (a Python 3.11 like the images').
    result = subprocess.run(["bash", str(BUILD_IMAGES_SCRIPT)], check=False,
                            env={**os.environ, "PYTHON": os.environ.get("PYTHON", sys.executable)})
    if result.returncode != 0:
        raise RuntimeError(
            f"{BUILD_IMAGES_SCRIPT} failed with exit code {result.returncode} (missing: {missing})"
        )
    still_missing = missing_test_images(client)
    if still_missing:
        raise RuntimeError(f"{BUILD_IMAGES_SCRIPT} succeeded but images are still missing: {still_missing}")


__all__ = ["host_address_for_containers"]
