"""Headless Debian Chromium for the console tests, driven by Selenium through chromedriver.

Chromium is kept off the network (no background fetches, updates, sync or QUIC) and gets a fresh
profile; as root it needs --no-sandbox. Selenium is synchronous: tests call it from a thread so
the event loop that serves the console keeps running.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
OFFLINE_FLAGS = ("--headless=new", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage", "--window-size=1400,1000")


@contextmanager
def chromium() -> Iterator[webdriver.Chrome]:
    """A headless Chromium session, quit afterwards."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not shutil.which(path):
            raise FileNotFoundError(f"{path} is missing: scripts/setup installs chromium and "
                                    "chromium-driver")
    profile = tempfile.mkdtemp(prefix="console-test-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in OFFLINE_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    if os.geteuid() == 0:
        options.add_argument("--no-sandbox")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
