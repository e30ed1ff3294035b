"""The service image (smlocal/service:dev) of this working tree, built by scripts/build-service-image.sh.

The build takes over a minute, and the tag is shared by every checkout on the engine (another one may rebuild
it from its own tree at any time). So the image is known by id, and by a digest of what goes into it (the
packages the wheel holds, pyproject.toml, the Dockerfile, the build script, the base image's id), which the
build writes into the image as a label: a session, or a fresh clone of the same tree, whose digest matches the
label of the image under the tag uses that image, and builds otherwise. Tests run the id, never the tag.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys

import docker
import docker.errors

from tests.support.docker_env import PYTHON_BASE_IMAGE, REPO_ROOT

BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-service-image.sh"
SERVICE_IMAGE = "smlocal/service:dev"  # the tag compose's `image:` names and the script builds
# What the image is made of (scripts/build-service-image.sh wheels the project; the Dockerfile installs it).
_SOURCES = ("runner", "server", "smlocal", "pyproject.toml", "Dockerfile", "scripts/build-service-image.sh")
DIGEST_LABEL = "smlocal.source-digest"  # written by the build script from SMLOCAL_SOURCE_DIGEST
# Not the build script's own lock file: the script takes that one while this is held.
LOCK_FILE = "/tmp/smlocal-service-image-of-tree.lock"


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


def build_service_image(client: docker.DockerClient, digest: str) -> str:
    """Rebuild the tag from the working tree, labelled with its digest; the new image's id."""
    env = {**os.environ, "PYTHON": sys.executable, "SMLOCAL_SOURCE_DIGEST": digest}
    result = subprocess.run(["bash", str(BUILD_SCRIPT)], cwd=REPO_ROOT, env=env, capture_output=True,
                            text=True, timeout=1200, check=False)
    assert result.returncode == 0, f"{BUILD_SCRIPT} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    # By id: another session rebuilding the tag meanwhile must not change what this one runs.
    return str(client.images.get(SERVICE_IMAGE).id)


def service_image(client: docker.DockerClient) -> str:
    """The id of the service image of this tree: the tagged image if its label holds this tree's digest, else a
    new build. One caller at a time (pytest-xdist's workers each ask): the second finds the first one's build."""
    digest = tree_digest(client)  # of the tree as it was before a build: a file changed meanwhile rebuilds next time
    with open(LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            tagged = client.images.get(SERVICE_IMAGE)
        except docker.errors.ImageNotFound:
            tagged = None
        if tagged is not None and tagged.labels.get(DIGEST_LABEL) == digest:
            return str(tagged.id)
        return build_service_image(client, digest)
