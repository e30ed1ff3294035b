#!/usr/bin/env bash
# Build the smlocal service image (smlocal/service:dev) without network access
# during `docker build`:
#   1. on the host: pip wheel --wheel-dir .wheelhouse .   (PyPI is reachable here)
#   2. docker build FROM the local smlocal/python-base:1, installing only
#      from .wheelhouse (the build runs with --network none).
# Unlike build-images.sh this always rebuilds: the tag tracks the working tree.
#
# Environment:
#   PYTHON               interpreter used for `pip wheel` (default python3);
#                        must be the same major.minor as the base image's python3
#   SMLOCAL_SERVICE_TAG  image tag (default smlocal/service:dev)
#   SMLOCAL_SOURCE_DIGEST
#                        written into the image as label smlocal.source-digest (the tests
#                        reuse an image whose label matches their tree: tests/support/service_image.py)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${SCRIPT_DIR}/.." && pwd)"
BASE_IMAGE="smlocal/python-base:1"
TAG="${SMLOCAL_SERVICE_TAG:-smlocal/service:dev}"
PYTHON="${PYTHON:-python3}"
WHEELHOUSE="${REPO_ROOT}/.wheelhouse"
LOCK_FILE="/tmp/smlocal-build-service-image.lock"

log() { printf '[build-service-image] %s\n' "$*" >&2; }
die() { printf '[build-service-image] ERROR: %s\n' "$*" >&2; exit 1; }

cd "${REPO_ROOT}"
[[ -f pyproject.toml ]] || die "no pyproject.toml in ${REPO_ROOT}"

engine_up() {
    local version
    version="$(docker info --format '{{.ServerVersion}}' 2>/dev/null)" || return 1
    [[ -n "${version}" ]]
}
engine_up || "${SCRIPT_DIR}/ensure-docker.sh"
docker image inspect "${BASE_IMAGE}" >/dev/null 2>&1 || "${SCRIPT_DIR}/build-images.sh"

# Binary wheels built for another Python would install but fail to import.
host_py="$("${PYTHON}" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
image_py="$(docker run --rm --network none "${BASE_IMAGE}" \
    python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
[[ "${host_py}" == "${image_py}" ]] \
    || die "${PYTHON} is Python ${host_py} but ${BASE_IMAGE} has ${image_py}; set PYTHON to a ${image_py} interpreter"

# Concurrent callers (parallel test sessions, several checkouts sharing the tag) would swap
# .wheelhouse under each other's docker build; one build at a time.
exec 9>"${LOCK_FILE}"
flock 9

start=${SECONDS}
log "building wheels into ${WHEELHOUSE}"
tmp_dir="$(mktemp -d "${TMPDIR:-/tmp}/smlocal-service-build.XXXXXX")"
trap 'rm -rf "${tmp_dir}"' EXIT
# setuptools writes build/ and *.egg-info into the source tree; build from a
# copy so the working tree stays as it was.
mkdir -p "${tmp_dir}/src" "${tmp_dir}/wheels"
tar -C "${REPO_ROOT}" \
    --exclude=./.git --exclude=./.wheelhouse --exclude=./build --exclude=./dist \
    --exclude='*.egg-info' --exclude=__pycache__ --exclude=.venv --exclude=venv \
    --exclude=.pytest_cache --exclude=.ruff_cache --exclude=.mypy_cache \
    -cf - . | tar -C "${tmp_dir}/src" -xf -
# Fresh wheel directory each time: a stale smlocal wheel with the same version
# number would otherwise be installed instead of the current code.
"${PYTHON}" -m pip wheel --quiet --disable-pip-version-check \
    --wheel-dir "${tmp_dir}/wheels" "${tmp_dir}/src" \
    || die "pip wheel failed"
rm -rf "${WHEELHOUSE}"
mv "${tmp_dir}/wheels" "${WHEELHOUSE}"
log "wheels: $(find "${WHEELHOUSE}" -name '*.whl' | wc -l) in $((SECONDS - start))s"

build_start=${SECONDS}
previous_id="$(docker image inspect --format '{{.Id}}' "${TAG}" 2>/dev/null || true)"
# Classic builder: resolves FROM against local images without pulling, and
# --network none proves the install needs nothing but the wheelhouse.
labels=()
if [[ -n "${SMLOCAL_SOURCE_DIGEST:-}" ]]; then
    labels=(--label "smlocal.source-digest=${SMLOCAL_SOURCE_DIGEST}")
fi
DOCKER_BUILDKIT=0 docker build --network none \
    --build-arg "BASE_IMAGE=${BASE_IMAGE}" "${labels[@]}" \
    -t "${TAG}" "${REPO_ROOT}"
log "${TAG}: built in $((SECONDS - build_start))s (total $((SECONDS - start))s)"

# Every rebuild retags; the previous image (a few hundred MB of venv) would stay behind untagged.
# Not forced: one still used by a container stays.
if [[ -n "${previous_id}" ]] \
    && [[ "${previous_id}" != "$(docker image inspect --format '{{.Id}}' "${TAG}")" ]] \
    && [[ -z "$(docker image inspect --format '{{join .RepoTags ""}}' "${previous_id}" 2>/dev/null)" ]]; then
    docker image rm "${previous_id}" >/dev/null 2>&1 || log "kept the previous ${TAG} image (still in use)"
fi
