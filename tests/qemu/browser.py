"""Debian's Chromium, driven headless by Selenium through Debian's chromium-driver, inside a
lab namespace, trusting the cluster's CA (an NSS database in a throwaway home) instead of
ignoring certificate errors. Nothing is downloaded: both binaries come from apt."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

from vmcluster.substrate.host.nsenter import NetnsThread

T = TypeVar("T")
CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def available() -> bool:
    return all(Path(p).exists() for p in (CHROMIUM, DRIVER)) and bool(shutil.which("certutil"))


def _trust(home: Path, ca: Path) -> None:
    """An NSS database in ``home`` that trusts ``ca`` for TLS servers (what Chromium on
    Linux reads, as a user's own trust anchors)."""
    db = home / ".pki" / "nssdb"
    db.mkdir(parents=True)
    subprocess.run(["certutil", "-d", f"sql:{db}", "-N", "--empty-password"], check=True)
    subprocess.run(["certutil", "-d", f"sql:{db}", "-A", "-t", "C,,", "-n", "vmcluster-ca",
                    "-i", str(ca)], check=True)


@contextmanager
def chromium_in(ns: str, ca: Path) -> Iterator[Callable[[Callable[[webdriver.Chrome], T]], T]]:
    """``run(fn)`` calls ``fn(driver)`` in a thread inside network namespace ``ns`` (the
    driver, the browser and every connection live there); all of it is removed after."""
    home = Path(tempfile.mkdtemp(prefix="vmc-chromium-"))
    _trust(home, ca)
    thread = NetnsThread(ns)
    holder: list[webdriver.Chrome] = []

    def start() -> None:
        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                    "--disable-gpu", "--window-size=1400,1000", "--no-first-run",
                    f"--user-data-dir={home / 'profile'}"):
            opts.add_argument(arg)
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the page's console
        env = {"HOME": str(home), "PATH": "/usr/bin:/bin"}
        service = Service(executable_path=DRIVER, env=env, log_output=str(home / "driver.log"))
        holder.append(webdriver.Chrome(service=service, options=opts))

    try:
        thread.call(start, timeout=120)

        def run(fn: Callable[[webdriver.Chrome], T]) -> T:
            return thread.call(fn, holder[0], timeout=600)

        yield run
    finally:
        if holder:
            thread.call(holder[0].quit, timeout=60)
        thread.close()
        shutil.rmtree(home, ignore_errors=True)


def page_state(d: WebDriver) -> str:
    """What a failed wait saw in the page: its URL, its error lines, its console."""
    errors = d.execute_script(
        "return ['login-error', 'error'].map((id) => document.getElementById(id)?.textContent)")
    console = [f"{e.get('level')}: {e.get('message')}" for e in d.get_log("browser")][-20:]
    return f"url {d.current_url}; login-error/error {errors}; console {console}"
