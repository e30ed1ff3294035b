"""The service image (smlocal/service:dev) of this working tree, built by scripts/build-service-image.sh.

The build takes over a minute, and the tag is shared by every checkout on the engine (another one may rebuild
it from its own tree at any time). So the image is known by id, and by a digest of what goes into it (the
packages the wheel holds, pyproject.toml, the Dockerfile, the build script, the base image's id): a session
whose digest matches the last build's (kept in pytest's cache) uses that image if the engine still has it, and
builds otherwise. Tests run the id, never the tag.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from typing import Any

import docker
import docker.errors

from tests.support.docker_env import PYTHON_BASE_IMAGE, REPO_ROOT

BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-service-image.sh"
SERVICE_IMAGE = "smlocal/service:dev"  # the tag compose's `image:` names and the script builds
# What the image is made of (scripts/build-service-image.sh wheels the project; the Dockerfile installs it).
_SOURCES = ("runner", "server", "smlocal", "pyproject.toml", "Dockerfile", "scripts/build-service-image.sh")
_CACHE_KEY = "smlocal/service-image"


def tree_digest(client: docker.DockerClient) -> str:
    """A digest of the files the image is built from (tracked or not, ignored ones left out) and its base."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z", "--", *_SOURCES],
                            cwd=REPO_ROOT, capture_output=True, check=True).stdout
    digest = hashlib.sha256()
    for name in sorted(n for n in listed.decode().split("\0") if n):
        path = REPO_ROOT / name
        if not path.is_file():
            continue  # deleted in the working tree
        digest.update(name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    try:
        digest.update(str(client.images.get(PYTHON_BASE_IMAGE).id).encode())
    except docker.errors.ImageNotFound:
        digest.update(b"no base image")
    return digest.hexdigest()


def build_service_image(client: docker.DockerClient) -> str:
    """Rebuild the tag from the working tree; the new image's id."""
    env = {**os.environ, "PYTHON": sys.executable}
    result = subprocess.run(["bash", str(BUILD_SCRIPT)], cwd=REPO_ROOT, env=env, capture_output=True,
                            text=True, timeout=1200, check=False)
    assert result.returncode == 0, f"{BUILD_SCRIPT} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    # By id: another session rebuilding the tag meanwhile must not change what this one runs.
    return str(client.images.get(SERVICE_IMAGE).id)


def service_image(client: docker.DockerClient, cache: Any) -> str:
    """The id of the service image of this tree: the last build's if the tree did not change since and the
    engine still has it, else a new build. `cache` is pytest's (`config.cache`), or None to always build."""
    digest = tree_digest(client)
    known = cache.get(_CACHE_KEY, {}) if cache is not None else {}
    image_id = known.get("id") if known.get("digest") == digest else None
    if image_id:
        try:
            client.images.get(image_id)
            return str(image_id)
        except docker.errors.ImageNotFound:
            pass
    image_id = build_service_image(client)
    # The digest of the tree as it was before the build: a file changed during the build means a build next time.
    if cache is not None:
        cache.set(_CACHE_KEY, {"digest": digest, "id": image_id})
    return image_id
