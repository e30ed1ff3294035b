"""The web console from tests: plain HTTP with requests, and headless Chromium through Selenium.

The browser is Debian's `chromium` driven by Debian's `chromedriver` (scripts/ensure-chromium.sh installs
both); nothing is downloaded, and Selenium Manager is never asked for a driver.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from html import unescape
from pathlib import Path
from typing import Any

import requests

from tests.support.smlocal import SmlocalServer

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS_DIR = REPO_ROOT / "test-artifacts" / "console"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# For this machine: no sandbox (root), no GPU, and nothing that reaches out (updates, sync, QUIC probes).
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,1800")


def get(server: SmlocalServer, path: str, **kwargs: Any) -> requests.Response:
    kwargs.setdefault("timeout", 30)
    kwargs.setdefault("allow_redirects", False)
    return requests.get(server.endpoint + path, **kwargs)


def post(server: SmlocalServer, path: str, **kwargs: Any) -> requests.Response:
    kwargs.setdefault("timeout", 30)
    kwargs.setdefault("allow_redirects", False)
    return requests.post(server.endpoint + path, **kwargs)


def form_token(html: str) -> str:
    found = re.search(r'name="token" value="([^"]+)"', html)
    assert found, "the page has no Stop form"
    return found.group(1)


def text_of(html: str) -> str:
    """The page's text as a reader sees it: tags dropped, entities decoded, spaces collapsed."""
    inline_dropped = re.sub(r"</?(?:b|code|span|a|em|strong)(?:\s[^>]*)?>", "", html)
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", inline_dropped)).split())


@contextmanager
def chromium(profile_dir: Path) -> Iterator[Any]:
    """A headless Chromium WebDriver with a new, empty profile."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if missing:
        raise RuntimeError(f"{', '.join(missing)} missing: run scripts/ensure-chromium.sh (as root), which "
                           "installs Debian's chromium and chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    # Selenium Manager would look for drivers online; with both paths given it is not run, and offline anyway.
    os.environ.setdefault("SE_OFFLINE", "true")
    os.environ.setdefault("SE_AVOID_STATS", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    shutil.rmtree(profile_dir, ignore_errors=True)
    profile_dir.mkdir(parents=True)
    options.add_argument(f"--user-data-dir={profile_dir}")
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        driver.set_page_load_timeout(60)
        yield driver
    finally:
        driver.quit()


def screenshot(driver: Any, name: str) -> Path:
    """Save a screenshot under test-artifacts/console/ and print where it is."""
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS_DIR / f"{name}.png"
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path
