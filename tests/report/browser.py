"""Headless Chromium from the system packages (Debian ``chromium``, ``chromium-driver``), driven by selenium.

The driver and the browser are named by path, so selenium-manager never runs and nothing is downloaded.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

CHROMEDRIVER = "/usr/bin/chromedriver"
BROWSERS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")


def missing() -> str | None:
    """Why no browser test can run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    if not os.path.exists(CHROMEDRIVER) or not any(os.path.exists(b) for b in BROWSERS):
        return f"no system Chromium: apt-get install chromium chromium-driver (needs {CHROMEDRIVER} and one of {BROWSERS})"
    return None


def start_chromium(width: int = 1280, height: int = 900) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = next(b for b in BROWSERS if os.path.exists(b))
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", "--allow-file-access-from-files"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    assert shutil.which(CHROMEDRIVER)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
