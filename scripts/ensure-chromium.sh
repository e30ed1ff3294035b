#!/usr/bin/env bash
# Make sure Debian's Chromium and its WebDriver are installed, for the console's browser tests
# (tests/test_console_browser.py). Nothing is downloaded but Debian's packages: the tests drive
# /usr/bin/chromium through /usr/bin/chromedriver, the pair Debian builds together.
#
# Idempotent: installs only what is missing. Meant for root on Debian (CI starts from a machine
# without them).
set -euo pipefail

log() { printf '[ensure-chromium] %s\n' "$*" >&2; }
die() { printf '[ensure-chromium] ERROR: %s\n' "$*" >&2; exit 1; }

SUDO=()
if [[ "$(id -u)" -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        die "must run as root (or with sudo available) to install chromium and chromium-driver"
    fi
fi

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)

if ((${#missing[@]} == 0)); then
    log "chromium and chromedriver are installed ($(chromium --version 2>/dev/null || echo '?'))"
    exit 0
fi
command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and apt-get is not available"
log "installing: ${missing[*]}"
"${SUDO[@]}" apt-get update || die "apt-get update failed"
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" \
    || die "apt-get install ${missing[*]} failed"
command -v chromium >/dev/null 2>&1 || die "chromium still not found after the install"
command -v chromedriver >/dev/null 2>&1 || die "chromedriver still not found after the install"
log "installed $(chromium --version 2>/dev/null || echo chromium)"
