#!/usr/bin/env bash
# Make sure Debian's Chromium and its WebDriver are installed, for the console's browser tests
# (tests/test_console_browser.py). Nothing is downloaded but Debian's packages: the tests drive
# /usr/bin/chromium through /usr/bin/chromedriver, the pair Debian builds together.
#
# Idempotent: installs only what is missing. Meant for root on Debian (CI starts from a machine
# without them).
set -euo pipefail

TAG=ensure-chromium
NEEDS_ROOT_FOR="install chromium and chromium-driver"
# shellcheck source=scripts/ensure-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/ensure-lib.sh"

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)

if ((${#missing[@]} == 0)); then
    log "chromium and chromedriver are installed ($(chromium --version 2>/dev/null || echo '?'))"
    exit 0
fi
apt_install "${missing[@]}"
command -v chromium >/dev/null 2>&1 || die "chromium still not found after the install"
command -v chromedriver >/dev/null 2>&1 || die "chromedriver still not found after the install"
log "installed $(chromium --version 2>/dev/null || echo chromium)"
