# Shared by the ensure-*.sh scripts (sourced, not run): their log lines, root or sudo, and installing
# Debian packages. The sourcing script sets TAG (its log prefix) and NEEDS_ROOT_FOR (the refusal's words).

log() { printf '[%s] %s\n' "$TAG" "$*" >&2; }
die() { printf '[%s] ERROR: %s\n' "$TAG" "$*" >&2; exit 1; }

SUDO=()
if [[ "$(id -u)" -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        die "must run as root (or with sudo available) to ${NEEDS_ROOT_FOR}"
    fi
fi

# Install the Debian packages named (nothing when none are).
apt_install() {
    (($# > 0)) || return 0
    command -v apt-get >/dev/null 2>&1 || die "missing $* and apt-get is not available"
    log "installing: $*"
    "${SUDO[@]}" apt-get update || die "apt-get update failed"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" \
        || die "apt-get install $* failed"
}
