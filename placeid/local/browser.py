"""Headless Chromium (Debian's chromium + chromium-driver) driven by Selenium: the page tests, the demo's offline
step and the browser benchmark. Flags keep it off the network it cannot reach (background services, QUIC)."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

from placeid_edge.errors import PlaceidError

FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync")


class BrowserMissing(PlaceidError):
    code = "browser_missing"


def headless_chromium(languages: str | None = None):
    """A Selenium driver for headless Chromium; ``languages`` (``"ko,en"``) are its preferred languages."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not binary or not driver_path:
        raise BrowserMissing("chromium and chromedriver are needed: apt-get install chromium chromium-driver "
                             "(make browser)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in FLAGS:
        options.add_argument(flag)
    if languages:
        options.add_argument(f"--lang={languages.split(',')[0]}")
        options.add_experimental_option("prefs", {"intl.accept_languages": languages})
    return webdriver.Chrome(service=Service(driver_path), options=options)


def wait_ready(driver, timeout_s: float = 120) -> dict:
    """Wait for the predict page's device copy (window.placeid.ready): its mode, model version and status line."""
    driver.set_script_timeout(timeout_s)
    return driver.execute_async_script(
        "const done = arguments[0]; window.placeid.ready.then(() => done({mode: window.placeid.mode, "
        "version: window.placeid.version, status: document.getElementById('offline').textContent}))")


def classify_in_page(driver, photo: Path | bytes) -> dict:
    """The predict page's answer for a photo, as window.placeid.classify gives it (what a pick or a drop shows)."""
    data = photo if isinstance(photo, bytes) else Path(photo).read_bytes()
    return driver.execute_async_script(
        "const done = arguments[1]; const bytes = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0));"
        "window.placeid.classify(new Blob([bytes])).then(done).catch(e => done({error: String(e)}));",
        base64.b64encode(data).decode())


def set_offline(driver, offline: bool = True) -> None:
    """Cut (or restore) the page's network, as DevTools' offline switch does."""
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.emulateNetworkConditions", {"offline": offline, "latency": 0,
                                                                "downloadThroughput": -1, "uploadThroughput": -1})
