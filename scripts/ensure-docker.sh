#!/usr/bin/env bash
# Make sure a Docker engine answers on this machine, plus the tools that
# scripts/build-images.sh needs (debootstrap, a static busybox).
#
# Idempotent: installs only what is missing and starts dockerd only when
# `docker info` fails. Meant for root on Debian bookworm (CI starts from a
# machine with none of this installed or running).
set -euo pipefail

DOCKERD_LOG="${SMLOCAL_DOCKERD_LOG:-/tmp/smlocal-dockerd.log}"
DOCKER_WAIT_SECONDS="${SMLOCAL_DOCKER_WAIT_SECONDS:-60}"

TAG=ensure-docker
NEEDS_ROOT_FOR="install packages and start dockerd"
# shellcheck source=scripts/ensure-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/ensure-lib.sh"

# dockerd lives in /usr/sbin, which non-login shells may not have on PATH.
export PATH="${PATH}:/usr/local/sbin:/usr/sbin:/sbin"

pkg_installed() {
    [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" == "install ok installed" ]]
}

missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
# docker.io also ships the CLI; a host may have dockerd without it.
if command -v dockerd >/dev/null 2>&1 && ! command -v docker >/dev/null 2>&1; then
    missing+=(docker.io)
fi
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
# The plain `busybox` package is dynamically linked and useless in an empty
# rootfs, so check for the static package specifically.
pkg_installed busybox-static || missing+=(busybox-static)

apt_install "${missing[@]}"

command -v dockerd >/dev/null 2>&1 || die "dockerd still not found after installing docker.io"
command -v docker >/dev/null 2>&1 || die "docker CLI still not found after installing docker.io"

engine_up() {
    # `docker info` exits 0 on some CLI versions even without a server, so
    # also require a server version in the output.
    local version
    version="$("${SUDO[@]}" docker info --format '{{.ServerVersion}}' 2>/dev/null)" || return 1
    [[ -n "${version}" ]]
}

if engine_up; then
    log "docker engine is up (server $("${SUDO[@]}" docker info --format '{{.ServerVersion}}'))"
    exit 0
fi

# Another dockerd may be starting (e.g. systemd right after the install);
# launching a second one would fight over the pid file and socket.
dockerd_running() {
    # pidof (sysvinit-utils) is on every bookworm install; procps may not be.
    if command -v pidof >/dev/null 2>&1; then
        pidof dockerd >/dev/null 2>&1
    else
        pgrep -x dockerd >/dev/null 2>&1
    fi
}

dockerd_pid=""
if dockerd_running; then
    log "dockerd is running but not answering yet; waiting for it"
else
    log "starting dockerd in the background (log: ${DOCKERD_LOG})"
    # setsid: keep dockerd alive after this script's (and make's) process group ends.
    "${SUDO[@]}" setsid nohup dockerd >"${DOCKERD_LOG}" 2>&1 </dev/null &
    dockerd_pid=$!
fi

start=${SECONDS}
until engine_up; do
    # Fail fast (with the reason from its log) when our dockerd already died.
    if [[ -n "${dockerd_pid}" ]] && ! kill -0 "${dockerd_pid}" 2>/dev/null; then
        log "last lines of ${DOCKERD_LOG}:"
        tail -n 30 "${DOCKERD_LOG}" >&2 2>/dev/null || true
        die "dockerd exited during startup (see ${DOCKERD_LOG}); it needs root with full privileges"
    fi
    if ((SECONDS - start >= DOCKER_WAIT_SECONDS)); then
        log "last lines of ${DOCKERD_LOG}:"
        tail -n 30 "${DOCKERD_LOG}" >&2 2>/dev/null || true
        die "docker engine did not answer within ${DOCKER_WAIT_SECONDS}s"
    fi
    sleep 1
done
log "docker engine is up after $((SECONDS - start))s (server $("${SUDO[@]}" docker info --format '{{.ServerVersion}}'))"
